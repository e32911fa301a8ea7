"""Identities of the synthetic portraits: face shape, colours and hair style per seed, batched as tensors.

Lengths are in *face units* (models/data/face.py: one is BASE_SCALE image half-widths at head_scale 1;
the image spans [-1, 1] on both axes, y down). Values marked *unit* are fractions of the head's radii (`head_rx`, `head_ry`), measured on the
head's surface from its centre; the renderer (models/data/face.py) turns them into face units.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import torch

from actorcast.models.data.seeds import check_seed
from actorcast.models.errors import ConfigError, InputError

# Uniform ranges of the scalar parameters, in the field order of `Identity`.
SCALAR_RANGES: dict[str, tuple[float, float]] = {
    "head_rx": (0.35, 0.43),      # head half-width
    "head_ry": (0.46, 0.54),      # head half-height
    "jaw_taper": (0.1, 0.6),      # narrowing of the lower head: 0 = egg, larger = narrower jaw
    "jaw_curve": (0.0, 1.0),      # 0 = square jaw line (flat chin), 1 = round
    "chin": (0.82, 0.9),          # unit, chin below the head centre
    "ear_level": (0.02, 0.16),    # unit, where the jaw line meets the ear
    "ear_size": (0.055, 0.08),    # ear half-height
    "eye_y": (-0.04, 0.08),       # unit
    "eye_dx": (0.36, 0.46),       # unit, eye centre from the midline
    "eye_w": (0.064, 0.084),      # eye half-width
    "eye_aspect": (0.5, 0.7),   # eye half-height / half-width
    "brow_dy": (0.075, 0.1),      # brow above the eye centre
    "brow_w": (0.06, 0.085),      # brow half-length
    "brow_th": (0.014, 0.03),    # brow thickness
    "brow_arch": (0.0, 0.022),
    "brow_tilt": (-0.12, 0.15),   # + = inner ends lower (stern), - = inner ends higher (worried)
    "nose_y": (0.30, 0.38),       # unit, nose tip
    "nose_w": (0.022, 0.038),     # nostril half-spread
    "nose_len": (0.05, 0.09),
    "mouth_y": (0.55, 0.62),      # unit, the closed lip line
    "mouth_w": (0.095, 0.13),     # mouth half-width
    "lip_up": (0.012, 0.022),     # upper lip thickness
    "lip_lo": (0.017, 0.032),     # lower lip thickness
    "neck_w": (0.12, 0.17),       # neck half-width
    "hair_top": (-0.62, -0.42),   # unit, the forehead hairline (bald: -1.5)
    "fringe": (0.0, 1.0),         # 0 = open forehead, 1 = fringe down to the brows
    "fringe_slant": (-1.0, 1.0),  # side-swept fringe
    "hair_wave": (0.0, 1.0),      # amplitude of the wavy fringe edge
    "hair_freq": (14.0, 34.0),    # its spatial frequency (radians per unit)
    "hair_phase": (0.0, 6.283),
    "hair_volume": (0.0, 1.0),    # hair mass beside the head
    "hair_length": (0.0, 1.0),    # 0 = short, 1 = past the shoulders
    "nape": (0.2, 0.6),           # unit, lowest hair on the back of the head
}
COLOUR_NAMES: tuple[str, ...] = ("skin", "hair", "brow", "iris", "lip", "bg_top", "bg_bottom", "shirt")

_SKIN = torch.tensor([[0.98, 0.86, 0.76], [0.94, 0.76, 0.62], [0.84, 0.62, 0.46],
                      [0.66, 0.45, 0.31], [0.45, 0.30, 0.20], [0.30, 0.20, 0.14]])
# (colour, weight): black, dark brown, brown, blonde, auburn, grey, white, dyed blue, dyed pink.
_HAIR = (((0.07, 0.06, 0.06), 4), ((0.22, 0.13, 0.08), 4), ((0.42, 0.27, 0.15), 3), ((0.86, 0.71, 0.42), 2),
         ((0.58, 0.23, 0.10), 1.5), ((0.62, 0.62, 0.63), 1), ((0.90, 0.89, 0.86), 0.5),
         ((0.20, 0.35, 0.75), 0.4), ((0.85, 0.40, 0.62), 0.4))
_IRIS = ((0.33, 0.19, 0.09), (0.20, 0.11, 0.06), (0.48, 0.38, 0.18), (0.28, 0.48, 0.30),
         (0.28, 0.48, 0.76), (0.48, 0.54, 0.60))
_LIPSTICK = torch.tensor([[0.75, 0.12, 0.16], [0.85, 0.42, 0.52], [0.45, 0.12, 0.18]])
# How many uniform numbers one identity consumes after the scalars (colour and style choices).
_N_EXTRA = 24


@dataclass
class Identity:
    """A batch of B portrait identities: scalars are (B,) tensors, colours (B, 3) RGB in [0, 1]."""

    head_rx: torch.Tensor
    head_ry: torch.Tensor
    jaw_taper: torch.Tensor
    jaw_curve: torch.Tensor
    chin: torch.Tensor
    ear_level: torch.Tensor
    ear_size: torch.Tensor
    eye_y: torch.Tensor
    eye_dx: torch.Tensor
    eye_w: torch.Tensor
    eye_aspect: torch.Tensor
    brow_dy: torch.Tensor
    brow_w: torch.Tensor
    brow_th: torch.Tensor
    brow_arch: torch.Tensor
    brow_tilt: torch.Tensor
    nose_y: torch.Tensor
    nose_w: torch.Tensor
    nose_len: torch.Tensor
    mouth_y: torch.Tensor
    mouth_w: torch.Tensor
    lip_up: torch.Tensor
    lip_lo: torch.Tensor
    neck_w: torch.Tensor
    hair_top: torch.Tensor
    fringe: torch.Tensor
    fringe_slant: torch.Tensor
    hair_wave: torch.Tensor
    hair_freq: torch.Tensor
    hair_phase: torch.Tensor
    hair_volume: torch.Tensor
    hair_length: torch.Tensor
    nape: torch.Tensor
    skin: torch.Tensor
    hair: torch.Tensor
    brow: torch.Tensor
    iris: torch.Tensor
    lip: torch.Tensor
    bg_top: torch.Tensor
    bg_bottom: torch.Tensor
    shirt: torch.Tensor

    def __len__(self) -> int:
        return self.head_rx.shape[0]

    def _map(self, fn) -> Identity:
        return Identity(**{f.name: fn(getattr(self, f.name)) for f in dataclasses.fields(self)})

    def index(self, i: int | slice | torch.Tensor) -> Identity:
        """The identities at `i` (an int keeps a batch of one)."""
        if isinstance(i, int):
            if not -len(self) <= i < len(self):
                raise InputError(f"identity index {i} is out of range for a batch of {len(self)}")
            i = slice(i, i + 1 if i != -1 else None)
        return self._map(lambda t: t[i])

    def to(self, device: torch.device | str) -> Identity:
        """The same identities on `device`."""
        return self._map(lambda t: t.to(device))

    def as_vector(self) -> torch.Tensor:
        """(B, D) all parameters side by side, colours as 3 columns each."""
        return torch.cat([getattr(self, f.name).reshape(len(self), -1) for f in dataclasses.fields(self)], dim=1)

    @staticmethod
    def cat(items: Sequence[Identity]) -> Identity:
        """Concatenate batches of identities."""
        if not items:
            raise InputError("Identity.cat needs at least one batch of identities")
        return Identity(**{f.name: torch.cat([getattr(it, f.name) for it in items])
                           for f in dataclasses.fields(Identity)})


def _hsv(h: float, s: float, v: float) -> torch.Tensor:
    """(3,) RGB of a hue/saturation/value triple in [0, 1]."""
    k = (torch.tensor([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    return v - v * s * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)


def _pick(options: Sequence, weights: Sequence[float], u: float):
    """The option whose cumulative weight first exceeds u * total."""
    total, acc = float(sum(weights)), 0.0
    for option, w in zip(options, weights):
        acc += w
        if u * total < acc:
            return option
    return options[-1]


def _colours(u: torch.Tensor, scalars: dict[str, float]) -> dict[str, torch.Tensor]:
    """The colours of one identity from `_N_EXTRA` uniforms `u`; may restyle hair (bald) in `scalars`."""
    t = float(u[0]) * (len(_SKIN) - 1)
    lo = min(int(t), len(_SKIN) - 2)
    skin = torch.lerp(_SKIN[lo], _SKIN[lo + 1], t - lo) + (u[1:4] - 0.5) * 0.05
    hair = torch.tensor(_pick([c for c, _ in _HAIR], [w for _, w in _HAIR], float(u[4])))
    hair = hair * (0.85 + 0.3 * u[5])
    brow = torch.lerp(hair * 0.7, torch.tensor([0.15, 0.1, 0.07]), 0.35)
    iris = torch.tensor(_IRIS[min(int(u[6] * len(_IRIS)), len(_IRIS) - 1)]) * (0.85 + 0.3 * u[7])
    lip = torch.lerp(skin * torch.tensor([0.86, 0.56, 0.56]), torch.tensor([0.72, 0.32, 0.34]), 0.35)
    if u[8] < 0.12:  # lipstick
        lip = _LIPSTICK[min(int(u[9] * len(_LIPSTICK)), len(_LIPSTICK) - 1)]
    hue = float(u[10])
    bg_top = _hsv(hue, 0.15 + 0.4 * float(u[11]), 0.55 + 0.4 * float(u[12]))
    bg_bottom = _hsv((hue + 0.15 * (float(u[13]) - 0.5)) % 1.0, 0.15 + 0.4 * float(u[14]), 0.3 + 0.4 * float(u[15]))
    shirt = _hsv(float(u[16]), 0.1 + 0.6 * float(u[17]), 0.2 + 0.7 * float(u[18]))
    if u[19] < 0.4:  # about 40 % have no fringe
        scalars["fringe"] = 0.0
    if u[20] < 0.05:  # bald: the hairline above the head, no hair mass, skin-toned scalp
        scalars.update(hair_top=-1.5, fringe=0.0, hair_volume=0.0, hair_length=0.0)
        hair = skin * 0.9
    if u[21] < 0.5:  # short hair is common: halve the length
        scalars["hair_length"] *= 0.4
    colours = dict(skin=skin, hair=hair, brow=brow, iris=iris, lip=lip, bg_top=bg_top, bg_bottom=bg_bottom,
                   shirt=shirt)
    return {k: v.clamp(0.0, 1.0) for k, v in colours.items()}


def _sample_one(seed: int) -> dict[str, torch.Tensor]:
    """All parameters of the identity of one seed (scalars as 0-d tensors)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(len(SCALAR_RANGES) + _N_EXTRA, generator=g, dtype=torch.float64)
    scalars = {name: lo + (hi - lo) * float(u[i]) for i, (name, (lo, hi)) in enumerate(SCALAR_RANGES.items())}
    colours = _colours(u[len(SCALAR_RANGES):].float(), scalars)
    out = {k: torch.tensor(v, dtype=torch.float32) for k, v in scalars.items()}
    out.update({k: v.to(torch.float32) for k, v in colours.items()})
    return out


def sample_identities(seeds: Sequence[int]) -> Identity:
    """A batch of len(seeds) identities; the same seed always gives the same identity."""
    if isinstance(seeds, (int, str, bytes)) or len(seeds) == 0:
        raise ConfigError(f"seeds must be a non-empty sequence of non-negative integers, got {seeds!r}")
    for s in seeds:
        check_seed(s, f"identity seed {s!r}")
    rows = [_sample_one(int(s)) for s in seeds]
    return Identity(**{f.name: torch.stack([r[f.name] for r in rows]) for f in dataclasses.fields(Identity)})
