"""The photo rig's eyes: each a lid layer over an eyeball layer, fitted to a photo's Face Mesh lids and iris.

    eyes = EyeLayers(image, landmarks, height, pixels)   # fitted once (none where `eyes_note` says why)
    eyes.draw(out, base, plain, prm)                     # per batch, over each eye's box of the frames `out`

A blink moves the upper lid's edge down along its own curve, with its lash line, until it meets the lower lid,
which rises a little; the thin band of lid skin over the lash line unrolls to cover the eye, so the crease and brow
above stay put. The gaze moves the photo's iris (the refined landmarks' iris centre and ring) inside the opening,
over the sclera painted where the iris was, and the lids cut it off. A photo whose eyes are shut or hidden keeps
them as they are (`eyes_note`).
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from actorcast.models.data.params import PARAM_INDEX
from actorcast.models.photo.geometry import (
    CHEEKS,
    EYES,
    IRISES,
    Frame,
    box,
    check_landmarks,
    curve,
    on_curve,
    sample,
    smooth,
)

LOWER_RISE = 0.15        # of the opening: the lower lid rises this far to meet the closing upper lid
LID_OVERLAP = 0.15       # of the opening: the shut upper lid reaches this far over the lower one (its lash line)
LID_BAND = 1.0           # of the opening: the lid skin this far above the lash line unrolls over the closing eye
LASH = 0.35              # of the opening: the lash line's thickness, carried whole (not stretched) by the lid's edge
LOW_BAND = 0.5           # of the opening: the skin under the lower lid that stretches as the lid rises
GAZE_X, GAZE_Y = 0.5, 0.35  # iris travel at gaze 1: of the eye's half width / half opening (as the cartoons draw it)
EYE_CLOSED = 0.15        # lid gap / eye width under this in the photo: the eye is shut (open eyes read ~0.3-0.4)
EYE_HIDDEN = (0.5, 0.15) # the opening's bright end (90th percentile luminance) under this share of the cheeks', or
                         # its spread (90th - 10th) under this: no white of the eye shows (sunglasses, a hand)
IRIS_EDGE = (0.9, 1.15)  # iris radii: the moved iris's weight falls 1 -> 0 between them (the limbal ring inside)


@dataclass(frozen=True)
class Eye:
    """One eye of the photo: its frame (s = +-1 at the corners, t in face heights), lid curves, iris and box."""

    frame: Frame
    upper: tuple[float, float, float]   # upper lid curve (geometry.curve)
    lower: tuple[float, float, float]   # lower lid curve
    opening: float                      # face heights: the widest gap between the lids
    iris: torch.Tensor                  # (2,) px: the iris centre
    iris_radius: float                  # px
    box: tuple[slice, slice]            # the pixels the lids and the iris act in
    blink: int                          # PARAM_INDEX of the blink that closes it


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
        frame = Frame.between(m[left], m[right], width)
        up = curve(frame, np.concatenate([m[[left, right]], m[list(upper)]]))
        low = curve(frame, np.concatenate([m[[left, right]], m[list(lower)]]))
        s, t = torch.meshgrid(torch.linspace(-0.8, 0.8, 17), torch.linspace(0, 1, 9), indexing="ij")
        top, bottom = on_curve(up, s), on_curve(low, s)
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


class EyeLayers:
    """Both eyes of one photo (1, 3, R, R) with checked Face Mesh points m (478, 2), `height` px from forehead to
    chin and pixel centres `pixels` (R, R, 2): fitted once, drawn per batch. `still`: no eye layers (the photo's
    eyes are shut or hidden, `eyes_note`), so they render as the photo has them."""

    def __init__(self, image: torch.Tensor, m: np.ndarray, height: float, pixels: torch.Tensor,
                 still: bool = False) -> None:
        self.image, self.height = image, height
        self.eyes = [] if still else [self._fit(m, *marks, iris, blink)
                                      for marks, iris, blink in zip(EYES, IRISES, ("blink_r", "blink_l"))]
        self.sclera = self._without_irises(pixels)

    def _fit(self, m: np.ndarray, left: int, right: int, upper, lower, iris: int, blink: str) -> Eye:
        """One eye's geometry from its landmarks: lid curves through the corners, the iris's centre and radius
        (half its horizontal ring diameter: the vertical ring points sit on the lids), and the pixel box that the
        lids, their stretching skin bands and the moving iris stay inside."""
        frame = Frame.between(m[left], m[right], self.height)
        up = curve(frame, np.concatenate([m[[left, right]], m[list(upper)]]))
        low = curve(frame, np.concatenate([m[[left, right]], m[list(lower)]]))
        across = torch.linspace(-1.3, 1.3, 27)
        top, bottom = on_curve(up, across), on_curve(low, across)
        gap = (bottom - top).clamp(min=0)
        opening = float(gap.amax())
        radius = max(float(np.linalg.norm(m[iris + 1] - m[iris + 3])) / 2, 0.05 * frame.s_unit)  # px, never 0
        where = box(frame, 1.3, float((top - LID_BAND * gap).amin()) - 2 / self.height,
                    float((bottom + LOW_BAND * gap).amax()) + 2 / self.height, self.height, self.image.shape[-1])
        # blink_l closes the subject's left eye, on the image's right (models/data/params.py)
        return Eye(frame, up, low, opening, torch.as_tensor(m[iris], dtype=torch.float32), radius, where,
                   PARAM_INDEX[blink])

    def _without_irises(self, pixels: torch.Tensor) -> torch.Tensor:
        """The photo with each iris painted over by the white of its eye (1, 3, R, R): along each line through
        the iris parallel to the eye's axis, the colour goes linearly from the sclera at the iris's one side to
        the sclera at the other. A moved iris uncovers this where the photo's iris was."""
        out = self.image.clone()
        size = self.image.shape[-1]
        for eye in self.eyes:
            r = eye.iris_radius * IRIS_EDGE[1] + 1.0                          # px: past the iris's soft edge
            d = pixels - eye.iris
            inside = d.square().sum(-1) < r * r                              # (R, R)
            (s, t), (s0, t0) = eye.frame.st(pixels[inside]), eye.frame.st(eye.iris)
            u, v = (s - s0) * eye.frame.s_unit, t - t0                        # px along the eye, face heights across
            half = (r * r - (v * self.height).square()).clamp(min=1.0).sqrt()  # px: the chord's half length
            ends = [eye.iris + eye.frame.along * (sign * half[:, None]) + eye.frame.down * (v[:, None] * self.height)
                    for sign in (-1.0, 1.0)]
            a, b = (F.grid_sample(self.image, (e / size * 2 - 1)[None, None], align_corners=False,
                                  padding_mode="border")[0, :, 0] for e in ends)   # (3, K) each
            w = ((u + half) / (2 * half)).clamp(0, 1)
            out[0][:, inside] = a + w * (b - a)
        return out

    def draw(self, out: torch.Tensor, base: torch.Tensor, plain: torch.Tensor, prm: torch.Tensor) -> None:
        """Each eye into its box of the frames `out` (B, 3, R, R), in place: at the head-moved points `base`
        (B, R, R, 2) over the moved photo `plain` (B, 3, R, R), by the relative parameters `prm` (B, N_PARAMS)."""
        for eye in self.eyes:
            rows, cols = eye.box
            out[:, :, rows, cols] = self._eye(base[:, rows, cols], plain[:, :, rows, cols], prm, eye)

    def _eye(self, q: torch.Tensor, plain: torch.Tensor, prm: torch.Tensor, eye: Eye) -> torch.Tensor:
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
        up, low = on_curve(eye.upper, s), on_curve(eye.lower, s)
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
        skin = sample(self.image, q + f.offset(torch.zeros_like(t), src - t))
        lids = (((edge_up - t) * px + 0.5).clamp(0, 1) + ((t - edge_low) * px + 0.5).clamp(0, 1)).clamp(max=1)
        lids = lids[:, None]
        # the eyeball: the iris moved by the gaze, mirrored back into the photo's opening where it was hidden
        shift = f.offset(gaze_x * GAZE_X, gaze_y * (GAZE_Y * eye.opening / 2))  # (B, 1, 1, 2) px
        moved = q - shift
        ms, mt = f.st(moved)
        top, bottom = on_curve(eye.upper, ms) - 0.5 / px, on_curve(eye.lower, ms) + 0.5 / px
        mirrored = torch.where(mt < top, 2 * top - mt, torch.where(mt > bottom, 2 * bottom - mt, mt))
        mirrored = torch.minimum(torch.maximum(mirrored, top), bottom)
        iris = sample(self.image, moved + f.offset(torch.zeros_like(mt), mirrored - mt))
        sclera = sample(self.sclera, q)
        inner, outer = IRIS_EDGE[0] * eye.iris_radius, IRIS_EDGE[1] * eye.iris_radius
        was = (1 - smooth(((q - eye.iris).norm(dim=-1) - inner) / (outer - inner)))[:, None]
        now = (1 - smooth(((moved - eye.iris).norm(dim=-1) - inner) / (outer - inner)))[:, None]
        eyeball = plain + now * (iris - sclera) - was * (plain - sclera)
        return eyeball + lids * (skin - eyeball)
