"""The quality measures of DESIGN.md "Measures", computed on held-out clips with the trained models.

Everything reads generated *frames* through the independent probe (models/probe.py), never the latents:
lip-sync r (Pearson of true vs probe-read jaw_open) and lip lag (cross-correlation peak, in frames), decoder
PSNR, and over a long generation the dynamics ratio (std of probe-read motion, last window ÷ first) and drift
(change of mean probe-read parameters, and of similarity to the reference portrait, first → last window).
Two baselines run beside the model: ground-truth motion through the decoder (ceiling) and motion generated with
the audio zeroed (floor).
"""

import logging
from dataclasses import dataclass

import numpy as np
import torch

from models.data.dataset import HELDOUT_START, identity_seed, make_clip
from models.data.face import render, sample_identities
from models.data.params import PARAM_INDEX, neutral_params
from models.kv_cache import POLICY_NAMES, CacheConfig
from models.sampling import SamplerConfig, generate

log = logging.getLogger(__name__)
JAW = PARAM_INDEX["jaw_open"]
# Motion the dynamics ratio watches: the mouth and the head (blinks and gaze are not "motion" here).
DYNAMIC_PARAMS = [PARAM_INDEX[n] for n in ("jaw_open", "lip_spread", "lip_round", "head_yaw", "head_pitch",
                                           "head_roll", "head_x", "head_y")]
MAX_LAG = 5
DECODE_BATCH = 25


@dataclass
class Models:
    """The trained models an evaluation needs (all in eval mode, on one device)."""

    audio: torch.nn.Module
    motion: torch.nn.Module
    encoder: torch.nn.Module
    decoder: torch.nn.Module
    probe: torch.nn.Module


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; 0 when either side is constant."""
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 1e-12 else 0.0


def lip_lag(truth: np.ndarray, read: np.ndarray, max_lag: int = MAX_LAG) -> int:
    """Lag (frames) maximising corr(truth[t], read[t + lag]); positive = the video is late."""
    scores = {lag: pearson(truth[max(0, -lag):len(truth) - max(0, lag)], read[max(0, lag):len(read) - max(0, -lag)])
              for lag in range(-max_lag, max_lag + 1)}
    return max(scores, key=scores.get)


@torch.no_grad()
def decode_and_read(models: Models, reference: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """z (T, d) on one reference (3, H, W) → (frames (T, 3, H, W), probe-read params (T, 16)), in batches."""
    identity = models.decoder.encode_reference(reference[None])
    frames, params = [], []
    for i in range(0, len(z), DECODE_BATCH):
        f = models.decoder(identity, z[i:i + DECODE_BATCH])
        frames.append(f)
        params.append(models.probe(f))
    return torch.cat(frames), torch.cat(params)


@torch.no_grad()
def generate_motion(models: Models, audio: torch.Tensor, reference: torch.Tensor, emotion: int,
                    policy: CacheConfig, seed: int) -> torch.Tensor:
    """Motion latents (T, d) from audio (N,) and the reference portrait alone."""
    feats = models.audio(audio[None])  # (1, T, d_audio)
    z_ref = models.encoder(reference[None])  # (1, d)
    return generate(models.motion, feats, z_ref, torch.tensor([emotion]), policy, SamplerConfig(seed=seed))[0]


@torch.no_grad()
def clip_scores(models: Models, n_clips: int, seconds: float, size: int, policy: CacheConfig) -> dict:
    """Lip-sync r/lag for the model, ceiling and floor, and decoder PSNR, over n held-out clips."""
    truth, read = [], {"model": [], "ceiling": [], "floor": []}
    mse = []
    for i in range(n_clips):
        clip = make_clip(HELDOUT_START + 17 * i, seconds, size=size)
        truth.append(clip.params[:, JAW].numpy())
        z_true = torch.cat([models.encoder(clip.frames[j:j + DECODE_BATCH])
                            for j in range(0, len(clip.frames), DECODE_BATCH)])
        frames, params = decode_and_read(models, clip.reference, z_true)
        mse.append(float((frames - clip.frames).square().mean()))
        read["ceiling"].append(params[:, JAW].numpy())
        for name, audio in (("model", clip.audio), ("floor", torch.zeros_like(clip.audio))):
            z = generate_motion(models, audio, clip.reference, clip.emotion, policy, seed=i)
            read[name].append(decode_and_read(models, clip.reference, z)[1][:, JAW].numpy())
    t = np.concatenate(truth)
    r = {name: pearson(t, np.concatenate(v)) for name, v in read.items()}
    return {"lipsync_r": r["model"], "lipsync_r_ceiling": r["ceiling"], "lipsync_r_floor": r["floor"],
            "lip_lag_frames": lip_lag(t, np.concatenate(read["model"])),
            "psnr_db": float(-10 * np.log10(max(np.mean(mse), 1e-10)))}


@torch.no_grad()
def long_run_scores(models: Models, seconds: float, size: int, policy: CacheConfig, window_s: float) -> dict:
    """Dynamics ratio, drift and lip-sync r of one long held-out generation (first vs last window)."""
    clip = make_clip(HELDOUT_START + 999, seconds, size=None)
    reference = render(sample_identities([identity_seed(HELDOUT_START + 999)]), neutral_params(1), size)[0]
    z = generate_motion(models, clip.audio, reference, clip.emotion, policy, seed=0)
    w = int(window_s * 25)
    first_frames, first = decode_and_read(models, reference, z[:w])
    last_frames, last = decode_and_read(models, reference, z[-w:])
    std_first, std_last = first[:, DYNAMIC_PARAMS].std(0), last[:, DYNAMIC_PARAMS].std(0)
    keep = std_first > 1e-6
    dynamics = float((std_last[keep] / std_first[keep]).mean()) if keep.any() else 0.0
    scale = models.probe.halfrange  # drift in units of each parameter's half range
    drift_params = float(((last.mean(0) - first.mean(0)) / scale).abs().mean())
    sim_first, sim_last = _similarity(first_frames, reference), _similarity(last_frames, reference)
    jaw = clip.params[:, JAW].numpy()
    read_jaw = np.concatenate([first[:, JAW].numpy(), last[:, JAW].numpy()])
    return {"dynamics_ratio": dynamics, "drift": drift_params, "identity_similarity_first": sim_first,
            "identity_similarity_last": sim_last, "lipsync_r": pearson(np.concatenate([jaw[:w], jaw[-w:]]), read_jaw)}


def _similarity(frames: torch.Tensor, reference: torch.Tensor) -> float:
    """Cosine similarity of the mean frame to the reference portrait (centred pixels): identity kept ≈ 1."""
    a = (frames.mean(0) - frames.mean()).flatten()
    b = (reference - reference.mean()).flatten()
    return float(torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-9))


def evaluate(models: Models, clips: int = 8, clip_seconds: float = 10.0, long_seconds: float = 300.0,
             size: int = 256, cache: CacheConfig = CacheConfig(), progress=None) -> dict:
    """Every measure of DESIGN.md, with the default cache policy and an ablation over all five policies."""
    result = clip_scores(models, clips, clip_seconds, size, cache)
    if progress:
        progress("clips")
    window = min(60.0, long_seconds / 3)
    result["long_seconds"], result["window_seconds"] = long_seconds, window
    result["policies"] = {}
    for name in POLICY_NAMES:
        policy = CacheConfig(name, cache.budget_frames, compress_tokens=cache.compress_tokens,
                             query_tokens=cache.query_tokens)
        result["policies"][name] = long_run_scores(models, long_seconds, size, policy, window)
        if progress:
            progress(name)
    default = result["policies"][cache.policy]
    result["dynamics_ratio"], result["drift"] = default["dynamics_ratio"], default["drift"]
    result["identity_drift"] = default["identity_similarity_first"] - default["identity_similarity_last"]
    result["cache_policy"] = cache.policy
    return result
