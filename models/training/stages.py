"""The training stages by name. A stage is a small object with: `defaults(preset)` (TrainConfig fields), `check(cfg)`,
`build(cfg)` (an nn.Module whose forward(batch) returns (loss, metrics)), `batches(cfg, rank, world_size,
start_step)` (a pure function of (seed, rank, step), so resumed runs see the same data), `evaluate(module, cfg)` and
`export(module, dir, cfg, metrics)`; models/training/train.py runs them."""

from actorcast.models.errors import ConfigError
from actorcast.models.training.decoder_stage import DecoderStage
from actorcast.models.training.free_stage import FreeStage
from actorcast.models.training.motion_stage import MotionStage
from actorcast.models.training.probe_stage import ProbeStage

STAGES = {"decoder": DecoderStage, "motion": MotionStage, "probe": ProbeStage, "free": FreeStage}


def get_stage(name: str):
    """The stage object for a stage name."""
    if name not in STAGES:
        raise ConfigError(f"unknown stage {name!r}; use one of {', '.join(STAGES)}")
    return STAGES[name]
