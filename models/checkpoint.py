"""Weights on disk: safetensors + a JSON config beside them, written atomically, checked on load.

Layout of a weights directory (one file pair per model):

    DIR/<name>.safetensors   the state dict
    DIR/<name>.json          {"class": ..., "config": {...dataclass fields...}, "meta": {...}}
"""

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from actorcast.models.errors import InputError


def save_weights(directory: Path | str, name: str, module: torch.nn.Module, config: Any,
                 meta: dict | None = None) -> Path:
    """Write `module`'s weights and its dataclass `config` under `directory/name.*` (temp names, then rename)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: (v.float() if v.is_floating_point() else v).detach().to("cpu").contiguous()
             for k, v in module.state_dict().items()}
    header = {"class": type(module).__name__, "config": dataclasses.asdict(config), "meta": meta or {}}
    weights, info = directory / f"{name}.safetensors", directory / f"{name}.json"
    tmp_w, tmp_i = weights.with_name(f".{weights.name}.part"), info.with_name(f".{info.name}.part")
    try:
        save_file(state, str(tmp_w))
        tmp_i.write_text(json.dumps(header, indent=2, sort_keys=True) + "\n")
        os.replace(tmp_w, weights)
        os.replace(tmp_i, info)
    finally:
        tmp_w.unlink(missing_ok=True)
        tmp_i.unlink(missing_ok=True)
    return weights


def read_header(directory: Path | str, name: str) -> dict:
    """The JSON header of `directory/name`; InputError if it is missing or unreadable."""
    info = Path(directory) / f"{name}.json"
    if not info.is_file():
        raise InputError(f"no {name} weights in {directory} (missing {info.name}): train them or pass --weights")
    try:
        return json.loads(info.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{info} is corrupt ({e.__class__.__name__}): re-export the weights") from None


def load_weights(directory: Path | str, name: str, config_cls: type, build) -> tuple[torch.nn.Module, Any]:
    """Rebuild `build(config)` from `directory/name.*` and load its weights; InputError on any mismatch."""
    header = read_header(directory, name)
    try:
        config = config_cls(**header["config"])
    except (TypeError, KeyError) as e:
        raise InputError(f"{directory}/{name}.json does not hold a {config_cls.__name__} ({e}): "
                         "these weights are for another model or version") from None
    module = build(config)
    path = Path(directory) / f"{name}.safetensors"
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise InputError(f"{path} is corrupt or missing ({e}): re-export the weights") from None
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError:  # size mismatch
        missing, unexpected = ["(shape mismatch)"], []
    if missing or unexpected:
        raise InputError(f"{path} does not match {type(module).__name__} (missing {len(missing)}, unexpected "
                         f"{len(unexpected)} tensors): these weights are for another preset")
    return module, config
