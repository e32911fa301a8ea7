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
  lands, the opening mouth shows its inside, drawn procedurally (`_interior`): a dark throat, a tongue, the lower
  teeth dropping with the jaw, the upper teeth staying with the skull (the photo's own where it shows them), with
  the gaps and shading of real teeth, and the lips' darker inner edge, in colours taken from the photo's lips,
  skin and teeth. lip_spread / lip_round move the corners out / in (and the lips thin as they spread), smile
  lifts them.
- eyes: each eye is a lid layer over an eyeball layer. A blink moves the upper lid's edge down along its own curve,
  with its lash line, until it meets the lower lid, which rises a little; the thin band of lid skin over the lash
  line unrolls to cover the eye, so the crease and brow above stay put. The gaze moves the photo's iris (the
  refined landmarks' iris centre and ring) inside the opening, over the sclera painted where the iris was, and
  the lids cut it off.
- brows: brow_raise lifts the brow band.
- head: the face is given depth (a rounded cap over its Face Mesh oval, with a nose, on a lower cap over the
  hair) and turns and nods in 3-D by the generator's angles (up to MAX_TURN): the nose moves most, the sides by
  the ears hardly. A face the photo shows already turned away turns and nods less (models/photo_pose.py
  `turn_gain`, said in one line by `turn_note`), so the warp never has to show the side the photo hides. Roll, shift and scale (SHIFT_GAIN of the synthetic heads') move the whole head region (face,
  hair, ears), its weight falling smoothly to 0 into the neck and background, so no seam shows and the square's
  corners stay the photo's.

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

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from actorcast.models.data.params import (
    N_PARAMS,
    PARAM_INDEX,
    clamp_params,
    neutral_params,
)
from actorcast.models.decoder import denormalise_params
from actorcast.models.errors import InputError
from actorcast.models.photo_pose import photo_pose, turn_gain, turn_note

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
N_LANDMARKS = 478

# Gains: how far each parameter at the end of its range moves the photo (face heights H, or mouth half-widths).
JAW_DROP = 0.15          # H: the lower lip's drop at jaw_open = 1 (the meter reads ~0.2 H on a wide-open mouth)
UPPER_LIP_RISE = 0.2     # of the drop: the upper lip rises with it
SPREAD_GAIN = 0.12       # mouth half-widths: each corner moves out at lip_spread = 1
LIP_THIN = 0.3           # of a lip's thickness: its outer border moves towards its inner edge at lip_spread = 1
ROUND_GAIN = 0.2         # mouth half-widths: each corner moves in at lip_round = 1
SMILE_GAIN = 0.025       # H: the corners rise at smile = 1
BROW_GAIN = 0.03         # H: the brows rise at brow_raise = 1
MAX_TURN = 0.3           # rad: head_yaw / head_pitch are drawn as they are up to this (a warp of one photo shows
                         # no new side of the head; the cartoons turn up to 0.6)
ROLL_GAIN = 0.5          # of head_roll: the head tilts about the neck
SHIFT_GAIN = 0.1         # of head_x, head_y and head_scale - 1: a photo's head shifts and grows a tenth as far as the
                         # synthetic heads do (they float in an empty frame; a photo's head sits on its shoulders)
FACE_DEPTH = 0.9         # face half widths: the middle of the face oval in front of the plane of its rim (the ears)
HAIR_DEPTH = 0.5         # face half widths: the middle of the head region (hair, forehead) in front of its rim
NOSE_DEPTH = 0.35        # face half widths: the nose tip in front of that rounded face
NOSE_WIDTH = 0.12        # H: the nose's bump (a Gaussian of this width)
HEAD_REGION = (1.45, 1.3, 0.12)  # the moving head: the face oval's half width and half height scaled so (ears,
                                 # hair), its centre raised by this many H; weight 1 inside
HEAD_FEATHER = 0.55      # of the head region's radius: the weight falls to 0 over this much outside it
HEAD_GRID = 4            # px: the head motion's inverse is found on a grid this fine and interpolated between
UPPER_TEETH = 0.015      # H: the upper teeth's biting edge under the shut lips' seam (hidden behind the lower lip;
                         # the opening mouth shows it, and more of the teeth as the upper lip rises)
LOWER_TEETH = 0.035      # H: the lower teeth's biting edge over the lower lip's inner edge in the mouth's middle
TOOTH_ARC = (0.3, 0.21)  # rad: one upper / lower tooth's share of the dental arch, seen from the front (below)
ARCH = 1.15              # mouth half widths: the dental arch's radius; a tooth at angle a sits at s = ARCH sin(a),
                         # so the teeth narrow towards the corners as the arch turns away (upper central incisors
                         # ~0.34 of the mouth's half width, lower ones ~0.24)
TOOTH_GAP = 0.005        # H: the soft dark line between neighbouring teeth (a Gaussian's width)
TOOTH_CORNER = 0.012     # H: the radius of each tooth's rounded corners at its biting edge
TONGUE = (0.35, 0.6)     # the tongue's top over the lower teeth's edge: this share of the jaw's drop; its half
                         # width in mouth half widths
RIM = 0.008              # H: the lips' inner edge, a darker, moist band this wide along the opening
INVERSE_STEPS = 4        # fixed-point steps of each layer's inverse warp
IRISES = (468, 473)      # refined Face Mesh: the iris centres, each followed by its 4 ring points (the 1st and 3rd
                         # on the iris's horizontal diameter, the others clipped by the lids)
LOWER_RISE = 0.15        # of the opening: the lower lid rises this far to meet the closing upper lid
LID_OVERLAP = 0.15       # of the opening: the shut upper lid reaches this far over the lower one (its lash line)
LID_BAND = 1.0           # of the opening: the lid skin this far above the lash line unrolls over the closing eye
LASH = 0.35              # of the opening: the lash line's thickness, carried whole (not stretched) by the lid's edge
LOW_BAND = 0.5           # of the opening: the skin under the lower lid that stretches as the lid rises
GAZE_X, GAZE_Y = 0.5, 0.35  # iris travel at gaze 1: of the eye's half width / half opening (as the cartoons draw it)
EYE_CLOSED = 0.15        # lid gap / eye width under this in the photo: the eye is shut (open eyes read ~0.3-0.4)
EYE_HIDDEN = (0.5, 0.15) # the opening's bright end (90th percentile luminance) under this share of the cheeks', or
                         # its spread (90th - 10th) under this: no white of the eye shows (sunglasses, a hand)
CHEEKS = (50, 280, 101, 330)  # Face Mesh points on the cheeks: the skin's luminance
IRIS_EDGE = (0.9, 1.15)  # iris radii: the moved iris's weight falls 1 -> 0 between them (the limbal ring inside)
MIN_MOUTH_WIDTH = 0.12   # H: a mouth seen narrower than this (a face in profile) is too turned to animate
MIN_EYE_WIDTH = 0.04     # H: the same for the narrower eye (frontal faces: mouth ~0.4 H, eyes ~0.2 H wide)
BOX_PAD = 0.15           # H around each layer's box: room for the head's motion (MAX_TURN, SHIFT_GAIN)
PARTED_LIPS = 0.012      # H: an inner-lip gap (13-14) over this in the photo means its teeth already show
THROAT = ((0.45, 0.2, 0.2), (0.12, 0.04, 0.05))  # the open mouth's inside near the lips and cheeks, and deep in
                                                   # the throat: shares of the lips' colour per channel
TONGUE_RED = (0.7, 0.3, 0.32)    # a tongue's colour in a well-exposed photo, mixed 2:1 with the lips'
OFF_WHITE = (0.9, 0.86, 0.77)    # teeth where the photo shows none, in a well-exposed photo


def _smooth(x: torch.Tensor) -> torch.Tensor:
    """Smoothstep of x clamped to [0, 1]."""
    x = x.clamp(0.0, 1.0)
    return x * x * (3 - 2 * x)


@dataclass(frozen=True)
class _Frame:
    """A local frame on the photo: origin, unit axes (s along, t across, + down the face), units in pixels."""

    origin: torch.Tensor   # (2,) px
    along: torch.Tensor    # (2,) unit vector
    down: torch.Tensor     # (2,) unit vector, `along` turned 90 degrees clockwise on screen
    s_unit: float          # px per s unit
    t_unit: float          # px per t unit

    @staticmethod
    def between(a: np.ndarray, b: np.ndarray, t_unit: float) -> "_Frame":
        """The frame centred between points a and b (px), s = +-1 at them, t in units of t_unit px."""
        a, b = torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32)
        along = (b - a) / (b - a).norm()
        return _Frame((a + b) / 2, along, torch.stack([-along[1], along[0]]), float((b - a).norm() / 2), t_unit)

    def __post_init__(self) -> None:  # the same as plain floats, for the per-pixel arithmetic (no tiny tensors)
        (ox, oy), (ax, ay), (dx, dy) = self.origin.tolist(), self.along.tolist(), self.down.tolist()
        object.__setattr__(self, "_floats", (ox, oy, ax, ay, dx, dy))

    def st(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Points (..., 2) px -> s, t (...)."""
        ox, oy, ax, ay, dx, dy = self._floats
        x, y = p[..., 0] - ox, p[..., 1] - oy
        return (x * ax + y * ay) / self.s_unit, (x * dx + y * dy) / self.t_unit

    def offset(self, ds: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        """Displacements in s, t units (...) -> px (..., 2)."""
        _, _, ax, ay, dx, dy = self._floats
        ds, dt = ds * self.s_unit, dt * self.t_unit
        return torch.stack([ds * ax + dt * dx, ds * ay + dt * dy], dim=-1)


@dataclass(frozen=True)
class _Eye:
    """One eye of the photo: its frame (s = +-1 at the corners, t in face heights), lid curves, iris and box."""

    frame: _Frame
    upper: tuple[float, float, float]   # upper lid curve (_curve)
    lower: tuple[float, float, float]   # lower lid curve
    opening: float                      # face heights: the widest gap between the lids
    iris: torch.Tensor                  # (2,) px: the iris centre
    iris_radius: float                  # px
    box: tuple[slice, slice]            # the pixels the lids and the iris act in
    blink: int                          # PARAM_INDEX of the blink that closes it


def _curve(frame: _Frame, points: np.ndarray) -> tuple[float, float, float]:
    """Least-squares quadratic t = c0 + c1 s + c2 s^2 through `points` (K, 2) px in `frame`: (c0, c1, c2).
    `_on_curve` evaluates it with s clamped (flat past the ends, never a runaway parabola)."""
    s, t = frame.st(torch.as_tensor(points, dtype=torch.float32))
    a = torch.stack([torch.ones_like(s), s, s * s], dim=1)
    return tuple(torch.linalg.lstsq(a, t[:, None]).solution[:, 0].tolist())


def _on_curve(coef: tuple[float, float, float], s: torch.Tensor, limit: float = 1.2) -> torch.Tensor:
    s = s.clamp(-limit, limit)
    return coef[0] + s * (coef[1] + coef[2] * s)


def check_landmarks(landmarks, size: int) -> np.ndarray:
    """(478, 2) finite Face Mesh points of a face of at least 8 px inside a size x size reference; InputError if not."""
    marks = np.asarray(landmarks, dtype=np.float32)
    if marks.shape != (N_LANDMARKS, 2) or not np.isfinite(marks).all():
        raise InputError(f"landmarks must be ({N_LANDMARKS}, 2) finite Face Mesh points, got {marks.shape}")
    height = float(np.linalg.norm(marks[CHIN] - marks[FOREHEAD_TOP]))
    if height < 8 or not (np.abs(marks - size / 2) < size).all():
        raise InputError("landmarks do not describe a face inside the reference: frame the photo first "
                         "(actors.framing.frame_reference)")
    mouth = float(np.linalg.norm(marks[MOUTH_CORNERS[1]] - marks[MOUTH_CORNERS[0]])) / height
    eyes = min(float(np.linalg.norm(marks[right] - marks[left])) for left, right, *_ in EYES) / height
    if mouth < MIN_MOUTH_WIDTH or eyes < MIN_EYE_WIDTH:
        raise InputError(f"the face is turned too far from the camera to animate (mouth {mouth:.2f}, narrower eye "
                         f"{eyes:.2f} of the face's height; at least {MIN_MOUTH_WIDTH} and {MIN_EYE_WIDTH}): "
                         "use a photo that faces the camera")
    return marks


def eyes_note(reference: torch.Tensor, landmarks) -> str | None:
    """Why the eyes of a photo (1, 3, R, R) in [0, 1] with Face Mesh `landmarks` (478, 2) cannot blink or look
    around, in one line, or None when they can. An eye is shut when its lid gap is under EYE_CLOSED of its width;
    hidden when its opening shows no white: its brightest pixels darker than EYE_HIDDEN[0] of the cheeks, or no
    spread between bright and dark (sunglasses). Either way the rig draws the eyes as the photo has them: painting
    a closed lid over a shut eye, or an iris onto a lens, would be inventing a face."""
    m = check_landmarks(landmarks, reference.shape[-1])
    lum = (reference[0] * torch.tensor([0.299, 0.587, 0.114])[:, None, None]).sum(0)   # (R, R)
    size = reference.shape[-1]

    def at(points: np.ndarray) -> torch.Tensor:
        idx = torch.as_tensor(np.clip(points, 0, size - 1).astype(np.int64))
        return lum[idx[:, 1], idx[:, 0]]

    skin = float(at(m[list(CHEEKS)]).median())
    problems = []
    for left, right, upper, lower in EYES:
        width = float(np.linalg.norm(m[right] - m[left]))
        gap = float(np.linalg.norm(m[list(upper[2:5])] - m[list(lower[2:5])], axis=1).mean())
        if gap < EYE_CLOSED * width:
            problems.append("closed")
            continue
        # the pixels of the opening: a grid over the lid curves' span, kept between the two curves
        frame = _Frame.between(m[left], m[right], width)
        up = _curve(frame, np.concatenate([m[[left, right]], m[list(upper)]]))
        low = _curve(frame, np.concatenate([m[[left, right]], m[list(lower)]]))
        s, t = torch.meshgrid(torch.linspace(-0.8, 0.8, 17), torch.linspace(0, 1, 9), indexing="ij")
        top, bottom = _on_curve(up, s), _on_curve(low, s)
        points = frame.origin + frame.offset(s, top + (bottom - top) * (0.15 + 0.7 * t))
        values = at(points.reshape(-1, 2).numpy())
        bright, dark = float(torch.quantile(values, 0.9)), float(torch.quantile(values, 0.1))
        if bright < EYE_HIDDEN[0] * skin or bright - dark < EYE_HIDDEN[1]:
            problems.append("hidden")
    if not problems:
        return None
    which = "both eyes in the photo are" if len(problems) == 2 else "an eye in the photo is"
    return (f"{which} {' and '.join(sorted(set(problems)))}: animating it without blinks or gaze "
            "(a photo with open, visible eyes gets them)")


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
        # mouth: s = +-1 at the outer corners, t in face heights; the seam halfway between the inner lip lines
        self.mouth = _Frame.between(m[MOUTH_CORNERS[0]], m[MOUTH_CORNERS[1]], h)
        # lips already apart in the photo show its own teeth (in a smile, the upper row): the layers then split along
        # the lower lip's inner line, so the upper layer carries those teeth whole and only the lower row is painted.
        # Shut lips split halfway between their inner lines, and both rows are painted (`_interior`).
        self.parted = float(np.linalg.norm(m[14] - m[13])) / h > PARTED_LIPS
        seam = m[list(INNER_LOWER)] if self.parted else (m[list(INNER_UPPER)] + m[list(INNER_LOWER)]) / 2
        self.seam = _curve(self.mouth, seam)
        self.upper_inner = _curve(self.mouth, m[list(INNER_UPPER)]) if self.parted else self.seam
        # each lip's red (upper, lower), which thins as the lips spread: its inner edge's offset from the seam and
        # its thickness to the outer border (face heights, + down), in the mouth's middle
        middle = torch.zeros(1)
        self.lip_edges = []
        for inner, outer in ((INNER_UPPER, OUTER_LIPS[1:11]), (INNER_LOWER, OUTER_LIPS[10:])):
            edge = float(_on_curve(_curve(self.mouth, m[list(inner)]), middle))
            border = float(_on_curve(_curve(self.mouth, m[[OUTER_LIPS[0], *outer]]), middle))
            thick = border - edge                                             # never 0: a lip of no red
            self.lip_edges.append((edge - float(self.seam[0]), thick if abs(thick) > 1e-3 else 1e-3))
        self.chin_t = float(self.mouth.st(torch.as_tensor(m[CHIN]))[1])
        self._fit_interior(m)
        # eyes: s = +-1 at the corners, t in face heights (down); the lid curves, the iris, the box they act in
        # (none where the photo's eyes are shut or hidden: `eyes_note` says why, and they stay as the photo has them)
        self.eyes_note = eyes_note(self.image, m)
        self.eyes = [] if self.eyes_note else [self._fit_eye(m, *marks, iris, blink)
                                               for marks, iris, blink in zip(EYES, IRISES, ("blink_r", "blink_l"))]
        # brows: a band around each brow, its centre and half-size in px
        self.brows = [(torch.as_tensor(m[list(b)].mean(0)), float(np.ptp(m[list(b)][:, 0]) / 2)) for b in BROWS]
        reach = max(2.4 * half for _, half in self.brows) + 0.18 * h
        ends = torch.stack([c for c, _ in self.brows])
        self.brow_box = self._span(ends.amin(0) - reach, ends.amax(0) + reach)
        seam_t = _on_curve(self.seam, torch.linspace(-1.2, 1.2, 25))
        self.mouth_box = self._box(self.mouth, 2.8, float(seam_t.amin()) - 0.3, self.chin_t + 0.5)
        coords = (torch.arange(size, dtype=torch.float32) + 0.5)
        y, x = torch.meshgrid(coords, coords, indexing="ij")
        self.pixels = torch.stack([x, y], dim=-1)  # (R, R, 2) px centres
        self.sclera = self._without_irises()
        # head: a rounded face (an ellipsoid-like cap over the face oval, with a nose) turns in 3-D about its rim;
        # the head region (face, hair, ears) moves whole, the weight falling to 0 into the neck and background
        oval = m[list(FACE_OVAL)]
        lo, hi = oval.min(0), oval.max(0)
        self.face_centre, self.face_half = (lo + hi) / 2, (hi - lo) / 2          # px
        self.nose = m[NOSE_TIP]
        grow_x, grow_y, lift = HEAD_REGION
        centre = self.face_centre - (0.0, lift * h)
        self.head_centre, self.head_half = centre, self.face_half * (grow_x, grow_y)
        reach = self.head_half * (1 + HEAD_FEATHER)
        self.head_box = rows, cols = self._span(torch.as_tensor(centre - reach), torch.as_tensor(centre + reach),
                                                pad=1)
        ys, xs = (torch.linspace(a.start + 0.5, a.stop - 0.5, max(2, -(-(a.stop - a.start) // HEAD_GRID) + 1))
                  for a in (rows, cols))                                 # the box's first and last pixel centres
        self.head_grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)   # (h', w', 2) px
        self.pivot = torch.as_tensor(m[CHIN]) + 0.25 * h * self.mouth.down
        # a face already turned away in the photo turns and nods less (`turn_note` says so; None: in full)
        self.turn_gain = turn_gain(photo_pose(m))
        self.turn_note = turn_note(m)

    def _span(self, lo: torch.Tensor, hi: torch.Tensor, pad: float | None = None) -> tuple[slice, slice]:
        """(rows, columns) of the pixels between corners lo and hi (x, y px), widened by `pad` px (BOX_PAD face
        heights unless given), in the image."""
        pad = BOX_PAD * self.height if pad is None else pad
        lo, hi = (lo - pad).floor().int().clamp(0, self.size), (hi + pad).ceil().int().clamp(0, self.size)
        return slice(int(lo[1]), int(hi[1])), slice(int(lo[0]), int(hi[0]))

    def _box(self, frame: _Frame, s_half: float, t_top: float, t_bottom: float) -> tuple[slice, slice]:
        """The pixel box around |s| <= s_half, t_top <= t <= t_bottom of `frame`: where a layer's warp acts."""
        corners = torch.stack([frame.origin + frame.offset(torch.tensor(s), torch.tensor(t))
                               for s in (-s_half, s_half) for t in (t_top, t_bottom)])
        return self._span(corners.amin(0), corners.amax(0))

    def _mean_colour(self, points: np.ndarray) -> torch.Tensor:
        """Mean RGB (3,) of the photo at `points` (K, 2) px."""
        grid = torch.as_tensor(points, dtype=torch.float32) / self.size * 2 - 1  # (K, 2)
        return F.grid_sample(self.image, grid[None, None], align_corners=False)[0, :, 0].mean(1)

    def _fit_eye(self, m: np.ndarray, left: int, right: int, upper, lower, iris: int, blink: str) -> "_Eye":
        """One eye's geometry from its landmarks: lid curves through the corners, the iris's centre and radius
        (half its horizontal ring diameter: the vertical ring points sit on the lids), and the pixel box that the
        lids, their stretching skin bands and the moving iris stay inside."""
        frame = _Frame.between(m[left], m[right], self.height)
        up = _curve(frame, np.concatenate([m[[left, right]], m[list(upper)]]))
        low = _curve(frame, np.concatenate([m[[left, right]], m[list(lower)]]))
        across = torch.linspace(-1.3, 1.3, 27)
        top, bottom = _on_curve(up, across), _on_curve(low, across)
        gap = (bottom - top).clamp(min=0)
        opening = float(gap.amax())
        radius = max(float(np.linalg.norm(m[iris + 1] - m[iris + 3])) / 2, 0.05 * frame.s_unit)  # px, never 0
        box = self._box(frame, 1.3, float((top - LID_BAND * gap).amin()) - 2 / self.height,
                        float((bottom + LOW_BAND * gap).amax()) + 2 / self.height)
        # blink_l closes the subject's left eye, on the image's right (models/data/params.py)
        return _Eye(frame, up, low, opening, torch.as_tensor(m[iris], dtype=torch.float32), radius, box,
                    PARAM_INDEX[blink])

    def _without_irises(self) -> torch.Tensor:
        """The photo with each iris painted over by the white of its eye (1, 3, R, R): along each line through
        the iris parallel to the eye's axis, the colour goes linearly from the sclera at the iris's one side to
        the sclera at the other. A moved iris uncovers this where the photo's iris was."""
        out = self.image.clone()
        for eye in self.eyes:
            r = eye.iris_radius * IRIS_EDGE[1] + 1.0                          # px: past the iris's soft edge
            d = self.pixels - eye.iris
            inside = d.square().sum(-1) < r * r                              # (R, R)
            (s, t), (s0, t0) = eye.frame.st(self.pixels[inside]), eye.frame.st(eye.iris)
            u, v = (s - s0) * eye.frame.s_unit, t - t0                        # px along the eye, face heights across
            half = (r * r - (v * self.height).square()).clamp(min=1.0).sqrt()  # px: the chord's half length
            ends = [eye.iris + eye.frame.along * (sign * half[:, None]) + eye.frame.down * (v[:, None] * self.height)
                    for sign in (-1.0, 1.0)]
            a, b = (F.grid_sample(self.image, (e / self.size * 2 - 1)[None, None], align_corners=False,
                                  padding_mode="border")[0, :, 0] for e in ends)   # (3, K) each
            w = ((u + half) / (2 * half)).clamp(0, 1)
            out[0][:, inside] = a + w * (b - a)
        return out

    # ---- the layers' warps: forward displacement (px) of a photo point p (B, R, R, 2) --------------------------

    def _mouth_offset(self, p: torch.Tensor, prm: torch.Tensor, lower: bool) -> torch.Tensor:
        s, t = self.mouth.st(p)
        seam = _on_curve(self.seam, s)
        below = t - seam                                                     # face heights under the seam
        drop = JAW_DROP * prm[:, PARAM_INDEX["jaw_open"], None, None]
        if lower:
            depth = _smooth(below / max(self.chin_t - float(self.seam[0]), 1e-3))  # 0 at the seam, 1 at the chin
            core, fade = 0.15 + 0.6 * depth, 0.85 + 0.9 * depth              # full drop for |s| < core, 0 past +fade
            lateral = 1 - _smooth((s.abs() - core) / fade)
            under_chin = 1 - _smooth((t - self.chin_t) / 0.3)                # the neck stays
            dt = drop * lateral * under_chin
        else:
            lateral = 1 - _smooth((s.abs() - 0.15) / 0.85)
            # the rise is whole up to the upper lip's inner edge (the teeth the photo shows rise with it unsquashed)
            # and fades out over 0.1 face heights above it
            over = _on_curve(self.upper_inner, s) - t
            dt = -UPPER_LIP_RISE * drop * lateral * (1 - _smooth(over / 0.1))
        # the corners: out with lip_spread, in with lip_round, up with smile
        sides = 1 - _smooth((s.abs() - 1.0) / 0.8)                            # 1 to the corners, 0 past 1.8
        near = sides * (1 - _smooth((below.abs() - 0.05) / 0.15))
        spread = prm[:, PARAM_INDEX["lip_spread"], None, None]
        rnd = prm[:, PARAM_INDEX["lip_round"], None, None]
        ds = (SPREAD_GAIN * spread - ROUND_GAIN * rnd) * s.clamp(-1, 1) * near
        # the lip thins as it spreads (thickens as it narrows): its outer border moves towards its inner edge by
        # LIP_THIN of its thickness at lip_spread = 1, the inner edge stays, and the skin over (under) it follows,
        # less and less over 1.5 lip thicknesses. The edge and border run along the seam at their offsets in the
        # mouth's middle (cheaper than their own curves: this warp is evaluated at every step of both layers'
        # inverses over the whole mouth box)
        if bool((spread != 0).any()):
            edge, thick = self.lip_edges[int(lower)]
            x = (below - edge) / thick                                       # 0 at the inner edge, 1 at the border
            grow = x.clamp(0, 1) - ((x - 1) / 1.5).clamp(0, 1)
            dt = dt - (LIP_THIN * thick) * spread * grow * sides
        dt = dt - SMILE_GAIN * prm[:, PARAM_INDEX["smile"], None, None] * s.clamp(-1, 1).square() * near
        return self.mouth.offset(ds, dt)

    def _eye(self, q: torch.Tensor, plain: torch.Tensor, prm: torch.Tensor, eye: _Eye) -> torch.Tensor:
        """One eye, drawn at the still-face points q (B, h, w, 2) of its box: (B, 3, h, w).

        The eye is two layers. In front, the lid skin: blink moves the upper lid's edge down along its own curve
        until it meets the lower lid, which rises LOWER_RISE of the opening, and covers the lower lid's lash line
        (LID_OVERLAP of the opening: a shut eye shows one lash line); its own lash line (LASH of the opening over
        the edge) moves with it whole, and the band of lid skin above it (LID_BAND) unrolls over the eye,
        so the crease and the brow above it stay where they are. Behind, the eyeball: the photo's own, with its
        iris moved by the gaze (the photo's iris painted over by its sclera where it was) and cut off by the
        lids; iris pixels that the photo's lids hid are taken mirrored from the visible ones. At rest both
        layers are the photo's pixels (`plain`): the eye renders as itself."""
        f, px = eye.frame, self.height                                       # px per face height
        s, t = f.st(q)
        up, low = _on_curve(eye.upper, s), _on_curve(eye.lower, s)
        gap = (low - up).clamp(min=0)
        blink = prm[:, eye.blink, None, None].clamp(0, 1)
        gaze_x = prm[:, PARAM_INDEX["gaze_x"], None, None].clamp(-1, 1)
        gaze_y = prm[:, PARAM_INDEX["gaze_y"], None, None].clamp(-1, 1)
        edge_up = up + (1 - LOWER_RISE + LID_OVERLAP) * gap * blink          # where the lids' edges are now
        edge_low = low - LOWER_RISE * gap * blink
        # the lid skin: where in the photo each point of the moved lids comes from (t only, per column s)
        drop, band, lash = edge_up - up, LID_BAND * gap + 1e-6, LASH * gap
        crease = up - band                                                  # above it nothing moves
        unrolled = crease + (t - crease) * (band - lash) / (band - lash + drop)
        src_up = torch.where(t < crease, t, torch.where(t < edge_up - lash, unrolled, t - drop))
        rise, low_band = low - edge_low, LOW_BAND * gap + 1e-6
        floor = low + low_band                                              # below it nothing moves
        src_low = torch.where(t > floor, t, torch.where(t > edge_low, floor - (floor - t) * low_band /
                                                        (low_band + rise), t + rise))
        src = torch.where(t < torch.maximum((edge_up + edge_low) / 2, edge_up), src_up, src_low)  # upper in front
        skin = self._sample(q + f.offset(torch.zeros_like(t), src - t))
        lids = (((edge_up - t) * px + 0.5).clamp(0, 1) + ((t - edge_low) * px + 0.5).clamp(0, 1)).clamp(max=1)
        lids = lids[:, None]
        # the eyeball: the iris moved by the gaze, mirrored back into the photo's opening where it was hidden
        shift = f.offset(gaze_x * GAZE_X, gaze_y * (GAZE_Y * eye.opening / 2))  # (B, 1, 1, 2) px
        moved = q - shift
        ms, mt = f.st(moved)
        top, bottom = _on_curve(eye.upper, ms) - 0.5 / px, _on_curve(eye.lower, ms) + 0.5 / px
        mirrored = torch.where(mt < top, 2 * top - mt, torch.where(mt > bottom, 2 * bottom - mt, mt))
        mirrored = torch.minimum(torch.maximum(mirrored, top), bottom)
        iris = self._sample(moved + f.offset(torch.zeros_like(mt), mirrored - mt))
        sclera = self._sample(q, self.sclera)
        inner, outer = IRIS_EDGE[0] * eye.iris_radius, IRIS_EDGE[1] * eye.iris_radius
        was = (1 - _smooth(((q - eye.iris).norm(dim=-1) - inner) / (outer - inner)))[:, None]
        now = (1 - _smooth(((moved - eye.iris).norm(dim=-1) - inner) / (outer - inner)))[:, None]
        eyeball = plain + now * (iris - sclera) - was * (plain - sclera)
        return eyeball + lids * (skin - eyeball)

    def _brow_offset(self, p: torch.Tensor, prm: torch.Tensor) -> torch.Tensor:
        raise_ = prm[:, PARAM_INDEX["brow_raise"], None, None]
        dt = torch.zeros_like(p[..., 0])
        s, t = self.mouth.st(p)  # an elliptic band around each brow, "up" taken from the mouth's frame
        for centre, half in self.brows:
            cs, ct = self.mouth.st(centre)
            dist = torch.sqrt(((s - float(cs)) * (self.mouth.s_unit / (1.6 * half))) ** 2
                              + ((t - float(ct)) / 0.12) ** 2)
            dt = dt - BROW_GAIN * raise_ * (1 - _smooth(dist - 0.5))
        return self.mouth.offset(torch.zeros_like(dt), dt)

    def _head_motion(self, prm: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The head's motion per frame, each (B, 1, 1): cos and sin of yaw, pitch and roll, scale, shift x, y (px).
        Yaw and pitch are drawn at the generator's angles (up to MAX_TURN) times the photo's `turn_gain`, roll at
        ROLL_GAIN of them, scale and shift at SHIFT_GAIN of the synthetic heads'."""
        def g(name: str) -> torch.Tensor:
            return prm[:, PARAM_INDEX[name], None, None]
        yaw = self.turn_gain * g("head_yaw").clamp(-MAX_TURN, MAX_TURN)
        pitch = self.turn_gain * g("head_pitch").clamp(-MAX_TURN, MAX_TURN)
        roll = ROLL_GAIN * g("head_roll")
        return (yaw.cos(), yaw.sin(), pitch.cos(), pitch.sin(), roll.cos(), roll.sin(),
                1 + SHIFT_GAIN * (g("head_scale") - 1), SHIFT_GAIN * g("head_x") * self.size,
                SHIFT_GAIN * g("head_y") * self.size)

    def _head_weight(self, q: torch.Tensor) -> torch.Tensor:
        """(...) weight of the head motion at points q (..., 2) px: 1 in the head region, 0 past its feather."""
        (hx, hy), (hw, hh) = self.head_centre.tolist(), self.head_half.tolist()
        r = ((q[..., 0] - hx) / hw).square() + ((q[..., 1] - hy) / hh).square()
        return 1 - _smooth((r.sqrt() - 1) / HEAD_FEATHER)

    def _turn_offset(self, q: torch.Tensor, motion: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Forward displacement (px) of photo points q (B, h, w, 2) as the head turns (yaw) and nods (pitch).

        Each point has a depth: a cap over the face oval, FACE_DEPTH face half widths high in its middle and 0 at
        its rim, (1 - r^2)^1.5 in between (flat at the rim, so no fold there), plus a Gaussian nose; under and
        around it a lower cap (HAIR_DEPTH) over the whole head region, so the hair over the forehead turns with
        the face and only the head's outline stays. Yaw turns it about the vertical axis through the oval's centre
        in the rim's plane and pitch about the horizontal one, seen from the front (orthographic): the nose moves
        most, the ears hardly."""
        cos_y, sin_y, cos_p, sin_p = motion[:4]
        (fx, fy), (ax, ay) = self.face_centre.tolist(), self.face_half.tolist()
        x, y = q[..., 0] - fx, q[..., 1] - fy
        cap = (1 - (x / ax).square() - (y / ay).square()).clamp(min=0)
        nx, ny = self.nose.tolist()
        nose = torch.exp(((q[..., 0] - nx).square() + (q[..., 1] - ny).square())
                         * (-0.5 / (NOSE_WIDTH * self.height) ** 2))
        (hx, hy), (hw, hh) = self.head_centre.tolist(), self.head_half.tolist()
        skull = (1 - ((q[..., 0] - hx) / hw).square() - ((q[..., 1] - hy) / hh).square()).clamp(min=0)
        z = ax * (torch.maximum(FACE_DEPTH * cap * cap.sqrt(), HAIR_DEPTH * skull * skull.sqrt()) + NOSE_DEPTH * nose)
        turn_x = x * (cos_y - 1) + z * sin_y                                 # yaw: + turns the nose image right
        turn_y = y * (cos_p - 1) + (z * cos_y - x * sin_y) * sin_p           # pitch: + nods the nose down
        return self._head_weight(q)[..., None] * torch.stack([turn_x, turn_y], -1)

    def _head_inverse(self, prm: torch.Tensor) -> torch.Tensor:
        """Where in the still photo each output pixel comes from under head motion: (B, R, R, 2).

        The head turns in depth (`_turn_offset`), then rolls and grows about a pivot under the chin and shifts.
        The roll, scale and shift are undone at once, by the rigid inverse weighted at the output point (a
        weighted rigid motion has no exact inverse, and this one is smooth and never folds); the turn by
        fixed-point steps. Both act in the head box only (the weight is 0 outside it), and are smooth on the scale
        of the nose, so they are found on a grid of HEAD_GRID px over the box and interpolated bilinearly between:
        a sixteenth of the arithmetic of every pixel, within a third of a pixel of it at the largest turns."""
        n = prm.shape[0]
        motion = self._head_motion(prm)
        *_, cos_r, sin_r, scale, dx, dy = motion
        grid = self.head_grid[None]                                          # (1, h', w', 2)
        px, py = self.pivot.tolist()
        gx, gy = grid[..., 0] - px, grid[..., 1] - py                        # from the pivot
        rx, ry = (gx - dx) / scale, (gy - dy) / scale
        unrolled = torch.stack([cos_r * rx + sin_r * ry - gx, -sin_r * rx + cos_r * ry - gy], -1)  # px, from grid
        turned = grid + self._head_weight(grid)[..., None] * unrolled        # (B, h', w', 2)
        back = self._invert(turned, lambda q: self._turn_offset(q, motion)) - grid
        rows, cols = self.head_box
        size = (rows.stop - rows.start, cols.stop - cols.start)
        back = F.interpolate(back.permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=True)
        base = self.pixels[None].expand(n, -1, -1, -1).clone()
        base[:, rows, cols] += back.permute(0, 2, 3, 1)
        return base

    @staticmethod
    def _invert(target: torch.Tensor, offset) -> torch.Tensor:
        """The photo point q with q + offset(q) = target, (B, R, R, 2), by fixed-point steps from the target."""
        q = target - offset(target)
        for _ in range(INVERSE_STEPS - 1):
            q = target - offset(q)
        return q

    def _sample(self, q: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        """The photo (or `image`, (1, 3, R, R)) at points q (B, h, w, 2) px, bilinear: (B, 3, h, w)."""
        grid = q / self.size * 2 - 1
        image = self.image if image is None else image
        return F.grid_sample(image.expand(q.shape[0], -1, -1, -1), grid, mode="bilinear",
                             padding_mode="border", align_corners=False)

    def _side(self, q: torch.Tensor, frame: _Frame, coef: torch.Tensor) -> torch.Tensor:
        """Pixels of q below the curve (negative: above), (B, 1, R, R)."""
        s, t = frame.st(q)
        return ((t - _on_curve(coef, s)) * self.height)[:, None]

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
        # Each layer's warp is zero outside its box (_box): it is evaluated there only, on the head-moved points.
        base = self._head_inverse(prm)                                       # (B, R, R, 2)
        rows, cols = self.brow_box
        base[:, rows, cols] = self._invert(base[:, rows, cols], lambda q: self._brow_offset(q, prm))
        plain = self._sample(base)                                           # (B, 3, R, R): the moved photo
        out = plain.clone()
        # eyes: the lids close over the eyeball, the irises move inside it
        for eye in self.eyes:
            rows, cols = eye.box
            out[:, :, rows, cols] = self._eye(base[:, rows, cols], plain[:, :, rows, cols], prm, eye)
        # mouth: the upper and lower layers part along the seam; the interior shows between them
        rows, cols = self.mouth_box
        at, still = base[:, rows, cols], plain[:, :, rows, cols]  # the box may reach the lids: add to `out`
        q_up = self._invert(at, lambda q: self._mouth_offset(q, prm, lower=False))
        q_lo = self._invert(at, lambda q: self._mouth_offset(q, prm, lower=True))
        side_up, side_lo = self._side(q_up, self.mouth, self.seam), self._side(q_lo, self.mouth, self.seam)
        a_up = (0.5 - side_up).clamp(0, 1)
        a_lo = (0.5 + side_lo).clamp(0, 1)
        gap = (1 - a_up - a_lo).clamp(0, 1)
        mouth = a_up * self._sample(q_up) + a_lo * self._sample(q_lo)
        # the inside is drawn only over the rows and columns where the mouth is open in some frame
        inside = torch.zeros_like(mouth)
        shown = gap.amax(dim=(0, 1)) > 0                                     # (h, w)
        if shown.any():
            r, c = torch.nonzero(shown.any(1))[:, 0], torch.nonzero(shown.any(0))[:, 0]
            r, c = slice(int(r[0]), int(r[-1]) + 1), slice(int(c[0]), int(c[-1]) + 1)
            inside[..., r, c] = self._interior(at[:, r, c], side_up[..., r, c], side_lo[..., r, c], prm)
        out[:, :, rows, cols] += mouth + gap * inside - still * (a_up + a_lo + gap)
        return out.clamp(0, 1)

    def _fit_interior(self, m: np.ndarray) -> None:
        """The open mouth's colours, from the photo: the lips', the skin's (the exposure) and, where the photo's lips
        are apart, its own teeth's: the brighter half of the pixels between the inner lip lines across the middle
        of the mouth, if they are brighter than the lips and nearly grey (teeth, not a dark open mouth). Otherwise
        the teeth are OFF_WHITE at the photo's exposure, tinted a little by its light (the skin's hue)."""
        lips = self.lip_colour = self._mean_colour(m[list(OUTER_LIPS)])
        skin = self._mean_colour(m[list(CHEEKS)])
        exposure = float((skin * torch.tensor([0.299, 0.587, 0.114])).sum() / 0.6)
        exposure = min(max(exposure, 0.5), 1.0)                               # teeth never glare
        # the photo's light: the skin's tint over its mean, a little of it (a warm photo has warm-white teeth)
        teeth = torch.tensor(OFF_WHITE) * exposure * (skin / skin.mean().clamp(min=1e-3)).clamp(0.5, 2) ** 0.3
        if self.parted:
            up, low = _curve(self.mouth, m[list(INNER_UPPER)]), _curve(self.mouth, m[list(INNER_LOWER)])
            s, v = torch.meshgrid(torch.linspace(-0.45, 0.45, 19), torch.linspace(0.2, 0.8, 7), indexing="ij")
            top, bottom = _on_curve(up, s), _on_curve(low, s)
            points = self.mouth.origin + self.mouth.offset(s, top + (bottom - top) * v)
            grid = points.reshape(1, 1, -1, 2) / self.size * 2 - 1
            colours = F.grid_sample(self.image, grid, align_corners=False)[0, :, 0].T               # (K, 3)
            lum = colours @ torch.tensor([0.299, 0.587, 0.114])
            bright = colours[lum >= lum.median()].mean(0)
            grey = (bright.max() - bright.min()) / bright.max().clamp(min=1e-3)
            if float(bright @ torch.tensor([0.299, 0.587, 0.114])) > 1.1 * float(lips @ torch.tensor(
                    [0.299, 0.587, 0.114])) and grey < 0.35:
                teeth = bright
        self.teeth = teeth.clamp(0, 1)[None, :, None, None]
        self.throat = [(lips * torch.tensor(c))[None, :, None, None] for c in THROAT]
        self.tongue = ((lips + 2 * torch.tensor(TONGUE_RED) * exposure) / 3)[None, :, None, None]
        self.rim = (lips * torch.tensor([0.82, 0.6, 0.62]))[None, :, None, None]

    def _teeth_row(self, s: torch.Tensor, arc: float) -> tuple[torch.Tensor, torch.Tensor]:
        """One row of teeth across the mouth at mouth coordinate s (B, 1, h, w): how far (px) each tooth's biting
        edge recedes from the row's line (its rounded corners), and its shading across (1 in a tooth's middle).

        The teeth stand on a circular arch seen from the front: the tooth at arch angle a sits at s = ARCH sin(a),
        each `arc` radians wide, so they narrow towards the corners, with the middle gap at s = 0. Each tooth's
        biting corners are rounded (TOOTH_CORNER), which leaves small notches between neighbours; a soft darker
        line (TOOTH_GAP) separates them; each is brightest in its middle (rounded enamel) and darker towards the
        mouth corners (inside the cheeks)."""
        px = self.height
        angle = torch.asin((s / ARCH).clamp(-0.99, 0.99))
        u = angle / arc
        f = u - u.floor()
        mid = torch.minimum(f, 1 - f)                                       # 0 at a gap, 0.5 in a tooth's middle
        edge = mid * (arc * ARCH * self.mouth.s_unit) * angle.cos()        # px to the nearest gap
        r = TOOTH_CORNER * px
        corner = (r - edge).clamp(min=0)
        recess = r - (r * r - corner.square()).clamp(min=0).sqrt()
        line = torch.exp(-(edge / (TOOTH_GAP * px)).square())
        shade = (1 - 0.22 * line) * (1 - 0.1 * (1 - 2 * mid).square()) * (1 - 0.6 * _smooth((s.abs() - 0.3) / 0.6))
        return recess, shade

    def _interior(self, at: torch.Tensor, side_up: torch.Tensor, side_lo: torch.Tensor,
                  prm: torch.Tensor) -> torch.Tensor:
        """The open mouth's inside (B, 3, h, w) at the head-moved points `at` (B, h, w, 2), `side_up` px under the
        upper layer's edge and `-side_lo` px over the lower one's (B, 1, h, w).

        Back to front: the throat, dark red by the lips and cheeks and darkest deep in the middle; the tongue, a
        rounded reddish mound on the floor of the mouth behind the lower teeth, rising with the jaw (lit at the
        front, darker towards its back and sides, a faint groove down its middle); the lower teeth, which drop
        with the jaw whole (a rigid row: where the lip drops less, towards the corners, it hides them), their
        edges LOWER_TEETH over the lip's middle; the upper teeth, which stay with the skull, their edges
        UPPER_TEETH under the lips' seam (unless the photo's own show: the upper layer carries those); the lips'
        inner edge, a darker moist band along the opening. Teeth shade darker towards the lip they grow from (the
        gum line, in its shadow). All of it is placed in the still face's frame and from the parameters alone (the
        rows do not stretch as the lips spread), so nothing flickers from frame to frame."""
        px = self.height
        s, t = self.mouth.st(at)
        s, t = s[:, None], t[:, None]                                       # (B, 1, h, w)
        seam = _on_curve(self.seam, s)
        drop = JAW_DROP * prm[:, PARAM_INDEX["jaw_open"], None, None, None]
        d_up, d_lo = side_up, -side_lo
        opening = (d_up + d_lo).clamp(min=1.0)
        v = (d_up / opening).clamp(0, 1)
        near, far = self.throat
        deep = (1 - _smooth((s.abs() - 0.1) / 0.7)) * 4 * v * (1 - v)
        colour = near + deep * (far - near)
        # the lower teeth's biting line, px: the row's line moves with the jaw
        lower = (t - (seam + drop - LOWER_TEETH)) * px
        across = (1 - (s / TONGUE[1]).square()).clamp(min=0)
        floor = (t - (float(self.seam[0]) + drop - LOWER_TEETH)) * px       # the same line, level across the mouth
        top = floor + TONGUE[0] * drop * px * across.sqrt()                  # px under the tongue's top
        tongue = (top + 0.5).clamp(0, 1)
        back = (1 - top / (TONGUE[0] * drop * px + 1.0)).clamp(0, 1)
        groove = torch.exp(-(s * (self.mouth.s_unit / (0.012 * px))).square())
        shade = (1 - 0.45 * back.square()) * (0.6 + 0.4 * across) * (1 - 0.15 * groove)
        colour = colour + tongue * (self.tongue * shade - colour)
        recess, shade = self._teeth_row(s, TOOTH_ARC[1])
        cover = (lower - recess + 0.5).clamp(0, 1)
        gum = 1 - 0.25 * (1 - _smooth(d_lo / (0.5 * LOWER_TEETH * px)))
        colour = colour + cover * (0.95 * self.teeth * shade * gum - colour)
        rim = 1 - _smooth(d_lo / (RIM * px))
        if not self.parted:
            recess, shade = self._teeth_row(s, TOOTH_ARC[0])
            cover = ((seam + UPPER_TEETH - t) * px - recess + 0.5).clamp(0, 1)
            gum = 1 - 0.35 * (1 - _smooth(d_up / (0.5 * UPPER_TEETH * px)))
            colour = colour + cover * (self.teeth * shade * gum - colour)
            rim = torch.maximum(rim, 1 - _smooth(d_up / (RIM * px)))
        return colour + 0.7 * rim * (self.rim - colour)
