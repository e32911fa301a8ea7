"""The one registry of model sizes: `get_preset(name)` gives every model's config for tiny, base or large.

Each model module owns its per-model preset table (AUDIO_PRESETS, MOTION_AE_PRESETS, DECODER_PRESETS,
MOTION_PRESETS, CACHE_PRESETS, PROBE_PRESETS); this registry joins them and wires the sizes that cross model
boundaries from the model that produces them: the generator's `d_audio` comes from the audio encoder and its
`d_motion` from the motion encoder (so they can never disagree).
"""

import dataclasses
from dataclasses import dataclass

from actorcast.models.audio import AUDIO_PRESETS, AudioConfig
from actorcast.models.decoder import DECODER_PRESETS, DecoderConfig
from actorcast.models.errors import ConfigError
from actorcast.models.kv_cache import CACHE_PRESETS, CacheConfig
from actorcast.models.motion import MOTION_PRESETS, MotionConfig
from actorcast.models.motion_ae import MOTION_AE_PRESETS, MotionAEConfig
from actorcast.models.probe import PROBE_PRESETS, ProbeConfig

PRESET_NAMES = ("tiny", "base", "large")


@dataclass(frozen=True)
class Preset:
    """The configs of every model of one size."""

    name: str
    audio: AudioConfig
    motion_ae: MotionAEConfig
    decoder: DecoderConfig
    motion: MotionConfig
    cache: CacheConfig
    probe: ProbeConfig


def get_preset(name: str) -> Preset:
    """All configs of preset `name`, with cross-model sizes wired; ConfigError for an unknown name."""
    if name not in PRESET_NAMES:
        raise ConfigError(f"unknown preset {name!r}; use one of {', '.join(PRESET_NAMES)}")
    audio, motion_ae, decoder = AUDIO_PRESETS[name], MOTION_AE_PRESETS[name], DECODER_PRESETS[name]
    decoder = dataclasses.replace(decoder, d_motion=motion_ae.d_motion)
    motion = dataclasses.replace(MOTION_PRESETS[name], d_audio=audio.d_audio, d_motion=motion_ae.d_motion)
    cache = CACHE_PRESETS[name]
    if cache.budget_frames < motion.chunk_frames:
        raise ConfigError(f"preset {name}: cache budget {cache.budget_frames} frames is smaller than a chunk "
                          f"({motion.chunk_frames} frames)")
    return Preset(name, audio, motion_ae, decoder, motion, cache, PROBE_PRESETS[name])
