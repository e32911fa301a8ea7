"""Stage `free`: the free-motion model (models/free_motion.py) on the motion stage's clips, beside a trained
audio encoder that stays frozen.

It trains after the motion stage, on the same cached clip latents (models/training/motion_stage.py
`latent_cache`): the clips' true free parameters, their audio through the exported audio encoder (computed once
per rank), their emotion. Its export records which audio encoder it read, and loading refuses a pairing with
another one (actors/loading.py).
"""

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from actorcast.models.audio import AudioConfig, AudioEncoder
from actorcast.models.checkpoint import load_weights, save_weights
from actorcast.models.data.params import EMOTIONS, N_PARAMS
from actorcast.models.decoder import denormalise_params
from actorcast.models.errors import ConfigError, InputError
from actorcast.models.free_motion import (BLINK_ONSET, FREE_GROUPS, FREE_SLICE, LIDS, N_FREE, WARM_FRAMES,
                                          FreeMotion, FreeMotionConfig, FreeMotionStream, audio_encoder_digest,
                                          load_free_motion, neutral_free, quietness)
from actorcast.models.training.common import preset_defaults, write_summary
from actorcast.models.training.motion_measures import (blink_rates, blinks, lid_openness, motion_spread,
                                                       quiet_frames, silent_frames)
from actorcast.models.training.motion_stage import EVAL_CLIPS, encoder_latent_kind, latent_cache
from actorcast.models.timebase import SAMPLES_PER_FRAME

log = logging.getLogger(__name__)
FEATURE_BATCH = 16  # clips through the audio encoder at once
INPUT_DRIFT = 1.0  # FreeMotionConfig.input_drift of the models this stage trains (`drift_walk`)
TEMPERATURE_CLIPS = 192  # training clips the temperature is fitted on (in long streams: `steady_readings`)


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


@torch.no_grad()
def free_running(model: FreeMotion, data: dict, seed: int = 0) -> torch.Tensor:
    """Every clip's free parameters sampled from its audio alone, as a stream does (all clips as one batch):
    (N, T, N_FREE)."""
    return FreeMotionStream(model, len(data["x"]), seed).sample(data["audio"], data["emotion"])


BLINK_FRAMES = 12  # the longest blink profile, frames from the onset
BLINK_OPEN = 0.05  # a profile ends where the lids' mean closure is back under this


def blink_profile(x: torch.Tensor) -> torch.Tensor:
    """The data's mean blink: every blink in the true free parameters x (N, T, N_FREE), normalised, aligned at
    its onset (the first frame at BLINK_ONSET closure), averaged per lid over BLINK_FRAMES, and cut where the eyes
    are open again. (frames, 2) closures in [0, 1]; empty if the clips hold no whole blink."""
    closure = ((x[:, :, LIDS].double() + 1.0) / 2.0).numpy()                  # (N, T, 2)
    aligned = [clip[b.start:b.start + BLINK_FRAMES] for clip in closure
               for b in blinks(1.0 - clip.mean(-1), depth=BLINK_ONSET, open_level=1.0)
               if b.start + BLINK_FRAMES <= len(clip) and (b.start == 0 or clip[b.start - 1].mean() < BLINK_ONSET)]
    if not aligned:
        return torch.zeros(0, 2)
    mean = np.mean(aligned, axis=0)                                           # (BLINK_FRAMES, 2)
    peak = int(np.argmax(mean.mean(-1)))
    reopened = np.flatnonzero(mean[peak:].mean(-1) < BLINK_OPEN)
    end = peak + int(reopened[0]) if len(reopened) else BLINK_FRAMES
    return torch.from_numpy(mean[:end]).float()


TEMPERATURES = np.round(np.arange(0.3, 2.001, 0.05), 2)
STREAM_CLIPS = 12  # clips one after another in each long stream the temperature is fitted on (96 s of 8-s clips)
SETTLE_CLIPS = 4   # of them, the first ones, not scored: the drawing settles from the neutral pose


def long_streams(data: dict, stream_clips: int = STREAM_CLIPS) -> tuple[dict, torch.Tensor]:
    """Clips of `data` one after another in streams of `stream_clips` clips of one emotion (leftovers dropped):
    {'audio': (S, stream_clips * T, d_audio), 'emotion': (S,)}, and (S, stream_clips) the clips of each."""
    order = [idx[:len(idx) // stream_clips * stream_clips].reshape(-1, stream_clips)
             for e in data["emotion"].unique() for idx in [torch.nonzero(data["emotion"] == e)[:, 0]]]
    order = torch.cat(order)
    if not len(order):
        raise ConfigError(f"no emotion has {stream_clips} clips for a long stream: give more clips")
    audio = data["audio"][order]                                             # (S, clips, T, d)
    return {"audio": audio.reshape(len(order), -1, audio.shape[-1]), "emotion": data["emotion"][order[:, 0]]}, order


@torch.no_grad()
def steady_readings(model: FreeMotion, data: dict, stream_clips: int = STREAM_CLIPS,
                    settle_clips: int = SETTLE_CLIPS) -> dict:
    """`spread_and_blinks` of long free-running streams (`long_streams`) past their first `settle_clips` clips,
    each later stretch scored against the clip whose audio it was drawn for: the figures of a stream that has run
    for a minute, which is what a call or a long render shows, not of its first seconds from the neutral pose."""
    most = int(torch.bincount(data["emotion"]).max())  # fewer clips (a small run): shorter streams
    stream_clips, settle_clips = min(stream_clips, most), min(settle_clips, min(stream_clips, most) // 3)
    streams, order = long_streams(data, stream_clips)
    T = data["x"].shape[1]
    made = FreeMotionStream(model, len(order), 0).sample(streams["audio"], streams["emotion"])
    made = made.reshape(len(order), stream_clips, T, N_FREE)[:, settle_clips:].reshape(-1, T, N_FREE)
    scored = order[:, settle_clips:].reshape(-1)
    return spread_and_blinks(made.cpu(), data["x"][scored], data["pcm"][scored])


def _grid(model: FreeMotion, data: dict, stream_clips: int, settle_clips: int, values: np.ndarray,
          attribute: str) -> list[dict]:
    """`steady_readings` with the model's `attribute` ("temperature" or "idle_step") at each of `values`, every
    group at once; the model is left as it was."""
    saved = getattr(model, attribute)
    readings = []
    try:
        for v in values:
            setattr(model, attribute, (float(v),) * len(FREE_GROUPS))
            readings.append(steady_readings(model, data, stream_clips, settle_clips))
    finally:
        setattr(model, attribute, saved)
    return readings


def _best(readings: list[dict], values: np.ndarray, suffix: str) -> list[float]:
    """Per group, the value of the reading whose figure comes closest to the truth: the spread with `suffix` for
    brows, gaze and head; the blink rate for the lids."""
    best = []
    for g in FREE_GROUPS:
        if g == "blinks":  # the rate, relative to the data's (at least one a minute, so no blinks is no ratio)
            error = [abs(r["blinks_per_min"] - r["blinks_per_min_truth"]) / max(r["blinks_per_min_truth"], 1.0)
                     for r in readings]
        else:
            error = [abs(np.log(max(r[f"spread_{g}{suffix}"], 1e-6))) if np.isfinite(r[f"spread_{g}{suffix}"])
                     else np.inf for r in readings]
        best.append(float(values[int(np.argmin(error))]))
    return best


@torch.no_grad()
def fit_temperature(model: FreeMotion, data: dict, stream_clips: int = STREAM_CLIPS,
                    settle_clips: int = SETTLE_CLIPS) -> tuple[float, ...]:
    """Per group, the temperature (TEMPERATURES) whose free-running draws on training clips come closest to the
    truth, read on long streams once they have settled (`steady_readings`): for brows, gaze and head in spread (of
    the speech frames where the model tells silence apart, `voice_probe`; else speech and silence pooled), for the
    lids in blinks a minute. The model is left as it was.

    Why: drawn one frame at a time, a model whose per-frame spread is a little too wide wanders, and the head's
    drift adds up over seconds to twice the data's spread; a model whose blink component is a little too rare
    blinks half as often as the data. A per-group factor, fitted once at export, brings the whole-clip figures
    back. It does not make events: blinks, saccades and nods are the mixture's components, drawn as trained.
    Fitted on each clip's own first seconds instead, it narrowed gaze and head to 0.3 for the swing a stream
    makes as it leaves the neutral pose, and after a minute they froze."""
    suffix = "_speech" if model.voice_probe is not None else ""
    return tuple(_best(_grid(model, data, stream_clips, settle_clips, TEMPERATURES, "temperature"), TEMPERATURES,
                       suffix))


IDLE_STEPS = np.round(np.arange(0.05, 1.501, 0.05), 2)


@torch.no_grad()
def fit_idle_step(model: FreeMotion, data: dict, stream_clips: int = STREAM_CLIPS,
                  settle_clips: int = SETTLE_CLIPS) -> tuple[float, ...] | None:
    """Per group, the factor on the drawn steps in silence (IDLE_STEPS, `FreeMotion.idle_step`) whose free-running
    draws on training clips come closest to the data's spread on their silent frames, read as `fit_temperature`
    reads, at the model's temperature; the lids' is 1 (the data's blinks do not depend on the speech). None when
    the model has no `voice_probe`. The model is left as it was.

    Why: the data's brows and head move on the speech's accents and hardly at all in its pauses, and drawn as in
    speech the pauses moved 1.2-1.9 times as much. A factor on the whole step scales the mixture's pull back from
    a wandered draw as well as its spread (a silence temperature of 0.3, tried instead, did about as well)."""
    if model.voice_probe is None:
        return None
    step = _best(_grid(model, data, stream_clips, settle_clips, IDLE_STEPS, "idle_step"), IDLE_STEPS, "_idle")
    step[FREE_GROUPS.index("blinks")] = 1.0
    return tuple(step)


VOICE_MIN_QUIET = 0.02  # of the frames: fewer quiet ones than this and no voice probe is fitted
VOICE_HIDDEN = 32       # the voice probe's tanh layer
VOICE_STEPS = 600       # Adam steps of its fit, on batches of VOICE_BATCH frames
VOICE_BATCH = 4096


def fit_voice_probe(data: dict, seed: int = 0) -> dict[str, torch.Tensor] | None:
    """`FreeMotion.voice_probe`: a small network (models/free_motion.py `quietness`) fitted by logistic loss to
    tell a quiet frame (`quiet_frames` of the clip's audio, the measures' silence level) from its audio feature,
    over the clips of `data`; None when under VOICE_MIN_QUIET of their frames are quiet (nothing to tell apart).
    A linear read was too weak: it put 0.4 on the frames of the data's pauses and 0.07 on speech, and neither a
    silence step nor a silence temperature then brought the brows' pauses under 1.2 times the data's."""
    audio = data["audio"].float()
    N, T, d = audio.shape
    quiet = torch.from_numpy(np.stack([quiet_frames(a, T) for a in data["pcm"]])).float().reshape(-1)
    if quiet.mean() < VOICE_MIN_QUIET:
        log.info("free motion: %.1f %% of the clips' frames are quiet; no voice probe", 100 * float(quiet.mean()))
        return None
    gen = torch.Generator().manual_seed(seed)
    probe = {"w1": torch.randn(VOICE_HIDDEN, d, generator=gen) / np.sqrt(d), "b1": torch.zeros(VOICE_HIDDEN),
             "w2": torch.randn(VOICE_HIDDEN, generator=gen) / np.sqrt(VOICE_HIDDEN), "b2": torch.zeros(())}
    for v in probe.values():
        v.requires_grad_(True)
    frames = audio.reshape(-1, d)
    opt = torch.optim.Adam(list(probe.values()), lr=3e-3)
    with torch.enable_grad():
        for _ in range(VOICE_STEPS):
            idx = torch.randint(0, len(frames), (min(VOICE_BATCH, len(frames)),), generator=gen)
            p = quietness(probe, frames[idx]).clamp(1e-6, 1 - 1e-6)
            loss = F.binary_cross_entropy(p, quiet[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    probe = {k: v.detach() for k, v in probe.items()}
    read = quietness(probe, frames)
    log.info("free-motion voice probe: %.2f on quiet frames, %.2f on the rest (%.1f %% quiet)",
             float(read[quiet > 0].mean()), float(read[quiet == 0].mean()), 100 * float(quiet.mean()))
    return probe


def spread_and_blinks(made: torch.Tensor, truth: torch.Tensor, pcm: torch.Tensor) -> dict:
    """Spread per free group (models/training/motion_measures.py), pooled, in speech and in silence, and blinks a minute
    read off the lid parameters (an eye open to 1 - closure), of sampled against true free parameters
    (N, T, N_FREE), normalised."""
    def params(free: torch.Tensor) -> list[torch.Tensor]:
        full = torch.zeros(*free.shape[:2], N_PARAMS, dtype=free.dtype)
        full[:, :, FREE_SLICE] = free
        return list(denormalise_params(full))

    gen, true = params(made), params(truth)
    silent = [silent_frames(a, len(t)) for a, t in zip(pcm, true)]
    spread, idle = motion_spread(gen, true), motion_spread(gen, true, silent)
    speech = motion_spread(gen, true, [~m for m in silent])
    out = {f"spread_{g}": spread[g] for g in FREE_GROUPS}
    out.update({f"spread_{g}_idle": idle[g] for g in FREE_GROUPS})
    out.update({f"spread_{g}_speech": speech[g] for g in FREE_GROUPS})
    return {**out, "blinks_per_min": blink_rates([lid_openness(p) for p in gen]),
            "blinks_per_min_truth": blink_rates([lid_openness(p) for p in true])}


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
        temperature, idle = fit_drawing(module.model, free_clips(cfg, 0, 1, n_clips=min(TEMPERATURE_CLIPS, cfg.clips)))
        metrics.update({f"temperature_{g}": t for g, t in zip(FREE_GROUPS, temperature)})
        metrics.update({f"idle_step_{g}": t for g, t in zip(FREE_GROUPS, idle or ())})
        metrics["blink_profile_frames"] = len(module.model.blink_profile)
        metrics.update({f"calibrated_{k}": v for k, v in FreeStage.evaluate(module, cfg).items()})
        save_weights(directory, "free_motion", module.model, module.config, _meta(cfg, module.model))
        write_summary(directory, cfg, metrics)


def start_poses(x: torch.Tensor, emotion: torch.Tensor) -> torch.Tensor:
    """(len(EMOTIONS) + 1, N_FREE) per emotion, then for "no emotion", where a stream starts (`FreeMotion.start_pose`):
    the median first frame of the training clips x (N, T, N_FREE) of that emotion, with the eyes open; the neutral
    pose for an emotion without clips and for none given."""
    poses = neutral_free().expand(len(EMOTIONS) + 1, N_FREE).clone()
    for e in range(len(EMOTIONS)):
        if (emotion == e).any():
            poses[e] = x[emotion == e][:, 0].median(0).values
    poses[:, LIDS] = neutral_free()[LIDS]
    return poses


def start_motions(x: torch.Tensor, emotion: torch.Tensor, poses: torch.Tensor) -> torch.Tensor:
    """`FreeMotion.start_motion` (len(EMOTIONS) + 1, WARM_FRAMES, N_FREE): per emotion, the first WARM_FRAMES frames
    of the training clip x (N, T, N_FREE) of that emotion whose first frame is nearest its start pose (`poses`,
    `start_poses`), a clip shorter than that led in by its first frame held; for "no emotion", the neutral one's;
    zeros for an emotion without clips."""
    out = torch.zeros(len(EMOTIONS) + 1, WARM_FRAMES, N_FREE)
    for e in range(len(EMOTIONS)):
        clips = torch.nonzero(emotion == e)[:, 0]
        if not len(clips):
            continue
        keep = [i for i in range(N_FREE) if i not in range(LIDS.start, LIDS.stop)]
        best = clips[(x[clips, 0][:, keep] - poses[e, keep]).square().sum(-1).argmin()]
        clip = x[best, :WARM_FRAMES]
        out[e] = torch.cat((clip[:1].expand(WARM_FRAMES - len(clip), N_FREE), clip))
    out[len(EMOTIONS)] = out[EMOTIONS.index("neutral")]
    return out


def rest_audio(data: dict) -> torch.Tensor:
    """`FreeMotion.rest_audio` (d_audio,): the mean audio feature of the quiet frames (`quiet_frames`) of `data`'s
    clips (of all frames if none is quiet)."""
    audio = data["audio"].float()
    quiet = torch.from_numpy(np.stack([quiet_frames(a, audio.shape[1]) for a in data["pcm"]]))
    return audio[quiet].mean(0) if quiet.any() else audio.reshape(-1, audio.shape[-1]).mean(0)


def fit_drawing(model: FreeMotion, data: dict) -> tuple[tuple[float, ...], tuple[float, ...] | None]:
    """Set what the export fits on training clips `data`, in order: the blink profile (from the data alone), the
    start pose and start motion per emotion, the quiet frames' audio feature and the voice probe, then the
    temperature (drawn with them: the profile shapes every blink), then the step in silence, then the temperature
    again. Returns the temperature and the silence step."""
    model.blink_profile = blink_profile(data["x"])
    model.start_pose = start_poses(data["x"], data["emotion"])
    model.start_motion.copy_(start_motions(data["x"], data["emotion"], model.start_pose))
    model.rest_audio.copy_(rest_audio(data))
    model.voice_probe = fit_voice_probe(data)
    log.info("free-motion blink profile (%d frames): %s", len(model.blink_profile),
             model.blink_profile.mean(-1).round(decimals=2).tolist())
    model.idle_step = None
    model.temperature = fit_temperature(model, data)
    model.idle_step = fit_idle_step(model, data)
    if model.idle_step is not None:  # again with the pauses' step in place: it also damps a word's gap
        model.temperature = fit_temperature(model, data)
    log.info("free-motion per group %s: temperature %s, step in silence %s", FREE_GROUPS, model.temperature,
             model.idle_step)
    return model.temperature, model.idle_step


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


def refit_temperature(directory: Path, clips: int = TEMPERATURE_CLIPS) -> tuple[tuple[float, ...],
                                                                                 tuple[float, ...] | None]:
    """Fit the blink profile, the start poses, the voice probe, the temperature and the silence step of the free-motion model exported in `directory`
    again (on the training clips of its `free_train.json`, cached under that run's folder) and write them into its
    header."""
    from actorcast.models.training.train import TrainConfig

    directory = Path(directory)
    summary = directory / "free_train.json"
    if not summary.is_file() or not (directory / "free_motion.safetensors").is_file():
        raise ConfigError(f"{directory} holds no free_motion export with its free_train.json: give the folder "
                          "of a free-stage run (or the shipped weights)")
    cfg = TrainConfig(**{**json.loads(summary.read_text())["config"], "weights": str(directory)})
    model = load_free_motion(directory)
    temperatures = fit_drawing(model, free_clips(cfg, 0, 1, n_clips=min(clips, cfg.clips)))
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
    args = parser.parse_args(argv)
    try:
        if args.clips < 2:
            raise ConfigError(f"--clips {args.clips}: give at least 2")
        temperature, idle = refit_temperature(args.directory, args.clips)
    except (ConfigError, InputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"temperature": dict(zip(FREE_GROUPS, temperature)),
                      "idle_step": None if idle is None else dict(zip(FREE_GROUPS, idle))}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


