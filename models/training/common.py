"""What the training stages share: the pool of motion parameters they draw from, identities, per-step random
generators (a pure function of (seed, rank, step), so resumed runs see the same data), and the summary beside an
export."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from actorcast.models.data.dataset import SPLITS, identity_seed, performance_seed
from actorcast.models.data.params import N_PARAMS, PARAM_RANGES
from actorcast.models.data.performance import generate_performance
from actorcast.models.errors import ConfigError
from actorcast.models.presets import PRESET_NAMES

POOL_CLIPS, POOL_SECONDS = 12, 10.0  # motion parameters drawn from 12 performances of 10 s (3,000 frames)
UNIFORM_SHARE = 0.1  # share of rows drawn uniformly over PARAM_RANGES, to cover poses performances rarely reach
EVAL_BATCH = 16


def preset_defaults(table: dict[str, dict], preset: str) -> dict:
    """A copy of `table[preset]`, a stage's TrainConfig defaults for one preset; ConfigError for an unknown one."""
    if preset not in PRESET_NAMES or preset not in table:
        raise ConfigError(f"unknown preset {preset!r}; use one of {', '.join(PRESET_NAMES)}")
    return dict(table[preset])


def param_pool(split: str, seed: int) -> torch.Tensor:
    """(N, 16) motion parameters from performances of `split`, deterministic by seed."""
    seeds = SPLITS[split]
    rng = np.random.default_rng([seed, 0xB001])
    clips = seeds.start + rng.choice(min(len(seeds), 10 ** 6), POOL_CLIPS, replace=False)
    return torch.cat([generate_performance(performance_seed(int(s)), POOL_SECONDS).params for s in clips])


def draw_params(pool: torch.Tensor, rng: np.random.Generator, n: int) -> torch.Tensor:
    """n rows: most from the pool, a share uniform over the parameter ranges."""
    rows = pool[torch.from_numpy(rng.integers(0, len(pool), n))]
    low = np.array([r[0] for r in PARAM_RANGES])
    high = np.array([r[1] for r in PARAM_RANGES])
    uniform = torch.from_numpy(rng.uniform(low, high, (n, N_PARAMS)).astype(np.float32))
    pick = torch.from_numpy(rng.random(n) < UNIFORM_SHARE)
    return torch.where(pick[:, None], uniform, rows)


def draw_identities(split: str, rng: np.random.Generator, n: int) -> list[int]:
    """n identity seeds of clips drawn from `split`."""
    seeds = SPLITS[split]
    return [identity_seed(int(seeds.start + s)) for s in rng.integers(0, len(seeds), n)]


def step_rng(cfg, rank: int, step: int) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, rank, step])


def write_summary(directory: Path, cfg, metrics: dict) -> None:
    """Beside the weights: the training config and its final metrics (what produced these weights)."""
    path = directory / f"{cfg.stage}_train.json"
    info = {"config": dataclasses.asdict(cfg), "metrics": {k: v for k, v in metrics.items()
                                                         if isinstance(v, (int, float))}}
    path.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
