"""The photo rig's open mouth: its inside, drawn procedurally where neither lip layer lands.

    interior = MouthInterior(image, landmarks, mouth, seam, parted, height)   # colours fitted once from the photo
    inside = interior.draw(at, side_up, side_lo, drop)                         # per batch, over the mouth's box

Back to front: a dark throat, a tongue, the lower teeth dropping with the jaw, the upper teeth staying with the
skull (the photo's own where it shows them, carried by the upper lip's layer), with the gaps and shading of real
teeth, and the lips' darker inner edge, in colours taken from the photo's lips, skin and teeth.
"""

import numpy as np
import torch
import torch.nn.functional as F

from actorcast.models.photo.geometry import (
    CHEEKS,
    INNER_LOWER,
    INNER_UPPER,
    OUTER_LIPS,
    Frame,
    curve,
    mean_colour,
    on_curve,
    smooth,
)

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
THROAT = ((0.45, 0.2, 0.2), (0.12, 0.04, 0.05))  # the open mouth's inside near the lips and cheeks, and deep in
                                                   # the throat: shares of the lips' colour per channel
TONGUE_RED = (0.7, 0.3, 0.32)    # a tongue's colour in a well-exposed photo, mixed 2:1 with the lips'
OFF_WHITE = (0.9, 0.86, 0.77)    # teeth where the photo shows none, in a well-exposed photo


class MouthInterior:
    """The inside of one photo's mouth (1, 3, R, R), with checked Face Mesh points m (478, 2): its colours fitted
    once, then `draw` per batch. `mouth` is the rig's mouth frame (s = +-1 at the corners, t in face heights),
    `seam` the curve the lip layers part along, `parted` whether the photo's lips are apart (its own upper teeth
    show, and only the lower row is painted), `height` px from forehead to chin."""

    def __init__(self, image: torch.Tensor, m: np.ndarray, mouth: Frame, seam: tuple[float, float, float],
                 parted: bool, height: float) -> None:
        self.image, self.size, self.mouth, self.seam, self.parted, self.height = (
            image, image.shape[-1], mouth, seam, parted, height)
        self._fit(m)

    def _fit(self, m: np.ndarray) -> None:
        """The open mouth's colours, from the photo: the lips', the skin's (the exposure) and, where the photo's lips
        are apart, its own teeth's: the brighter half of the pixels between the inner lip lines across the middle
        of the mouth, if they are brighter than the lips and nearly grey (teeth, not a dark open mouth). Otherwise
        the teeth are OFF_WHITE at the photo's exposure, tinted a little by its light (the skin's hue)."""
        lips = mean_colour(self.image, m[list(OUTER_LIPS)])
        skin = mean_colour(self.image, m[list(CHEEKS)])
        exposure = float((skin * torch.tensor([0.299, 0.587, 0.114])).sum() / 0.6)
        exposure = min(max(exposure, 0.5), 1.0)                               # teeth never glare
        # the photo's light: the skin's tint over its mean, a little of it (a warm photo has warm-white teeth)
        teeth = torch.tensor(OFF_WHITE) * exposure * (skin / skin.mean().clamp(min=1e-3)).clamp(0.5, 2) ** 0.3
        if self.parted:
            up, low = curve(self.mouth, m[list(INNER_UPPER)]), curve(self.mouth, m[list(INNER_LOWER)])
            s, v = torch.meshgrid(torch.linspace(-0.45, 0.45, 19), torch.linspace(0.2, 0.8, 7), indexing="ij")
            top, bottom = on_curve(up, s), on_curve(low, s)
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
        shade = (1 - 0.22 * line) * (1 - 0.1 * (1 - 2 * mid).square()) * (1 - 0.6 * smooth((s.abs() - 0.3) / 0.6))
        return recess, shade

    def draw(self, at: torch.Tensor, side_up: torch.Tensor, side_lo: torch.Tensor,
             drop: torch.Tensor) -> torch.Tensor:
        """The open mouth's inside (B, 3, h, w) at the head-moved points `at` (B, h, w, 2), `side_up` px under the
        upper layer's edge and `-side_lo` px over the lower one's (B, 1, h, w), the jaw dropped by `drop` face
        heights (B, 1, 1, 1).

        Back to front: the throat, dark red by the lips and cheeks and darkest deep in the middle; the tongue, a
        rounded reddish mound on the floor of the mouth behind the lower teeth, rising with the jaw (lit at the
        front, darker towards its back and sides, a faint groove down its middle); the lower teeth, which drop
        with the jaw whole (a rigid row: where the lip drops less, towards the corners, it hides them), their
        edges LOWER_TEETH over the lip's middle; the upper teeth, which stay with the skull, their edges
        UPPER_TEETH under the lips' seam (unless the photo's own show: the upper layer carries those); the lips'
        inner edge, a darker moist band along the opening. Teeth shade darker towards the lip they grow from (the
        gum line, in its shadow). All of it is placed in the still face's frame and from the parameters alone (the
        rows do not stretch as the lips spread), so nothing flickers from frame to frame."""
        s, t = self.mouth.st(at)
        return self.draw_st(s, t, side_up, side_lo, drop)

    def draw_st(self, s: torch.Tensor, t: torch.Tensor, side_up: torch.Tensor, side_lo: torch.Tensor,
                drop: torch.Tensor) -> torch.Tensor:
        """`draw` at the head-moved points given in the mouth's frame, s and t (B, h, w)."""
        px = self.height
        s, t = s[:, None], t[:, None]                                       # (B, 1, h, w)
        seam = on_curve(self.seam, s)
        d_up, d_lo = side_up, -side_lo
        opening = (d_up + d_lo).clamp(min=1.0)
        v = (d_up / opening).clamp(0, 1)
        near, far = self.throat
        deep = (1 - smooth((s.abs() - 0.1) / 0.7)) * 4 * v * (1 - v)
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
        gum = 1 - 0.25 * (1 - smooth(d_lo / (0.5 * LOWER_TEETH * px)))
        colour = colour + cover * (0.95 * self.teeth * shade * gum - colour)
        rim = 1 - smooth(d_lo / (RIM * px))
        if not self.parted:
            recess, shade = self._teeth_row(s, TOOTH_ARC[0])
            cover = ((seam + UPPER_TEETH - t) * px - recess + 0.5).clamp(0, 1)
            gum = 1 - 0.35 * (1 - smooth(d_up / (0.5 * UPPER_TEETH * px)))
            colour = colour + cover * (self.teeth * shade * gum - colour)
            rim = torch.maximum(rim, 1 - smooth(d_up / (RIM * px)))
        return colour + 0.7 * rim * (self.rim - colour)
