"""How much of the data's motion a generator reproduces: spread per motion group, blink rate, in speech and silence.

Lip-sync says whether the mouth follows the audio; it says nothing of the motion the audio does not determine
(blinks, gaze, head, brows), which a few-step sampler that regresses to the mean averages away. These measures
compare the generated motion with the true motion of the same held-out clips:

- `motion_spread[group]`: the generated parameters' spread over the true parameters', per group of
  `MOTION_GROUPS`. Both are normalised to [-1, 1] per parameter (models/decoder.py `normalise_params`), centred
  per clip (a steady offset is not motion), and pooled over the group's parameters and the clips:
  sqrt(sum of squares generated / sum of squares true). 1 = the data's spread, < 1 = too still.
- `blinks_per_min`: blinks counted the same way (`count_blinks`) on the meter's eye openness of generated and of
  ground-truth frames, so the figure is what a viewer sees, beside `blinks_per_min_ground_truth`.
- the same on the clips' silent stretches (`silent_frames`), with the suffix `_idle`: silence must not freeze.
"""

from dataclasses import dataclass

import numpy as np
import torch

from actorcast.models.data.params import PARAM_INDEX
from actorcast.models.decoder import normalise_params
from actorcast.models.timebase import FPS, SAMPLES_PER_FRAME

MOTION_GROUPS: dict[str, tuple[str, ...]] = {
    "jaw": ("jaw_open",),
    "lips": ("lip_spread", "lip_round"),
    "brows": ("brow_raise", "brow_furrow"),
    "blinks": ("blink_l", "blink_r"),
    "gaze": ("gaze_x", "gaze_y"),
    "head": ("head_yaw", "head_pitch", "head_roll", "head_x", "head_y", "head_scale"),
}
SILENCE_LEVEL = 0.03      # a frame is silent when its RMS is under this fraction of the clip's p95 frame RMS
SILENCE_MIN_FRAMES = 10   # only runs of at least 0.4 s count as silence (not the gap inside a word)
BLINK_DEPTH = 0.5         # a blink: the eye openness falls under half of the clip's open level (its median)


@dataclass(frozen=True)
class Blink:
    """One blink: frames [start, end) under the depth that defines it; `bottom`, the lowest openness in them as a
    fraction of the open level (0.1: the eye closed to a tenth of its open gap)."""

    start: int
    end: int
    bottom: float


def quiet_frames(audio: torch.Tensor | np.ndarray, n_frames: int) -> np.ndarray:
    """(n_frames,) bool: the frames of 16 kHz `audio` whose RMS is under SILENCE_LEVEL of the clip's p95 frame RMS
    (a word's gap too)."""
    pcm = np.asarray(audio, np.float64)[: n_frames * SAMPLES_PER_FRAME]
    pcm = np.pad(pcm, (0, n_frames * SAMPLES_PER_FRAME - len(pcm)))
    rms = np.sqrt((pcm.reshape(n_frames, SAMPLES_PER_FRAME) ** 2).mean(1))
    return rms <= SILENCE_LEVEL * max(np.percentile(rms, 95), 1e-9)


def silent_frames(audio: torch.Tensor | np.ndarray, n_frames: int) -> np.ndarray:
    """(n_frames,) bool: the frames of 16 kHz `audio` inside a silent run of at least SILENCE_MIN_FRAMES."""
    quiet = quiet_frames(audio, n_frames)
    mask = np.zeros(n_frames, bool)
    for start, end in _runs(quiet):
        if end - start >= SILENCE_MIN_FRAMES:
            mask[start:end] = True
    return mask


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of every run of True in a 1-D bool array."""
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def motion_spread(generated: list[torch.Tensor], truth: list[torch.Tensor],
                  masks: list[np.ndarray] | None = None) -> dict[str, float]:
    """Spread ratio per group of MOTION_GROUPS (module docstring) over clips of (T, N_PARAMS) parameters; `masks`
    (T,) bool keep only some frames of each clip (at least 2 of a clip, else the clip is left out)."""
    sums = {group: [0.0, 0.0] for group in MOTION_GROUPS}
    for i, (gen, true) in enumerate(zip(generated, truth, strict=True)):
        gen, true = normalise_params(gen.double()), normalise_params(true.double())
        if masks is not None:
            keep = torch.from_numpy(np.asarray(masks[i], bool))
            if keep.sum() < 2:
                continue
            gen, true = gen[keep], true[keep]
        gen, true = gen - gen.mean(0), true - true.mean(0)
        for group, names in MOTION_GROUPS.items():
            idx = [PARAM_INDEX[n] for n in names]
            sums[group][0] += float(gen[:, idx].square().sum())
            sums[group][1] += float(true[:, idx].square().sum())
    return {group: float(np.sqrt(g / t)) if t > 0 else float("nan") for group, (g, t) in sums.items()}


def blinks(eye_open: np.ndarray, depth: float = BLINK_DEPTH, open_level: float | None = None) -> list[Blink]:
    """Every blink in an eye-openness series (NaN where no face was read), in order.

    The open level is `open_level`, or else the series' median; a blink is a run of frames under `depth` of it,
    and two runs one frame apart are one blink (a reading that flickers at the bottom). Under 3 finite frames:
    no blinks."""
    eye = np.asarray(eye_open, np.float64)
    finite = np.isfinite(eye)
    if finite.sum() < 3:
        return []
    level = float(np.median(eye[finite])) if open_level is None else float(open_level)
    closed = np.where(finite, eye < depth * level, False)
    spans: list[list[int]] = []
    for start, end in _runs(closed):
        if spans and start - spans[-1][1] <= 1:
            spans[-1][1] = end
        else:
            spans.append([start, end])
    return [Blink(int(start), int(end), float(np.nanmin(eye[start:end])) / level) for start, end in spans]


def blink_onsets(eye_open: np.ndarray) -> np.ndarray:
    """Frame indices where a blink starts in an eye-openness series (NaN where no face was read): `blinks` at
    BLINK_DEPTH of the series' median."""
    return np.asarray([b.start for b in blinks(eye_open)], int)


def count_blinks(eye_open: np.ndarray, mask: np.ndarray | None = None) -> int:
    """Blinks in an eye-openness series; with `mask`, only those that start in a masked frame."""
    onsets = blink_onsets(eye_open)
    return int(len(onsets) if mask is None else np.asarray(mask, bool)[onsets].sum())


def blink_rates(eyes: list[np.ndarray], masks: list[np.ndarray] | None = None) -> float:
    """Blinks a minute over clips of eye-openness series, in all frames or (with masks) in the masked ones."""
    blinks = sum(count_blinks(e, None if masks is None else m) for e, m in zip(eyes, masks or [None] * len(eyes)))
    frames = sum(len(e) for e in eyes) if masks is None else sum(int(np.sum(m)) for m in masks)
    return 60.0 * FPS * blinks / frames if frames else float("nan")


def lid_openness(params: torch.Tensor) -> np.ndarray:
    """(T,) how open the eyes are by the parameters alone (1 - the mean of the two lids' closure)."""
    return 1.0 - params[:, [PARAM_INDEX["blink_l"], PARAM_INDEX["blink_r"]]].double().mean(1).numpy()


def motion_scores(generated: list[torch.Tensor], truth: list[torch.Tensor], audio: list[torch.Tensor],
                  eyes_model: list[np.ndarray], eyes_truth: list[np.ndarray]) -> dict:
    """Every measure of the module docstring over clips: generated and true parameters (T, N_PARAMS), the clips'
    audio, and the meter's eye openness (T,) of the generated and of the ground-truth frames of the first
    len(eyes_model) clips (decoding and reading frames costs far more than generating parameters, so the spreads
    may pool more clips than the meter reads). `blinks_per_min_params`: blinks counted on the lid parameters
    of every clip, beside the truth's."""
    silent = [silent_frames(a, len(t)) for a, t in zip(audio, truth)]
    read = silent[:len(eyes_model)]
    return {"motion_spread": motion_spread(generated, truth),
            "motion_spread_idle": motion_spread(generated, truth, silent),
            "motion_clips": len(generated),
            "blinks_per_min": blink_rates(eyes_model), "blinks_per_min_ground_truth": blink_rates(eyes_truth),
            "blinks_per_min_idle": blink_rates(eyes_model, read),
            "blinks_per_min_idle_ground_truth": blink_rates(eyes_truth, read),
            "blinks_per_min_params": blink_rates([lid_openness(g) for g in generated]),
            "blinks_per_min_params_ground_truth": blink_rates([lid_openness(t) for t in truth]),
            "idle_seconds": sum(int(s.sum()) for s in silent) / FPS}
