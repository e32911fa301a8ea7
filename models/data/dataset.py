"""Synthetic talking-avatar clips on the fly, deterministic by seed, with a held-out seed range.

A clip is one performance (speech audio + per-frame motion parameters, models/data/performance.py)
rendered on one identity (models/data/face.py). Seeds are split once, here:

    train:   clip seeds [0, HELDOUT_START)            — training code draws only from these
    heldout: clip seeds [HELDOUT_START, HELDOUT_END)  — evaluation only

A clip seed determines everything: the identity, the alternate identity used for cross-identity pairs,
the emotion and the performance. `SyntheticClips(split="train")` refuses a held-out seed, so a held-out
clip can never leak into training through this class.

The speech comes from one of two sources: "babble" (the formant synthesiser) or "tts" (espeak-ng speaking
sentences, models/data/tts.py); a held-out clip seed speaks only held-out words in held-out voices.
"""

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from actorcast.models.data.face import render, sample_identities
from actorcast.models.data.params import EMOTION_INDEX, neutral_params
from actorcast.models.data.performance import generate_performance
from actorcast.models.data.tts import tts_performance
from actorcast.models.errors import ConfigError

HELDOUT_START = 1_000_000
HELDOUT_END = 1_100_000
SPLITS = {"train": range(0, HELDOUT_START), "heldout": range(HELDOUT_START, HELDOUT_END)}
SOURCES = ("babble", "tts")  # where a clip's speech comes from

# Derived seeds for the parts of a clip, so that the identity of clip s is not the identity seed s of
# another clip's performance: each part gets its own stream.
_IDENTITY_SALT, _ALT_IDENTITY_SALT, _PERFORMANCE_SALT = 0x1D, 0xA17, 0x5EED


def split_of(seed: int) -> str:
    """The split ('train' or 'heldout') that a clip seed belongs to."""
    for name, seeds in SPLITS.items():
        if seed in seeds:
            return name
    raise ConfigError(f"clip seed {seed} is outside every split; use 0..{HELDOUT_END - 1}")


def _part_seed(seed: int, salt: int) -> int:
    return int(np.random.SeedSequence([seed, salt]).generate_state(1)[0])


@dataclass(frozen=True)
class Clip:
    """One synthetic clip: T frames of 25 fps video, T*640 samples of 16 kHz audio."""

    seed: int
    audio: torch.Tensor            # (T*640,) float32, 16 kHz mono
    params: torch.Tensor           # (T, 16) float32, models/data/params.py order
    emotion: int                   # index into EMOTIONS
    frames: torch.Tensor | None    # (T, 3, H, W) in [0, 1], identity A
    reference: torch.Tensor | None  # (3, H, W): identity A in the neutral pose (the session's portrait)
    frames_alt: torch.Tensor | None  # (T, 3, H, W): the same motion on identity B (cross-identity pairs)
    reference_alt: torch.Tensor | None  # (3, H, W): identity B, neutral pose


def identity_seed(seed: int, alternate: bool = False) -> int:
    """The identity seed of clip `seed` (identity A, or B for cross-identity pairs)."""
    return _part_seed(seed, _ALT_IDENTITY_SALT if alternate else _IDENTITY_SALT)


def performance_seed(seed: int) -> int:
    """The performance (speech + motion) seed of clip `seed`."""
    return _part_seed(seed, _PERFORMANCE_SALT)


def make_clip(seed: int, seconds: float, size: int | None = 128, cross_identity: bool = False,
              emotion: str | None = None, source: str = "babble") -> Clip:
    """Generate the clip of `seed` (any split); `size=None` skips rendering (audio + params only)."""
    split = split_of(seed)
    if source == "tts":
        perf = tts_performance(performance_seed(seed), seconds, emotion=emotion, heldout=split == "heldout")
    elif source == "babble":
        perf = generate_performance(performance_seed(seed), seconds, emotion=emotion)
    else:
        raise ConfigError(f"unknown speech source {source!r}; use one of {', '.join(SOURCES)}")
    frames = reference = frames_alt = reference_alt = None
    if size is not None:
        frames, reference = _render_on(identity_seed(seed), perf.params, size)
        if cross_identity:
            frames_alt, reference_alt = _render_on(identity_seed(seed, alternate=True), perf.params, size)
    return Clip(seed=seed, audio=perf.audio, params=perf.params, emotion=EMOTION_INDEX[perf.emotion],
                frames=frames, reference=reference, frames_alt=frames_alt, reference_alt=reference_alt)


def _render_on(identity_seed: int, params: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Render (T, 16) params and the neutral reference on one identity: ((T,3,H,W), (3,H,W))."""
    identity = sample_identities([identity_seed])
    batch = torch.cat([neutral_params(1), params])
    images = render(identity, batch, size)
    return images[1:], images[0]


class SyntheticClips(IterableDataset):
    """An endless (or `length`-long) stream of clips from one split, deterministic by `base_seed`.

    Clip seeds are drawn from the split's range by a generator seeded with (base_seed, worker id), so
    several DataLoader workers (or Ray Train ranks, via `rank`) never repeat each other's draws.
    """

    def __init__(self, split: str = "train", seconds: float = 2.0, size: int | None = 128,
                 cross_identity: bool = False, base_seed: int = 0, rank: int = 0,
                 length: int | None = None, source: str = "babble"):
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        if source not in SOURCES:
            raise ConfigError(f"unknown speech source {source!r}; use one of {', '.join(SOURCES)}")
        if not np.isfinite(seconds) or seconds <= 0:
            raise ConfigError(f"clip seconds must be > 0, got {seconds}")
        self.split, self.seconds, self.size = split, seconds, size
        self.cross_identity, self.base_seed, self.rank, self.length = cross_identity, base_seed, rank, length
        self.source = source

    def clip_seeds(self, worker: int = 0):
        """The clip seeds this dataset yields for `worker`, in order (all inside the split)."""
        seeds = SPLITS[self.split]
        rng = np.random.default_rng([self.base_seed, self.rank, worker])
        count = 0
        while self.length is None or count < self.length:
            yield int(seeds.start + rng.integers(0, len(seeds)))
            count += 1

    def clip(self, seed: int) -> Clip:
        """The clip of one seed; refuses seeds of another split."""
        if split_of(seed) != self.split:
            raise ConfigError(f"clip seed {seed} belongs to the {split_of(seed)} split, not {self.split}")
        return make_clip(seed, self.seconds, self.size, self.cross_identity, source=self.source)

    def __iter__(self):
        info = get_worker_info()
        worker = 0 if info is None else info.id
        for seed in self.clip_seeds(worker):
            yield self.clip(seed)


__all__ = ["Clip", "SyntheticClips", "make_clip", "split_of", "SPLITS", "SOURCES", "HELDOUT_START", "HELDOUT_END"]
