"""Spread calibration of the generated speech parameters (docs/ARCHITECTURE.md "Sampler").

A diffusion sampler with few steps regresses towards the mean: on training clips the shipped generator's jaw,
lip-spread and lip-rounding latents move with 0.80-0.89 of the true motion's spread (the head, which the audio
does not determine, with far less; it is left alone). The decoder renders small openings as a closed mouth, so
that lost spread is lost lip-sync. A calibration fitted once on training clips, never on held-out ones, maps each
of those latent dimensions back to the true motion's mean and spread: z' = clamp(scale * z + shift, -1, 1), the
range of the normalised parameters. It acts only on what leaves the sampler; the KV cache keeps the generator's
own output, which is what the network was trained to attend to.
"""

from dataclasses import dataclass

import torch

from actorcast.models.data.params import PARAM_INDEX
from actorcast.models.errors import InputError

SPEECH_PARAMS = ("jaw_open", "lip_spread", "lip_round")  # the parameters the audio drives
MAX_SCALE = 4.0  # a fitted scale beyond this means a degenerate fit (a generator that does not move)


@dataclass(frozen=True)
class SpreadCalibration:
    """Per-dimension affine map of generated latents, then clamped to [-1, 1]."""

    dims: tuple[int, ...]
    scale: tuple[float, ...]
    shift: tuple[float, ...]

    def __post_init__(self) -> None:
        if not (len(self.dims) == len(self.scale) == len(self.shift)) or len(set(self.dims)) != len(self.dims):
            raise InputError("calibration dims, scale and shift must be of one length, each dim once")
        if any(not 0.0 < s <= MAX_SCALE for s in self.scale):
            raise InputError(f"calibration scales {self.scale} must lie in (0, {MAX_SCALE}]: re-fit it")

    @classmethod
    def fit(cls, generated: torch.Tensor, truth: torch.Tensor, names=SPEECH_PARAMS) -> "SpreadCalibration":
        """From generated and true latents (N, d) of the same frames: the map that gives the generated values of
        the parameters `names` the true mean and standard deviation."""
        dims = tuple(PARAM_INDEX[n] for n in names)
        g, t = generated[:, dims].double(), truth[:, dims].double()
        scale = t.std(0) / g.std(0).clamp_min(1e-6)
        shift = t.mean(0) - scale * g.mean(0)
        return cls(dims, tuple(float(s) for s in scale), tuple(float(s) for s in shift))

    def apply(self, z: torch.Tensor) -> torch.Tensor:
        """z (..., d_motion) -> calibrated copy; the other dimensions are untouched."""
        if max(self.dims) >= z.shape[-1]:
            raise InputError(f"calibration of dims {self.dims} does not fit latents of size {z.shape[-1]}")
        out = z.clone()
        idx = list(self.dims)
        scale, shift = z.new_tensor(self.scale), z.new_tensor(self.shift)
        out[..., idx] = (z[..., idx] * scale + shift).clamp(-1.0, 1.0)
        return out

    def to_meta(self) -> dict:
        return {"dims": list(self.dims), "scale": list(self.scale), "shift": list(self.shift)}

    @classmethod
    def from_meta(cls, meta: dict | None) -> "SpreadCalibration | None":
        """The calibration stored in a generator export's meta, or None if it has none."""
        if meta is None:
            return None
        try:
            return cls(tuple(int(d) for d in meta["dims"]), tuple(float(s) for s in meta["scale"]),
                       tuple(float(s) for s in meta["shift"]))
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"the generator's calibration is unreadable ({e!r}): re-export the weights") from None
