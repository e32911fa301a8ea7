"""Untrained weights written like an `actorcast train` export, for tests that need a weights directory."""

import dataclasses
from pathlib import Path

import torch

from actorcast.models.audio import AudioEncoder
from actorcast.models.checkpoint import save_weights
from actorcast.models.decoder import VideoDecoder
from actorcast.models.motion import MotionGenerator
from actorcast.models.motion_ae import MotionEncoder
from actorcast.models.presets import get_preset
from actorcast.models.probe import Probe


def write_untrained_weights(directory: Path, resolution: int = 64, probe: bool = False,
                            lookahead: int | None = None) -> Path:
    """Every runtime model (and the probe if asked), untrained, seeded, the decoder at `resolution`, the audio
    encoder with `lookahead` frames (default the preset's)."""
    p = get_preset("tiny")
    torch.manual_seed(0)
    decoder = dataclasses.replace(p.decoder, resolution=resolution)
    audio = p.audio if lookahead is None else dataclasses.replace(p.audio, lookahead=lookahead)
    models = [("audio_encoder", AudioEncoder(audio), audio),
              ("motion_generator", MotionGenerator(p.motion), p.motion),
              ("motion_encoder", MotionEncoder(p.motion_ae), p.motion_ae),
              ("decoder", VideoDecoder(decoder), decoder)]
    if probe:
        models.append(("probe", Probe(p.probe), p.probe))
    for name, module, config in models:
        save_weights(directory, name, module, config)
    return directory
