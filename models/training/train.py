"""DeepSpeed training: one linear `train_func(cfg, hooks)` for every stage (set-up → loop → eval/checkpoint → export).

The same function runs in one local process (tests, `--workers 1` without Ray) and as a Ray Train worker:
everything it needs comes in through `cfg` and `hooks` (never a module global). `hooks` is where the
caller plugs in reporting, checkpoint persistence and resume (cluster/train.py gives Ray Train's), so this
module imports no Ray.
"""

import dataclasses
import ipaddress
import json
import logging
import math
import os
import shutil
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from actorcast.models.errors import ConfigError

log = logging.getLogger(__name__)
STAGE_NAMES = ("decoder", "motion", "probe", "free")
EXPORT_DIR = "export"  # inside the final checkpoint: safetensors + JSON of the trained models
CLIENT_STATE = "actorcast_state"
STATE_FILE = "actorcast_state.json"  # step + config, readable without DeepSpeed


@dataclass
class TrainConfig:
    """Everything one training run needs; the checkpoint stores it, and `--resume` checks it matches."""

    stage: str
    preset: str = "tiny"
    steps: int = 1000
    batch_size: int = 8            # per worker micro-batch
    lr: float = 1e-3
    warmup_steps: int = 50
    zero_stage: int = 2
    seed: int = 0
    out_dir: str = "runs/train"
    checkpoint_every: int = 200
    eval_every: int = 0            # 0 = only at the end
    log_every: int = 10
    data: str = "synthetic"        # or a folder of mp4s (decoder stage)
    size: int = 0                  # frame size for training; 0 = the preset's
    weights: str = ""              # trained weights the stage builds on (motion: the motion encoder)
    init: str = ""                 # an export to start from (fine-tuning); its training settings are the preset's
    clips: int = 256               # motion stage: training clips encoded once into latents
    clip_seconds: float = 8.0      # motion stage: length of each clip
    window_frames: int = 32        # motion stage: frames per training window (8 chunks of 4)
    tts_share: float = 0.5         # motion stage: share of clips spoken by espeak-ng (the rest formant babble)
    lookahead: int = -1            # motion stage: the audio encoder's lookahead in frames; -1: the init's or preset's
    distill_steps: int = 0         # motion stage: > 0 distils the init's generator to sample in this many steps
    fit_seconds: float = 10.0      # free stage: length of the clips its drawing is fitted on at export (the eval's
                                   # clip length: spreads are read about each clip's mean, so they depend on it)
    latent: str = "auto"           # decoder stage: params | encoder | auto (params on synthetic data)
    device: str = "auto"           # auto | cpu | cuda
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.stage not in STAGE_NAMES:
            raise ConfigError(f"unknown stage {self.stage!r}; use one of {', '.join(STAGE_NAMES)}")
        for name in ("steps", "batch_size", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 1.0 <= self.fit_seconds <= 60.0:
            raise ConfigError(f"fit_seconds must be 1..60 s, got {self.fit_seconds}")
        if not 0.0 <= self.tts_share <= 1.0:
            raise ConfigError(f"tts_share must be in [0, 1], got {self.tts_share}")
        if not -1 <= self.lookahead <= 25:
            raise ConfigError(f"lookahead must be 0..25 frames, got {self.lookahead}")
        if self.lookahead >= 0 and self.stage != "motion":
            raise ConfigError("--lookahead is for the motion stage only (the audio encoder trains there)")
        if not 0 <= self.distill_steps <= 16 or (self.distill_steps and self.stage != "motion"):
            raise ConfigError(f"distill_steps={self.distill_steps}: give 1..16 steps, for the motion stage only")
        if self.latent not in ("auto", "params", "encoder"):
            raise ConfigError(f"latent must be auto, params or encoder, got {self.latent!r}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"zero_stage must be 0..3, got {self.zero_stage}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device cuda was asked for but no CUDA GPU is visible; use --device cpu")

    def resolved_device(self) -> str:
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def identity(self) -> dict:
        """The fields a resumed run must share with the run it continues."""
        return {"stage": self.stage, "preset": self.preset, "batch_size": self.batch_size, "seed": self.seed,
                "latent": self.resolved_latent()}

    def resolved_latent(self) -> str:
        """What drives the decoder in the decoder stage: the true parameters (synthetic data) or the encoder."""
        if self.latent == "auto":
            return "params" if self.data == "synthetic" else "encoder"
        return self.latent


class LocalHooks:
    """Hooks for a run outside Ray: checkpoints under out_dir/checkpoints/step_N, reports go to `on_report`."""

    def __init__(self, out_dir: Path | str, resume: bool = False, on_report=None):
        self.root = Path(out_dir) / "checkpoints"
        self.resume, self.on_report = resume, on_report
        self.rank, self.world_size = 0, 1

    @contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        found = sorted(self.root.glob("step_*")) if self.resume and self.root.is_dir() else []
        yield found[-1] if found else None

    @contextmanager
    def checkpoint_dir(self, step: int) -> Iterator[Path]:
        final = self.root / f"step_{step:08d}"
        tmp = self.root / f".step_{step:08d}.part"
        tmp.mkdir(parents=True, exist_ok=True)
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)

    def report(self, metrics: dict, checkpoint: Path | None = None) -> None:
        if self.on_report is not None:
            self.on_report(metrics)


def bind_rendezvous(host: str) -> tuple[int, int]:
    """Rank 0: a listening socket for the torch.distributed store on `host` only; returns (fd, port).

    torch's TCPStore binds every interface when it opens its own socket, exposing an unauthenticated
    store to the network; handing it a socket bound to one address keeps a loopback run on loopback.
    """
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.bind((host, 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    return sock.detach(), port  # the store owns the fd from here on


def init_process_group(rank: int, world_size: int, host: str, port: int, listen_fd: int | None = None,
                       backend: str = "gloo", local_rank: int = 0) -> None:
    """Join the process group whose store rank 0 serves at host:port (rank 0 passes its bound `listen_fd`)."""
    from datetime import timedelta

    import torch.distributed as dist

    if ipaddress.ip_address(host).is_loopback:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # gloo's own pair sockets on loopback too
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR=host, MASTER_PORT=str(port))
    timeout = timedelta(minutes=5)
    if rank == 0:
        store = dist.TCPStore(host, port, world_size, True, timeout, master_listen_fd=listen_fd, use_libuv=False)
    else:
        store = dist.TCPStore(host, port, world_size, False, timeout, use_libuv=False)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size)


def _ensure_distributed() -> None:
    """DeepSpeed needs a process group even in one process: make a one-rank group on loopback if none exists."""
    if torch.distributed.is_initialized():
        return
    fd, port = bind_rendezvous("127.0.0.1")
    init_process_group(0, 1, "127.0.0.1", port, listen_fd=fd)


def deepspeed_config(cfg: TrainConfig, device: str) -> dict:
    """ZeRO config: stage from cfg (2 by default), bf16 on GPU, fp32 on CPU, warmup-then-decay LR."""
    return {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "zero_optimization": {"stage": cfg.zero_stage},
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": device == "cuda"},
        "scheduler": {"type": "WarmupDecayLR", "params": {
            "warmup_min_lr": 0.0, "warmup_max_lr": cfg.lr, "warmup_type": "linear",
            "warmup_num_steps": min(cfg.warmup_steps, max(1, cfg.steps - 1)),
            "total_num_steps": max(cfg.steps, 2)}},
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
    }


def _to(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    return batch


def train_func(cfg: TrainConfig, hooks) -> dict:
    """Train one stage: returns the final metrics (and exports weights to cfg.out_dir on rank 0)."""
    import deepspeed

    from actorcast.models.training.stages import get_stage

    # 1. Set-up: seed, the stage's trainable module (its forward returns loss + metrics), DeepSpeed engine.
    _ensure_distributed()
    torch.manual_seed(cfg.seed)
    stage = get_stage(cfg.stage)
    module = stage.build(cfg)
    device = cfg.resolved_device()
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
    engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, config=deepspeed_config(cfg, device))
    start = _resume(engine, cfg, hooks)

    # 2. Loop: batches are a pure function of (seed, rank, step), so a resumed run sees the same data.
    metrics: dict = {}
    t0, samples = time.perf_counter(), 0
    batches = stage.batches(cfg, rank=hooks.rank, world_size=hooks.world_size, start_step=start)
    for step in range(start + 1, cfg.steps + 1):
        batch = _to(next(batches), engine.device)
        loss, parts = engine(batch)
        engine.backward(loss)
        engine.step()
        samples += cfg.batch_size * hooks.world_size
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower --lr")
        last, checkpoint = step == cfg.steps, step % cfg.checkpoint_every == 0
        if step % cfg.log_every == 0 or checkpoint or last:
            rate = samples / (time.perf_counter() - t0)
            metrics = {"step": step, "loss": float(loss.detach()), "samples_per_s": rate,
                       "eta_s": (cfg.steps - step) * cfg.batch_size * hooks.world_size / max(rate, 1e-9),
                       "lr": engine.get_lr()[0], **{k: float(v) for k, v in parts.items()}}
        # 3. Eval and checkpoint at intervals (every rank saves its ZeRO shard; the hooks persist them).
        #    The last checkpoint also carries the evaluation and the safetensors export (rank 0).
        if hooks.rank == 0 and (last or (cfg.eval_every and step % cfg.eval_every == 0)):
            metrics.update(stage.evaluate(engine.module, cfg))
        if checkpoint or last:
            _save(engine, cfg, hooks, step, metrics, stage if last else None)
        elif step % cfg.log_every == 0:
            hooks.report(metrics)
    return metrics


def _save(engine, cfg: TrainConfig, hooks, step: int, metrics: dict, export_stage=None) -> None:
    state = {"step": step, "world_size": hooks.world_size, "config": dataclasses.asdict(cfg)}
    with hooks.checkpoint_dir(step) as directory:
        engine.save_checkpoint(str(directory), tag="ds", client_state={CLIENT_STATE: state})
        (directory / STATE_FILE).write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
        if export_stage is not None and hooks.rank == 0:
            export_stage.export(engine.module, directory / EXPORT_DIR, cfg, metrics)
        hooks.report(metrics, checkpoint=directory)


def publish_export(checkpoint_dir: Path | str, out_dir: Path | str) -> list[Path]:
    """Copy the safetensors export of a final checkpoint into `out_dir` (each file via a temporary name)."""
    source = Path(checkpoint_dir) / EXPORT_DIR
    if not source.is_dir():
        raise ConfigError(f"{checkpoint_dir} holds no export: it is not the checkpoint of a finished run")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted(source.iterdir()):
        tmp = out / f".{path.name}.part"
        shutil.copyfile(path, tmp)
        os.replace(tmp, out / path.name)
        written.append(out / path.name)
    return written


def run_local(cfg: TrainConfig, resume: bool = False, on_report=None) -> dict:
    """Train in this process (no Ray) and publish the export to cfg.out_dir; returns the final metrics."""
    hooks = LocalHooks(cfg.out_dir, resume=resume, on_report=on_report)
    metrics = train_func(cfg, hooks)
    publish_export(hooks.root / f"step_{cfg.steps:08d}", cfg.out_dir)
    return metrics


def _resume(engine, cfg: TrainConfig, hooks) -> int:
    """Load the latest checkpoint if the hooks offer one; returns the step it was saved at (0 if none)."""
    with hooks.latest_checkpoint() as directory:
        if directory is None:
            return 0
        state_file = directory / STATE_FILE
        if not state_file.is_file():
            raise ConfigError(f"{directory} is not an actorcast training checkpoint; start without --resume")
        state = json.loads(state_file.read_text())
        saved = TrainConfig(**state["config"])
        # Check before loading: a checkpoint of another stage or preset would fail deep inside DeepSpeed.
        if saved.identity() != cfg.identity():
            raise ConfigError(f"the checkpoint in {directory} is from another run ({saved.identity()}), "
                              f"not {cfg.identity()}; use another --out or drop --resume")
        engine.load_checkpoint(str(directory), tag="ds")
    log.info("resumed from %s at step %d", directory, state["step"])
    return int(state["step"])


__all__ = ["TrainConfig", "LocalHooks", "train_func", "run_local", "publish_export", "deepspeed_config", "STAGE_NAMES"]
