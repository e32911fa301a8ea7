"""Stage `free`: the free-motion model (models/free_motion.py) on the motion stage's clips, beside a trained
audio encoder that stays frozen.

It trains after the motion stage, on the same cached clip latents (models/training/motion_stage.py
`latent_cache`): the clips' true free parameters, their audio through the exported audio encoder (computed once
per rank), their emotion. Its export records which audio encoder it read, and loading refuses a pairing with
another one (actors/loading.py).
"""

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn as nn

from actorcast.models.audio import AudioConfig, AudioEncoder
from actorcast.models.checkpoint import load_weights, save_weights
from actorcast.models.errors import ConfigError, InputError
from actorcast.models.free_motion import (FREE_GROUPS, FREE_SLICE, LIDS, FreeMotion, FreeMotionConfig,
                                          audio_encoder_digest, load_free_motion)
from actorcast.models.training.common import preset_defaults, write_summary
from actorcast.models.training.free_drawing import fit_drawing, free_running, spread_and_blinks
from actorcast.models.training.motion_stage import EVAL_CLIPS, encoder_latent_kind, latent_cache
from actorcast.models.timebase import SAMPLES_PER_FRAME

log = logging.getLogger(__name__)
FEATURE_BATCH = 16  # clips through the audio encoder at once
INPUT_DRIFT = 1.0  # FreeMotionConfig.input_drift of the models this stage trains (`drift_walk`)
TEMPERATURE_CLIPS = 192  # training clips the export fits how the model draws on (free_drawing.py `fit_drawing`)


@torch.no_grad()
def clip_features(weights: str, pcm: torch.Tensor) -> torch.Tensor:
    """(N, T*640) clip audio -> (N, T, d_audio) features of the audio encoder exported in `weights`."""
    audio, _ = load_weights(weights, "audio_encoder", AudioConfig, AudioEncoder)
    audio.eval()
    n_frames = pcm.shape[1] // SAMPLES_PER_FRAME
    return torch.cat([audio(pcm[i:i + FEATURE_BATCH])[:, :n_frames] for i in range(0, len(pcm), FEATURE_BATCH)])


def free_clips(cfg, rank: int, world_size: int, split: str = "train", n_clips: int | None = None) -> dict:
    """This rank's clips as the free stage reads them: {'x': (N, T, N_FREE), 'audio': (N, T, d_audio),
    'emotion': (N,), 'pcm': (N, T*640)}."""
    data = latent_cache(cfg, rank, world_size, split, n_clips)
    log.info("audio features of %d %s clips", len(data["pcm"]), split)
    return {"x": data["z"][:, :, FREE_SLICE].float(), "audio": clip_features(cfg.weights, data["pcm"]),
            "emotion": data["emotion"], "pcm": data["pcm"]}


def windows(data: dict, rng: np.random.Generator, n: int, frames: int, drift: torch.Tensor | None = None) -> dict:
    """n random windows of `frames` frames (a quarter of them from a clip's first frame, where a stream starts).
    With `drift` (N_FREE,), each window also gets a `drift_walk` of that scale per parameter for its inputs."""
    total = data["x"].shape[1]
    frames = min(frames, total)
    clips = rng.integers(0, len(data["x"]), n)
    starts = np.where(rng.random(n) < 0.25, 0, rng.integers(0, total - frames + 1, n))
    batch = {"x": torch.stack([data["x"][c, s:s + frames] for c, s in zip(clips, starts)]),
             "audio": torch.stack([data["audio"][c, s:s + frames] for c, s in zip(clips, starts)]),
             "emotion": data["emotion"][clips]}
    if drift is not None:
        batch["drift"] = drift_walk(rng, n, frames, drift)
    return batch


def drift_walk(rng: np.random.Generator, n: int, frames: int, scale: torch.Tensor) -> torch.Tensor:
    """(n, frames, N_FREE) slow random walks, one per window, to add to the inputs the model reads in training
    (`FreeMotion.nll`): a Brownian path from 0 that reaches a spread of `scale` per parameter by the window's end,
    times a factor drawn per window in [0, 1), so that some windows wander far and some hardly at all. A walk, not
    frame-by-frame noise: the model must learn to pull back a draw that has slowly wandered off, the way a long
    stream drifts, and cannot average the error out over a few frames."""
    steps = torch.from_numpy(rng.standard_normal((n, frames, len(scale)))).float()
    walk = steps.cumsum(1) / np.sqrt(frames)
    return walk * scale * torch.from_numpy(rng.random((n, 1, 1))).float()


def drift_scale(x: torch.Tensor, input_drift: float) -> torch.Tensor:
    """(N_FREE,) the walk's scale per parameter: `input_drift` times each parameter's spread over the training
    clips x (N, T, N_FREE); none on the lids, whose blinks the model starts from an open eye."""
    scale = x.reshape(-1, x.shape[-1]).std(0) * input_drift
    scale[LIDS] = 0.0
    return scale


class FreeMotionTrainer(nn.Module):
    """The free-motion model with its likelihood loss."""

    def __init__(self, config: FreeMotionConfig):
        super().__init__()
        self.config = config
        self.model = FreeMotion(config)

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        return self.model.nll(batch["x"], batch["audio"], batch["emotion"], batch.get("drift")), {}


class FreeStage:
    """Stage 3 of docs/ARCHITECTURE.md "Training": the free motion, after the motion stage."""

    # One model size for every preset: what it learns (rates and spreads of 12 parameters) does not grow with the
    # face's resolution. Windows of 6.4 s hold one or two blinks and several gaze saccades each.
    DEFAULTS = {name: {"steps": 3000, "batch_size": 32, "lr": 2e-3, "checkpoint_every": 500, "window_frames": 160}
                for name in ("tiny", "base", "large")}

    @staticmethod
    def defaults(preset: str) -> dict:
        """TrainConfig steps, batch_size, lr, checkpoint_every and window_frames for `preset`."""
        return preset_defaults(FreeStage.DEFAULTS, preset)

    @staticmethod
    def check(cfg) -> None:
        if not cfg.weights:
            raise ConfigError("the free stage needs --weights DIR with a trained decoder and motion export "
                              "(e.g. the shipped models/weights/tiny)")
        for name in ("motion_encoder", "audio_encoder"):
            if not (Path(cfg.weights) / f"{name}.safetensors").is_file():
                raise ConfigError(f"--weights {cfg.weights} holds no {name}.safetensors; give a directory with a "
                                  "decoder-stage and a motion-stage export")
        if encoder_latent_kind(cfg.weights) != "params":
            raise ConfigError(f"--weights {cfg.weights}: the free motion needs a decoder trained on the motion "
                              "parameters (`train --stage decoder --latent params`)")
        if cfg.data != "synthetic" or cfg.init:
            raise ConfigError("the free stage trains from scratch on the synthetic data set; drop --data and --init")

    @staticmethod
    def build(cfg) -> nn.Module:
        return FreeMotionTrainer(FreeMotionConfig(input_drift=INPUT_DRIFT))

    @staticmethod
    def batches(cfg, rank: int, world_size: int, start_step: int) -> Iterator[dict]:
        data = free_clips(cfg, rank, world_size)
        scale = drift_scale(data["x"], INPUT_DRIFT) if INPUT_DRIFT > 0 else None
        for step in range(start_step + 1, 10 ** 12):
            yield windows(data, np.random.default_rng([cfg.seed, rank, step]), cfg.batch_size, cfg.window_frames,
                          scale)

    @staticmethod
    @torch.no_grad()
    def evaluate(module: nn.Module, cfg) -> dict:
        """Held-out likelihood, and each group's spread and the blink rate of free-running samples (parameter
        space, against the same clips' truth): what the checkpoints are compared by."""
        data = free_clips(cfg, 0, 1, split="heldout", n_clips=EVAL_CLIPS)
        batch = windows(data, np.random.default_rng(3), 2 * EVAL_CLIPS, cfg.window_frames)
        device = next(module.parameters()).device
        nll = float(module({k: v.to(device) for k, v in batch.items()})[0])
        made = free_running(module.model, {k: v.to(device) for k, v in data.items()})
        return {"eval_nll": nll, **spread_and_blinks(made.cpu(), data["x"], data["pcm"])}

    @staticmethod
    def export(module: nn.Module, directory: Path, cfg, metrics: dict) -> None:
        temperature, idle = fit_drawing(module.model, fit_clips(cfg, TEMPERATURE_CLIPS))
        metrics.update({f"temperature_{g}": t for g, t in zip(FREE_GROUPS, temperature)})
        metrics.update({f"idle_step_{g}": t for g, t in zip(FREE_GROUPS, idle or ())})
        metrics["blink_profile_frames"] = len(module.model.blink_profile)
        metrics.update({f"calibrated_{k}": v for k, v in FreeStage.evaluate(module, cfg).items()})
        save_weights(directory, "free_motion", module.model, module.config, _meta(cfg, module.model))
        write_summary(directory, cfg, metrics)


def _meta(cfg, model: FreeMotion) -> dict:
    return {"preset": cfg.preset, "audio_encoder": audio_encoder_digest(cfg.weights),
            "temperature": list(model.temperature), "blink_profile": model.blink_profile.tolist(),
            "idle_step": None if model.idle_step is None else list(model.idle_step),
            "voice_probe": None if model.voice_probe is None else {k: _short(v.tolist())
                                                                   for k, v in model.voice_probe.items()},
            "start_pose": model.start_pose.tolist()}


def _short(values):
    """Nested lists of float32 values with the 9 significant digits that give each back exactly (the header's
    JSON is a third of the size of Python's float repr)."""
    return [_short(v) for v in values] if isinstance(values, list) else float(f"{values:.9g}")


def fit_clips(cfg, clips: int) -> dict:
    """`free_clips` of min(clips, cfg.clips) training clips of the run `cfg`, each `cfg.fit_seconds` long: what the
    drawing is fitted on. A spread is read about each clip's own mean, so where the motion drifts slowly it grows
    with the clip's length, the data's faster than the draws' (docs/ARCHITECTURE.md "Free motion"): the fit's
    clips are as long as the eval's."""
    return free_clips(dataclasses.replace(cfg, clip_seconds=cfg.fit_seconds), 0, 1, n_clips=min(clips, cfg.clips))


def refit_temperature(directory: Path, clips: int = TEMPERATURE_CLIPS,
                      seconds: float | None = None) -> tuple[tuple[float, ...], tuple[float, ...] | None]:
    """Fit how the free-motion model exported in `directory` draws (`fit_drawing`: blink profile, start pose and
    motion, voice probe, temperature, step in silence) again, on the training clips of its `free_train.json`,
    `seconds` long (None: the run's `fit_seconds`; cached under that run's folder), and write it into its export."""
    from actorcast.models.training.train import TrainConfig

    directory = Path(directory)
    summary = directory / "free_train.json"
    if not summary.is_file() or not (directory / "free_motion.safetensors").is_file():
        raise ConfigError(f"{directory} holds no free_motion export with its free_train.json: give the folder "
                          "of a free-stage run (or the shipped weights)")
    cfg = TrainConfig(**{**json.loads(summary.read_text())["config"], "weights": str(directory)})
    if seconds is not None:
        cfg = dataclasses.replace(cfg, fit_seconds=seconds)
    model = load_free_motion(directory)
    temperatures = fit_drawing(model, fit_clips(cfg, clips))
    save_weights(directory, "free_motion", model, model.config, _meta(cfg, model))
    return temperatures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m actorcast.models.training.free_stage",
        description="Fit the blink profile, the start pose per emotion, the voice probe, the per-group "
                    "temperature and the per-group step in silence of an exported "
                    "free-motion model again (on training clips) and write them into DIR/free_motion.json; "
                    "`actorcast train --stage free` does this itself at export.")
    parser.add_argument("directory", type=Path, help="weights directory with free_motion, audio_encoder, "
                                                      "motion_encoder and free_train.json")
    parser.add_argument("--clips", type=int, default=TEMPERATURE_CLIPS,
                        help=f"training clips to fit on (default {TEMPERATURE_CLIPS})")
    parser.add_argument("--seconds", type=float, default=None,
                        help="their length in seconds (default: the run's fit_seconds, 10 unless set, the eval's "
                             "clip length: spreads are read about each clip's mean, so they depend on it)")
    args = parser.parse_args(argv)
    try:
        if args.clips < 2:
            raise ConfigError(f"--clips {args.clips}: give at least 2")
        if args.seconds is not None and not 1.0 <= args.seconds <= 60.0:
            raise ConfigError(f"--seconds {args.seconds:g}: give a clip length of 1 to 60 s")
        temperature, idle = refit_temperature(args.directory, args.clips, args.seconds)
    except (ConfigError, InputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"temperature": dict(zip(FREE_GROUPS, temperature)),
                      "idle_step": None if idle is None else dict(zip(FREE_GROUPS, idle))}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


