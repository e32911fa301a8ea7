"""The small features of the synthetic portraits (ears, nose, eyes with brows, mouth) and compositing.

Each `draw_*` paints into an image patch img (B, 3, P, P) given the head-surface coordinates `s` of its
pixels (models/data/face.py `_surface`: s.x, s.y face-local face units, s.u, s.v pose frame, s.vis the
face-side visibility), the pose/motion view `g` and the identity view `idv` ((B, 1, 1) scalars, (B, 3, 1,
1) colours). Signed distances are in face units, negative inside; `_cov` turns them into coverage with a
ramp one pixel (s.aa) wide.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

NOSE_DEPTH = 0.06      # how far the nose tip stands off the face (shifts it under yaw and pitch)
MAX_OPEN = 0.15        # mouth opening at jaw_open = 1, face units

_C = {name: torch.tensor(rgb).view(1, 3, 1, 1) for name, rgb in {
    "sclera": (0.96, 0.95, 0.92), "pupil": (0.04, 0.03, 0.03), "glint": (1.0, 1.0, 1.0),
    "lash": (0.10, 0.07, 0.06), "mouth": (0.28, 0.06, 0.07), "teeth": (0.96, 0.94, 0.87),
    "tongue": (0.78, 0.36, 0.40)}.items()}


def _col(name: str, like: torch.Tensor) -> torch.Tensor:
    return _C[name].to(like.device)


def over(img: torch.Tensor, colour: torch.Tensor, alpha: torch.Tensor) -> None:
    """Composite a flat colour (B|1, 3, 1, 1) with coverage alpha (B, H, W) over img (B, 3, H, W) in place."""
    img.lerp_(colour.expand_as(img), alpha.unsqueeze(1))


def over_shaded(img: torch.Tensor, colour: torch.Tensor, alpha: torch.Tensor, shade: torch.Tensor) -> None:
    """Composite colour * shade (B, H, W) with coverage alpha over img in place (no (B, 3, H, W) temporary)."""
    img.mul_((1.0 - alpha).unsqueeze(1)).addcmul_(colour, (alpha * shade).unsqueeze(1))


def _cov(d: torch.Tensor, aa: torch.Tensor) -> torch.Tensor:
    """Coverage of a shape from its signed distance d (face units) and pixel size aa."""
    return (0.5 - d / aa).clamp_(0.0, 1.0)


def _lens(x: torch.Tensor, y: torch.Tensor, hw, hh) -> tuple[torch.Tensor, torch.Tensor]:
    """Vertical signed distance to the ellipse |x/hw|^2 + |y/hh|^2 <= 1, and its half-height at x."""
    arc = (1.0 - (x / hw).square()).clamp_(min=0.0).sqrt_() * hh
    return torch.maximum(y.abs() - arc, x.abs() - hw), arc


def _ellipse(x: torch.Tensor, y: torch.Tensor, ax, ay) -> torch.Tensor:
    """Approximate signed distance to an axis-aligned ellipse (exact on circles)."""
    return ((x / ax).square() + (y / ay).square()).sqrt_().sub_(1.0).mul_(torch.minimum(torch.as_tensor(ax),
                                                                                         torch.as_tensor(ay)))


def draw_ear(img, s: SimpleNamespace, g, idv, ue, ve, depth, side: float) -> None:
    """An ear at pose-frame point (ue, ve); hidden behind the head unless it turns toward the camera."""
    w, h = 0.5 * idv.ear_size, idv.ear_size
    uc = ue + side * 0.45 * w * g.cyaw                                  # sits just outside the rim
    vis = (4.0 * depth).clamp(0.0, 1.0)
    alpha = vis + (1.0 - vis) * (1.0 - s.sil)                           # far ear: only outside the head
    over(img, idv.skin * 0.9, _cov(_ellipse(s.u - uc, s.v - ve, w, h), s.aa) * alpha)
    inner = _ellipse(s.u - uc + side * 0.15 * w, s.v - ve - 0.05 * h, 0.5 * w, 0.65 * h)
    over(img, idv.skin * 0.7, _cov(inner, s.aa) * alpha)


def draw_nose(img, s: SimpleNamespace, g, idv) -> None:
    """Nose as shading hints: a soft shadow under the tip, the shaded right flank and two nostrils."""
    nw = idv.nose_w
    xn = s.x - NOSE_DEPTH * torch.tan(g.head_yaw)
    yn = s.y - (idv.nose_y * idv.head_ry + NOSE_DEPTH * torch.tan(g.head_pitch))
    shadow = _ellipse(xn, yn - 0.012, 1.2 * nw, 0.5 * nw)
    over(img, idv.skin * 0.6, (0.5 - shadow / (3.0 * s.aa)).clamp_(0.0, 1.0).mul_(0.3 * s.vis))
    # right flank: segment from beside the bridge down to the nostril wing
    ax, ay, bx, by = 0.45 * nw, -idv.nose_len, 0.85 * nw, -0.012 + 0.0 * nw
    px, py = xn - ax, yn - ay
    h = ((px * (bx - ax) + py * (by - ay)) / ((bx - ax).square() + (by - ay).square())).clamp_(0.0, 1.0)
    d = torch.hypot(px - (bx - ax) * h, py - (by - ay) * h) - torch.clamp(0.3 * s.aa, min=0.003)
    over(img, idv.skin * 0.62, _cov(d, s.aa).mul_(0.45 * s.vis))
    nostril = _ellipse(xn.abs() - 0.55 * nw, yn - 0.004, 0.38 * nw, 0.22 * nw)
    over(img, idv.skin * 0.35, _cov(nostril, s.aa).mul_(0.8 * s.vis))


def draw_eye(img, s: SimpleNamespace, g, idv, side: float) -> None:
    """One eye (side -1 = image left) with lids, iris following gaze, lashes, and its brow."""
    w, h = idv.eye_w, idv.eye_w * idv.eye_aspect
    xe = s.x - side * idv.eye_dx * idv.head_rx
    ye = s.y - idv.eye_y * idv.head_ry
    blink = g.blink_r if side < 0 else g.blink_l                         # subject's left = image right
    rest = (0.15 + 0.2 * g.smile.clamp(min=0.0) + 0.15 * g.brow_furrow - 0.15 * g.brow_raise).clamp(0.0, 0.6)
    closure = blink + (1.0 - blink) * rest
    d_eye, arc = _lens(xe, ye, w, h)
    lid = arc * (2.0 * closure - 1.0)                                    # upper lid edge: top arc .. bottom arc
    aperture = _cov(torch.maximum(d_eye, lid - ye), s.aa).mul_(s.vis)
    over(img, _col("sclera", img), aperture)
    ri = torch.minimum(0.9 * h, 0.46 * w)
    ix, iy = xe - g.gaze_x * 0.5 * w, ye - g.gaze_y * 0.35 * h
    r = torch.hypot(ix, iy)
    a_iris = _cov(r - ri, s.aa).mul_(aperture)
    over_shaded(img, idv.iris, a_iris, 1.0 - 0.45 * (r / ri).square().clamp_(max=1.0))
    over(img, _col("pupil", img), _cov(r - 0.45 * ri, s.aa).mul_(aperture))
    glint = torch.hypot(ix + 0.35 * ri, iy + 0.35 * ri) - 0.2 * ri
    over(img, _col("glint", img), _cov(glint, s.aa).mul_(aperture).mul_(0.9))
    lash = torch.clamp(0.0045 + 0.004 * (side * xe / w).clamp(min=0.0), min=0.5 * s.aa)
    d_lash = torch.maximum((ye - lid).abs() - lash, xe.abs() - 1.08 * w)
    over(img, _col("lash", img), _cov(d_lash, s.aa).mul_(s.vis))
    d_low = torch.maximum((ye - arc).abs() - 0.4 * lash, xe.abs() - 0.9 * w)
    over(img, _col("lash", img), _cov(d_low, s.aa).mul_(0.3 * s.vis))
    _draw_brow(img, s, g, idv, side)


def _draw_brow(img, s: SimpleNamespace, g, idv, side: float) -> None:
    """A brow: raise lifts and arches it, furrow lowers it, pulls it inward and drops its inner end."""
    bw = idv.brow_w
    bx = side * (idv.eye_dx * idv.head_rx + 0.006 - 0.016 * g.brow_furrow)
    by = idv.eye_y * idv.head_ry - idv.brow_dy - 0.045 * g.brow_raise + 0.02 * g.brow_furrow
    xb = (s.x - bx) * side                                               # + = outward
    t = xb / bw
    tilt = idv.brow_tilt + 0.45 * g.brow_furrow - 0.12 * g.brow_raise
    yc = by - (idv.brow_arch + 0.012 * g.brow_raise) * (1.0 - t.square()) - tilt * bw * t
    half = torch.clamp(0.5 * idv.brow_th * (1.0 - 0.45 * ((t + 1.0) * 0.5).clamp(0.0, 1.0)), min=0.5 * s.aa)
    d = torch.maximum((s.y - yc).abs() - half, xb.abs() - bw)
    over(img, idv.brow, _cov(d, s.aa).mul_(s.vis))


def draw_mouth(img, s: SimpleNamespace, g, idv) -> None:
    """Lips, seam, inner mouth, tongue and teeth; jaw_open opens, spread widens, round narrows, smile curves."""
    sp, rd, sm = g.lip_spread, g.lip_round, g.smile
    mw = idv.mouth_w * (1.0 + 0.2 * sp - 0.35 * rd + 0.12 * sm.clamp(min=0.0)).clamp(min=0.45)
    opening = MAX_OPEN * g.jaw_open * (1.0 + 0.25 * rd)
    oh = 0.5 * opening
    x = s.x
    bend = 0.045 * sm * (x / mw).square().clamp_(max=1.5)               # + smile lifts the corners
    ym = s.y - (idv.mouth_y * idv.head_ry + 0.25 * opening) + bend      # 0 on the centre line of the opening
    iw = mw * (0.9 - 0.2 * rd)
    tu, tl = idv.lip_up * (1.0 + 0.5 * rd), idv.lip_lo * (1.0 + 0.4 * rd)
    cupid = 1.0 - 0.35 * torch.exp(-(x / (0.2 * mw)).square())
    hh = torch.where(ym < 0, oh + tu * cupid, oh + tl)
    d_out, _ = _lens(x, ym, mw, hh)
    vis = s.vis
    over(img, idv.lip, _cov(d_out, s.aa).mul_(vis))
    seam = torch.maximum(ym.abs() - torch.clamp(0.5 * s.aa, min=0.0035), x.abs() - 0.95 * mw)
    over(img, idv.lip * 0.5, _cov(seam, s.aa).mul_(vis))
    d_in, _ = _lens(x, ym, iw, oh)
    inner = _cov(d_in, s.aa).mul_(vis)
    over(img, _col("mouth", img), inner)
    over(img, _col("tongue", img), _cov(0.3 * oh - ym, s.aa).mul_(inner))
    top_teeth = torch.maximum(ym - (torch.clamp(0.55 * oh, max=0.024) - oh), x.abs() - 0.75 * iw)
    over(img, _col("teeth", img), _cov(top_teeth, s.aa).mul_(inner))
    low_teeth = torch.maximum((oh - torch.clamp(0.25 * oh, max=0.012)) - ym, x.abs() - 0.6 * iw)
    over(img, _col("teeth", img), _cov(low_teeth, s.aa).mul_(inner).mul_(0.9))
