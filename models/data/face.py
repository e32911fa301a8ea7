"""Vectorised, anti-aliased renderer of synthetic 2-D portraits driven by the motion vector (params.py).

The head is an egg-shaped ellipsoid seen orthographically. Every pixel is mapped back (translation,
scale, roll about the neck, then the inverse yaw/pitch rotation of the surface point under it) to
coordinates on the head's surface, where the face is painted with signed-distance shapes. So yaw and
pitch foreshorten and shift the features as on a sphere, the jaw line and hairline follow the turn, the
far ear hides behind the head and the nose, which stands off the face, shifts further than the eyes.
Each shape's signed distance becomes coverage through a one-pixel ramp (anti-aliasing) and layers are
composited back to front. Small features (ears, nose, eyes with brows, mouth) are evaluated only in
per-frame square patches around their projected centres, which keeps the cost close to one pass over
the image for the head and hair.

Coordinates: the image spans [-1, 1] on both axes, y down; lengths of the face are *face units* (one is
BASE_SCALE image half-widths at head_scale 1). Identity parameters: models/data/face_identity.py.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
import sys
from types import SimpleNamespace

import torch

from actorcast.models.data.face_identity import COLOUR_NAMES, Identity, sample_identities
from actorcast.models.data.face_parts import NOSE_DEPTH, draw_ear, draw_eye, draw_mouth, draw_nose, over, over_shaded
from actorcast.models.data.params import N_PARAMS, PARAM_NAMES, clamp_params
from actorcast.models.errors import ConfigError, InputError

log = logging.getLogger(__name__)

__all__ = ["Identity", "sample_identities", "render", "feature_points", "MIN_SIZE", "MAX_SIZE"]

MIN_SIZE, MAX_SIZE = 64, 512
HEAD_Y0 = -0.1         # image y of the head centre at head_y = 0
BASE_SCALE = 1.15      # image half-widths per face unit at head_scale 1
PIVOT = 0.55           # roll pivot below the head centre, face units: heads tilt about the neck
JAW_DROP = 0.07        # unit: how far the chin drops at jaw_open = 1
PASS_PIXELS = 8 * 128 * 128   # pixels per whole-image pass: its (B, H, W) intermediates stay in cache
PATCH_FRAMES = 8       # feature patches are ~1/8 of the image: 8x the frames per pass
PATCH_MARGIN = 1.3     # feature patch radius over feature radius: room for foreshortening and roll
HEAD_MARGIN = 1.0      # head patch radius over head_ry (+ 0.02): the outline lies within head_ry of the centre
# Feature patch radii, face units, at head_scale 1 (see _features for the anchors).
R_EYE, R_MOUTH, R_NOSE, R_EAR = 0.19, 0.21, 0.08, 0.095
_LIGHT = torch.tensor([-0.35, -0.45, 0.82]) / math.sqrt(0.35 ** 2 + 0.45 ** 2 + 0.82 ** 2)


def _check_size(size: object) -> int:
    """`size` if it is an integer in [MIN_SIZE, MAX_SIZE], else ConfigError."""
    if isinstance(size, bool) or not isinstance(size, int):
        raise ConfigError(f"image size must be an integer between {MIN_SIZE} and {MAX_SIZE}, got {size!r}")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ConfigError(f"image size must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {size}")
    return size


def _check_inputs(identity: Identity, params: torch.Tensor) -> None:
    """InputError unless params is a finite (B, N_PARAMS) tensor and identity has 1 or B entries."""
    if not isinstance(identity, Identity):
        raise InputError(f"identity must be an Identity (see sample_identities), got {type(identity).__name__}")
    if not isinstance(params, torch.Tensor) or params.dim() != 2 or params.shape[1] != N_PARAMS:
        shape = tuple(params.shape) if isinstance(params, torch.Tensor) else type(params).__name__
        raise InputError(f"params must be a (B, {N_PARAMS}) tensor of motion parameters, got {shape}")
    if params.shape[0] == 0:
        raise InputError("params has no frames; pass at least one (1, 16) row")
    if not torch.isfinite(params).all():
        raise InputError("params contains NaN or infinite values")
    if len(identity) not in (1, params.shape[0]):
        raise InputError(f"identity batch must be 1 or match the {params.shape[0]} frames, got {len(identity)}")


def _views(identity: Identity, params: torch.Tensor, size: int) -> tuple[SimpleNamespace, SimpleNamespace]:
    """Identity and per-frame pose as (B, 1, 1) scalars / (B, 3, 1, 1) colours, ready to broadcast."""
    ident = {}
    for name, t in vars(identity).items():
        t = t.to(params.device, torch.float32)
        ident[name] = t.view(-1, 3, 1, 1) if name in COLOUR_NAMES else t.view(-1, 1, 1)
    idv = SimpleNamespace(**ident)
    p = {name: params[:, i].view(-1, 1, 1) for i, name in enumerate(PARAM_NAMES)}
    g = SimpleNamespace(**p)
    g.s = p["head_scale"] * BASE_SCALE
    g.cx, g.cy = 2.0 * p["head_x"], HEAD_Y0 + 2.0 * p["head_y"]
    g.cr, g.sr = torch.cos(p["head_roll"]), torch.sin(p["head_roll"])
    g.cyaw, g.syaw = torch.cos(p["head_yaw"]), torch.sin(p["head_yaw"])
    g.cp, g.sp = torch.cos(p["head_pitch"]), torch.sin(p["head_pitch"])
    g.rx, g.ry, g.taper = idv.head_rx, idv.head_ry, idv.jaw_taper
    g.aa = 2.0 / (size * g.s)          # face units per pixel: the anti-aliasing ramp width
    g.s_max = float(g.s.max())
    return idv, g


def _egg(qy: torch.Tensor, taper: torch.Tensor) -> torch.Tensor:
    """Width factor of the head at unit height qy: the lower head narrows into the jaw."""
    return (1.0 - taper * (qy - 0.1).clamp(min=0.0).square()).clamp(min=0.3)


def _surface(X: torch.Tensor, Y: torch.Tensor, g: SimpleNamespace) -> SimpleNamespace:
    """Head-surface coordinates under pixels at image coords X (B, 1, W) and Y (B, H, 1), all (B, H, W)."""
    dx = (X - g.cx) / g.s
    dy = (Y - g.cy) / g.s - PIVOT
    u = g.cr * dx + g.sr * dy                      # pose frame: translation, scale and roll undone
    v = g.cr * dy - g.sr * dx + PIVOT
    qy = v / g.ry
    k = _egg(qy, g.taper)
    qx = u / (g.rx * k)
    r2 = qx.square() + qy.square()
    sil = (0.5 - (r2.sqrt() - 1.0) * (g.rx * k) / g.aa).clamp_(0.0, 1.0)   # head outline coverage
    zs = (1.0 - r2).clamp_(min=0.0).sqrt_()        # unit-sphere depth of the visible surface point
    x1 = qx * g.cyaw - zs * g.syaw                 # inverse yaw ...
    z1 = qx * g.syaw + zs * g.cyaw
    y2 = qy * g.cp - z1 * g.sp                     # ... then inverse pitch: head-local unit coords
    z2 = qy * g.sp + z1 * g.cp
    vis = sil * (z2 > 0)                           # on the face side of the head and inside the outline
    return SimpleNamespace(u=u, v=v, qx=qx, qy=qy, zs=zs, x1=x1, y2=y2, z2=z2, sil=sil, vis=vis,
                           x=x1 * g.rx, y=y2 * g.ry, aa=g.aa)


def _project(xa: torch.Tensor, ya: torch.Tensor, g: SimpleNamespace, on_rim: bool = False):
    """Image pixel coords (px, py) and view depth of face-local points (xa, ya), face units, (B, 1, 1)."""
    qx0, qy0 = xa / g.rx, ya / g.ry
    z0 = torch.zeros_like(qx0) if on_rim else (1.0 - qx0.square() - qy0.square()).clamp(min=0.0).sqrt()
    qy = qy0 * g.cp + z0 * g.sp                    # pitch, then yaw (the inverse of _surface)
    zp = z0 * g.cp - qy0 * g.sp
    qx = qx0 * g.cyaw + zp * g.syaw
    depth = zp * g.cyaw - qx0 * g.syaw
    v = qy * g.ry
    u = qx * g.rx * _egg(qy, g.taper)
    X = g.cx + g.s * (g.cr * u - g.sr * (v - PIVOT))
    Y = g.cy + g.s * (g.sr * u + g.cr * (v - PIVOT) + PIVOT)
    return u, v, X, Y, depth


def _patch(canvas: torch.Tensor, g: SimpleNamespace, X: torch.Tensor, Y: torch.Tensor, radius: float, draw,
           margin: float | None = None) -> None:
    """Run draw(img (B, 3, P, P), surface) on the square patch of canvas around image coords (X, Y) that
    holds a circle of `radius` face units (times margin)."""
    B, _, H, W = canvas.shape
    margin = PATCH_MARGIN if margin is None else margin
    P = min(W, int(math.ceil(radius * g.s_max * margin * W)) + 6)   # + ramps up to 1.5 px wide, rounding
    ar = torch.arange(P, device=canvas.device)
    x0 = ((X.view(-1) + 1.0) * (W / 2) - P / 2).round().clamp(0, W - P).long().expand(B)
    y0 = ((Y.view(-1) + 1.0) * (H / 2) - P / 2).round().clamp(0, H - P).long().expand(B)
    cols, rows = x0[:, None] + ar, y0[:, None] + ar                       # (B, P)
    Xp = ((cols + 0.5) * (2.0 / W) - 1.0).view(B, 1, P)
    Yp = ((rows + 0.5) * (2.0 / H) - 1.0).view(B, P, 1)
    idx = (rows[:, :, None] * W + cols[:, None, :]).view(B, 1, P * P).expand(B, 3, P * P)
    flat = canvas.view(B, 3, H * W)
    img = flat.gather(2, idx).view(B, 3, P, P)
    draw(img, _surface(Xp, Yp, g))
    flat.scatter_(2, idx, img.view(B, 3, P * P))


def _torso(canvas: torch.Tensor, X: torch.Tensor, Y: torch.Tensor, g: SimpleNamespace, idv) -> None:
    """Shoulders: a wide ellipse below the head that follows the head's translation by half."""
    tcx = 0.5 * g.cx
    tcy = 1.12 + 0.5 * (g.cy - HEAD_Y0)
    ax, ay = 0.85 * g.s, 0.5 * g.s
    d = (((X - tcx) / ax).square() + ((Y - tcy) / ay).square()).sqrt_().sub_(1.0).mul_(ay)
    a = (0.5 - d * (canvas.shape[-1] / 2.0)).clamp_(0.0, 1.0)
    over(canvas, idv.shirt, a)


def _hair_back(canvas: torch.Tensor, s: SimpleNamespace, g: SimpleNamespace, idv) -> None:
    """Hair mass behind the head: volume beside it and length below it; shifts against the turn."""
    ub = s.u + 0.3 * g.rx * g.syaw
    w = g.rx * (0.96 + 0.34 * idv.hair_volume)
    h = g.ry * (1.0 + 0.12 * idv.hair_volume)
    d_top = ((ub / w).square() + ((s.v + 0.06 * g.ry) / h).square()).sqrt_().sub_(1.0).mul_(w)
    bottom = g.ry * (0.15 + 1.8 * idv.hair_length)
    d_low = torch.maximum(ub.abs() - 0.97 * w, torch.maximum(s.v - bottom, -s.v))   # straight-cut below
    has_hair = (idv.hair_top > -1.0).float()
    a = (0.5 - torch.minimum(d_top, d_low) / g.aa).clamp_(0.0, 1.0) * has_hair
    over(canvas, idv.hair * 0.78, a)


def _neck(canvas, X: torch.Tensor, Y: torch.Tensor, g: SimpleNamespace, idv) -> None:
    """Neck from under the jaw down (the shoulders cover its end): it rolls with the head above the pivot
    and bends back to upright within 0.3 face units below it."""
    dy = (Y - g.cy) / g.s - PIVOT                                         # (B, H, 1)
    a = g.head_roll * (1.0 - dy / 0.3).clamp(0.0, 1.0)                   # roll angle per image row
    c, sn = torch.cos(a), torch.sin(a)
    dx = (X - g.cx) / g.s
    u = c * dx + sn * dy
    v = c * dy - sn * dx + PIVOT
    d = torch.maximum(u.abs_() - idv.neck_w, 0.3 * g.ry - v)
    shadow = (v - 0.8 * g.ry).clamp_(0.0, 0.25).add_(0.75)              # darker just under the chin
    over_shaded(canvas, idv.skin, d.div_(g.aa).neg_().add_(0.5).clamp_(0.0, 1.0), shadow.mul_(0.8))


def _shade(s: SimpleNamespace) -> torch.Tensor:
    """Lambert term of the light from the upper left, from the view-space normal (qx, qy, zs)."""
    L = _LIGHT.tolist()
    return (s.qx * L[0] + s.qy * L[1] + s.zs * L[2]).clamp_(min=-0.3)


def _hair_line(s: SimpleNamespace, g: SimpleNamespace, idv) -> torch.Tensor:
    """Coverage (B, H, W) of the hair on the head (outline not applied): the hairline with temples and
    fringe in front, down to the nape behind."""
    side = ((s.x1.abs() - 0.45) / 0.5).clamp_(0.0, 1.0)
    side = side * side * (3.0 - 2.0 * side)                              # smoothstep toward the temples
    low = idv.eye_y - (idv.brow_dy + 0.025) / idv.head_ry                # the lowest a fringe reaches
    drop = idv.fringe * (low - idv.hair_top).clamp(min=0.0)
    wave = 0.03 * idv.hair_wave * (0.3 + 0.7 * idv.fringe)
    top = idv.hair_top + drop + wave * torch.sin(idv.hair_freq * s.x1 + idv.hair_phase) \
        + 0.12 * idv.fringe_slant * idv.fringe * s.x1
    front = top + (idv.ear_level - 0.15 - top) * side
    back = (0.1 - 3.0 * s.z2).clamp_(0.0, 1.0)                           # the back of the head: down to the nape
    line = front + (idv.nape - front) * back
    return (0.5 - (s.y2 - line) * g.ry / g.aa).clamp_(0.0, 1.0)


def _head(canvas: torch.Tensor, s: SimpleNamespace, g: SimpleNamespace, idv) -> None:
    """Skin above the jaw line (the chin drops with jaw_open) and hair, as one layer so their shared
    outline is anti-aliased once."""
    lat = (1.0 - s.y2.square()).clamp_(min=1e-4).sqrt_()
    t = (s.x1.abs() / lat).clamp_(max=1.0).masked_fill_(s.z2 < 0, 1.0)   # |sin(longitude)|, 1 behind
    t2 = t.square()
    curve = t2 * (idv.jaw_curve + (1.0 - idv.jaw_curve) * t2)
    jaw = idv.chin + JAW_DROP * g.jaw_open * (1.0 - t2) - (idv.chin - idv.ear_level) * curve
    skin = (0.5 - (s.y2 - jaw) * g.ry / g.aa).clamp_(0.0, 1.0)
    hair = _hair_line(s, g, idv)
    alpha = torch.maximum(skin, hair).mul_(s.sil)
    shade = _shade(s)
    canvas.mul_((1.0 - alpha).unsqueeze(1))
    canvas.addcmul_(idv.skin, (alpha * (1.0 - hair) * (shade * 0.32 + 0.72)).unsqueeze(1))
    canvas.addcmul_(idv.hair, (alpha * hair * (shade * 0.3 + 0.75)).unsqueeze(1))


def _under_hair(s: SimpleNamespace, g: SimpleNamespace, idv) -> SimpleNamespace:
    """The surface with its visibility reduced where hair covers it (a fringe hides the brows)."""
    s.vis = s.vis * (1.0 - _hair_line(s, g, idv).mul_(s.sil))
    return s


def _anchors(idv: SimpleNamespace, g: SimpleNamespace) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Face-local centres (face units, (B, 1, 1)) of the feature patches."""
    ey = idv.eye_y * idv.head_ry - 0.07
    ex = idv.eye_dx * idv.head_rx
    nx = NOSE_DEPTH * torch.tan(g.head_yaw)                # the nose tip stands off the face
    ny = idv.nose_y * idv.head_ry + NOSE_DEPTH * torch.tan(g.head_pitch)
    my = idv.mouth_y * idv.head_ry + 0.05
    return {"eye_l": (-ex, ey), "eye_r": (ex, ey), "nose": (nx, ny - 0.025), "mouth": (0.0 * my, my)}


def _slice(ns: SimpleNamespace, a: int, b: int) -> SimpleNamespace:
    """Frames a:b of a view; identity entries broadcast from one row stay as they are."""
    return SimpleNamespace(**{k: v[a:b] if isinstance(v, torch.Tensor) and v.shape[0] > 1 else v
                              for k, v in vars(ns).items()})


def _pose_frame(X: torch.Tensor, Y: torch.Tensor, g: SimpleNamespace) -> SimpleNamespace:
    """Pose-frame coords (u, v), (B, H, W), of image coords X (B, 1, W), Y (B, H, 1): roll etc. undone."""
    dx = (X - g.cx) / g.s
    dy = (Y - g.cy) / g.s - PIVOT
    return SimpleNamespace(u=g.cr * dx + g.sr * dy, v=g.cr * dy - g.sr * dx + PIVOT)


def _draw_body(canvas: torch.Tensor, idv: SimpleNamespace, g: SimpleNamespace) -> None:
    """Whole-image layers into canvas (B, 3, S, S): background, hair behind the head, neck, shoulders, and
    the head (skin and hair) in a patch around it."""
    B, _, size, _ = canvas.shape
    grid = (torch.arange(size, device=canvas.device, dtype=torch.float32) + 0.5) * (2.0 / size) - 1.0
    X, Y = grid.view(1, 1, size), grid.view(1, size, 1)
    t = ((grid + 1.0) * 0.5).view(1, 1, size, 1)
    canvas.copy_((idv.bg_top + (idv.bg_bottom - idv.bg_top) * t).expand(B, 3, size, size))
    _hair_back(canvas, _pose_frame(X, Y, g), g, idv)
    _neck(canvas, X, Y, g, idv)
    _torso(canvas, X, Y, g, idv)                   # over the neck's lower end and long hair's
    px = g.cx + g.s * g.sr * PIVOT                 # image position of the head centre (pose frame origin)
    py = g.cy + g.s * (1.0 - g.cr) * PIVOT
    radius = float(idv.head_ry.max()) + 0.02       # the head's outline lies within head_ry of its centre
    _patch(canvas, g, px, py, radius, lambda img, ps: _head(img, ps, g, idv), margin=HEAD_MARGIN)


def _draw_face(canvas: torch.Tensor, idv: SimpleNamespace, g: SimpleNamespace) -> None:
    """Feature patches into canvas: nose, eyes and brows, mouth, ears."""
    anchors = _anchors(idv, g)

    def eye(img, ps, side):
        draw_eye(img, _under_hair(ps, g, idv), g, idv, side)

    for name, radius, draw in (("nose", R_NOSE, lambda img, ps: draw_nose(img, ps, g, idv)),
                               ("eye_l", R_EYE, lambda img, ps: eye(img, ps, -1.0)),
                               ("eye_r", R_EYE, lambda img, ps: eye(img, ps, 1.0)),
                               ("mouth", R_MOUTH, lambda img, ps: draw_mouth(img, ps, g, idv))):
        _, _, px, py, _ = _project(*anchors[name], g)
        _patch(canvas, g, px, py, radius, draw)
    for side in (-1.0, 1.0):                       # ears last: over hair that hangs beside the head
        el = idv.ear_level - 0.05
        ue, ve, px, py, depth = _project(side * (1.0 - el.square()).sqrt() * g.rx, el * g.ry, g, on_rim=True)
        _patch(canvas, g, px, py, R_EAR, lambda img, ps, a=(ue, ve, depth, side): draw_ear(img, ps, g, idv, *a))


@functools.cache
def _tune_allocator() -> None:
    """Keep freed tensor memory in glibc's heap instead of returning it to the OS after every operation.

    The renderer allocates many short-lived 0.5-2 MB intermediates; with glibc's defaults each is mmapped
    and unmapped (or trimmed), so every operation pays fresh page faults: 2-3x slower at 256 px.
    Raising the mmap and trim thresholds (process-wide, once) removes that cost; elsewhere this is a no-op.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(-3, 32 << 20) and libc.mallopt(-1, 256 << 20)   # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        ok = False
    if not ok:
        log.debug("could not raise glibc malloc thresholds; rendering may be slower")


@torch.no_grad()
def render(identity: Identity, params: torch.Tensor, size: int) -> torch.Tensor:
    """Render frames: identity (1 or B), params (B, 16) motion vectors -> (B, 3, size, size) float32 in [0, 1].

    Parameters are clamped to PARAM_RANGES. blink_l closes the subject's left eye (on the image's right).
    Runs on params.device. Whole-image layers go in chunks of PASS_PIXELS pixels (their intermediates then
    stay in cache), the feature patches in chunks of PATCH_FRAMES times as many frames.
    """
    size = _check_size(size)
    _check_inputs(identity, params)
    _tune_allocator()
    params = clamp_params(params.to(torch.float32))
    B = params.shape[0]
    out = torch.empty(B, 3, size, size, device=params.device)
    idv, g = _views(identity, params, size)
    chunk = max(1, PASS_PIXELS // (size * size))
    for step, draw in ((chunk, _draw_body), (chunk * PATCH_FRAMES, _draw_face)):
        for a in range(0, B, step):
            draw(out[a:a + step], _slice(idv, a, a + step), _slice(g, a, a + step))
    return out.clamp_(0.0, 1.0)


@torch.no_grad()
def feature_points(identity: Identity, params: torch.Tensor, size: int) -> dict[str, torch.Tensor]:
    """Pixel positions (B, 2) as (x, y) of the eye centres, nose tip and closed-mouth centre of each frame."""
    size = _check_size(size)
    _check_inputs(identity, params)
    idv, g = _views(identity, clamp_params(params.to(torch.float32)), size)
    ex, ey = idv.eye_dx * idv.head_rx, idv.eye_y * idv.head_ry
    local = {"eye_l": (-ex, ey), "eye_r": (ex, ey), "mouth": (0.0 * ex, idv.mouth_y * idv.head_ry),
             "nose": (NOSE_DEPTH * torch.tan(g.head_yaw), idv.nose_y * idv.head_ry)}
    out = {}
    for name, (xa, ya) in local.items():
        _, _, X, Y, _ = _project(xa, ya, g)
        px = (X + 1.0) * (size / 2) - 0.5
        py = (Y + 1.0) * (size / 2) - 0.5
        out[name] = torch.stack(torch.broadcast_tensors(px.view(-1), py.view(-1)), dim=1)
    return out
