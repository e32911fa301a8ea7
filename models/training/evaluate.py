"""The quality measures (docs/ARCHITECTURE.md "Measures"), computed on held-out clips with the trained models.

Lip-sync is read off generated *frames* by the independent meter (MediaPipe Face Mesh, models/training/meter.py), which
nobody here trained: lip-sync r is the Pearson correlation of the truth (true jaw_open on synthetic clips, the
phoneme-derived openness on espeak speech) with the meter's mouth opening; lip lag is the cross-correlation
peak, in frames. Beside every figure stands the meter's own ceiling on the ground-truth frames, the decoder's
ceiling (ground-truth motion through the decoder) and the floor (motion generated with the audio zeroed).
The probe (models/probe.py) reads what the meter does not see (head pose), for the dynamics ratio and drift of a
long generation; its lip readings are reported under `probe_*`. Frames where the meter finds no face are
counted (`meter_missing`) and left out of the correlations, never filled in.
"""

import logging
from dataclasses import dataclass

import numpy as np
import torch

from actorcast.models.data.dataset import HELDOUT_START, identity_seed, make_clip
from actorcast.models.data.face import render, sample_identities
from actorcast.models.data.images import resize_images
from actorcast.models.data.params import N_PARAMS, PARAM_INDEX, neutral_params
from actorcast.models.decoder import denormalise_params, param_latent
from actorcast.models.kv_cache import POLICY_NAMES, CacheConfig
from actorcast.models.training.meter import FaceMeter, MeterReading
from actorcast.models.training.motion_measures import motion_scores
from actorcast.models.sampling import SamplerConfig, generate

log = logging.getLogger(__name__)
JAW = PARAM_INDEX["jaw_open"]
BLINKS = [PARAM_INDEX["blink_l"], PARAM_INDEX["blink_r"]]
# Motion the dynamics ratio watches: the mouth and the head (blinks and gaze are not "motion" here).
DYNAMIC_PARAMS = [PARAM_INDEX[n] for n in ("jaw_open", "lip_spread", "lip_round", "head_yaw", "head_pitch",
                                           "head_roll", "head_x", "head_y")]
MAX_LAG = 5
DECODE_BATCH = 25
CLIP_STRIDE = 17  # held-out clip i is seed HELDOUT_START + 17 i
LONG_SEED = HELDOUT_START + 999


@dataclass
class Models:
    """The trained models an evaluation needs (all in eval mode, on one device)."""

    audio: torch.nn.Module
    motion: torch.nn.Module
    encoder: torch.nn.Module
    decoder: torch.nn.Module
    probe: torch.nn.Module
    latent: str = "encoder"  # what the decoder was trained on: 'params' (the true motion) or 'encoder'


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation over the pairs where both are finite; 0 when fewer than 3 or either side is constant."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return 0.0
    a, b = a[ok] - a[ok].mean(), b[ok] - b[ok].mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 1e-12 else 0.0


def lip_lag(truth: np.ndarray, read: np.ndarray, max_lag: int = MAX_LAG) -> int:
    """Lag (frames) maximising corr(truth[t], read[t + lag]); positive = the video is late."""
    scores = {lag: pearson(truth[max(0, -lag):len(truth) - max(0, lag)], read[max(0, lag):len(read) - max(0, -lag)])
              for lag in range(-max_lag, max_lag + 1)}
    return max(scores, key=scores.get)


def span(values: np.ndarray) -> float:
    """p95 - p5 of the finite values (how far the mouth opens and closes); 0 when there are none."""
    values = np.asarray(values)[np.isfinite(values)]
    return float(np.percentile(values, 95) - np.percentile(values, 5)) if len(values) else 0.0


@torch.no_grad()
def decode(models: Models, reference: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """z (T, d) on one reference (3, H, W) → frames (T, 3, H, W) at the reference's size, in batches: the decoder
    sees the reference at its own resolution, and its frames are resized back, as `render` does."""
    size, resolution = reference.shape[-1], models.decoder.config.resolution
    identity = models.decoder.encode_reference(resize_images(reference[None], resolution))
    return torch.cat([resize_images(models.decoder(identity, z[i:i + DECODE_BATCH]), size)
                      for i in range(0, len(z), DECODE_BATCH)]).clamp(0, 1)


@torch.no_grad()
def probe_read(models: Models, frames: torch.Tensor) -> torch.Tensor:
    """Probe-read motion parameters (T, 16) of frames (T, 3, H, W)."""
    return torch.cat([models.probe(frames[i:i + DECODE_BATCH]) for i in range(0, len(frames), DECODE_BATCH)])


@torch.no_grad()
def encode(models: Models, frames: torch.Tensor) -> torch.Tensor:
    """Motion latents (T, d) of frames (T, 3, H, W)."""
    return torch.cat([models.encoder(frames[i:i + DECODE_BATCH]) for i in range(0, len(frames), DECODE_BATCH)])


@torch.no_grad()
def true_motion(models: Models, clip) -> torch.Tensor:
    """The ground-truth motion latents (T, d) of a clip, in the decoder's own latent: the normalised true parameters
    for a decoder trained on them, else the motion encoder's reading of the clip's frames."""
    if models.latent == "params":
        return param_latent(clip.params, models.decoder.config.d_motion)
    return encode(models, clip.frames)


@torch.no_grad()
def generate_motion(models: Models, audio: torch.Tensor, reference: torch.Tensor, emotion: int,
                    policy: CacheConfig, seed: int) -> torch.Tensor:
    """Motion latents (T, d) from audio (N,) and the reference portrait alone."""
    feats = models.audio(audio[None])  # (1, T, d_audio)
    z_ref = models.encoder(reference[None])  # (1, d)
    return generate(models.motion, feats, z_ref, torch.tensor([emotion]), policy, SamplerConfig(seed=seed))[0]


def motion_params(models: Models, z: torch.Tensor, probe_params: torch.Tensor) -> torch.Tensor:
    """The motion parameters (T, N_PARAMS) of generated latents: read straight off a parameter latent, else the
    probe's reading of the frames they decode to."""
    if models.latent == "params":
        return denormalise_params(z[:, :N_PARAMS])
    return probe_params


class _Readings:
    """Meter readings per condition, pooled over clips, with the truth they are scored against."""

    def __init__(self):
        self.truth, self.blink, self.parts = [], [], {}

    def add(self, name: str, reading: MeterReading) -> None:
        self.parts.setdefault(name, []).append(reading)

    def mouth(self, name: str) -> np.ndarray:
        return np.concatenate([r.mouth_open for r in self.parts[name]])

    def eyes(self, name: str) -> np.ndarray:
        return np.concatenate([r.eye_open for r in self.parts[name]])

    def missing(self) -> dict:
        return {name: int(sum(r.n_missing for r in rs)) for name, rs in self.parts.items()}


@torch.no_grad()
def clip_scores(models: Models, meter: FaceMeter, n_clips: int, seconds: float, size: int, policy: CacheConfig,
                source: str = "babble", motion_clips: int = 0, blink_clips: int = 0) -> dict:
    """Meter-read lip-sync of the model, the decoder's ceiling, the floor and the ground truth itself, over n
    held-out clips of `source` (the formant babble, or espeak speech); decoder PSNR and the probe's jaw r too.
    The motion measures (motion_measures.py) pool `motion_clips` clips where that is more than n and the
    generated parameters can be read without decoding (a parameter latent): eight 10-s clips hold a few
    blinks and a minute of silence, too few for a steady spread. The meter counts blinks on the generated and the
    true frames of `blink_clips` clips where that is more than n (only those two are decoded and read in the
    extra clips): eight clips hold a few dozen blinks, and a few more or fewer drawn move the rate by a third."""
    read, mse, probe_jaw = _Readings(), [], {"ceiling": [], "model": []}
    generated, truths, audios = [], [], []
    for i in range(n_clips):
        clip = make_clip(HELDOUT_START + CLIP_STRIDE * i, seconds, size=size, source=source)
        read.truth.append(clip.params[:, JAW].numpy())
        read.blink.append(clip.params[:, BLINKS].mean(1).numpy())
        read.add("ground_truth", meter.read(clip.frames))
        ceiling = decode(models, clip.reference, true_motion(models, clip))
        mse.append(float((ceiling - clip.frames).square().mean()))
        read.add("ceiling", meter.read(ceiling))
        if models.latent == "params":  # the motion encoder's reading of the frames, through the decoder
            read.add("encoded", meter.read(decode(models, clip.reference, encode(models, clip.frames))))
        probe_jaw["ceiling"].append(probe_read(models, ceiling)[:, JAW].numpy())
        for name, audio in (("model", clip.audio), ("floor", torch.zeros_like(clip.audio))):
            z = generate_motion(models, audio, clip.reference, clip.emotion, policy, seed=i)
            frames = decode(models, clip.reference, z)
            read.add(name, meter.read(frames))
            if name == "model":
                probe_params = probe_read(models, frames)
                probe_jaw["model"].append(probe_params[:, JAW].numpy())
                generated.append(motion_params(models, z, probe_params))
                truths.append(clip.params)
                audios.append(clip.audio)
    eyes_model = [r.eye_open for r in read.parts["model"]]
    eyes_truth = [r.eye_open for r in read.parts["ground_truth"]]
    for i in range(n_clips, max(blink_clips, motion_clips if models.latent == "params" else 0)):
        decoded = i < blink_clips  # decoded clips come first: motion_scores pairs the eyes with the first clips
        clip = make_clip(HELDOUT_START + CLIP_STRIDE * i, seconds, size=size if decoded else None, source=source)
        reference = clip.reference if decoded else \
            render(sample_identities([identity_seed(clip.seed)]), neutral_params(1), size)[0]
        z = generate_motion(models, clip.audio, reference, clip.emotion, policy, seed=i)
        probe_params = None
        if decoded:
            frames = decode(models, reference, z)
            eyes_model.append(meter.read(frames).eye_open)
            eyes_truth.append(meter.read(clip.frames).eye_open)
            probe_params = None if models.latent == "params" else probe_read(models, frames)
        generated.append(motion_params(models, z, probe_params))
        truths.append(clip.params)
        audios.append(clip.audio)
    truth, blink = np.concatenate(read.truth), np.concatenate(read.blink)
    r = {name: pearson(truth, read.mouth(name)) for name in read.parts}
    result = {"meter_r_ground_truth": r["ground_truth"], "lipsync_r_ceiling": r["ceiling"],
              "lipsync_r": r["model"], "lipsync_r_floor": r["floor"],
              **({"lipsync_r_encoded": r["encoded"]} if "encoded" in r else {}),
              "lip_lag_frames": lip_lag(truth, read.mouth("model")),
              # Eyes close as blink rises: report the correlation of blink with eye *closure* (minus openness).
              "blink_r_ground_truth": pearson(blink, -read.eyes("ground_truth")),
              "blink_r_ceiling": pearson(blink, -read.eyes("ceiling")),
              "mouth_open_span": {name: span(read.mouth(name)) for name in read.parts},
              "meter_missing": read.missing(), "meter_frames": int(len(truth)),
              "probe_lipsync_r_ceiling": pearson(truth, np.concatenate(probe_jaw["ceiling"])),
              "probe_lipsync_r": pearson(truth, np.concatenate(probe_jaw["model"])),
              "psnr_db": float(-10 * np.log10(max(np.mean(mse), 1e-10))),
              "blink_clips": len(eyes_model),
              **motion_scores(generated, truths, audios, eyes_model, eyes_truth)}
    if source != "babble":
        result = {f"{k}_{source}": v for k, v in result.items()}
    return result


@torch.no_grad()
def long_run_scores(models: Models, meter: FaceMeter, seconds: float, size: int, policy: CacheConfig,
                    window_s: float) -> dict:
    """Dynamics ratio, drift and meter-read lip-sync r of one long held-out generation (first vs last window)."""
    clip = make_clip(LONG_SEED, seconds, size=None)
    reference = render(sample_identities([identity_seed(LONG_SEED)]), neutral_params(1), size)[0]
    z = generate_motion(models, clip.audio, reference, clip.emotion, policy, seed=0)
    w = int(window_s * 25)
    first_frames, last_frames = decode(models, reference, z[:w]), decode(models, reference, z[-w:])
    first, last = probe_read(models, first_frames), probe_read(models, last_frames)
    std_first, std_last = first[:, DYNAMIC_PARAMS].std(0), last[:, DYNAMIC_PARAMS].std(0)
    keep = std_first > 1e-6
    dynamics = float((std_last[keep] / std_first[keep]).mean()) if keep.any() else 0.0
    scale = models.probe.halfrange  # drift in units of each parameter's half range
    drift_params = float(((last.mean(0) - first.mean(0)) / scale).abs().mean())
    sim_first, sim_last = _similarity(first_frames, reference), _similarity(last_frames, reference)
    jaw = clip.params[:, JAW].numpy()
    mouth_first, mouth_last = meter.read(first_frames).mouth_open, meter.read(last_frames).mouth_open
    return {"dynamics_ratio": dynamics, "drift": drift_params, "identity_similarity_first": sim_first,
            "identity_similarity_last": sim_last,
            "lipsync_r": pearson(np.concatenate([jaw[:w], jaw[-w:]]), np.concatenate([mouth_first, mouth_last])),
            "lipsync_r_first": pearson(jaw[:w], mouth_first), "lipsync_r_last": pearson(jaw[-w:], mouth_last),
            "mouth_span_ratio": span(mouth_last) / max(span(mouth_first), 1e-9)}


def _similarity(frames: torch.Tensor, reference: torch.Tensor) -> float:
    """Cosine similarity of the mean frame to the reference portrait (centred pixels): identity kept ≈ 1."""
    a = (frames.mean(0) - frames.mean()).flatten()
    b = (reference - reference.mean()).flatten()
    return float(torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-9))


def evaluate(models: Models, clips: int = 8, clip_seconds: float = 10.0, long_seconds: float = 300.0,
             size: int = 256, cache: CacheConfig = CacheConfig(), tts_clips: int | None = None,
             meter: FaceMeter | None = None, progress=None, motion_clips: int = 0, blink_clips: int = 0) -> dict:
    """Every measure (docs/ARCHITECTURE.md "Measures"), with the default cache policy and an ablation over all five
    policies. motion_clips, blink_clips: clips of each source the motion measures pool, and the meter counts
    blinks on (`clip_scores`)."""
    meter = meter or FaceMeter()
    result = clip_scores(models, meter, clips, clip_seconds, size, cache, motion_clips=motion_clips,
                         blink_clips=blink_clips)
    if progress:
        progress("clips")
    tts = clip_scores(models, meter, tts_clips or clips, clip_seconds, size, cache, source="tts",
                      motion_clips=motion_clips, blink_clips=blink_clips)
    result.update(tts)
    if progress:
        progress("tts")
    window = min(60.0, long_seconds / 3)
    result["long_seconds"], result["window_seconds"] = long_seconds, window
    result["policies"] = {}
    for name in POLICY_NAMES:
        policy = CacheConfig(name, cache.budget_frames, compress_tokens=cache.compress_tokens,
                             query_tokens=cache.query_tokens)
        result["policies"][name] = long_run_scores(models, meter, long_seconds, size, policy, window)
        if progress:
            progress(name)
    default = result["policies"][cache.policy]
    result["dynamics_ratio"], result["drift"] = default["dynamics_ratio"], default["drift"]
    result["identity_drift"] = default["identity_similarity_first"] - default["identity_similarity_last"]
    result["cache_policy"] = cache.policy
    return result
