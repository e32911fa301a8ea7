"""Which weights a stage runs: an explicit directory, else the shipped ones; untrained only when asked.

A missing weights file is an InputError, never a quiet fall-back to random weights: a model that was not loaded
renders a face that does not talk. Tests and benchmarks that want untrained models ask for them by name
(`UNTRAINED`, `--weights untrained`); those are seeded, so every copy of a model is the same.

Every stage (in-process or a Ray actor, however many copies) builds its models through `load_model`, so all
copies of one model hold identical weights. Stages on other Ray nodes get the weights as a WeightsBundle through
Ray's object store: nothing assumes that a node sees the driver's disk.
"""

import contextlib
import dataclasses
import logging
import tempfile
from pathlib import Path
from dataclasses import dataclass
from typing import Iterator

import torch

from actorcast.models.audio import AudioConfig, AudioEncoder
from actorcast.models.calibration import SpreadCalibration
from actorcast.models.checkpoint import load_weights, read_header
from actorcast.models.decoder import DecoderConfig, VideoDecoder
from actorcast.models.errors import ConfigError, InputError
from actorcast.models.free_motion import load_free_motion
from actorcast.models.motion import MotionConfig, MotionGenerator
from actorcast.models.motion_ae import MotionAEConfig, MotionEncoder
from actorcast.models.presets import get_preset

log = logging.getLogger(__name__)

# The weights that come with actorcast (package data of actorcast.models, in a checkout and in a wheel alike).
SHIPPED_ROOT = Path(__file__).resolve().parent.parent / "models" / "weights"
SHIPPED_PRESETS = ("tiny",)  # the presets whose weights come with actorcast
UNTRAINED = "untrained"  # the weights value (`--weights untrained`) that asks for seeded, untrained models
UNTRAINED_SEED = 1234  # untrained weights are still identical in every stage copy

# export name -> (preset field, config class, module class)
MODELS = {
    "audio_encoder": ("audio", AudioConfig, AudioEncoder),
    "motion_encoder": ("motion_ae", MotionAEConfig, MotionEncoder),
    "motion_generator": ("motion", MotionConfig, MotionGenerator),
    "decoder": ("decoder", DecoderConfig, VideoDecoder),
}


def resolve_weights(weights: str | Path | None, preset: str = "tiny") -> Path | str:
    """The weights directory to use: `weights` (must hold every model), else (None) the shipped one of `preset`;
    `UNTRAINED` stays UNTRAINED. InputError, before anything loads, when the directory is missing or incomplete."""
    get_preset(preset)  # ConfigError for an unknown preset
    if weights is not None and str(weights) == UNTRAINED:
        return UNTRAINED
    if weights is not None:
        path = Path(weights)
        if not path.is_dir():
            raise InputError(f"weights directory {path} does not exist: pass a directory written by "
                             "`actorcast train`, or leave --weights out")
        check_weights(path)
        return path
    if preset not in SHIPPED_PRESETS:
        raise InputError(f"no weights ship for preset {preset}: train them (`actorcast train --preset {preset}`) "
                         f"and pass --weights DIR, or --weights {UNTRAINED} for a test run")
    shipped = SHIPPED_ROOT / preset
    missing = [n for n in MODELS if not (shipped / f"{n}.json").is_file()
               or not (shipped / f"{n}.safetensors").is_file()]
    if missing:
        raise InputError(f"the shipped {preset} weights are missing from {shipped} (no {missing[0]}): reinstall "
                         f"actorcast, or pass --weights DIR written by `actorcast train`")
    return shipped


@dataclass(frozen=True)
class WeightsBundle:
    """A weights directory's files (NAME.json + NAME.safetensors) as bytes, to ship to stages on other nodes."""

    files: dict  # file name -> bytes
    source: str  # where the driver read them (for messages)

    @classmethod
    def read(cls, directory: Path) -> "WeightsBundle":
        paths = [p for p in sorted(Path(directory).iterdir()) if p.suffix in (".json", ".safetensors")]
        return cls({p.name: p.read_bytes() for p in paths}, str(directory))


class _WeightsHolder:
    """Holds a WeightsBundle for the stages of one engine (a zero-CPU Ray actor)."""

    def __init__(self, bundle: WeightsBundle):
        self.bundle = bundle

    def get(self) -> WeightsBundle:
        return self.bundle


@dataclass(frozen=True)
class ShippedWeights:
    """Weights that stages on any node fetch from a named holder actor. Not an object-store argument of the
    stages' constructors: Ray warns that actors built from such arguments may fail to restart, and restarts are
    how a lost shard comes back. The holder lives (on the driver's node) for as long as the engine."""

    holder: str  # the holder actor's name

    @classmethod
    def put(cls, bundle: WeightsBundle, name: str, node_id: str) -> tuple["ShippedWeights", object]:
        """(the ShippedWeights, the holder's handle: keep it for as long as the stages live)."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        handle = ray.remote(num_cpus=0)(_WeightsHolder).options(
            name=name, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=True)).remote(bundle)
        return cls(name), handle

    def get(self) -> WeightsBundle:
        import ray

        return ray.get(ray.get_actor(self.holder).get.remote())


def motion_config(weights: Path | str, preset: str = "tiny") -> MotionConfig:
    """The config of the motion generator of `weights` (a `resolve_weights` result), read from its header without
    loading it: its chunk sizes (`trained_chunks`, `with_chunk`) are known before a stage starts."""
    if weights == UNTRAINED:
        return get_preset(preset).motion
    return MotionConfig(**read_header(weights, "motion_generator")["config"])


@contextlib.contextmanager
def local_weights(weights, preset: str = "tiny") -> Iterator[Path | str]:
    """The weights as a directory on this node while the models load: a WeightsBundle (or ShippedWeights) is
    written to a temporary folder (removed after), anything else is `resolve_weights`'d."""
    if isinstance(weights, ShippedWeights):
        weights = weights.get()
    if not isinstance(weights, WeightsBundle):
        yield resolve_weights(weights, preset)
        return
    with tempfile.TemporaryDirectory(prefix="actorcast-weights-") as folder:
        for name, data in weights.files.items():
            (Path(folder) / name).write_bytes(data)
        yield Path(folder)


def check_weights(directory: Path, names: tuple[str, ...] = tuple(MODELS)) -> None:
    """InputError unless `directory` holds every model of `names` (header readable, config valid, tensors file
    present): checked from the small JSON headers before any stage starts or loads a tensor."""
    missing = [n for n in names if not (directory / f"{n}.json").is_file()
               or not (directory / f"{n}.safetensors").is_file()]
    if missing:
        raise InputError(f"{directory} lacks the weights of {', '.join(missing)} (each needs NAME.json and "
                         "NAME.safetensors): pass a directory written by `actorcast train`, or leave --weights out")
    for name in names:
        _, config_cls, _ = MODELS[name]
        try:
            config_cls(**read_header(directory, name)["config"])
        except (TypeError, KeyError) as e:
            raise InputError(f"{directory}/{name}.json does not hold a {config_cls.__name__} ({e}): these weights "
                             "are for another model or version") from None


def load_model(name: str, weights: Path | str, preset: str = "tiny", device: str = "cpu",
               resolution: int | None = None) -> torch.nn.Module:
    """Model `name` in eval mode on `device`, from the directory `weights` (a `resolve_weights` result) or, for
    `UNTRAINED`, seeded from the preset's config; `resolution` only sizes an untrained decoder."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; one of {', '.join(MODELS)}")
    if weights is None:
        raise ConfigError("load_model needs a weights directory or UNTRAINED: resolve_weights(None) gives the "
                          "shipped one")
    field, config_cls, module_cls = MODELS[name]
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for but no CUDA GPU is visible: use --device cpu")
    if weights != UNTRAINED:
        module, _ = load_weights(Path(weights), name, config_cls, module_cls)
        meta = read_header(weights, name).get("meta", {})
        if name == "motion_generator":
            module.calibration = SpreadCalibration.from_meta(meta.get("calibration"))
            module.attach_free_motion(load_free_motion(Path(weights), device))
        if name == "decoder":
            module.latent = meta.get("latent", "encoder")
    else:
        config = getattr(get_preset(preset), field)
        if name == "decoder" and resolution is not None:
            config = dataclasses.replace(config, resolution=resolution)
        log.info("%s (preset %s): untrained, as asked", name, preset)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(UNTRAINED_SEED)
            module = module_cls(config)
    return module.to(device).eval().requires_grad_(False)
