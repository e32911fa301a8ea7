"""bench/portraits.py's check of the meter on each photo: how much of a known motion, drawn by the photo's own rig,
the meter reads back (`meter_check`).

The portraits' head and blink figures are the meter's reading of the rendered video. Where one misses, the rig may
not have drawn the motion, or the meter may not see it on that face. Here the rig draws a known motion alone, at
the size the renders use, with nothing else moving: a nod and a turn (a sine of NOD_RAD for NOD_FRAMES frames) and
a blink held shut, and the meter reads them:

- `pitch_gain`, `yaw_gain`: the meter's standard deviation of pitch (yaw), from the same rigid fit as the
  portraits' head figures, over the angle the motion asks for, times the photo's own `turn_gain` (1: the meter
  reads the nod as asked; the rig draws a turn at YAW_GAIN of it, because a warped turn reads less);
- `shut_eye_openness`: the meter's eye openness on the shut eye, a fraction of the open eye's (the portraits count
  a blink under 0.35).

The same three by the second reader, dlib's 68 landmarks (`pitch_gain_dlib`, `yaw_gain_dlib`,
`shut_eye_openness_dlib`: its head pose and eye aspect ratio, bench/portraits_measures.py), a reader trained on
other faces: where the two disagree on a face, at least one of them misreads it. (dlib reads the turn near YAW_GAIN,
the angle the warp draws, where the meter reads about 1.)
"""

import math
from pathlib import Path

import numpy as np

from bench.portraits_measures import dlib_head_pose, eye_aspect, head_pose
from bench.portraits_readers import read_dlib_points, read_meter

NOD_RAD = 0.1      # the sine's amplitude: head_pitch / head_yaw at the top of a nod or a turn
NOD_FRAMES = 100   # four seconds, two nods at 0.5 Hz
SHUT_FRAMES = 4    # frames of the shut eye, after as many of the open one


def meter_check(framing, tmp: Path) -> dict:
    """The meter's reading of a nod, a turn and a shut eye drawn by the rig of `framing`'s face (module docstring);
    a figure is None where the meter found no face in a frame it needs."""
    import torch

    from actorcast.actors.stages import DEFAULT_SIZE  # the renders' frame size
    from actorcast.models.data.params import PARAM_INDEX, neutral_params
    from actorcast.models.photo.reference import square_tensor, to_uint8
    from actorcast.models.photo.rig import PhotoRig

    rig = PhotoRig(square_tensor(framing.crop(), DEFAULT_SIZE), framing.crop_landmarks(DEFAULT_SIZE))
    wave = NOD_RAD * torch.sin(torch.arange(NOD_FRAMES) * (2 * math.pi * 0.5 / 25))
    out = {}
    for name, axis in (("head_pitch", 1), ("head_yaw", 0)):
        params = neutral_params(NOD_FRAMES)
        params[:, PARAM_INDEX[name]] = wave
        with torch.no_grad():
            frames = np.concatenate([to_uint8(rig.render(params[i:i + 25])) for i in range(0, NOD_FRAMES, 25)])
        reading, depth = read_meter(frames, tmp)
        asked = math.degrees(float(wave.std())) * rig.head.turn_gain
        key = "pitch_gain" if name == "head_pitch" else "yaw_gain"
        read = head_pose(reading.landmarks, depth)[:, axis]
        out[key] = _gain(read, asked)
        first = np.argmax(reading.found)
        read = dlib_head_pose(read_dlib_points(frames, tmp), reading.landmarks[first], depth[first])[:, axis]
        out[f"{key}_dlib"] = _gain(read, asked) if reading.found.any() else None
    params = neutral_params(2 * SHUT_FRAMES)
    params[SHUT_FRAMES:, PARAM_INDEX["blink_l"]] = 1.0
    params[SHUT_FRAMES:, PARAM_INDEX["blink_r"]] = 1.0
    with torch.no_grad():
        frames = to_uint8(rig.render(params))
    reading, _ = read_meter(frames, tmp)
    out["shut_eye_openness"] = _shut_over_open(reading.eye_open)
    out["shut_eye_openness_dlib"] = _shut_over_open(eye_aspect(read_dlib_points(frames, tmp)))
    out["eyes_drawn"] = rig.eyes_note is None
    return out


def _gain(read: np.ndarray, asked: float) -> float | None:
    """The standard deviation of an angle read (T,) degrees over the one asked; None if a frame went unread."""
    return round(float(np.std(read)) / asked, 2) if np.isfinite(read).all() else None


def _shut_over_open(eye: np.ndarray) -> float | None:
    """The median openness of the shut frames over the open ones' (SHUT_FRAMES each, open first)."""
    eye = np.asarray(eye, np.float64)
    opened, shut = np.median(eye[:SHUT_FRAMES]), np.median(eye[SHUT_FRAMES:])
    return round(float(shut / opened), 2) if np.isfinite([opened, shut]).all() else None
