"""The per-frame motion parameter vector of the synthetic avatars, and the emotions.

One row per video frame, `N_PARAMS` floats, in this order. Units and ranges:

| index | name         | range        | meaning                                                        |
|-------|--------------|--------------|----------------------------------------------------------------|
| 0     | jaw_open     | [0, 1]       | 0 = mouth closed, 1 = widest open (vowel /a/)                  |
| 1     | lip_spread   | [-1, 1]      | +1 = spread lips (/i/), -1 = narrow                             |
| 2     | lip_round    | [0, 1]       | 1 = rounded, protruded lips (/u/, /o/)                          |
| 3     | smile        | [-1, 1]      | +1 = smile (mouth corners up), -1 = frown                       |
| 4     | brow_raise   | [0, 1]       | both brows up (surprise, accents)                               |
| 5     | brow_furrow  | [0, 1]       | brows down and together (anger)                                 |
| 6     | blink_l      | [0, 1]       | left eyelid closure, 1 = closed                                 |
| 7     | blink_r      | [0, 1]       | right eyelid closure, 1 = closed                                |
| 8     | gaze_x       | [-1, 1]      | iris offset, fraction of the eye's half width (+ = image right) |
| 9     | gaze_y       | [-1, 1]      | iris offset, fraction of the eye's half height (+ = down)       |
| 10    | head_yaw     | [-0.6, 0.6]  | radians, + = turns to image right                               |
| 11    | head_pitch   | [-0.5, 0.5]  | radians, + = nods down                                          |
| 12    | head_roll    | [-0.5, 0.5]  | radians, in-plane rotation, + = clockwise on screen             |
| 13    | head_x       | [-0.2, 0.2]  | translation, fraction of image width (+ = right)                |
| 14    | head_y       | [-0.2, 0.2]  | translation, fraction of image height (+ = down)                |
| 15    | head_scale   | [0.8, 1.2]   | multiplicative size of the head, 1 = neutral                    |
"""

import torch

from actorcast.models.errors import ConfigError

PARAM_NAMES: tuple[str, ...] = (
    "jaw_open", "lip_spread", "lip_round", "smile", "brow_raise", "brow_furrow",
    "blink_l", "blink_r", "gaze_x", "gaze_y",
    "head_yaw", "head_pitch", "head_roll", "head_x", "head_y", "head_scale",
)
N_PARAMS = len(PARAM_NAMES)
PARAM_INDEX: dict[str, int] = {name: i for i, name in enumerate(PARAM_NAMES)}

# (low, high) per parameter, in PARAM_NAMES order; generators clamp to these.
PARAM_RANGES: tuple[tuple[float, float], ...] = (
    (0.0, 1.0), (-1.0, 1.0), (0.0, 1.0), (-1.0, 1.0), (0.0, 1.0), (0.0, 1.0),
    (0.0, 1.0), (0.0, 1.0), (-1.0, 1.0), (-1.0, 1.0),
    (-0.6, 0.6), (-0.5, 0.5), (-0.5, 0.5), (-0.2, 0.2), (-0.2, 0.2), (0.8, 1.2),
)

EMOTIONS: tuple[str, ...] = ("neutral", "happy", "sad", "angry", "surprised")
EMOTION_INDEX: dict[str, int] = {name: i for i, name in enumerate(EMOTIONS)}


def emotion_index(name, error: type[Exception] = ConfigError) -> int:
    """The index of emotion `name` in EMOTIONS; `error` (the caller's kind: a bad setting or a bad request) with
    the valid names otherwise. The one place an emotion name is checked."""
    if not isinstance(name, str) or name not in EMOTION_INDEX:
        raise error(f"unknown emotion {name!r}; choose one of {', '.join(EMOTIONS)}")
    return EMOTION_INDEX[name]


def neutral_params(n_frames: int = 1) -> torch.Tensor:
    """A (n_frames, N_PARAMS) block of the neutral pose: everything 0, head_scale 1."""
    p = torch.zeros(n_frames, N_PARAMS)
    p[:, PARAM_INDEX["head_scale"]] = 1.0
    return p


def clamp_params(params: torch.Tensor) -> torch.Tensor:
    """Clamp a (..., N_PARAMS) tensor to PARAM_RANGES."""
    low = params.new_tensor([r[0] for r in PARAM_RANGES])
    high = params.new_tensor([r[1] for r in PARAM_RANGES])
    return torch.maximum(torch.minimum(params, high), low)
