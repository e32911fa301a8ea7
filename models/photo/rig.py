"""Photo rig: a user's photo animated by the motion parameters, through its own Face Mesh landmarks.

    rig = PhotoRig(reference, landmarks)      # (1, 3, R, R) in [0, 1]; (478, 2) Face Mesh points in its pixels
    frames = rig.render(params)               # (B, N_PARAMS) motion parameters -> (B, 3, R, R) in [0, 1]

The video decoder has only seen the synthetic cartoons: on a photo it blurs the face and does not move the mouth.
A photo needs no new pixels except the inside of the opening mouth, so the rig moves the photo's own
pixels instead, by a warp built from where Face Mesh puts its lips, eyelids, brows and chin, the same landmarks
on any face. Each part is a layer of the photo cut along a curve fitted to the landmarks and moved on its own:

- mouth: a seam between the lips splits the photo into an upper layer (the upper lip rises a little with
  jaw_open) and a lower one (lower lip, chin and jaw drop by JAW_DROP face heights at jaw_open = 1, fading out
  towards the mouth corners and below the chin). Shut lips split halfway between their inner lines; lips already
  apart split along the lower one, so the teeth the photo shows stay with the upper lip. Where neither layer
  lands, the opening mouth shows its inside, drawn procedurally (models/photo/mouth.py): a dark throat, a tongue,
  the lower teeth dropping with the jaw, the upper teeth staying with the skull (the photo's own where it shows
  them), with the gaps and shading of real teeth, and the lips' darker inner edge, in colours taken from the
  photo's lips, skin and teeth. lip_spread / lip_round move the corners out / in (and the lips thin as they
  spread), smile lifts them.
- eyes: each eye is a lid layer over an eyeball layer. A blink moves the upper lid's edge down along its own curve,
  with its lash line, until it meets the lower lid, which rises a little; the thin band of lid skin over the lash
  line unrolls to cover the eye, so the crease and brow above stay put. The gaze moves the photo's iris (the
  refined landmarks' iris centre and ring) inside the opening, over the sclera painted where the iris was, and
  the lids cut it off (models/photo/eyes.py).
- brows: brow_raise lifts the brow band.
- head (models/photo/head.py): the face is given depth (a rounded cap over its Face Mesh oval, with a nose, on a
  lower cap over the hair) and turns and nods in 3-D by the generator's angles (up to MAX_TURN): the nose moves
  most, the sides by the ears hardly. A face the photo shows already turned away turns and nods less
  (models/photo/pose.py `turn_gain`, said in one line by `turn_note`), so the warp never has to show the side the
  photo hides. Roll, shift and scale (SHIFT_GAIN of the synthetic heads') move the whole head region (face, hair,
  ears), its weight falling smoothly to 0 into the neck and background, so no seam shows and the square's corners
  stay the photo's.

The landmark indices, local frames and curves the layers are cut along are in models/photo/geometry.py.

Every layer is sampled straight from the photo (`grid_sample` at the inverse warp: found by a few fixed-point steps,
or in closed form for the lids, which move along the eye's own axis only), so with all parameters at rest the photo
renders as itself. The motion comes from the generator's latents of a decoder trained on the true parameters
(`train --latent params`; `params_of_latent`).

The rest pose is the generator's own idle for this photo (actors/stages.py `MotionStage.rest_pose`: its mean output
over a second of silence): the generator reads a photo's pose and expression through a motion encoder that has only
seen cartoons, and carries that reading as a steady offset (t1.jpg's first face: yaw 0.22, a half-shut left eye,
the jaw at 0.18 in every pause). Drawn as it is, that offset would move the whole face away from the photo; drawn
relative to the rest pose (`relative`), the photo is what the avatar looks like when it is silent.
"""

import numpy as np
import torch

from actorcast.models.data.params import (
    N_PARAMS,
    PARAM_INDEX,
    clamp_params,
    neutral_params,
)
from actorcast.models.decoder import denormalise_params
from actorcast.models.errors import InputError
from actorcast.models.photo.eyes import EyeLayers, eyes_note
from actorcast.models.photo.geometry import (
    BOX_PAD,
    BROWS,
    CHIN,
    EYES,
    FACE_OVAL,
    FOREHEAD_TOP,
    INNER_LOWER,
    INNER_UPPER,
    INVERSE_STEPS,
    IRISES,
    MOUTH_CORNERS,
    N_LANDMARKS,
    OUTER_LIPS,
    Frame,
    box,
    check_landmarks,
    curve,
    on_curve,
    falloff,
    sample,
    smooth_,
    span,
)
from actorcast.models.photo.mouth import MouthInterior
from actorcast.models.photo.head import HEAD_FEATHER, HEAD_REGION, MAX_TURN, HeadWarp

# the rig's public names, several of them defined in the modules it is built from (geometry, eyes)
__all__ = ["CHIN", "EYES", "FACE_OVAL", "FOREHEAD_TOP", "HEAD_FEATHER", "HEAD_REGION", "IRISES", "MAX_TURN",
           "MOUTH_CORNERS", "N_LANDMARKS", "PhotoRig", "check_landmarks", "check_rest", "eyes_note",
           "params_of_latent"]

# Gains: how far each parameter at the end of its range moves the photo (face heights H, or mouth half-widths).
JAW_DROP = 0.15          # H: the lower lip's drop at jaw_open = 1 (the meter reads ~0.2 H on a wide-open mouth)
UPPER_LIP_RISE = 0.2     # of the drop: the upper lip rises with it
SPREAD_GAIN = 0.12       # mouth half-widths: each corner moves out at lip_spread = 1
LIP_THIN = 0.3           # of a lip's thickness: its outer border moves towards its inner edge at lip_spread = 1
ROUND_GAIN = 0.2         # mouth half-widths: each corner moves in at lip_round = 1
SMILE_GAIN = 0.025       # H: the corners rise at smile = 1
BROW_GAIN = 0.03         # H: the brows rise at brow_raise = 1
PARTED_LIPS = 0.012      # H: an inner-lip gap (13-14) over this in the photo means its teeth already show


def check_rest(rest) -> torch.Tensor:
    """A rest pose: (N_PARAMS,) finite motion parameters inside their ranges, as a float32 tensor; InputError if not."""
    t = torch.as_tensor(np.asarray(rest, dtype=np.float32))
    if t.shape != (N_PARAMS,) or not torch.isfinite(t).all():
        raise InputError(f"rest pose must be ({N_PARAMS},) finite motion parameters, got {tuple(t.shape)}")
    return clamp_params(t[None])[0]


def params_of_latent(z: torch.Tensor) -> torch.Tensor:
    """Latents of a params-trained decoder (B, d_motion): the first N_PARAMS are the parameters normalised to
    [-1, 1] (models.decoder.normalise_params) -> (B, N_PARAMS) parameters in their own units, clamped."""
    return denormalise_params(z[:, :N_PARAMS].clamp(-1, 1))


class PhotoRig:
    """One photo's rig: geometry fitted once from its landmarks, then `render` per batch of frames."""

    def __init__(self, reference: torch.Tensor, landmarks, rest=None) -> None:
        if reference.dim() != 4 or reference.shape[0] != 1 or reference.shape[1] != 3 \
                or reference.shape[2] != reference.shape[3]:
            raise InputError(f"reference must be (1, 3, R, R), got {tuple(reference.shape)}")
        self.image = reference.float()
        self.rest = neutral_params(1)[0] if rest is None else check_rest(rest)
        self.size = size = reference.shape[-1]
        m = check_landmarks(landmarks, size)
        self.height = h = float(np.linalg.norm(m[CHIN] - m[FOREHEAD_TOP]))
        coords = (torch.arange(size, dtype=torch.float32) + 0.5)
        y, x = torch.meshgrid(coords, coords, indexing="ij")
        self.pixels = torch.stack([x, y], dim=-1)  # (R, R, 2) px centres
        self._fit_mouth(m)
        # eyes: lids over eyeballs (none where the photo's eyes are shut or hidden: `eyes_note` says why, and they
        # stay as the photo has them)
        self.eyes_note = eyes_note(self.image, m)
        self.eyes = EyeLayers(self.image, m, h, self.pixels, still=self.eyes_note is not None)
        # brows: a band around each brow, its centre and half-size in px
        self.brows = [(torch.as_tensor(m[list(b)].mean(0)), float(np.ptp(m[list(b)][:, 0]) / 2)) for b in BROWS]
        reach = max(2.4 * half for _, half in self.brows) + 0.18 * h
        ends = torch.stack([c for c, _ in self.brows])
        self.brow_box = span(ends.amin(0) - reach, ends.amax(0) + reach, BOX_PAD * h, size)
        self.brow_frames = [(tuple(float(v) for v in self.mouth.st(c)), half) for c, half in self.brows]  # (s, t)
        # the head turns, nods, rolls, shifts and grows (models/photo/head.py)
        self.head = HeadWarp(m, h, size, self.mouth.down, self.pixels)
        self.turn_note = self.head.turn_note

    def _fit_mouth(self, m: np.ndarray) -> None:
        """The mouth's frame (s = +-1 at the outer corners, t in face heights), the seam its layers part along,
        the lips' edges, the chin, the open mouth's inside and the box the mouth acts in."""
        h = self.height
        self.mouth = Frame.between(m[MOUTH_CORNERS[0]], m[MOUTH_CORNERS[1]], h)
        # lips already apart in the photo show its own teeth (in a smile, the upper row): the layers then split along
        # the lower lip's inner line, so the upper layer carries those teeth whole and only the lower row is painted.
        # Shut lips split halfway between their inner lines, and both rows are painted (mouth.py).
        self.parted = float(np.linalg.norm(m[14] - m[13])) / h > PARTED_LIPS
        seam = m[list(INNER_LOWER)] if self.parted else (m[list(INNER_UPPER)] + m[list(INNER_LOWER)]) / 2
        self.seam = curve(self.mouth, seam)
        self.upper_inner = curve(self.mouth, m[list(INNER_UPPER)]) if self.parted else self.seam
        # each lip's red (upper, lower), which thins as the lips spread: its inner edge's offset from the seam and
        # its thickness to the outer border (face heights, + down), in the mouth's middle
        middle = torch.zeros(1)
        self.lip_edges = []
        for inner, outer in ((INNER_UPPER, OUTER_LIPS[1:11]), (INNER_LOWER, OUTER_LIPS[10:])):
            edge = float(on_curve(curve(self.mouth, m[list(inner)]), middle))
            border = float(on_curve(curve(self.mouth, m[[OUTER_LIPS[0], *outer]]), middle))
            thick = border - edge                                             # never 0: a lip of no red
            self.lip_edges.append((edge - float(self.seam[0]), thick if abs(thick) > 1e-3 else 1e-3))
        self.chin_t = float(self.mouth.st(torch.as_tensor(m[CHIN]))[1])
        self.interior = MouthInterior(self.image, m, self.mouth, self.seam, self.parted, h)
        seam_t = on_curve(self.seam, torch.linspace(-1.2, 1.2, 25))
        # for `_mouth_extent`: the seam's steepest slope, and the upper lip's inner edge's least height over it
        self.seam_slope = max(abs(self.seam[1] - 2.4 * self.seam[2]), abs(self.seam[1] + 2.4 * self.seam[2]))
        along = torch.linspace(-1.2, 1.2, 241)
        self.inner_over_seam = float((on_curve(self.upper_inner, along) - on_curve(self.seam, along)).amin()) - 1e-3
        self.mouth_box = box(self.mouth, 2.8, float(seam_t.amin()) - 0.3, self.chin_t + 0.5, h, self.size)

    # ---- the layers' warps, in the mouth's frame (s, t): a layer's inverse is found there, where its forward
    # displacement (ds, dt) is read off directly, and turned into pixels once ---------------------------------

    def _mouth_gains(self, prm: torch.Tensor) -> dict:
        """The mouth's motion per frame, each (B, 1, 1) or None where it is 0 in every frame (its term is skipped):
        the jaw's drop (face heights), the corners' move along s, the lips' thinning and the smile."""
        def g(name: str) -> torch.Tensor:
            return prm[:, PARAM_INDEX[name], None, None]

        def some(x: torch.Tensor) -> torch.Tensor | None:
            return x if bool((x != 0).any()) else None
        spread = g("lip_spread")
        return {"drop": some(JAW_DROP * g("jaw_open")),
                "ds": some(SPREAD_GAIN * spread - ROUND_GAIN * g("lip_round")),
                "spread": some(spread), "smile": some(SMILE_GAIN * g("smile"))}

    def _mouth_along(self, s: torch.Tensor, gains: dict, lower: bool) -> dict:
        """The parts of a layer's displacement that depend on s only (B, h, w): computed once per inverse where s
        does not move (no lip_spread, lip_round or smile), else at every step."""
        a = s.abs()
        along = {"a": a, "seam": on_curve(self.seam, s)}
        if not lower:
            along["lateral"] = falloff(a, 0.15, 0.85)
            along["inner"] = on_curve(self.upper_inner, s).mul_(-10).add_(1)    # 1 - 10 * the inner edge's t
        else:
            along["1-a"] = 1 - a
        if gains["ds"] is not None or gains["spread"] is not None or gains["smile"] is not None:
            along["sides"] = falloff(a, 1.0, 0.8)                              # 1 to the corners, 0 past 1.8
            along["clamped"] = s.clamp(-1, 1)
        return along

    def _mouth_offset(self, s: torch.Tensor, t: torch.Tensor, along: dict, gains: dict,
                      lower: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The forward displacement (ds, dt) of the upper or lower layer at mouth points (s, t) (B, h, w), each
        None where it is 0. Lower layer: the lower lip, chin and jaw drop by `drop`, fading out towards the mouth
        corners and below the chin. Upper: the upper lip rises UPPER_LIP_RISE of it. Both: the corners move out
        with lip_spread, in with lip_round and up with smile."""
        drop, ds_gain, spread, smile = gains["drop"], gains["ds"], gains["spread"], gains["smile"]
        below = t - along["seam"]                                            # face heights under the seam
        dt = ds = None
        if drop is not None:
            if lower:
                depth = smooth_(below * (1 / max(self.chin_t - float(self.seam[0]), 1e-3)))  # 0 at the seam, 1 at chin
                # full drop for |s| < core = 0.15 + 0.6 depth, none past core + fade, fade = 0.85 + 0.9 depth
                fade = depth.mul(0.9).add_(0.85)
                lateral = smooth_(torch.add(along["1-a"], depth, alpha=1.5).div_(fade))
                under_chin = smooth_(t.mul(-1 / 0.3).add_(1 + self.chin_t / 0.3))  # the neck stays
                dt = lateral.mul_(under_chin).mul_(drop)
            else:
                # the rise is whole up to the upper lip's inner edge (the teeth the photo shows rise with it
                # unsquashed) and fades out over 0.1 face heights above it
                dt = smooth_(torch.add(along["inner"], t, alpha=10)).mul_(along["lateral"]).mul_(
                    drop * -UPPER_LIP_RISE)
        if ds_gain is not None or smile is not None:
            near = smooth_(below.abs().mul_(-1 / 0.15).add_(0.2 / 0.15)).mul_(along["sides"])
            if ds_gain is not None:
                ds = near * along["clamped"] * ds_gain
            if smile is not None:
                lift = near.mul_(along["clamped"].square()).mul_(smile)
                dt = -lift if dt is None else dt.sub_(lift)
        # the lip thins as it spreads (thickens as it narrows): its outer border moves towards its inner edge by
        # LIP_THIN of its thickness at lip_spread = 1, the inner edge stays, and the skin over (under) it follows,
        # less and less over 1.5 lip thicknesses. The edge and border run along the seam at their offsets in the
        # mouth's middle (cheaper than their own curves: this warp is evaluated at every step of both layers'
        # inverses over the whole mouth box)
        if spread is not None:
            edge, thick = self.lip_edges[int(lower)]
            x = (below - edge).mul_(1 / thick)                                 # 0 at the inner edge, 1 at the border
            grow = x.clamp(0, 1).sub_(x.sub_(1).mul_(1 / 1.5).clamp_(0, 1))
            thin = grow.mul_(along["sides"]).mul_(spread * (LIP_THIN * thick))
            dt = -thin if dt is None else dt.sub_(thin)
        return ds, dt

    def _mouth_inverse(self, s0: torch.Tensor, t0: torch.Tensor, gains: dict,
                       lower: bool) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """The mouth point (s, t) of the upper or lower layer that lands on (s0, t0), by INVERSE_STEPS fixed-point
        steps from it, and the s-only parts of its displacement at that point's s (`_mouth_along`)."""
        along = self._mouth_along(s0, gains, lower)
        s, t = s0, t0
        for step in range(INVERSE_STEPS):
            ds, dt = self._mouth_offset(s, t, along, gains, lower)
            if ds is None and dt is None:
                break
            t = t0 - dt if dt is not None else t0
            if ds is not None:
                s = s0 - ds
                along = self._mouth_along(s, gains, lower)
        return s, t, along

    def _brows(self, base: torch.Tensor, prm: torch.Tensor) -> None:
        """brow_raise lifts an elliptic band around each brow ("up" taken from the mouth's frame): the brow box of
        the head-moved points `base` (B, R, R, 2) is moved to where the lifted brows come from, in place. The lift
        is along t only, so the inverse's fixed-point steps move t alone."""
        raise_ = prm[:, PARAM_INDEX["brow_raise"], None, None]
        if not bool((raise_ != 0).any()):
            return                                                          # nothing moves
        rows, cols = self.brow_box
        target = base[:, rows, cols]
        s, t0 = self.mouth.st(target)
        across = [((s - float(cs)) * (self.mouth.s_unit / (1.6 * half))).square_()
                  for (cs, ct), half in self.brow_frames]
        gain = BROW_GAIN * raise_
        t = t0
        for _ in range(INVERSE_STEPS):
            lift = None
            for ((cs, ct), half), a2 in zip(self.brow_frames, across):
                dist = (t - ct).mul_(1 / 0.12).square_().add_(a2).sqrt_()
                band = smooth_(dist.mul_(-1).add_(1.5))                     # 1 - smooth(dist - 0.5)
                lift = band if lift is None else lift.add_(band)
            dt = lift.mul_(-gain)
            t = t0 - dt
        _, _, _, _, dx, dy = self.mouth._floats
        dt = dt.mul_(-self.mouth.t_unit)
        target[..., 0].add_(dt * dx)
        target[..., 1].add_(dt * dy)

    def relative(self, params: torch.Tensor) -> torch.Tensor:
        """Parameters (B, N_PARAMS) -> the motion the rig draws: away from the rest pose, which is the photo itself.
        jaw_open and the blinks become the share of the way from their rest value to 1 (0 at or under it), the
        others their difference to the rest, head_scale their ratio."""
        rel = params - self.rest
        for name in ("jaw_open", "blink_l", "blink_r"):
            i = PARAM_INDEX[name]
            rel[:, i] = (rel[:, i] / (1 - self.rest[i]).clamp(min=0.05)).clamp(0, 1)
        i = PARAM_INDEX["head_scale"]
        rel[:, i] = params[:, i] / self.rest[i]
        return rel

    @torch.no_grad()
    def render(self, params: torch.Tensor) -> torch.Tensor:
        """(B, N_PARAMS) motion parameters (models/data/params.py units) -> (B, 3, R, R) frames in [0, 1]."""
        if params.dim() != 2 or params.shape[1] != N_PARAMS or not torch.isfinite(params).all():
            raise InputError(f"params must be finite (B, {N_PARAMS}), got {tuple(params.shape)}")
        prm = self.relative(params.float())
        # Each layer's warp is zero outside its box (geometry.box): it is evaluated there only, on the
        # head-moved points.
        base = self.head.inverse(prm)                                       # (B, R, R, 2)
        self._brows(base, prm)
        plain = sample(self.image, base)                                     # (B, 3, R, R): the moved photo
        out = plain.clone()
        # eyes: the lids close over the eyeball, the irises move inside it
        self.eyes.draw(out, base, plain, prm)
        self._draw_mouth(out, base, plain, prm)
        return out.clamp_(0, 1)

    def _mouth_extent(self, s0: torch.Tensor, t0: torch.Tensor, below0: torch.Tensor, gains: dict) -> list:
        """Where each layer must be worked out, of mouth points (s0, t0) (B, h, w), `below0` under the seam: for
        the upper and the lower layer, the box (rows, columns) of the pixels where it may both move and show, or
        None. Everywhere else the layer is still (its displacement is 0 at the point itself, so its inverse is the
        point) or hidden (its weight and the gap are 0 in every frame), which holds for any pixel whose bounds say
        so: the layers move at most `reach` face heights (t) and `ds` (s), and each term of their warp is 0 past
        its own fade. There, the point itself stands in for the layer's inverse: it draws the same."""
        eps = 1e-3
        drop, ds_gain, spread, smile = (gains[k] for k in ("drop", "ds", "spread", "smile"))
        big = lambda x: 0.0 if x is None else float(x.abs().amax())       # noqa: E731
        sides = ds_gain is not None or smile is not None or spread is not None   # terms that fade past |s| 1.8
        (edge_up, thick_up), (edge_lo, thick_lo) = self.lip_edges
        reach = max(UPPER_LIP_RISE * big(drop) + LIP_THIN * abs(thick_up) * big(spread),
                    big(drop) + LIP_THIN * abs(thick_lo) * big(spread)) + big(smile)
        hidden = 1 / self.height + reach + self.seam_slope * big(ds_gain) + eps   # past it: a_up (a_lo) and gap 0
        a0 = s0.abs()
        # the upper layer is still over the lip's inner edge by 0.1 (jaw), 0.2 over the seam (corners, smile) and
        # past its red's border (thinning), or past |s| 1 (jaw) and 1.8 (the rest)
        over = [self.inner_over_seam - 0.1] if drop is not None else []
        over += [-0.2] if (ds_gain is not None or smile is not None) else []
        over += [min(edge_up, edge_up + 2.5 * thick_up)] if spread is not None else []
        still_up = (below0 <= min(over, default=0.0) - eps) | (a0 >= (1.8 if sides else 1.0) + eps)
        up = ~still_up & (below0 < hidden)
        # the lower layer is still under the chin by 0.3 or past |s| 2.5 (jaw), and 0.2 under the seam and past its
        # red's border (the rest) or past |s| 1.8
        still_lo = (t0 >= self.chin_t + 0.3 + eps) | (a0 >= 2.5 + eps) if drop is not None else torch.ones_like(a0,
                                                                                                     dtype=torch.bool)
        if sides:
            under = max(0.2, edge_lo, edge_lo + 2.5 * thick_lo) if spread is not None else 0.2
            still_lo &= (below0 >= under + eps) | (a0 >= 1.8 + eps)
        lo = ~still_lo & (below0 > -hidden)
        return [_bounds(up), _bounds(lo)]

    def _draw_mouth(self, out: torch.Tensor, base: torch.Tensor, plain: torch.Tensor, prm: torch.Tensor) -> None:
        """The mouth into its box of the frames `out` (B, 3, R, R), in place: the upper and lower layers part along
        the seam, and the interior shows between them. Each layer is worked out only where it may move and show
        (`_mouth_extent`), and the mouth drawn over the box around both: elsewhere it is the moved photo."""
        gains = self._mouth_gains(prm)
        if gains["drop"] is None and gains["ds"] is None and gains["spread"] is None and gains["smile"] is None:
            return                                                          # the mouth is the moved photo's
        rows, cols = self.mouth_box
        at = base[:, rows, cols]
        s0, t0 = self.mouth.st(at)
        below0 = t0 - on_curve(self.seam, s0)
        extents = self._mouth_extent(s0, t0, below0, gains)
        known = [e for e in extents if e is not None]
        if not known:
            return
        r = slice(min(e[0].start for e in known), max(e[0].stop for e in known))
        c = slice(min(e[1].start for e in known), max(e[1].stop for e in known))
        s0, t0, below0 = s0[:, r, c], t0[:, r, c], below0[:, r, c]
        layers = []
        for lower, extent in enumerate(extents):
            s, t = s0.clone(), t0.clone()
            side = below0 * self.height                                      # px under (over, -) the seam
            if extent is not None:
                er = slice(extent[0].start - r.start, extent[0].stop - r.start)
                ec = slice(extent[1].start - c.start, extent[1].stop - c.start)
                s_in, t_in, along = self._mouth_inverse(s0[:, er, ec], t0[:, er, ec], gains, bool(lower))
                s[:, er, ec], t[:, er, ec] = s_in, t_in
                side[:, er, ec] = (t_in - along["seam"]).mul_(self.height)
            layers.append((s, t, side[:, None]))                            # side: (B, 1, h, w)
        (s_up, t_up, side_up), (s_lo, t_lo, side_lo) = layers
        a_up = (0.5 - side_up).clamp_(0, 1)
        a_lo = (0.5 + side_lo).clamp_(0, 1)
        gap = (1 - a_up - a_lo).clamp_(0, 1)
        mouth = sample(self.image, self.mouth.point(s_up, t_up)).mul_(a_up)
        mouth.addcmul_(sample(self.image, self.mouth.point(s_lo, t_lo)), a_lo)
        rows, cols = slice(rows.start + r.start, rows.start + r.stop), slice(cols.start + c.start, cols.start + c.stop)
        mouth.sub_(plain[:, :, rows, cols] * (a_up + a_lo + gap))  # the box may reach the lids: add to `out`
        # the inside is drawn only over the rows and columns where the mouth is open in some frame
        shown = _bounds(gap[:, 0] > 0)
        if shown is not None:
            r, c = shown
            drop = JAW_DROP * prm[:, PARAM_INDEX["jaw_open"], None, None, None]
            inside = self.interior.draw_st(s0[:, r, c], t0[:, r, c], side_up[..., r, c], side_lo[..., r, c], drop)
            mouth[..., r, c].addcmul_(gap[..., r, c], inside)
        out[:, :, rows, cols] += mouth


def _bounds(mask: torch.Tensor) -> tuple[slice, slice] | None:
    """The rows and columns (slices) around the True pixels of a mask (B, h, w) in any frame, or None."""
    rows, cols = mask.any(2).any(0), mask.any(1).any(0)
    if not bool(rows.any()):
        return None
    r, c = torch.nonzero(rows)[:, 0], torch.nonzero(cols)[:, 0]
    return slice(int(r[0]), int(r[-1]) + 1), slice(int(c[0]), int(c[-1]) + 1)
