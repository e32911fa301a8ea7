"""The Ray Train launcher of `actorcast train` (cluster/cli/train.py): DeepSpeed training of one stage on a Ray
cluster (Ray Train data-parallel workers).

Each Ray Train worker runs models.training.train.train_func with Ray's hooks: checkpoints (every rank's ZeRO shard) are
reported to Ray Train and persisted in its storage (RunConfig(storage_path=...): OUT/ray/ by default, --storage
PATH on a cluster whose nodes do not share the driver's disk: a folder every node and the driver can reach); a
worker that dies restarts from the latest checkpoint (FailureConfig), `--resume` continues a stopped run from
the latest checkpoint in that storage, and the export of the final checkpoint (safetensors + JSON) is copied to
OUT/ on the driver. The workers are spread over the nodes (SPREAD). Rank 0's progress reaches the driver
through a Ray queue; the driver prints it and keeps it in OUT/progress.jsonl, and prints "resuming from the
checkpoint of step S" whenever the workers start from a checkpoint (--resume, or a restart after a failure).
"""

import dataclasses
import json
import logging
import os
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from actorcast.models.errors import ActorcastError
from actorcast.models.training.train import TrainConfig, publish_export

log = logging.getLogger(__name__)
RUN_NAME = "run"


PROGRESS_FILE = "progress.jsonl"  # the driver appends each report of rank 0 (as it prints it)
WORKERS_FILE = "workers.json"  # the driver writes where each rank ran: {rank: Ray node id}


class RayHooks:
    """models.training.train hooks inside a Ray Train worker: the checkpoint to resume from, Ray's report."""

    def __init__(self, progress, run_dir: str):
        """progress: a ray.util.queue.Queue to the driver; run_dir: the run's folder in Ray's storage (STORAGE/run)."""
        import ray
        import ray.train

        context = ray.train.get_context()
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()
        self.progress = progress
        self.run_dir = Path(run_dir)
        self.progress.put({"rank": self.rank, "node": ray.get_runtime_context().get_node_id()})

    @contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        # A worker group restarted inside this run (a worker died), or a new run started with --resume, starts from
        # the newest whole checkpoint in the run's storage, a folder on the nodes' file system. Not Ray's own
        # get_checkpoint(): Ray registers a checkpoint only once its controller has collected every rank's report,
        # so a node lost, or a Ctrl-C, just after a save leaves Ray's latest one behind the newest whole one there.
        # A new run's storage holds nothing of its own (check_inputs): what is there is this run's, or the run
        # --resume continues.
        found = latest_complete_checkpoint(self.run_dir)
        if found is not None:
            self._tell_resumed(found)
        yield found

    def _tell_resumed(self, directory: Path) -> None:
        """Rank 0 tells the driver the step of the checkpoint the workers start from (a restart or --resume)."""
        from actorcast.models.training.train import STATE_FILE

        if self.rank == 0 and (directory / STATE_FILE).is_file():
            self.progress.put({"resumed": json.loads((directory / STATE_FILE).read_text())["step"]})

    @contextmanager
    def checkpoint_dir(self, step: int) -> Iterator[Path]:
        with tempfile.TemporaryDirectory(prefix=f"actorcast-step{step}-") as directory:
            yield Path(directory)

    def report(self, metrics: dict, checkpoint: Path | None = None) -> None:
        import ray.train

        if self.rank == 0 and metrics:
            self.progress.put({**metrics, "checkpoint": checkpoint is not None})
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(checkpoint))
                         if checkpoint is not None else None)


def _join_process_group(config: dict) -> None:
    """Rank 0 binds the rendezvous on its node address only and broadcasts it; every rank joins."""
    import ray.train
    import ray.train.collective
    from ray.util import get_node_ip_address

    from actorcast.models.training.train import bind_rendezvous, init_process_group

    context = ray.train.get_context()
    rank = context.get_world_rank()
    fd = None
    address = None
    if rank == 0:
        host = get_node_ip_address()
        fd, port = bind_rendezvous(host)
        address = (host, port)
    host, port = ray.train.collective.broadcast_from_rank_zero(address)
    backend = "nccl" if config["train"]["device"] == "cuda" else "gloo"
    init_process_group(rank, context.get_world_size(), host, port, listen_fd=fd, backend=backend,
                       local_rank=context.get_local_rank())


def worker_loop(config: dict) -> None:
    """The per-worker function of the trainer: everything comes in through `config`."""
    import torch

    from actorcast.models.training.train import train_func

    if config["train"]["device"] == "cuda":
        torch.cuda.set_device(0)  # Ray gives each worker its own GPU as device 0
    _join_process_group(config)
    try:
        train_func(TrainConfig(**config["train"]), RayHooks(config["progress"], config["run_dir"]))
    finally:
        torch.distributed.destroy_process_group()


def format_progress(m: dict, total_steps: int) -> str:
    """One console line: step, loss, samples/s, ETA."""
    eta = time.strftime("%H:%M:%S", time.gmtime(m.get("eta_s", 0)))
    return (f"step {m['step']}/{total_steps}  loss {m['loss']:.4f}  {m['samples_per_s']:.1f} samples/s  ETA {eta}"
            + ("  [checkpoint]" if m.get("checkpoint") else ""))


def _fit_with_progress(trainer, queue, out: Path, total_steps: int):
    """Run trainer.fit() in a thread; print rank 0's progress as it arrives and keep it in out/progress.jsonl,
    and the node of each rank in out/workers.json."""
    from ray.util.queue import Empty

    result: dict = {}
    workers: dict = {}

    def fit() -> None:
        try:
            result["value"] = trainer.fit()
        except BaseException as e:  # re-raised in the caller's thread
            result["error"] = e

    thread = threading.Thread(target=fit, daemon=True)
    thread.start()
    while True:
        alive = thread.is_alive()  # read before draining: nothing is put after fit() returned
        try:
            items = [queue.get(timeout=1.0)] + queue.get_nowait_batch(queue.qsize())
        except Empty:
            items = []
        for item in items:
            if "rank" in item:
                workers[item["rank"]] = item["node"]
                (out / WORKERS_FILE).write_text(json.dumps(workers, indent=2, sort_keys=True) + "\n")
                continue
            if "resumed" in item:  # a worker group (re)started from a checkpoint: said, not kept in progress.jsonl
                print(f"resuming from the checkpoint of step {item['resumed']}", flush=True)
                drop_progress_after(out / PROGRESS_FILE, item["resumed"])
                continue
            with (out / PROGRESS_FILE).open("a") as f:
                f.write(json.dumps(item) + "\n")
            print(format_progress(item, total_steps), flush=True)
        if not alive and not items:
            break
    if "error" in result:
        raise result["error"]
    return result["value"]


def drop_progress_after(path: Path, step: int) -> None:
    """Keep only the progress lines up to `step`: a run resumed from that step's checkpoint redoes the steps after
    it, so the log holds each step once, as the weights went through it (rewritten whole, then renamed)."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    kept = [line for line in lines if _progress_step(line) <= step]
    if len(kept) < len(lines):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, path)


def _progress_step(line: str) -> float:
    """The step of one progress line; a line cut short (a crash mid-write) counts as after every step."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


def latest_complete_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint folder of a run that holds every rank's ZeRO shard, or None.

    Each rank uploads its own shard into the checkpoint's folder, so a rank on a lost node can leave the newest one
    without its part; the world size is in the state file (checkpoints saved before it was are taken whole)."""
    from actorcast.models.training.train import STATE_FILE

    # Ray names checkpoint directories checkpoint_<timestamp>; a snapshot file shares the prefix.
    for directory in sorted((p for p in Path(run_dir).glob("checkpoint_*") if p.is_dir()), reverse=True):
        try:
            state = json.loads((directory / STATE_FILE).read_text())
        except (OSError, ValueError):
            continue
        ds = directory / "ds"
        ranks = range(int(state.get("world_size", 0))) if state.get("config", {}).get("zero_stage", 2) else ()
        shards = [ds / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in ranks]
        if not any(ds.glob("*model_states.pt")) or not all(p.is_file() for p in shards):
            continue
        # The ranks' shards are equal parts of one optimizer state: one far smaller was cut short in its copy.
        sizes = [p.stat().st_size for p in shards]
        if not sizes or min(sizes) >= 0.99 * max(sizes):
            return directory
    return None


def check_capacity(workers: int, use_gpu: bool) -> None:
    """Refuse more workers than the cluster can place (one CPU, or one GPU, each)."""
    import ray

    resources = ray.cluster_resources()
    kind = "GPU" if use_gpu else "CPU"
    available = int(resources.get(kind, 0))
    if workers > available:
        raise ActorcastError(f"--workers {workers} is more than the cluster can place: it has {available} {kind}s, "
                             f"so use --workers {max(available, 1)} or fewer")


def check_inputs(cfg: TrainConfig, resume: bool, storage: Path) -> Path | None:
    """What the workers would find wrong, found on the driver before Ray starts: the data folder, the output
    folder and the run to resume (returned: its latest checkpoint, or None for a new run)."""
    from actorcast.models.data.video_folder import list_videos

    if cfg.data != "synthetic":
        list_videos(cfg.data)  # InputError: no such folder, or no video files in it
    out = Path(cfg.out_dir).resolve()
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        raise ActorcastError(f"--out {cfg.out_dir}: {existing} is a file; give a folder")
    if not os.access(existing, os.W_OK):
        raise ActorcastError(f"--out {cfg.out_dir}: {existing} cannot be written; choose another folder")
    resume_from = latest_complete_checkpoint(storage / RUN_NAME) if resume else None
    if resume and resume_from is None:
        raise ActorcastError(f"nothing to resume in {out}: no checkpoint under {storage}; start without --resume")
    if not resume and (storage / RUN_NAME).exists():
        raise ActorcastError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    return resume_from


def launch(cfg: TrainConfig, workers: int, resume: bool, address: str | None, storage: str | None = None) -> dict:
    """Run the data-parallel Ray Train workers and publish the final export to cfg.out_dir; returns final metrics.

    storage: where Ray Train keeps the run's checkpoints (default OUT/ray): a folder every node can reach."""
    from actorcast.cluster.ray_connect import ensure_ray

    out = Path(cfg.out_dir).resolve()
    storage_path = Path(storage).resolve() if storage else out / "ray"
    check_inputs(cfg, resume, storage_path)  # the checkpoint to resume is found again by the workers
    ensure_ray(address)  # before Ray is imported here: a local start sets Ray's loopback-only switch first
    import ray
    import ray.train
    from ray.util.queue import Queue
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    use_gpu = cfg.resolved_device() == "cuda" or (cfg.device == "auto" and
                                                  ray.cluster_resources().get("GPU", 0) >= 1)
    check_capacity(workers, use_gpu)
    # Workers do not run in the driver's working directory: hand them absolute paths.
    cfg = dataclasses.replace(cfg, out_dir=str(out), device="cuda" if use_gpu else "cpu",
                              weights=str(Path(cfg.weights).resolve()) if cfg.weights else "",
                              init=str(Path(cfg.init).resolve()) if cfg.init else "",
                              data=cfg.data if cfg.data == "synthetic" else str(Path(cfg.data).resolve()))
    # DataParallelTrainer rather than TorchTrainer: the workers join a process group whose store is bound to the
    # node address only (TorchTrainer's env:// rendezvous listens on every interface).
    # The progress queue lives on the driver's node: a lost worker node does not take it along.
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    progress = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})
    trainer = DataParallelTrainer(
        worker_loop, train_loop_config={"train": dataclasses.asdict(cfg), "progress": progress,
                                         "run_dir": str(storage_path / RUN_NAME)},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu, placement_strategy="SPREAD"),
        run_config=ray.train.RunConfig(name=RUN_NAME, storage_path=str(storage_path),
                                       failure_config=ray.train.FailureConfig(max_failures=3)))
    out.mkdir(parents=True, exist_ok=True)
    result = _fit_with_progress(trainer, progress, out, cfg.steps)
    if result.checkpoint is None:
        raise ActorcastError(f"training finished without a checkpoint; see the logs under {storage_path}")
    with result.checkpoint.as_directory() as directory:
        publish_export(directory, out)
    return dict(result.metrics or {})
