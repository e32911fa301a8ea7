"""Paste-back: the animated square goes back into the picture it was cut from, under a feathered face mask.

    paste = PasteBack(framing)                    # framing: models/photo/framing.py, on the fit_output picture
    full = paste.composite(frames)                # (N, s, s, 3) -> (N, H, W, 3) uint8

The mask is the union of two ellipses, at weight 1 inside and falling to 0 past them. One is around the face's
Face Mesh oval (FACE_OVAL), widened by MASK_GROW (the jaw drops while speaking; the chin needs more room below
than the forehead above), falling over FEATHER of its radius. The other is the photo rig's head region out to
where its motion ends (HEAD_REGION grown by HEAD_FEATHER: the head turns with its hair and ears, and the still
photo may take over only where the animated square is the photo again, or a seam would show), falling over
HEAD_PASTE_FEATHER. Where the weight is 0 the output *is* the picture: those pixels are copied, never blended, so
the shoulders and background stay identical (before H.264 encoding, which changes every pixel a little). The
square is resized to the box's side in picture pixels; parts of it past the picture's edge (Framing.crop's
blurred fill) are dropped.
"""

import numpy as np
import torch
import torch.nn.functional as F

from actorcast.models.errors import InputError
from actorcast.models.photo.framing import Framing
from actorcast.models.photo.rig import (  # Face Mesh's face oval, forehead top (10) round to the chin (152)
    CHIN,
    FACE_OVAL,
    FOREHEAD_TOP,
    HEAD_FEATHER,
    HEAD_REGION,
)

MASK_GROW = (1.12, 1.18)   # ellipse half-axes over the oval's half-width, half-height
MASK_DROP = 0.06           # ellipse centre below the oval's centre, in oval heights (room for the open jaw)
FEATHER = 0.18             # weight falls 1 -> 0 from radius 1 to 1 + FEATHER (ellipse units)
HEAD_MARGIN = 1.06         # the head region's reach grown by this: the rig interpolates the head motion on a grid, so
                           # it ends a grid step (a few px) past the region's edge
HEAD_PASTE_FEATHER = 0.08  # the weight falls 1 -> 0 past the head region's reach over this much of its radius: a
                           # narrow band is enough, the square there being the photo already (up to resampling)
EDGE_FEATHER = 4           # px: the weight also falls to 0 this far inside the square's edge


class PasteBack:
    """Composites animated squares into `framing.picture` at `framing.box` with a feathered face mask."""

    def __init__(self, framing: Framing):
        if framing.face is None:
            raise InputError("--full-frame pastes an animated photo back into the photo: give --image")
        self.picture = framing.picture                      # (H, W, 3) uint8
        self.x0, self.y0, self.side = framing.box
        h, w = self.picture.shape[:2]
        # the part of the square inside the picture, as picture rows/columns
        self.rows = slice(max(0, self.y0), min(h, self.y0 + self.side))
        self.cols = slice(max(0, self.x0), min(w, self.x0 + self.side))
        self.weight = self._mask(framing.face.landmarks)    # (rows, cols) float32 in [0, 1]

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the composited frames."""
        return self.picture.shape[1], self.picture.shape[0]

    def mask(self) -> np.ndarray:
        """The blend weight over the whole picture, (H, W) float32 in [0, 1]; 0 = the picture's own pixel."""
        full = np.zeros(self.picture.shape[:2], np.float32)
        full[self.rows, self.cols] = self.weight
        return full

    def _mask(self, landmarks: np.ndarray) -> np.ndarray:
        oval = landmarks[list(FACE_OVAL)].astype(np.float64)            # (36, 2) picture px
        lo, hi = oval.min(0), oval.max(0)
        half = (hi - lo) / 2 * MASK_GROW                                # (2,) half-axes x, y
        cx, cy = (lo + hi) / 2 + (0.0, MASK_DROP * (hi[1] - lo[1]))
        ys = np.arange(self.rows.start, self.rows.stop, dtype=np.float64)[:, None] + 0.5
        xs = np.arange(self.cols.start, self.cols.stop, dtype=np.float64)[None, :] + 0.5
        r = np.sqrt(((xs - cx) / half[0]) ** 2 + ((ys - cy) / half[1]) ** 2)
        weight = np.clip((1.0 + FEATHER - r) / FEATHER, 0.0, 1.0)
        # the head region (models/photo/rig.py PhotoRig: centre raised, half-axes grown), out to where it stops
        grow_x, grow_y, lift = HEAD_REGION
        face_height = float(np.linalg.norm(landmarks[CHIN] - landmarks[FOREHEAD_TOP]))
        hx, hy = (lo + hi) / 2 - (0.0, lift * face_height)
        reach = (hi - lo) / 2 * (grow_x, grow_y) * (1 + HEAD_FEATHER) * HEAD_MARGIN
        r = np.sqrt(((xs - hx) / reach[0]) ** 2 + ((ys - hy) / reach[1]) ** 2)
        weight = np.maximum(weight, np.clip((1.0 + HEAD_PASTE_FEATHER - r) / HEAD_PASTE_FEATHER, 0.0, 1.0))
        # inside the square only, fading at its edge: the animated frame has nothing to give past it
        in_y = np.clip(np.minimum(ys - self.y0, self.y0 + self.side - ys) / EDGE_FEATHER, 0.0, 1.0)
        in_x = np.clip(np.minimum(xs - self.x0, self.x0 + self.side - xs) / EDGE_FEATHER, 0.0, 1.0)
        return (weight * in_y * in_x).astype(np.float32)

    def composite(self, frames: np.ndarray) -> np.ndarray:
        """(N, s, s, 3) uint8 animated squares -> (N, H, W, 3) uint8 pictures; outside the mask, the picture."""
        if frames.ndim != 4 or frames.shape[1] != frames.shape[2] or frames.shape[3] != 3 or frames.dtype != np.uint8:
            raise InputError(f"paste-back takes (N, s, s, 3) uint8 squares, got {frames.dtype} {frames.shape}")
        n = frames.shape[0]
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).to(torch.float32)  # (N, 3, s, s)
        if frames.shape[1] != self.side:
            x = F.interpolate(x, size=(self.side, self.side), mode="bilinear", align_corners=False,
                              antialias=frames.shape[1] > self.side)
        top, left = self.rows.start - self.y0, self.cols.start - self.x0
        x = x[:, :, top:top + self.weight.shape[0], left:left + self.weight.shape[1]]  # (N, 3, rows, cols)
        region = torch.from_numpy(self.picture[self.rows, self.cols]).permute(2, 0, 1).to(torch.float32)
        weight = torch.from_numpy(self.weight)                                        # (rows, cols)
        blended = (region + weight * (x - region)).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        out = np.repeat(self.picture[None], n, axis=0)                                # (N, H, W, 3)
        inside = self.weight > 0                                                      # copy, never blend, at 0
        sub = out[:, self.rows, self.cols]
        sub[:, inside] = blended.numpy()[:, inside]
        out[:, self.rows, self.cols] = sub
        return out
