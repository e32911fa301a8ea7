"""The photo rig's head (models/photo/rig.py): the face given depth turns and nods in 3-D, and the head region
rolls, shifts and grows about a pivot under the chin, its weight falling smoothly to 0 into the neck and background.

    head = HeadWarp(landmarks, height, size, down, pixels)   # fitted once from the photo's Face Mesh points
    base = head.inverse(prm)                                  # (B, N_PARAMS) relative parameters -> (B, R, R, 2)

The depth is a rounded cap over the Face Mesh oval with a Gaussian nose, on a lower cap over the hair; yaw turns it
about the vertical axis through the oval's centre and pitch about the horizontal one, seen from the front, so the
nose moves most and the ears hardly. A face the photo shows already turned away turns and nods less
(models/photo/pose.py `turn_gain`, said in one line by `turn_note`), so the warp never shows the side the photo
hides. `inverse` gives, for every output pixel, where in the still photo it comes from.
"""

import numpy as np
import torch
import torch.nn.functional as F

from actorcast.models.data.params import PARAM_INDEX
from actorcast.models.photo.geometry import CHIN, FACE_OVAL, INVERSE_STEPS, NOSE_TIP, falloff, smooth, span
from actorcast.models.photo.pose import photo_pose, turn_gain, turn_note

MAX_TURN = 0.3           # rad: head_yaw / head_pitch are drawn as they are up to this (a warp of one photo shows
                         # no new side of the head; the cartoons turn up to 0.6)
YAW_GAIN = 1.7           # the warp's turn is drawn at this times head_yaw: a turn drawn at its own angle reads 0.58 of
                         # it to a rigid 3-D fit of Face Mesh (the warp leaves the face's rim where a real head turns
                         # about its neck, behind it); nods read as drawn
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


class HeadWarp:
    """One photo's head motion, from its checked Face Mesh points m (478, 2), `height` px from forehead to chin, the
    reference's side `size`, the mouth frame's unit vector `down` (the pivot sits under the chin along it) and the
    pixel centres `pixels` (R, R, 2)."""

    def __init__(self, m: np.ndarray, height: float, size: int, down, pixels: torch.Tensor) -> None:
        self.height, self.size, self.pixels = height, size, pixels
        oval = m[list(FACE_OVAL)]
        lo, hi = oval.min(0), oval.max(0)
        self.face_centre, self.face_half = (lo + hi) / 2, (hi - lo) / 2          # px
        self.nose = m[NOSE_TIP]
        grow_x, grow_y, lift = HEAD_REGION
        centre = self.face_centre - (0.0, lift * self.height)
        self.head_centre, self.head_half = centre, self.face_half * (grow_x, grow_y)
        reach = self.head_half * (1 + HEAD_FEATHER)
        self.head_box = rows, cols = span(torch.as_tensor(centre - reach), torch.as_tensor(centre + reach), 1,
                                          self.size)
        ys, xs = (torch.linspace(a.start + 0.5, a.stop - 0.5, max(2, -(-(a.stop - a.start) // HEAD_GRID) + 1))
                  for a in (rows, cols))                                 # the box's first and last pixel centres
        self.head_grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)   # (h', w', 2) px
        self.head_grid_weight = self._weight(self.head_grid)[..., None]          # (h', w', 1)
        self.pivot = torch.as_tensor(m[CHIN]) + 0.25 * self.height * down
        # a face already turned away in the photo turns and nods less (`turn_note` says so; None: in full)
        self.turn_gain = turn_gain(photo_pose(m))
        self.turn_note = turn_note(m)

    def motion(self, prm: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The head's motion per frame, each (B, 1, 1): cos and sin of yaw, pitch and roll, scale, shift x, y (px).
        Yaw and pitch are drawn at the generator's angles (yaw at YAW_GAIN of it; both up to MAX_TURN) times the
        photo's `turn_gain`, roll at ROLL_GAIN of them, scale and shift at SHIFT_GAIN of the synthetic heads'."""
        def g(name: str) -> torch.Tensor:
            return prm[:, PARAM_INDEX[name], None, None]
        yaw = self.turn_gain * (YAW_GAIN * g("head_yaw")).clamp(-MAX_TURN, MAX_TURN)
        pitch = self.turn_gain * g("head_pitch").clamp(-MAX_TURN, MAX_TURN)
        roll = ROLL_GAIN * g("head_roll")
        return (yaw.cos(), yaw.sin(), pitch.cos(), pitch.sin(), roll.cos(), roll.sin(),
                1 + SHIFT_GAIN * (g("head_scale") - 1), SHIFT_GAIN * g("head_x") * self.size,
                SHIFT_GAIN * g("head_y") * self.size)

    def _weight(self, q: torch.Tensor) -> torch.Tensor:
        """(...) weight of the head motion at points q (..., 2) px: 1 in the head region, 0 past its feather."""
        (hx, hy), (hw, hh) = self.head_centre.tolist(), self.head_half.tolist()
        r = ((q[..., 0] - hx) / hw).square() + ((q[..., 1] - hy) / hh).square()
        return 1 - smooth((r.sqrt() - 1) / HEAD_FEATHER)

    def _turn_offset(self, qx: torch.Tensor, qy: torch.Tensor,
                     motion: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward displacement (px, x and y) of photo points (qx, qy) (B, h, w) as the head turns (yaw) and nods
        (pitch).

        Each point has a depth: a cap over the face oval, FACE_DEPTH face half widths high in its middle and 0 at
        its rim, (1 - r^2)^1.5 in between (flat at the rim, so no fold there), plus a Gaussian nose; under and
        around it a lower cap (HAIR_DEPTH) over the whole head region, so the hair over the forehead turns with
        the face and only the head's outline stays. Yaw turns it about the vertical axis through the oval's centre
        in the rim's plane and pitch about the horizontal one, seen from the front (orthographic): the nose moves
        most, the ears hardly. The motion is weighted by `_weight`."""
        cos_y, sin_y, cos_p, sin_p = motion[:4]
        (fx, fy), (ax, ay) = self.face_centre.tolist(), self.face_half.tolist()
        x, y = qx - fx, qy - fy
        cap = (x * (1 / ax)).square_().add_((y * (1 / ay)).square_()).neg_().add_(1).clamp_(min=0)
        nx, ny = self.nose.tolist()
        nose = (qx - nx).square_().add_((qy - ny).square_()).mul_(-0.5 / (NOSE_WIDTH * self.height) ** 2).exp_()
        (hx, hy), (hw, hh) = self.head_centre.tolist(), self.head_half.tolist()
        r = ((qx - hx) * (1 / hw)).square_().add_(((qy - hy) * (1 / hh)).square_())   # the head region's radius^2
        skull = (1 - r).clamp_(min=0)
        z = torch.maximum(cap.sqrt().mul_(cap).mul_(FACE_DEPTH), skull.sqrt().mul_(skull).mul_(HAIR_DEPTH))
        z = z.add_(nose, alpha=NOSE_DEPTH).mul_(ax)
        weight = falloff(r.sqrt_(), 1.0, HEAD_FEATHER)                       # _weight
        turn_x = (x * (cos_y - 1)).addcmul_(z, sin_y).mul_(weight)          # yaw: + turns the nose image right
        turn_y = (z * cos_y).sub_(x.mul_(sin_y)).mul_(sin_p).addcmul_(y, cos_p - 1).mul_(weight)  # pitch: + nods down
        return turn_x, turn_y

    def inverse(self, prm: torch.Tensor) -> torch.Tensor:
        """Where in the still photo each output pixel comes from under head motion: (B, R, R, 2).

        The head turns in depth (`_turn_offset`), then rolls and grows about a pivot under the chin and shifts.
        The roll, scale and shift are undone at once, by the rigid inverse weighted at the output point (a
        weighted rigid motion has no exact inverse, and this one is smooth and never folds); the turn by
        fixed-point steps. Both act in the head box only (the weight is 0 outside it), and are smooth on the scale
        of the nose, so they are found on a grid of HEAD_GRID px over the box and interpolated bilinearly between:
        a sixteenth of the arithmetic of every pixel, within a third of a pixel of it at the largest turns."""
        n = prm.shape[0]
        motion = self.motion(prm)
        *_, cos_r, sin_r, scale, dx, dy = motion
        gx, gy = self.head_grid[..., 0], self.head_grid[..., 1]              # (h', w') px
        px, py = self.pivot.tolist()
        ux, uy = gx - px, gy - py                                            # from the pivot
        rx, ry = (ux - dx) / scale, (uy - dy) / scale
        w = self.head_grid_weight[..., 0]
        tx = (cos_r * rx + sin_r * ry - ux).mul_(w).add_(gx)                 # the turned points (B, h', w')
        ty = (cos_r * ry - sin_r * rx - uy).mul_(w).add_(gy)
        qx, qy = tx, ty                                                      # fixed-point steps: q + turn(q) = turned
        for _ in range(INVERSE_STEPS):
            ox, oy = self._turn_offset(qx, qy, motion)
            qx, qy = tx - ox, ty - oy
        back = torch.stack([qx.sub_(gx), qy.sub_(gy)], dim=1)                # (B, 2, h', w') px
        rows, cols = self.head_box
        size = (rows.stop - rows.start, cols.stop - cols.start)
        back = F.interpolate(back, size=size, mode="bilinear", align_corners=True)
        base = self.pixels[None].expand(n, -1, -1, -1).clone()
        base[:, rows, cols] += back.permute(0, 2, 3, 1)
        return base
