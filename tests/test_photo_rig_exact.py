"""The photo rig's fast per-frame warp (models/photo/rig.py `PhotoRig.render`, with models/photo/head.py: inverses
found in the mouth's frame, terms that are 0 skipped, each layer worked out only where it can show) draws the same
frames as the plain evaluation of the same warp, written out here as it reads: every layer's forward displacement
evaluated in pixels at every fixed-point step over its whole box."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from actorcast.models.data.params import N_PARAMS, PARAM_INDEX, PARAM_RANGES, neutral_params
from actorcast.models.photo.geometry import INNER_LOWER, INNER_UPPER, INVERSE_STEPS, on_curve, sample, smooth
from actorcast.models.photo.head import FACE_DEPTH, HAIR_DEPTH, HEAD_FEATHER, NOSE_DEPTH, NOSE_WIDTH
from actorcast.models.photo.reference import square_tensor, to_uint8
from actorcast.models.photo.rig import (
    BROW_GAIN,
    JAW_DROP,
    LIP_THIN,
    ROUND_GAIN,
    SMILE_GAIN,
    SPREAD_GAIN,
    UPPER_LIP_RISE,
    PhotoRig,
)
from tests.photo_rig_helpers import SIZE, astronaut_framing, astronaut_rig, poses


def _invert(target, offset):
    q = target - offset(target)
    for _ in range(INVERSE_STEPS - 1):
        q = target - offset(q)
    return q


def _mouth_offset(rig, p, prm, lower):
    s, t = rig.mouth.st(p)
    seam = on_curve(rig.seam, s)
    below = t - seam
    drop = JAW_DROP * prm[:, PARAM_INDEX["jaw_open"], None, None]
    if lower:
        depth = smooth(below / max(rig.chin_t - float(rig.seam[0]), 1e-3))
        core, fade = 0.15 + 0.6 * depth, 0.85 + 0.9 * depth
        lateral = 1 - smooth((s.abs() - core) / fade)
        under_chin = 1 - smooth((t - rig.chin_t) / 0.3)
        dt = drop * lateral * under_chin
    else:
        lateral = 1 - smooth((s.abs() - 0.15) / 0.85)
        over = on_curve(rig.upper_inner, s) - t
        dt = -UPPER_LIP_RISE * drop * lateral * (1 - smooth(over / 0.1))
    sides = 1 - smooth((s.abs() - 1.0) / 0.8)
    near = sides * (1 - smooth((below.abs() - 0.05) / 0.15))
    spread = prm[:, PARAM_INDEX["lip_spread"], None, None]
    rnd = prm[:, PARAM_INDEX["lip_round"], None, None]
    ds = (SPREAD_GAIN * spread - ROUND_GAIN * rnd) * s.clamp(-1, 1) * near
    edge, thick = rig.lip_edges[int(lower)]
    x = (below - edge) / thick
    grow = x.clamp(0, 1) - ((x - 1) / 1.5).clamp(0, 1)
    dt = dt - (LIP_THIN * thick) * spread * grow * sides
    dt = dt - SMILE_GAIN * prm[:, PARAM_INDEX["smile"], None, None] * s.clamp(-1, 1).square() * near
    return rig.mouth.offset(ds, dt)


def _brow_offset(rig, p, prm):
    raise_ = prm[:, PARAM_INDEX["brow_raise"], None, None]
    dt = torch.zeros_like(p[..., 0])
    s, t = rig.mouth.st(p)
    for centre, half in rig.brows:
        cs, ct = rig.mouth.st(centre)
        dist = torch.sqrt(((s - float(cs)) * (rig.mouth.s_unit / (1.6 * half))) ** 2 + ((t - float(ct)) / 0.12) ** 2)
        dt = dt - BROW_GAIN * raise_ * (1 - smooth(dist - 0.5))
    return rig.mouth.offset(torch.zeros_like(dt), dt)


def _head_weight(rig, q):
    (hx, hy), (hw, hh) = rig.head.head_centre.tolist(), rig.head.head_half.tolist()
    r = ((q[..., 0] - hx) / hw).square() + ((q[..., 1] - hy) / hh).square()
    return 1 - smooth((r.sqrt() - 1) / HEAD_FEATHER)


def _turn_offset(rig, q, motion):
    cos_y, sin_y, cos_p, sin_p = motion[:4]
    (fx, fy), (ax, ay) = rig.head.face_centre.tolist(), rig.head.face_half.tolist()
    x, y = q[..., 0] - fx, q[..., 1] - fy
    cap = (1 - (x / ax).square() - (y / ay).square()).clamp(min=0)
    nx, ny = rig.head.nose.tolist()
    nose = torch.exp(((q[..., 0] - nx).square() + (q[..., 1] - ny).square()) * (-0.5 / (NOSE_WIDTH * rig.height) ** 2))
    (hx, hy), (hw, hh) = rig.head.head_centre.tolist(), rig.head.head_half.tolist()
    skull = (1 - ((q[..., 0] - hx) / hw).square() - ((q[..., 1] - hy) / hh).square()).clamp(min=0)
    z = ax * (torch.maximum(FACE_DEPTH * cap * cap.sqrt(), HAIR_DEPTH * skull * skull.sqrt()) + NOSE_DEPTH * nose)
    turn_x = x * (cos_y - 1) + z * sin_y
    turn_y = y * (cos_p - 1) + (z * cos_y - x * sin_y) * sin_p
    return _head_weight(rig, q)[..., None] * torch.stack([turn_x, turn_y], -1)


def _head_inverse(rig, prm):
    n = prm.shape[0]
    motion = rig.head.motion(prm)
    *_, cos_r, sin_r, scale, dx, dy = motion
    grid = rig.head.head_grid[None]
    px, py = rig.head.pivot.tolist()
    gx, gy = grid[..., 0] - px, grid[..., 1] - py
    rx, ry = (gx - dx) / scale, (gy - dy) / scale
    unrolled = torch.stack([cos_r * rx + sin_r * ry - gx, -sin_r * rx + cos_r * ry - gy], -1)
    turned = grid + _head_weight(rig, grid)[..., None] * unrolled
    back = _invert(turned, lambda q: _turn_offset(rig, q, motion)) - grid
    rows, cols = rig.head.head_box
    size = (rows.stop - rows.start, cols.stop - cols.start)
    back = F.interpolate(back.permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=True)
    base = rig.pixels[None].expand(n, -1, -1, -1).clone()
    base[:, rows, cols] += back.permute(0, 2, 3, 1)
    return base


def _side(rig, q):
    s, t = rig.mouth.st(q)
    return ((t - on_curve(rig.seam, s)) * rig.height)[:, None]


@torch.no_grad()
def plain_render(rig: PhotoRig, params: torch.Tensor) -> torch.Tensor:
    """The rig's frames (B, 3, R, R), every layer evaluated plainly over its whole box."""
    prm = rig.relative(params.float())
    base = _head_inverse(rig, prm)
    rows, cols = rig.brow_box
    base[:, rows, cols] = _invert(base[:, rows, cols], lambda q: _brow_offset(rig, q, prm))
    plain = sample(rig.image, base)
    out = plain.clone()
    rig.eyes.draw(out, base, plain, prm)
    rows, cols = rig.mouth_box
    at, still = base[:, rows, cols], plain[:, :, rows, cols]
    q_up = _invert(at, lambda q: _mouth_offset(rig, q, prm, lower=False))
    q_lo = _invert(at, lambda q: _mouth_offset(rig, q, prm, lower=True))
    side_up, side_lo = _side(rig, q_up), _side(rig, q_lo)
    a_up = (0.5 - side_up).clamp(0, 1)
    a_lo = (0.5 + side_lo).clamp(0, 1)
    gap = (1 - a_up - a_lo).clamp(0, 1)
    mouth = a_up * sample(rig.image, q_up) + a_lo * sample(rig.image, q_lo)
    inside = torch.zeros_like(mouth)
    shown = gap.amax(dim=(0, 1)) > 0
    if shown.any():
        r, c = torch.nonzero(shown.any(1))[:, 0], torch.nonzero(shown.any(0))[:, 0]
        r, c = slice(int(r[0]), int(r[-1]) + 1), slice(int(c[0]), int(c[-1]) + 1)
        drop = JAW_DROP * prm[:, PARAM_INDEX["jaw_open"], None, None, None]
        inside[..., r, c] = rig.interior.draw(at[:, r, c], side_up[..., r, c], side_lo[..., r, c], drop)
    out[:, :, rows, cols] += mouth + gap * inside - still * (a_up + a_lo + gap)
    return out.clamp(0, 1)


def _motions() -> list[torch.Tensor]:
    """Each part alone over its range, a frame of speech with every mouth part moving, and random frames."""
    rows = [poses(jaw_open=[0.3, 0.6, 1.0]), poses(lip_spread=[-1.0, 0.5, 1.0]), poses(lip_round=[0.4, 1.0]),
            poses(smile=[-1.0, 0.6]), poses(brow_raise=[-1.0, 0.5, 1.0]), poses(blink_l=[0.5], blink_r=[1.0]),
            poses(gaze_x=[-1.0, 0.4], gaze_y=[0.5, -1.0]), poses(head_yaw=[-0.6, 0.1, 0.6], head_pitch=[0.5, -0.2, 0.0]),
            poses(head_roll=[0.5], head_x=[-0.2], head_y=[0.2], head_scale=[1.2]),
            poses(jaw_open=[0.7], lip_spread=[0.4], lip_round=[0.2], smile=[0.3], brow_raise=[0.5], head_yaw=[0.1])]
    g = torch.Generator().manual_seed(0)
    low, high = torch.tensor([r[0] for r in PARAM_RANGES]), torch.tensor([r[1] for r in PARAM_RANGES])
    rows.append(low + (high - low) * torch.rand(8, N_PARAMS, generator=g))
    return rows


def _shut(marks: np.ndarray) -> np.ndarray:
    """The same face with its lips shut (the inner lip lines 0.6 px apart): both teeth rows are painted."""
    m = marks.copy()
    middle = (m[list(INNER_UPPER)] + m[list(INNER_LOWER)]) / 2
    m[list(INNER_UPPER)], m[list(INNER_LOWER)] = middle - 0.3, middle + 0.3
    return m


@pytest.mark.parametrize("which", ["parted", "shut", "rest", "small"])
def test_the_fast_warp_draws_the_plain_warps_frames(which):
    """Within 2 uint8 levels anywhere in any frame (the two add the same terms in other orders), and the same
    parts moved: the photo's parted lips (its teeth rise with the upper lip), shut lips (both rows painted), a
    rest pose, and the photo framed smaller."""
    framing = astronaut_framing()
    if which == "parted":
        rig = astronaut_rig(framing)
        assert rig.parted
    elif which == "shut":
        rig = PhotoRig(square_tensor(framing.crop(), SIZE), _shut(framing.crop_landmarks(SIZE)))
        assert not rig.parted
    elif which == "rest":
        rest = neutral_params(1)[0]
        for name, value in (("jaw_open", 0.2), ("smile", 0.1), ("head_yaw", 0.1), ("blink_l", 0.3)):
            rest[PARAM_INDEX[name]] = value
        rig = PhotoRig(square_tensor(framing.crop(), SIZE), framing.crop_landmarks(SIZE), rest=rest)
    else:
        rig = PhotoRig(square_tensor(framing.crop(), 160), framing.crop_landmarks(160))
    for params in _motions():
        fast, plain = rig.render(params.clone()), plain_render(rig, params.clone())
        levels = np.abs(to_uint8(fast).astype(int) - to_uint8(plain).astype(int))
        assert levels.max() <= 2, (params, levels.max())
        assert (fast - plain).abs().mean() < 1e-4
