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


def write_untrained_weights(directory: Path, resolution: int = 64, probe: bool = False) -> Path:
    """Every runtime model (and the probe if asked), untrained, seeded, the decoder at `resolution`."""
    p = get_preset("tiny")
    torch.manual_seed(0)
    decoder = dataclasses.replace(p.decoder, resolution=resolution)
    models = [("audio_encoder", AudioEncoder(p.audio), p.audio),
              ("motion_generator", MotionGenerator(p.motion), p.motion),
              ("motion_encoder", MotionEncoder(p.motion_ae), p.motion_ae),
              ("decoder", VideoDecoder(decoder), decoder)]
    if probe:
        models.append(("probe", Probe(p.probe), p.probe))
    for name, module, config in models:
        save_weights(directory, name, module, config)
    return directory
