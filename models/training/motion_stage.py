"""Stage `motion`: the audio encoder + diffusion-forcing motion generator, in the latent of the trained decoder.

The latent of each clip frame depends on how the decoder stage trained (`latent` in its export's meta):
- `params`: the decoder reads the normalised true motion (`param_latent`), so the clip's own parameters are the
  target, exact; only the reference's latent `z_ref` comes from the motion encoder, as it does at inference;
- `encoder`: every frame is rendered and encoded by the motion encoder.
Latents are computed once per (encoder weights, clip set) and cached on disk beside the run (docs/ARCHITECTURE.md
"Training"); each rank computes and caches only its own shard of clips.
"""

import argparse
import dataclasses
import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from actorcast.models.audio import AudioConfig, AudioEncoder
from actorcast.models.calibration import SpreadCalibration
from actorcast.models.checkpoint import load_weights, read_header, save_weights
from actorcast.models.data.dataset import SPLITS, identity_seed, make_clip
from actorcast.models.data.face import render, sample_identities
from actorcast.models.data.params import neutral_params
from actorcast.models.decoder import param_latent
from actorcast.models.errors import ConfigError, InputError
from actorcast.models.kv_cache import CacheConfig
from actorcast.models.motion import MotionConfig, MotionGenerator
from actorcast.models.motion_ae import MotionAEConfig, MotionEncoder
from actorcast.models.presets import get_preset
from actorcast.models.sampling import SamplerConfig, generate
from actorcast.models.training.common import preset_defaults, write_summary
from actorcast.models.training.motion_loss import diffusion_forcing_loss
from actorcast.models.training.distill import step_distillation_loss
from actorcast.models.timebase import SAMPLES_PER_FRAME

log = logging.getLogger(__name__)
AUDIO_CONTEXT = 8  # frames of audio before a training window, so the causal encoder has real history
ENCODE_BATCH = 50
EVAL_CLIPS = 8
CALIBRATION_CLIPS = 64
# A step-distilled student keeps this share of the diffusion-forcing loss beside the distillation loss: it anchors
# the clean-context pass that writes the cache and the levels the student's own steps do not visit.
DISTILL_DF_WEIGHT = 0.1
# MotionConfig fields that shape training, not the network: a fine-tune (`--init`) takes them from the preset.
TRAINING_FIELDS = ("p_drop_audio", "p_drop_emotion", "p_noisy_context", "k_context_max", "p_chunk_level",
                   "weighted_dims", "dim_weight", "chunk_choices")


def load_motion_encoder(weights: str) -> MotionEncoder:
    """The trained motion encoder of a decoder-stage export."""
    encoder, _ = load_weights(weights, "motion_encoder", MotionAEConfig, MotionEncoder)
    return encoder.eval()


def encoder_latent_kind(weights: str) -> str:
    """'params' or 'encoder': what the decoder of a decoder-stage export was trained on (older exports: encoder)."""
    return read_header(weights, "motion_encoder").get("meta", {}).get("latent", "encoder")


def clip_sources(n: int, tts_share: float) -> list[str]:
    """The speech source of each of n clips: `tts_share` of them espeak-ng, spread evenly, the rest babble."""
    return ["tts" if int((i + 1) * tts_share) > int(i * tts_share) else "babble" for i in range(n)]


@torch.no_grad()
def encode_clips(encoder: MotionEncoder, seeds: list[int], seconds: float, size: int,
                 sources: list[str] | None = None, latent: str = "encoder") -> dict:
    """The clips' latents: {'z': (N, T, d), 'z_ref': (N, d), 'pcm': (N, T*640), 'emotion': (N,)}. z_ref is the
    encoder's reading of the reference rendered at `size` (what it sees at inference); z is the encoder's reading
    of every frame (`latent='encoder'`) or the true motion (`latent='params'`)."""
    d_motion = encoder.config.d_motion
    zs, refs, pcms, emotions = [], [], [], []
    for seed, source in zip(seeds, sources or ["babble"] * len(seeds)):
        if latent == "params":
            clip = make_clip(seed, seconds, size=None, source=source)
            reference = render(sample_identities([identity_seed(seed)]), neutral_params(1), size)
            zs.append(param_latent(clip.params, d_motion))
        else:
            clip = make_clip(seed, seconds, size=size, source=source)
            reference = clip.reference[None]
            zs.append(torch.cat([encoder(clip.frames[i:i + ENCODE_BATCH])
                                 for i in range(0, len(clip.frames), ENCODE_BATCH)]))
        refs.append(encoder(reference)[0])
        pcms.append(clip.audio)
        emotions.append(clip.emotion)
    return {"z": torch.stack(zs), "z_ref": torch.stack(refs), "pcm": torch.stack(pcms),
            "emotion": torch.tensor(emotions, dtype=torch.long)}


def latent_cache(cfg, rank: int, world_size: int, split: str = "train", n_clips: int | None = None) -> dict:
    """This rank's clips, encoded once and cached under out_dir/latents/ (keyed by weights and clip set)."""
    n_clips = n_clips or cfg.clips
    seeds = SPLITS[split]
    rng = np.random.default_rng([cfg.seed, 0x1A7E])
    clip_seeds = [int(seeds.start + s) for s in rng.choice(min(len(seeds), 10 ** 6), n_clips, replace=False)]
    mine = clip_seeds[rank::world_size]
    sources = clip_sources(n_clips, cfg.tts_share)[rank::world_size]
    weights_file = Path(cfg.weights) / "motion_encoder.safetensors"
    ident = repr((mine, sources, cfg.clip_seconds, cfg.size)).encode()
    key = hashlib.sha256(weights_file.read_bytes() + ident).hexdigest()[:16]
    path = Path(cfg.out_dir) / "latents" / f"{split}-{key}.pt"
    if path.is_file():
        return torch.load(path)
    log.info("encoding %d %s clips of %.1f s, %d of them espeak speech (once; cached at %s)", len(mine), split,
             cfg.clip_seconds, sources.count("tts"), path)
    size = cfg.size or get_preset(cfg.preset).decoder.resolution
    data = encode_clips(load_motion_encoder(cfg.weights), mine, cfg.clip_seconds, size, sources,
                        encoder_latent_kind(cfg.weights))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    torch.save(data, tmp)
    tmp.replace(path)
    return data


def windows(data: dict, rng: np.random.Generator, n: int, frames: int) -> dict:
    """n random windows of `frames` frames, with AUDIO_CONTEXT frames of audio history (zeros before the start)."""
    total = data["z"].shape[1]
    clips = rng.integers(0, len(data["z"]), n)
    starts = rng.integers(0, total - frames + 1, n)
    z = torch.stack([data["z"][c, s:s + frames] for c, s in zip(clips, starts)])
    pcm = F.pad(data["pcm"], (AUDIO_CONTEXT * SAMPLES_PER_FRAME, 0))
    a = [pcm[c, s * SAMPLES_PER_FRAME:(s + frames + AUDIO_CONTEXT) * SAMPLES_PER_FRAME] for c, s in zip(clips, starts)]
    return {"z": z, "pcm": torch.stack(a), "z_ref": data["z_ref"][clips], "emotion": data["emotion"][clips],
            "noise_seed": torch.from_numpy(rng.integers(0, 2 ** 62, 1))}


class MotionTrainer(nn.Module):
    """Audio encoder + motion generator trained together with the diffusion-forcing loss."""

    def __init__(self, preset: str, latent: str = "params", init: str = "", lookahead: int | None = None,
                 distill_steps: int = 0):
        """lookahead: the audio encoder's lookahead in frames (None: the export's with `init`, else the
        preset's). With `init`, another lookahead than the export's fine-tunes the audio encoder too.
        distill_steps: > 0 distils the `init` generator (the teacher, frozen) into one that samples in this
        many Euler steps (models/training/distill.py)."""
        super().__init__()
        self.teacher: tuple[MotionGenerator, ...] = ()  # a tuple: the frozen teacher is no parameter to train
        p = get_preset(preset)
        motion = p.motion
        if latent != "params":  # the weighted dimensions name parameters: only the parameter latent has them
            motion = dataclasses.replace(motion, weighted_dims=(0, 0), dim_weight=1.0)
        if init:  # fine-tune an export: its sizes and weights, this preset's training settings
            audio, _ = load_weights(init, "audio_encoder", AudioConfig, AudioEncoder)
            generator, _ = load_weights(init, "motion_generator", MotionConfig, MotionGenerator)
            self.audio_trains = lookahead is not None and lookahead != audio.config.lookahead
            if self.audio_trains:  # the same weights, read one frame sooner or later: they must learn it
                shifted = AudioEncoder(dataclasses.replace(audio.config, lookahead=lookahead))
                shifted.load_state_dict(audio.state_dict())
                audio = shifted
            self.audio_config = audio.config
            self.motion_config = dataclasses.replace(
                generator.config, **{f: getattr(motion, f) for f in TRAINING_FIELDS})
            self.audio, self.generator = audio, generator
            if distill_steps:
                teacher, _ = load_weights(init, "motion_generator", MotionConfig, MotionGenerator)
                self.teacher = (teacher.eval().requires_grad_(False),)
                self.motion_config = dataclasses.replace(self.motion_config, sampler_steps=distill_steps)
            self.generator.config = self.motion_config
            if not self.audio_trains:
                # The audio encoder stays as exported: the free motion (models/free_motion.py) was fitted to
                # its features, and a fine-tune of the generator must not move them.
                self.audio.requires_grad_(False)
        else:
            audio_config = p.audio if lookahead is None else dataclasses.replace(p.audio, lookahead=lookahead)
            self.audio_config, self.motion_config = audio_config, motion
            self.audio = AudioEncoder(audio_config)
            self.generator = MotionGenerator(motion)
            self.audio_trains = True

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.audio_trains):
            feats = self.audio(batch["pcm"])[:, AUDIO_CONTEXT:]  # (B, T, d_audio)
        noise = torch.Generator().manual_seed(int(batch["noise_seed"][0]))
        feats = feats.to(batch["z"].dtype)
        loss = diffusion_forcing_loss(self.generator, batch["z"], feats, batch["z_ref"], batch["emotion"],
                                      generator=noise)
        if not self.teacher:
            return loss, {}
        teacher = self.teacher[0].to(batch["z"].device)
        distill = step_distillation_loss(self.generator, teacher, batch["z"], feats, batch["z_ref"],
                                         batch["emotion"], generator=noise)
        return distill + DISTILL_DF_WEIGHT * loss, {"distill_loss": distill.detach(), "df_loss": loss.detach()}


class MotionStage:
    """Stage 2 of docs/ARCHITECTURE.md "Training"."""

    # tiny's generator has ~1 M weights, base's ~100 M and large's ~500 M (models/motion.py): a step of those
    # costs far more, so they take fewer steps, each on twice the windows (a steadier gradient); and a lower
    # learning rate, a few 1e-4 as is usual for transformers of that width, halved again for large (wider
    # layers: the same per-weight Adam step moves their output more).
    DEFAULTS = {
        "tiny": {"steps": 4000, "batch_size": 16, "lr": 1e-3, "checkpoint_every": 500},
        "base": {"steps": 3000, "batch_size": 32, "lr": 3e-4, "checkpoint_every": 250},
        "large": {"steps": 2000, "batch_size": 32, "lr": 1.5e-4, "checkpoint_every": 200},
    }

    @staticmethod
    def defaults(preset: str) -> dict:
        """TrainConfig steps, batch_size, lr and checkpoint_every for `preset`."""
        return preset_defaults(MotionStage.DEFAULTS, preset)

    @staticmethod
    def check(cfg) -> None:
        if not cfg.weights:
            raise ConfigError("the motion stage needs --weights DIR with a trained decoder export "
                              "(run `actorcast train --stage decoder` first)")
        if not (Path(cfg.weights) / "motion_encoder.safetensors").is_file():
            raise ConfigError(f"--weights {cfg.weights} holds no motion_encoder.safetensors; "
                              "give the output directory of a decoder-stage run")
        if cfg.data != "synthetic":
            raise ConfigError("the motion stage trains on the synthetic data set; drop --data")
        if cfg.distill_steps and not cfg.init:
            raise ConfigError("--distill-steps distils a trained generator: give it as --init DIR")
        if cfg.init and not (Path(cfg.init) / "motion_generator.safetensors").is_file():
            raise ConfigError(f"--init {cfg.init} holds no motion_generator.safetensors; give a directory "
                              "exported by a motion-stage run (e.g. the shipped weights)")

    @staticmethod
    def build(cfg) -> nn.Module:
        return MotionTrainer(cfg.preset, encoder_latent_kind(cfg.weights), cfg.init,
                             None if cfg.lookahead < 0 else cfg.lookahead, cfg.distill_steps)

    @staticmethod
    def batches(cfg, rank: int, world_size: int, start_step: int) -> Iterator[dict]:
        data = latent_cache(cfg, rank, world_size)
        for step in range(start_step + 1, 10 ** 12):
            yield windows(data, np.random.default_rng([cfg.seed, rank, step]), cfg.batch_size, cfg.window_frames)

    @staticmethod
    @torch.no_grad()
    def evaluate(module: nn.Module, cfg) -> dict:
        """Held-out diffusion-forcing loss (fixed noise), the quantity training lowers."""
        data = latent_cache(cfg, 0, 1, split="heldout", n_clips=EVAL_CLIPS)
        batch = windows(data, np.random.default_rng(3), 2 * EVAL_CLIPS, cfg.window_frames)
        device = next(module.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        loss, _ = module(batch)
        return {"eval_loss": float(loss)}

    @staticmethod
    def export(module: nn.Module, directory: Path, cfg, metrics: dict) -> None:
        meta = {"preset": cfg.preset}
        if encoder_latent_kind(cfg.weights) == "params":  # the latent's first dimensions are the parameters
            n = min(CALIBRATION_CLIPS, cfg.clips)  # no more than a (test-sized) run trains on
            log.info("fitting the generator's spread calibration on %d training clips", n)
            meta["calibration"] = fit_calibration(module.audio, module.generator, calibration_clips(cfg, n)).to_meta()
        save_weights(directory, "audio_encoder", module.audio, module.audio_config, {"preset": cfg.preset})
        save_weights(directory, "motion_generator", module.generator, module.motion_config, meta)
        write_summary(directory, cfg, metrics)


def calibration_clips(cfg, n: int) -> dict:
    """n training-split clips for the spread calibration (never held-out ones), speech sources mixed as in
    training, in the latent of `encode_clips` with `latent='params'`."""
    rng = np.random.default_rng([cfg.seed, 0xCA1B])
    train = SPLITS["train"]
    seeds = [int(train.start + s) for s in rng.choice(len(train), n, replace=False)]
    size = cfg.size or get_preset(cfg.preset).decoder.resolution
    return encode_clips(load_motion_encoder(cfg.weights), seeds, cfg.clip_seconds, size,
                        clip_sources(n, cfg.tts_share), "params")


@torch.no_grad()
def fit_calibration(audio: AudioEncoder, generator: MotionGenerator, data: dict, progress=None) -> SpreadCalibration:
    """The spread calibration of the speech parameters (models/calibration.py): each clip generated from its audio
    and reference alone, as at inference, with the generator's raw output, against the clip's true motion.
    progress: wraps the clip loop (e.g. a tqdm bar)."""
    modes = audio.training, generator.training
    audio.eval()
    generator.eval()
    p = next(generator.parameters())
    saved, generator.calibration = generator.calibration, None
    try:
        made, truth = [], []
        for i in (progress or iter)(range(len(data["z"]))):
            feats = audio(data["pcm"][i:i + 1].to(p.device, p.dtype))
            z = generate(generator, feats, data["z_ref"][i:i + 1].to(p.device, p.dtype),
                         data["emotion"][i:i + 1].to(p.device), CacheConfig(), SamplerConfig(seed=i))[0]
            made.append(z.float().cpu())
            truth.append(data["z"][i][:len(z)])
        return SpreadCalibration.fit(torch.cat(made), torch.cat(truth))
    finally:
        generator.calibration = saved
        audio.train(modes[0])
        generator.train(modes[1])


def recalibrate(directory: Path, clips: int = CALIBRATION_CLIPS, progress=None) -> SpreadCalibration:
    """Fit the spread calibration of the generator exported in `directory` (beside the motion encoder it trained
    with, as shipped) and write it into its header, with the clip settings of its `motion_train.json`."""
    directory = Path(directory)
    if encoder_latent_kind(str(directory)) != "params":
        raise ConfigError(f"{directory}: the calibration needs a decoder trained on the parameters (latent 'params')")
    summary = directory / "motion_train.json"
    if not summary.is_file():
        raise ConfigError(f"{directory} holds no motion_train.json: give the export of a motion-stage run")
    run = json.loads(summary.read_text())["config"]
    cfg = argparse.Namespace(seed=run["seed"], clip_seconds=run["clip_seconds"],
                             tts_share=run["tts_share"], size=run["size"], preset=run["preset"], weights=str(directory))
    audio, _ = load_weights(directory, "audio_encoder", AudioConfig, AudioEncoder)
    generator, config = load_weights(directory, "motion_generator", MotionConfig, MotionGenerator)
    calibration = fit_calibration(audio, generator, calibration_clips(cfg, clips), progress)
    meta = dict(read_header(directory, "motion_generator").get("meta", {}), calibration=calibration.to_meta())
    save_weights(directory, "motion_generator", generator, config, meta)
    return calibration


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m actorcast.models.training.motion_stage",
        description="Re-fit the spread calibration of an exported motion generator (models/calibration.py) on "
                    "training clips and write it into DIR/motion_generator.json; `actorcast train --stage motion` "
                    "does this itself at export.")
    parser.add_argument("directory", type=Path, help="weights directory with motion_generator, audio_encoder, "
                                                      "motion_encoder and motion_train.json")
    parser.add_argument("--clips", type=int, default=CALIBRATION_CLIPS,
                        help=f"training clips to fit on (default {CALIBRATION_CLIPS})")
    args = parser.parse_args(argv)
    try:
        if args.clips < 2:
            raise ConfigError(f"--clips {args.clips}: give at least 2")
        calibration = recalibrate(args.directory, args.clips,
                                  progress=lambda clips: tqdm(clips, desc="calibrate", unit="clip"))
    except (ConfigError, InputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(calibration.to_meta()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
