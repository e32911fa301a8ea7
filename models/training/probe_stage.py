"""Stage `probe`: the evaluation probe, trained only on rendered frames with their ground-truth parameters."""

from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn as nn

from actorcast.models.checkpoint import save_weights
from actorcast.models.data.face import render, sample_identities
from actorcast.models.decoder import DECODER_PRESETS
from actorcast.models.errors import ConfigError
from actorcast.models.probe import PROBE_PRESETS, Probe
from actorcast.models.training.common import (EVAL_BATCH, draw_identities, draw_params, param_pool, preset_defaults,
                                              step_rng, write_summary)


class ProbeTrainer(nn.Module):
    """Stage `probe`: regress the 16 motion parameters from rendered frames (normalised MSE)."""

    def __init__(self, preset: str):
        super().__init__()
        self.config = PROBE_PRESETS[preset]
        self.probe = Probe(self.config)

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        pred = self.probe.forward_normalised(batch["frames"])
        error = (pred - self.probe.normalise(batch["params"])).square()  # (B, 16)
        return error.mean(), {"jaw_mse": error[:, 0].mean().detach()}


class ProbeStage:
    """The evaluation probe: trained only on rendered frames with their ground-truth parameters."""

    # base reads 128^2 renders as tiny does, large 256^2, through 2-3x wider and deeper nets (models/probe.py): a
    # step costs more, so they take fewer steps, each on twice the frames (a steadier gradient), and a lower
    # learning rate for the wider layers (halved from tiny to base, and again to large).
    DEFAULTS = {
        "tiny": {"steps": 3000, "batch_size": 16, "lr": 2e-3, "checkpoint_every": 500},
        "base": {"steps": 2000, "batch_size": 32, "lr": 1e-3, "checkpoint_every": 250},
        "large": {"steps": 1500, "batch_size": 32, "lr": 5e-4, "checkpoint_every": 250},
    }

    @staticmethod
    def defaults(preset: str) -> dict:
        """TrainConfig steps, batch_size, lr and checkpoint_every for `preset`."""
        return preset_defaults(ProbeStage.DEFAULTS, preset)

    @staticmethod
    def check(cfg) -> None:
        if cfg.init:
            raise ConfigError("--init fine-tunes the motion stage only; drop it for this stage")
        if cfg.data != "synthetic":
            raise ConfigError("the probe trains on synthetic renders only (it needs ground-truth parameters); "
                              "drop --data")

    @staticmethod
    def build(cfg) -> nn.Module:
        return ProbeTrainer(cfg.preset)

    @staticmethod
    def _batch(split: str, pool: torch.Tensor, rng: np.random.Generator, n: int, size: int) -> dict:
        params = draw_params(pool, rng, n)
        return {"frames": render(sample_identities(draw_identities(split, rng, n)), params, size), "params": params}

    @classmethod
    def batches(cls, cfg, rank: int, world_size: int, start_step: int) -> Iterator[dict]:
        size = cfg.size or DECODER_PRESETS[cfg.preset].resolution
        pool = param_pool("train", cfg.seed)
        for step in range(start_step + 1, 10 ** 12):
            yield cls._batch("train", pool, step_rng(cfg, rank, step), cfg.batch_size, size)

    @classmethod
    @torch.no_grad()
    def evaluate(cls, module: nn.Module, cfg) -> dict:
        """Correlation of probe-read vs true jaw_open, and mean absolute error per parameter, held out."""
        size = cfg.size or DECODER_PRESETS[cfg.preset].resolution
        batch = cls._batch("heldout", param_pool("heldout", 0), np.random.default_rng(11), 4 * EVAL_BATCH, size)
        device = next(module.parameters()).device
        pred = module.probe(batch["frames"].to(device)).float().cpu()
        jaw_r = float(np.corrcoef(pred[:, 0].numpy(), batch["params"][:, 0].numpy())[0, 1])
        return {"eval_jaw_r": jaw_r, "eval_mae": float((pred - batch["params"]).abs().mean())}

    @staticmethod
    def export(module: nn.Module, directory: Path, cfg, metrics: dict) -> None:
        save_weights(directory, "probe", module.probe, module.config, {"preset": cfg.preset})
        write_summary(directory, cfg, metrics)
