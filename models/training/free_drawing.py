"""How the free-motion model draws (models/free_motion.py), fitted on training clips at export: the data's mean
blink, the start pose and motion per emotion, the quiet frames' audio and the voice probe, the per-group
temperature and the per-group step in silence (`fit_drawing`, docs/ARCHITECTURE.md "Free motion"). The stage that
trains the model and calls this is models/training/free_stage.py.
"""

import logging

import numpy as np
import torch
import torch.nn.functional as F

from actorcast.models.data.params import EMOTIONS, N_PARAMS
from actorcast.models.decoder import denormalise_params
from actorcast.models.errors import ConfigError
from actorcast.models.free_motion import (BLINK_ONSET, FREE_GROUPS, FREE_SLICE, LIDS, N_FREE, WARM_FRAMES,
                                          FreeMotion, FreeMotionStream, neutral_free, quietness)
from actorcast.models.training.motion_measures import (blink_rates, blinks, lid_openness, motion_spread,
                                                       quiet_frames, silent_frames)

log = logging.getLogger(__name__)

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
