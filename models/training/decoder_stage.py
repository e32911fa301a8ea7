"""Stage `decoder`: the motion encoder and the video decoder, trained on cross-identity pairs (docs/ARCHITECTURE.md
"Training"), with the new-pixel mask and the true motion where the data is synthetic.

Two ways to drive the decoder while it learns (`TrainConfig.latent`):
- `params` (synthetic data): the decoder's latent is the true motion, `param_latent(params)`, and the motion encoder
  learns beside it, on its own loss, to regress that latent from a frame of another identity. Trained jointly on
  the encoder's moving, noisy latent, the decoder never learnt to open the mouth on this CPU (meter r <= 0.2 in
  three runs); on the true parameters the same decoder did (r 0.64 in 14 min; models/weights/tiny/TRAINING.md).
- `encoder`: z = encoder(frame), trained jointly (the only choice for real videos, which have no parameters).
"""

import dataclasses
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from actorcast.models.checkpoint import save_weights
from actorcast.models.data.face import render, sample_identities
from actorcast.models.data.params import PARAM_INDEX, neutral_params
from actorcast.models.data.params import N_PARAMS
from actorcast.models.decoder import DECODER_PRESETS, VideoDecoder, decoder_loss, frame_loss, param_latent
from actorcast.models.errors import ConfigError
from actorcast.models.motion_ae import MOTION_AE_PRESETS, MotionEncoder
from actorcast.models.training.common import (EVAL_BATCH, draw_identities, draw_params, param_pool, preset_defaults,
                                              step_rng, write_summary)

NEW_PIXEL_THRESHOLD = 0.08  # colour difference (of 1) that marks a pixel as new content, not a warp of the portrait


def shut_params(params: torch.Tensor) -> torch.Tensor:
    """The same motion with the jaw shut and both eyes open: what warping the portrait can show."""
    shut = params.clone()
    shut[:, [PARAM_INDEX["jaw_open"], PARAM_INDEX["blink_l"], PARAM_INDEX["blink_r"]]] = 0.0
    return shut


def new_pixels(frame: torch.Tensor, shut: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) in {0, 1}: where a frame differs from its shut-jaw, open-eyed render by more than
    NEW_PIXEL_THRESHOLD in any channel (inner mouth, teeth, lowered lip and chin, eyelids), grown by one pixel."""
    differs = ((frame - shut).abs().amax(dim=1, keepdim=True) > NEW_PIXEL_THRESHOLD).float()
    return F.max_pool2d(differs, 3, stride=1, padding=1)


FREE_NOISE = 0.1  # std of noise on the free latent dimensions in `params` mode, so the decoder learns to ignore them


def params_step(encoder: MotionEncoder, decoder: VideoDecoder, batch: dict,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """`params` mode: the decoder renders identity B from the true motion; the encoder regresses that motion's
    latent from identity A's frame. The two losses share no gradient. Returns (loss, metrics)."""
    d = decoder.config.d_motion
    target_z = param_latent(batch["params"], d).to(batch["target_b"].dtype)
    noise = torch.randn(target_z.shape, generator=generator).to(target_z) * FREE_NOISE
    noise[:, :N_PARAMS] = 0.0
    loss, metrics = frame_loss(decoder, batch["ref_b"], batch["target_b"], target_z + noise, batch["new_b"],
                               z_reg=target_z)
    encoder_mse = (encoder(batch["frame_a"]) - target_z).square().mean()
    loss = loss + decoder.config.param_weight * encoder_mse
    return loss, {**metrics, "encoder_mse": encoder_mse.detach()}


class DecoderTrainer(nn.Module):
    """Stage `decoder`: the motion encoder and the video decoder, trained on cross-identity pairs."""

    def __init__(self, preset: str, size: int, latent: str = "encoder"):
        super().__init__()
        self.latent = latent
        self.encoder_config = MOTION_AE_PRESETS[preset]
        self.decoder_config = dataclasses.replace(DECODER_PRESETS[preset], resolution=size) \
            if size else DECODER_PRESETS[preset]
        self.encoder = MotionEncoder(self.encoder_config)
        self.decoder = VideoDecoder(self.decoder_config)

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        if self.latent == "params":
            generator = torch.Generator().manual_seed(int(batch["noise_seed"][0])) if "noise_seed" in batch else None
            loss, metrics = params_step(self.encoder, self.decoder, batch, generator)
            return loss, {k: v for k, v in metrics.items() if k != "loss"}
        loss, metrics = decoder_loss(self.encoder, self.decoder, batch["frame_a"], batch["ref_b"], batch["target_b"],
                                     new_pixels=batch.get("new_b"), params=batch.get("params"))
        return loss, {k: v for k, v in metrics.items() if k != "loss"}


class DecoderStage:
    """Motion autoencoder + decoder: the first training stage (docs/ARCHITECTURE.md "Training")."""

    # base and large decode 512^2 frames (4x the pixels of tiny's 256^2) with 2-3x wider, deeper nets: a step
    # costs far more, so they take fewer steps, each on twice the frames (a steadier gradient for a model with
    # more to fit); and a lower learning rate, as Adam's per-weight steps add up to larger changes of a wider
    # layer's output (halved from tiny to base, and again to large).
    DEFAULTS = {
        "tiny": {"steps": 3000, "batch_size": 8, "lr": 2e-3, "checkpoint_every": 250},
        "base": {"steps": 2000, "batch_size": 16, "lr": 1e-3, "checkpoint_every": 200},
        "large": {"steps": 1500, "batch_size": 16, "lr": 5e-4, "checkpoint_every": 150},
    }

    @staticmethod
    def defaults(preset: str) -> dict:
        """TrainConfig steps, batch_size, lr and checkpoint_every for `preset`."""
        return preset_defaults(DecoderStage.DEFAULTS, preset)

    @staticmethod
    def check(cfg) -> None:
        if cfg.init:
            raise ConfigError("--init fine-tunes the motion stage only; drop it for this stage")
        if cfg.data != "synthetic" and not Path(cfg.data).is_dir():
            raise ConfigError(f"--data {cfg.data} is neither 'synthetic' nor a folder of videos")
        if cfg.data != "synthetic" and cfg.resolved_latent() == "params":
            raise ConfigError("--latent params needs the synthetic data set (real videos have no motion parameters); "
                              "use --latent encoder with --data FOLDER")

    @staticmethod
    def build(cfg) -> nn.Module:
        return DecoderTrainer(cfg.preset, cfg.size, cfg.resolved_latent())

    @staticmethod
    def _pairs(split: str, pool: torch.Tensor, rng: np.random.Generator, n: int, size: int) -> dict:
        """Same motion on two identities: A's frame, B's neutral reference, B's frame, where B's frame shows pixels
        its reference lacks, and the true motion."""
        params = draw_params(pool, rng, n)
        ids = draw_identities(split, rng, 2 * n)
        identities = sample_identities(ids[:n] + ids[n:] + ids[n:] + ids[n:])
        images = render(identities, torch.cat([params, params, neutral_params(n), shut_params(params)]), size)
        target_b, shut_b = images[n:2 * n], images[3 * n:]
        return {"frame_a": images[:n], "target_b": target_b, "ref_b": images[2 * n:3 * n],
                "new_b": new_pixels(target_b, shut_b), "params": params}

    @classmethod
    def batches(cls, cfg, rank: int, world_size: int, start_step: int) -> Iterator[dict]:
        size = cfg.size or DECODER_PRESETS[cfg.preset].resolution
        if cfg.data != "synthetic":
            yield from _folder_batches(cfg, rank, start_step, size)
            return
        pool = param_pool("train", cfg.seed)
        for step in range(start_step + 1, 10 ** 12):
            rng = step_rng(cfg, rank, step)
            yield {**cls._pairs("train", pool, rng, cfg.batch_size, size),
                   "noise_seed": torch.from_numpy(rng.integers(0, 2 ** 62, 1))}

    @classmethod
    @torch.no_grad()
    def evaluate(cls, module: nn.Module, cfg) -> dict:
        """Cross-identity reconstruction PSNR on held-out identities and motions."""
        size = module.decoder_config.resolution
        batch = cls._pairs("heldout", param_pool("heldout", 0), np.random.default_rng(7), EVAL_BATCH, size)
        device = next(module.parameters()).device
        batch = {k: v.to(device, next(module.parameters()).dtype) for k, v in batch.items()}
        batch["noise_seed"] = torch.zeros(1, dtype=torch.long)
        _, metrics = module(batch)
        return {f"eval_{k}": float(v) for k, v in metrics.items()}

    @staticmethod
    def export(module: nn.Module, directory: Path, cfg, metrics: dict) -> None:
        latent = cfg.resolved_latent()
        if latent == "encoder":  # a `params` latent is normalised already, and the motion stage reads it as is
            fold_latent_normalisation(module, cfg)
        meta = {"preset": cfg.preset, "latent": latent}
        save_weights(directory, "motion_encoder", module.encoder, module.encoder_config, meta)
        save_weights(directory, "decoder", module.decoder, module.decoder_config, meta)
        write_summary(directory, cfg, metrics)


@torch.no_grad()
def latent_statistics(encoder: MotionEncoder, seed: int, n: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std (d_motion,) of z over n training renders (performance motions on random identities)."""
    rng = np.random.default_rng([seed, 0x57A7])
    pool = param_pool("train", seed)
    size = encoder.config.input_size
    zs = []
    for _ in range(0, n, 64):
        params = pool[torch.from_numpy(rng.integers(0, len(pool), 64))]
        frames = render(sample_identities(draw_identities("train", rng, 64)), params, size)
        zs.append(encoder(frames.to(next(encoder.parameters()))).float())
    z = torch.cat(zs)
    return z.mean(0), z.std(0).clamp_min(1e-4)


@torch.no_grad()
def fold_latent_normalisation(module: nn.Module, cfg) -> None:
    """Make exported latents zero-mean, unit-variance per dimension (what the diffusion generator expects).

    z_n = (z - mean) / std is folded into the encoder's last linear layer, and z = z_n * std + mean into the
    decoder's first, so encoder → decoder computes exactly the same frames before and after.
    """
    mean, std = latent_statistics(module.encoder, cfg.seed)
    head, first = module.encoder.head, module.decoder.style[0]
    mean, std = mean.to(head.weight), std.to(head.weight)
    head.weight.div_(std[:, None])
    head.bias.sub_(mean).div_(std)
    first.bias.add_(first.weight @ mean)
    first.weight.mul_(std[None, :])


def _folder_batches(cfg, rank: int, start_step: int, size: int) -> Iterator[dict]:
    """Real videos: same-identity reconstruction (a frame, the video's first frame as reference, the frame)."""
    from actorcast.models.data.video_folder import VideoFolderClips

    clips = list(VideoFolderClips(cfg.data, seconds=2.0, size=size))
    for step in range(start_step + 1, 10 ** 12):
        rng = step_rng(cfg, rank, step)
        picks = [clips[i] for i in rng.integers(0, len(clips), cfg.batch_size)]
        frames = torch.stack([c.frames[rng.integers(0, len(c.frames))] for c in picks])
        refs = torch.stack([c.reference for c in picks])
        yield {"frame_a": frames, "ref_b": refs, "target_b": frames}
