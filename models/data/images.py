"""Resizing pictures, the one way the data set, the evaluation and the runtime do it.

Bilinear, antialiased (a clean shrink: every source pixel counts), pixel centres aligned (`align_corners=False`),
on float tensors. Two resizes in actors/ differ on purpose and keep their own: `to_uint8` resizes uint8 pixels
channels-last (torch's fast path, within a level of this), and `PasteBack.composite` antialiases only a shrink.
"""

import numpy as np
import torch
import torch.nn.functional as F


def resize_images(images: torch.Tensor, height: int, width: int | None = None) -> torch.Tensor:
    """(B, C, H, W) float -> (B, C, height, width) (width: height by default); unchanged when already that size."""
    width = height if width is None else width
    if tuple(images.shape[-2:]) == (height, width):
        return images
    return F.interpolate(images, size=(height, width), mode="bilinear", align_corners=False, antialias=True)


def square_image(image: np.ndarray, size: int) -> torch.Tensor:
    """(H, W, 3) uint8 -> its centre square, resized: (1, 3, size, size) float in [0, 1]."""
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = torch.from_numpy(np.ascontiguousarray(image[top:top + side, left:left + side]))
    x = crop.permute(2, 0, 1)[None].to(torch.float32) / 255.0  # (1, 3, side, side)
    return resize_images(x, size).clamp(0, 1)
