"""The photo rig's shared geometry: Face Mesh's landmark indices and the check of a photo's landmarks, local frames
along a feature, curves fitted in them, pixel boxes, and sampling the photo. models/photo/rig.py (the head, brows
and mouth), models/photo/mouth.py (the open mouth's inside) and models/photo/eyes.py (lids and irises) build on it."""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from actorcast.models.errors import InputError

# Face Mesh landmark indices (mediapipe face_mesh, refine_landmarks: 478 points). "Right" is the subject's.
FOREHEAD_TOP, CHIN, NOSE_TIP = 10, 152, 1
MOUTH_CORNERS = (61, 291)                                        # outer corners, image left then right
INNER_UPPER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)  # inner lip line, upper lip, left to right
INNER_LOWER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)  # inner lip line, lower lip, left to right
OUTER_LIPS = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146)
EYES = (  # (image-left corner, image-right corner, upper lid, lower lid), image left eye (subject's right) first
    (33, 133, (246, 161, 160, 159, 158, 157, 173), (7, 163, 144, 145, 153, 154, 155)),
    (362, 263, (398, 384, 385, 386, 387, 388, 466), (382, 381, 380, 374, 373, 390, 249)),
)
BROWS = ((70, 63, 105, 66, 107, 46, 53, 52, 65, 55), (300, 293, 334, 296, 336, 276, 283, 282, 295, 285))
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148,
             176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)
IRISES = (468, 473)      # refined Face Mesh: the iris centres, each followed by its 4 ring points (the 1st and 3rd
                         # on the iris's horizontal diameter, the others clipped by the lids)
CHEEKS = (50, 280, 101, 330)  # Face Mesh points on the cheeks: the skin's luminance
N_LANDMARKS = 478
BOX_PAD = 0.15           # H around each layer's box: room for the head's motion (MAX_TURN, SHIFT_GAIN)
INVERSE_STEPS = 4        # fixed-point steps of each layer's inverse warp
MIN_MOUTH_WIDTH = 0.12   # H: a mouth seen narrower than this (a face in profile) is too turned to animate
MIN_EYE_WIDTH = 0.04     # H: the same for the narrower eye (frontal faces: mouth ~0.4 H, eyes ~0.2 H wide)


def smooth(x: torch.Tensor) -> torch.Tensor:
    """Smoothstep of x clamped to [0, 1]."""
    x = x.clamp(0.0, 1.0)
    return x * x * (3 - 2 * x)


def smooth_(x: torch.Tensor) -> torch.Tensor:
    """`smooth`, computed in place of x (a temporary the caller gives up): fewer passes over the pixels."""
    x = x.clamp_(0.0, 1.0)
    return (x * x).mul_(x.mul_(-2).add_(3))


def falloff(x: torch.Tensor, start: float, width: float) -> torch.Tensor:
    """1 - smooth((x - start) / width): 1 up to `start`, 0 from start + width (x is left as it is)."""
    return smooth_(x.mul(-1 / width).add_((start + width) / width))


@dataclass(frozen=True)
class Frame:
    """A local frame on the photo: origin, unit axes (s along, t across, + down the face), units in pixels."""

    origin: torch.Tensor   # (2,) px
    along: torch.Tensor    # (2,) unit vector
    down: torch.Tensor     # (2,) unit vector, `along` turned 90 degrees clockwise on screen
    s_unit: float          # px per s unit
    t_unit: float          # px per t unit

    @staticmethod
    def between(a: np.ndarray, b: np.ndarray, t_unit: float) -> "Frame":
        """The frame centred between points a and b (px), s = +-1 at them, t in units of t_unit px."""
        a, b = torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32)
        along = (b - a) / (b - a).norm()
        return Frame((a + b) / 2, along, torch.stack([-along[1], along[0]]), float((b - a).norm() / 2), t_unit)

    def __post_init__(self) -> None:  # the same as plain floats, for the per-pixel arithmetic (no tiny tensors)
        (ox, oy), (ax, ay), (dx, dy) = self.origin.tolist(), self.along.tolist(), self.down.tolist()
        object.__setattr__(self, "_floats", (ox, oy, ax, ay, dx, dy))

    def st(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Points (..., 2) px -> s, t (...)."""
        ox, oy, ax, ay, dx, dy = self._floats
        x, y = p[..., 0] - ox, p[..., 1] - oy
        return (x * ax + y * ay) / self.s_unit, (x * dx + y * dy) / self.t_unit

    def point(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """s, t (...) -> points (..., 2) px: the inverse of `st`."""
        ox, oy, ax, ay, dx, dy = self._floats
        s, t = s * self.s_unit, t * self.t_unit
        return torch.stack([(s * ax).add_(t, alpha=dx).add_(ox), (s * ay).add_(t, alpha=dy).add_(oy)], dim=-1)

    def offset(self, ds: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        """Displacements in s, t units (...) -> px (..., 2)."""
        _, _, ax, ay, dx, dy = self._floats
        ds, dt = ds * self.s_unit, dt * self.t_unit
        return torch.stack([ds * ax + dt * dx, ds * ay + dt * dy], dim=-1)


def curve(frame: Frame, points: np.ndarray) -> tuple[float, float, float]:
    """Least-squares quadratic t = c0 + c1 s + c2 s^2 through `points` (K, 2) px in `frame`: (c0, c1, c2).
    `on_curve` evaluates it with s clamped (flat past the ends, never a runaway parabola)."""
    s, t = frame.st(torch.as_tensor(points, dtype=torch.float32))
    a = torch.stack([torch.ones_like(s), s, s * s], dim=1)
    return tuple(torch.linalg.lstsq(a, t[:, None]).solution[:, 0].tolist())


def on_curve(coef: tuple[float, float, float], s: torch.Tensor, limit: float = 1.2) -> torch.Tensor:
    s = s.clamp(-limit, limit)
    return coef[0] + s * (coef[1] + coef[2] * s)


def sample(image: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """An image (1, 3, R, R) at points q (B, h, w, 2) px, bilinear: (B, 3, h, w)."""
    grid = q / image.shape[-1] * 2 - 1
    return F.grid_sample(image.expand(q.shape[0], -1, -1, -1), grid, mode="bilinear",
                         padding_mode="border", align_corners=False)


def mean_colour(image: torch.Tensor, points: np.ndarray) -> torch.Tensor:
    """Mean RGB (3,) of an image (1, 3, R, R) at `points` (K, 2) px."""
    grid = torch.as_tensor(points, dtype=torch.float32) / image.shape[-1] * 2 - 1  # (K, 2)
    return F.grid_sample(image, grid[None, None], align_corners=False)[0, :, 0].mean(1)


def span(lo: torch.Tensor, hi: torch.Tensor, pad: float, size: int) -> tuple[slice, slice]:
    """(rows, columns) of the pixels between corners lo and hi (x, y px), widened by `pad` px, in a size x size
    image."""
    lo, hi = (lo - pad).floor().int().clamp(0, size), (hi + pad).ceil().int().clamp(0, size)
    return slice(int(lo[1]), int(hi[1])), slice(int(lo[0]), int(hi[0]))


def box(frame: Frame, s_half: float, t_top: float, t_bottom: float, height: float, size: int) -> tuple[slice, slice]:
    """The pixel box around |s| <= s_half, t_top <= t <= t_bottom of `frame`, widened by BOX_PAD face heights
    (`height` px) and cut to the size x size image: where a layer's warp acts."""
    corners = torch.stack([frame.origin + frame.offset(torch.tensor(s), torch.tensor(t))
                           for s in (-s_half, s_half) for t in (t_top, t_bottom)])
    return span(corners.amin(0), corners.amax(0), BOX_PAD * height, size)


def check_landmarks(landmarks, size: int) -> np.ndarray:
    """(478, 2) finite Face Mesh points of a face of at least 8 px inside a size x size reference; InputError if not."""
    marks = np.asarray(landmarks, dtype=np.float32)
    if marks.shape != (N_LANDMARKS, 2) or not np.isfinite(marks).all():
        raise InputError(f"landmarks must be ({N_LANDMARKS}, 2) finite Face Mesh points, got {marks.shape}")
    height = float(np.linalg.norm(marks[CHIN] - marks[FOREHEAD_TOP]))
    if height < 8 or not (np.abs(marks - size / 2) < size).all():
        raise InputError("landmarks do not describe a face inside the reference: frame the photo first "
                         "(models.photo.framing.frame_reference)")
    mouth = float(np.linalg.norm(marks[MOUTH_CORNERS[1]] - marks[MOUTH_CORNERS[0]])) / height
    eyes = min(float(np.linalg.norm(marks[right] - marks[left])) for left, right, *_ in EYES) / height
    if mouth < MIN_MOUTH_WIDTH or eyes < MIN_EYE_WIDTH:
        raise InputError(f"the face is turned too far from the camera to animate (mouth {mouth:.2f}, narrower eye "
                         f"{eyes:.2f} of the face's height; at least {MIN_MOUTH_WIDTH} and {MIN_EYE_WIDTH}): "
                         "use a photo that faces the camera")
    return marks
