"""Motion encoder of the motion autoencoder: a video frame -> a compact motion latent z (X-Actor's motion tokens).

The latent is identity-agnostic by *training*, not by architecture: `models.decoder.decoder_loss` shows the
encoder identity A's frame and asks the decoder to reproduce identity B's frame with the same motion, so
anything about A's looks that leaks into z is useless to the decoder.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from actorcast.models.data.images import resize_images
from actorcast.models.errors import ConfigError, InputError

RANGE_TOLERANCE = 1e-3  # frames may overshoot [0, 1] by resampling round-off, no more


def check_frames(x: torch.Tensor, name: str, size: int | None = None) -> None:
    """Raise InputError unless `x` is a finite float (B, 3, H, W) batch in [0, 1] (H = W = size if given)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise InputError(f"{name} must be a float tensor (B, 3, H, W) in [0, 1], got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != 3 or x.shape[0] == 0:
        raise InputError(f"{name} must have shape (B, 3, H, W) with B >= 1, got {tuple(x.shape)}")
    if size is not None and (x.shape[2] != size or x.shape[3] != size):
        raise InputError(f"{name} is {x.shape[2]}x{x.shape[3]}, this model runs at {size}x{size}; resize first")
    if not bool(torch.isfinite(x).all()):
        raise InputError(f"{name} contains NaN or inf values")
    lo, hi = float(x.min()), float(x.max())
    if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        raise InputError(f"{name} values span [{lo:.3g}, {hi:.3g}]; images must be scaled to [0, 1]")


@dataclass(frozen=True)
class MotionAEConfig:
    """Sizes of the motion encoder; frames are resized to `input_size` first (motion is a coarse signal)."""

    d_motion: int = 32
    input_size: int = 128
    channels: tuple[int, ...] = (16, 32, 64, 96)  # one stride-2 stage each
    pool_size: int = 4  # adaptive average pooling to pool_size^2 cells keeps the coarse layout (where the head is)

    def __post_init__(self) -> None:
        if self.d_motion < 1:
            raise ConfigError(f"MotionAEConfig.d_motion={self.d_motion} must be >= 1 (default 32)")
        if not self.channels or min(self.channels) < 1:
            raise ConfigError(f"MotionAEConfig.channels={self.channels} must be a non-empty tuple of positive ints")
        if not 32 <= self.input_size <= 512:
            raise ConfigError(f"MotionAEConfig.input_size={self.input_size} must be in 32..512")
        final = self.input_size >> len(self.channels)
        if self.input_size % (1 << len(self.channels)) or final < self.pool_size or self.pool_size < 1:
            raise ConfigError(
                f"MotionAEConfig: input_size={self.input_size} must be divisible by 2^{len(self.channels)} and leave "
                f"a final map >= pool_size={self.pool_size} (got {final})"
            )


# Encoder cost at input_size 128, `tiny` (2 x MAC): ~0.11 GFLOP per frame. It runs in training and once per
# session on the reference (the live chain decodes z, it does not encode frames), so it is not in the budget.
MOTION_AE_PRESETS: dict[str, MotionAEConfig] = {
    "tiny": MotionAEConfig(),
    "base": MotionAEConfig(input_size=256, channels=(32, 64, 128, 256, 256)),
    "large": MotionAEConfig(input_size=256, channels=(48, 96, 192, 384, 512)),
}


class MotionEncoder(nn.Module):
    """Frame (B, 3, H, W) in [0, 1] -> motion latent z (B, d_motion): strided convs, pooling, linear."""

    def __init__(self, config: MotionAEConfig):
        super().__init__()
        self.config = c = config
        layers: list[nn.Module] = []
        c_in = 3
        for c_out in c.channels:
            # GroupNorm keeps activations at unit scale through the stack: without it an untrained encoder maps
            # every frame to nearly the same z (std ~1e-4) and the decoder gets no motion signal to learn from.
            layers += [
                nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GroupNorm(min(8, c_out), c_out), nn.LeakyReLU(0.2),
                nn.Conv2d(c_out, c_out, 3, padding=1), nn.GroupNorm(min(8, c_out), c_out), nn.LeakyReLU(0.2),
            ]
            c_in = c_out
        self.net = nn.Sequential(*layers)
        self.head = nn.Linear(c_in * c.pool_size**2, c.d_motion)

    def forward(self, frame: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1], any H, W >= 32 -> z (B, d_motion)."""
        check_frames(frame, "frame")
        s = self.config.input_size
        x = resize_images(frame, s)  # (B, 3, s, s)
        h = self.net(x * 2 - 1)  # (B, C, s / 2^n, s / 2^n)
        h = F.adaptive_avg_pool2d(h, self.config.pool_size)  # (B, C, p, p)
        return self.head(h.flatten(1))  # (B, d_motion)
