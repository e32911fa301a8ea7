"""The evaluation probe (docs/ARCHITECTURE.md "Measures"): a small CNN that reads motion parameters off rendered
frames.

It is trained only on frames rendered by the synthetic generator with their ground-truth parameters, and never
sees generated frames, so it is an independent reader of what a generated video shows.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn

from actorcast.models.data.images import resize_images
from actorcast.models.data.params import N_PARAMS, PARAM_RANGES
from actorcast.models.errors import ConfigError


@dataclass
class ProbeConfig:
    """Sizes of the probe CNN."""

    input_size: int = 128              # frames are resized to this before the convs
    channels: tuple[int, ...] = (16, 32, 64, 96, 128)
    hidden: int = 256

    def __post_init__(self) -> None:
        self.channels = tuple(self.channels)
        if self.input_size % (2 ** len(self.channels)):
            raise ConfigError(f"probe input_size {self.input_size} must be divisible by 2^{len(self.channels)}")


PROBE_PRESETS = {
    "tiny": ProbeConfig(),
    "base": ProbeConfig(input_size=128, channels=(32, 64, 128, 192, 256), hidden=512),
    "large": ProbeConfig(input_size=256, channels=(32, 64, 128, 192, 256, 384), hidden=768),
}


class Probe(nn.Module):
    """Frames (B, 3, H, W) in [0, 1] → motion parameters (B, 16) in the units of models/data/params.py."""

    def __init__(self, config: ProbeConfig):
        super().__init__()
        self.config = config
        layers, c_in = [], 3
        for c in config.channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.GroupNorm(4, c), nn.SiLU(),
                       nn.Conv2d(c, c, 3, padding=1), nn.SiLU()]
            c_in = c
        self.convs = nn.Sequential(*layers)
        side = config.input_size // 2 ** len(config.channels)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c_in * side * side, config.hidden), nn.SiLU(),
                                  nn.Linear(config.hidden, N_PARAMS))
        # Outputs are predicted in a normalised space ([-1, 1] per parameter range) and mapped back.
        low = torch.tensor([r[0] for r in PARAM_RANGES])
        high = torch.tensor([r[1] for r in PARAM_RANGES])
        self.register_buffer("center", (low + high) / 2, persistent=False)
        self.register_buffer("halfrange", (high - low) / 2, persistent=False)

    def normalise(self, params: torch.Tensor) -> torch.Tensor:
        """(B, 16) parameters → (B, 16) in [-1, 1]."""
        return (params - self.center) / self.halfrange

    def forward_normalised(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, 16) normalised parameters."""
        frames = resize_images(frames, self.config.input_size)  # (B, 3, s, s)
        return self.head(self.convs(frames * 2 - 1))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, 16) parameters in their natural units."""
        return self.forward_normalised(frames) * self.halfrange + self.center
