"""Motion generator: a block-causal transformer over frame tokens, trained with diffusion forcing.

docs/ARCHITECTURE.md "Motion generator" describes it."""

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from actorcast.models.calibration import SpreadCalibration
from actorcast.models.data.params import EMOTIONS
from actorcast.models.errors import ConfigError, InputError
from actorcast.models.kv_cache import CacheConfig, CacheDims, KVCache, make_cache

if TYPE_CHECKING:
    from actorcast.models.free_motion import FreeMotion


@dataclass(frozen=True)
class MotionConfig:
    """Sizes of the generator, its conditioning windows and its diffusion-forcing training settings."""

    d_motion: int = 32  # motion latent z per frame (from the motion autoencoder)
    d_audio: int = 64  # audio feature per video frame (output size of the audio encoder)
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    mlp_ratio: float = 4.0
    tokens_per_frame: int = 1
    chunk_frames: int = 4  # C: frames generated together; attention is block-causal at this granularity
    # Other chunk sizes the generator is trained for: each training window draws its chunk from chunk_frames and
    # these (the mask and the per-chunk noise follow it), and a stream may then run any of them
    # (`with_chunk`). Smaller chunks wait for less audio (a live call's latency) at more calls per frame.
    chunk_choices: tuple[int, ...] = ()
    audio_past: int = 2  # frame t sees audio features of frames t - audio_past .. t + audio_future
    audio_future: int = 0  # 0: the audio encoder's own 2-frame lookahead is the only added latency
    rope_theta: float = 10_000.0
    p_drop_audio: float = 0.1  # per sequence, for classifier-free guidance on audio
    p_drop_emotion: float = 0.1  # trains the "null" emotion used when none is given
    p_noisy_context: float = 0.5  # chance that a prefix of chunks is only lightly noised (context)
    k_context_max: float = 0.1  # noise level of such context frames: U(0, k_context_max)
    # Train as the sampler runs: with this chance a sequence's frames share one noise level per chunk (the
    # sampler denoises a whole chunk at one level over a clean past), instead of one level per frame.
    p_chunk_level: float = 0.0
    # Loss weight of the latent dimensions [weighted_dims[0], weighted_dims[1]): on the parameter latent these are
    # the ones the audio does not determine (smile to head_scale, models/data/params.py), whose rare events
    # (blinks, gaze saccades, nods) are few frames of the loss and were learnt as their mean.
    weighted_dims: tuple[int, int] = (0, 0)
    dim_weight: float = 1.0
    # Euler steps per chunk the weights are made for: the sampler's default for them. A generator distilled to
    # fewer steps (models/training/distill.py) says so here; more steps than this do not help it.
    sampler_steps: int = 4

    def __post_init__(self) -> None:
        object.__setattr__(self, "weighted_dims", tuple(self.weighted_dims))  # a list when read back from JSON
        object.__setattr__(self, "chunk_choices", tuple(self.chunk_choices))
        if any(not isinstance(n, int) or n < 1 for n in self.chunk_choices):
            raise ConfigError(f"MotionConfig.chunk_choices={self.chunk_choices} must be whole numbers >= 1")
        for name in ("d_motion", "d_audio", "d_model", "n_layers", "n_heads", "tokens_per_frame", "chunk_frames",
                     "sampler_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"MotionConfig.{name}={getattr(self, name)} must be >= 1")
        if self.audio_past < 0 or self.audio_future < 0:
            raise ConfigError(f"audio_past={self.audio_past}, audio_future={self.audio_future} must be >= 0")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ConfigError(f"d_model={self.d_model} must split into n_heads={self.n_heads} heads of even size")
        if not 0 <= self.weighted_dims[0] <= self.weighted_dims[1] <= self.d_motion or self.dim_weight <= 0:
            raise ConfigError(f"weighted_dims={self.weighted_dims} must lie in [0, d_motion={self.d_motion}] and "
                              f"dim_weight={self.dim_weight} must be > 0")
        for name in ("p_drop_audio", "p_drop_emotion", "p_noisy_context", "k_context_max", "p_chunk_level"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"MotionConfig.{name}={getattr(self, name)} must be in [0, 1]")

    @property
    def trained_chunks(self) -> tuple[int, ...]:
        """Every chunk size (frames) the generator is trained to run at, smallest first."""
        return tuple(sorted({self.chunk_frames, *self.chunk_choices}))

    def with_chunk(self, chunk_frames: int) -> "MotionConfig":
        """This config running `chunk_frames`-frame chunks; ConfigError if the weights were not trained for it."""
        if chunk_frames not in self.trained_chunks:
            *most, last = map(str, self.trained_chunks)
            sizes = f"{', '.join(most)} or {last}" if most else last
            raise ConfigError(f"chunks of {chunk_frames} frames: these weights were trained for chunks of {sizes} "
                              "frames; give one of those, or fine-tune the generator for it (TRAINING.md)")
        others = tuple(n for n in self.trained_chunks if n != chunk_frames)
        return replace(self, chunk_frames=chunk_frames, chunk_choices=others)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def audio_window(self) -> int:
        return self.audio_past + 1 + self.audio_future


MOTION_PRESETS: dict[str, MotionConfig] = {
    # tiny ships on a 2-core CPU. Budget per frame: ~0.85 M weights -> ~1.7 MFLOP per token pass, plus
    # attention over <= 60 cached tokens (~0.13 MFLOP); S=4 Euler steps + 1 cache-writing pass = 5 passes
    # -> ~9 MFLOP per frame (x2 with audio CFG), ~0.25-0.45 GFLOP/s at 25 fps: well under 10 ms per
    # 4-frame chunk, leaving the CPU to the audio encoder and the 256x256 decoder.
    # tiny: the shipped generator's recipe (no chunk-level noise, no weighted dimensions: a fine-tune with them
    # lost lip-sync, TRAINING.md), and trained for 1- and 2-frame chunks beside its 4 (a live call's low latency).
    "tiny": MotionConfig(d_model=128, n_layers=4, n_heads=4, chunk_choices=(1, 2)),
    "base": MotionConfig(d_model=768, n_layers=14, n_heads=12),  # ~100 M parameters
    "large": MotionConfig(d_model=1280, n_layers=25, n_heads=20),  # ~500 M parameters
}

NULL_EMOTION = len(EMOTIONS)  # index of the "no emotion given" embedding


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos, sin (N, head_dim / 2) for integer positions (N,); angles in float64 so large positions stay exact."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float64) / head_dim)
    angles = positions.to(torch.float64)[:, None] * inv_freq[None]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, N, Dh) by per-token angles (N, Dh / 2) (rotate-half convention)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def block_causal_mask(n_prefix: int, n_frames: int, tokens_per_frame: int, chunk: int, device) -> torch.Tensor:
    """(N, N) bool, True = may attend: the prefix sees itself, chunk c sees the prefix and chunks <= c."""
    frame = torch.arange(n_frames, device=device).repeat_interleave(tokens_per_frame)
    block = torch.cat((torch.full((n_prefix,), -1, device=device), frame // chunk))  # (N,)
    return block[None, :] <= block[:, None]


def pad_audio(audio: torch.Tensor, config: MotionConfig) -> torch.Tensor:
    """(B, T, d_audio) -> (B, audio_past + T + audio_future, d_audio), zeros beyond the stream's ends."""
    return F.pad(audio, (0, 0, config.audio_past, config.audio_future))


class Attention(nn.Module):
    """Multi-head self-attention with RoPE over time, optionally over cached keys/values of the past."""

    def __init__(self, config: MotionConfig):
        super().__init__()
        self.n_heads, self.head_dim = config.n_heads, config.head_dim
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)

    def forward(self, x, cos, sin, mask=None, past=None, need_weights=False):
        """x (B, T, D); cos/sin (T, Dh/2); past = (keys, values (B, H, N + T, Dh), N): the cached past with keys
        already rotated in [:N], and room for this step's tokens in [N:], written here (inference only).

        Returns out (B, T, D), this step's k, v (B, H, T, Dh) before RoPE, and attention weights (B, H, T, N)
        over the past tokens when `need_weights` (explicit softmax path), else None (SDPA path).
        """
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (B, H, T, Dh)
        q_rot, keys, values, n_past = apply_rope(q, cos, sin), apply_rope(k, cos, sin), v, 0
        if past is not None:
            keys_buf, values_buf, n_past = past
            keys_buf[:, :, n_past:] = keys  # no concatenation: the past is not copied for every step
            values_buf[:, :, n_past:] = values
            keys, values = keys_buf, values_buf  # (B, H, N + T, Dh)
        weights = None
        if need_weights:
            scores = (q_rot @ keys.transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, H, T, N + T)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            probs = scores.softmax(dim=-1)
            out = probs @ values
            weights = probs[..., :n_past]
        else:
            out = F.scaled_dot_product_attention(q_rot, keys, values, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(B, T, D)), k, v, weights


class Block(nn.Module):
    """Pre-norm transformer block: attention then MLP, each residual."""

    def __init__(self, config: MotionConfig):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(config.d_model), nn.LayerNorm(config.d_model)
        self.attn = Attention(config)
        hidden = int(config.d_model * config.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(config.d_model, hidden), nn.GELU(), nn.Linear(hidden, config.d_model))

    def forward(self, x, cos, sin, mask=None, past=None, need_weights=False):
        """x (B, T, D) -> (x, k, v, weights) as in `Attention.forward`."""
        h, k, v, w = self.attn(self.norm1(x), cos, sin, mask, past, need_weights)
        x = x + h
        return x + self.mlp(self.norm2(x)), k, v, w


class NoiseLevelEmbedding(nn.Module):
    """Per-frame noise level k in [0, 1] -> sinusoidal features of 1000 k -> MLP -> (.., D)."""

    def __init__(self, d_model: int, n_freq: int = 64):
        super().__init__()
        self.register_buffer("freqs", torch.exp(-math.log(10_000.0) * torch.arange(n_freq) / n_freq), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * n_freq, d_model), nn.SiLU(), nn.Linear(d_model, d_model))

    def forward(self, k: torch.Tensor) -> torch.Tensor:
        """k (B, T) -> (B, T, D)."""
        angles = 1000.0 * k[..., None] * self.freqs  # (B, T, n_freq)
        return self.mlp(torch.cat((angles.sin(), angles.cos()), dim=-1))


@dataclass
class PastContext:
    """The cached past read once per chunk: keys rotated to the policy's positions, room for the chunk."""

    keys: torch.Tensor  # (L, B, H, N + T*tpf, Dh): [:N] rotated cached keys, [N:] scratch for the chunk
    values: torch.Tensor  # (L, B, H, N + T*tpf, Dh)
    n_past: int  # N
    n_frames: int  # T: frames of the chunk this context serves
    cos: torch.Tensor  # (T*tpf, Dh/2) rotation of the chunk's tokens; (B, 1, T*tpf, Dh/2) when batched
    sin: torch.Tensor
    mask: torch.Tensor | None = None  # (B, 1, 1, N + T*tpf) bool, True = attend: several sessions' pasts padded


@dataclass
class ChunkOutput:
    """What one incremental pass returns: velocity, the chunk's keys/values, attention for compression."""

    velocity: torch.Tensor  # (B, T, d_motion)
    k: torch.Tensor  # (L, B, H, T * tokens_per_frame, Dh), before RoPE
    v: torch.Tensor  # (L, B, H, T * tokens_per_frame, Dh)
    attn: torch.Tensor | None  # (L, B, H, T * tokens_per_frame, N) over the cached tokens, or None


class MotionGenerator(nn.Module):
    """Predicts the rectified-flow velocity of each frame's motion latent from noisy frames and conditions."""

    def __init__(self, config: MotionConfig):
        super().__init__()
        self.config = c = config
        tok = c.d_model * c.tokens_per_frame
        self.z_proj = nn.Linear(c.d_motion, tok)
        self.ref_proj = nn.Linear(c.d_motion, tok)
        self.audio_proj = nn.Linear(c.audio_window * c.d_audio, tok)
        self.null_audio = nn.Parameter(torch.zeros(tok))  # replaces the audio embedding when audio is dropped
        self.noise_emb = NoiseLevelEmbedding(c.d_model)
        self.emotion_emb = nn.Embedding(len(EMOTIONS) + 1, c.d_model)  # last index: null emotion
        self.slot_emb = nn.Parameter(torch.zeros(c.tokens_per_frame, c.d_model))  # token index within a frame
        self.ref_type = nn.Parameter(torch.zeros(c.d_model))  # marks the reference prefix
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layers))
        self.norm_out = nn.LayerNorm(c.d_model)
        self.head = nn.Linear(tok, c.d_motion)
        self.calibration: SpreadCalibration | None = None  # set from the export's meta by actors/loading.py
        # The free-motion model exported beside it, if any (models/free_motion.py; set by actors/loading.py). Kept
        # out of this module's parameters (a one-item tuple is not registered), so the generator's weights and
        # state dict stay its own.
        self._free_motion: tuple = ()
        self.initialize_weights()

    @property
    def free_motion(self) -> "FreeMotion | None":
        return self._free_motion[0] if self._free_motion else None

    def attach_free_motion(self, model: "FreeMotion | None") -> None:
        """Sample brows, blinks, gaze and head with `model` (None: the generator's own)."""
        self._free_motion = () if model is None else (model,)

    def initialize_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        for p in (self.null_audio, self.slot_emb, self.ref_type):
            nn.init.normal_(p, std=0.02)

    # ----- embeddings -----
    def _emotion(self, emotion: torch.Tensor | None, batch: int, device) -> torch.Tensor:
        if emotion is None:
            emotion = torch.full((batch,), NULL_EMOTION, device=device, dtype=torch.long)
        return self.emotion_emb(emotion)  # (B, D)

    def embed_frames(self, z_noisy, k, audio_padded, emotion=None, audio_keep=None) -> torch.Tensor:
        """z_noisy (B, T, d_motion), k (B, T), audio_padded (B, a + T + b, d_audio) -> tokens (B, T*tpf, D)."""
        c = self.config
        B, T, _ = z_noisy.shape
        windows = audio_padded.unfold(1, c.audio_window, 1).transpose(2, 3).reshape(B, T, -1)  # (B, T, W*d_a)
        audio = self.audio_proj(windows)  # (B, T, tpf*D)
        if audio_keep is not None:
            audio = torch.where(audio_keep[:, None, None], audio, self.null_audio)
        x = (self.z_proj(z_noisy) + audio).view(B, T, c.tokens_per_frame, c.d_model)
        x = x + self.noise_emb(k)[:, :, None] + self._emotion(emotion, B, x.device)[:, None, None] + self.slot_emb
        return x.reshape(B, T * c.tokens_per_frame, c.d_model)

    def embed_prefix(self, z_ref: torch.Tensor, emotion=None) -> torch.Tensor:
        """z_ref (B, d_motion) -> prefix tokens (B, tpf, D)."""
        c = self.config
        x = self.ref_proj(z_ref).view(-1, c.tokens_per_frame, c.d_model) + self.ref_type + self.slot_emb
        return x + self._emotion(emotion, z_ref.shape[0], z_ref.device)[:, None]

    def _velocity(self, tokens: torch.Tensor) -> torch.Tensor:
        """Frame tokens (B, T*tpf, D) -> velocity (B, T, d_motion)."""
        B, N, D = tokens.shape
        return self.head(self.norm_out(tokens).reshape(B, N // self.config.tokens_per_frame, -1))

    def _rope(self, positions: torch.Tensor, dtype: torch.dtype):
        return rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta, dtype)

    def _check(self, z_noisy, audio_len, z_ref=None) -> None:
        c = self.config
        if z_noisy.dim() != 3 or z_noisy.shape[-1] != c.d_motion:
            raise InputError(f"z_noisy has shape {tuple(z_noisy.shape)}; expected (B, T, {c.d_motion})")
        want = z_noisy.shape[1] + c.audio_past + c.audio_future if z_ref is None else z_noisy.shape[1]
        if audio_len != want:
            raise InputError(f"audio covers {audio_len} frames; expected {want} for {z_noisy.shape[1]} frames")
        if z_ref is not None and tuple(z_ref.shape) != (z_noisy.shape[0], c.d_motion):
            raise InputError(f"z_ref has shape {tuple(z_ref.shape)}; expected ({z_noisy.shape[0]}, {c.d_motion})")

    # ----- full block-causal pass (training) -----
    def forward(self, z_noisy, k, audio, z_ref, emotion=None, audio_keep=None, frame_positions=None,
                chunk_frames: int | None = None):
        """Velocity for every frame of a clip, all chunks at once.

        z_noisy (B, T, d_motion) at noise levels k (B, T); audio (B, T, d_audio) per frame (zero-padded at the
        ends for the audio window); z_ref (B, d_motion); emotion (B,) long in [0, 5] (5 = none) or None;
        audio_keep (B,) bool or None (all kept); frame_positions (T,) RoPE positions, default 1..T (the prefix
        sits just before the first); chunk_frames: the attention's block size (default the config's). Returns v
        (B, T, d_motion).
        """
        c = self.config
        self._check(z_noisy, audio.shape[1], z_ref)
        B, T, _ = z_noisy.shape
        if frame_positions is None:
            frame_positions = torch.arange(1, T + 1, device=z_noisy.device)
        prefix = self.embed_prefix(z_ref, emotion)  # (B, P, D)
        frames = self.embed_frames(z_noisy, k, pad_audio(audio, c), emotion, audio_keep)  # (B, T*tpf, D)
        x = torch.cat((prefix, frames), dim=1)  # (B, P + T*tpf, D)
        positions = torch.cat((frame_positions[:1].repeat(c.tokens_per_frame) - 1,
                               frame_positions.repeat_interleave(c.tokens_per_frame)))
        cos, sin = self._rope(positions, x.dtype)
        mask = block_causal_mask(prefix.shape[1], T, c.tokens_per_frame, chunk_frames or c.chunk_frames, x.device)
        for blk in self.blocks:
            x = blk(x, cos, sin, mask)[0]
        return self._velocity(x[:, prefix.shape[1]:])

    # ----- incremental pass over one chunk with a cache (inference) -----
    def prefix_kv(self, z_ref: torch.Tensor, emotion=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys/values (L, B, H, P, Dh) of the reference prefix, before RoPE: what `cache.reset` takes."""
        x = self.embed_prefix(z_ref, emotion)
        cos, sin = self._rope(torch.zeros(x.shape[1], dtype=torch.long, device=x.device), x.dtype)
        ks, vs = [], []
        for blk in self.blocks:
            x, k, v, _ = blk(x, cos, sin)
            ks.append(k)
            vs.append(v)
        return torch.stack(ks), torch.stack(vs)

    def read_cache(self, cache: KVCache, n_frames: int) -> PastContext:
        """Rotate the cached keys once for the S + 1 passes of the next chunk of `n_frames` frames."""
        k_past, v_past, past_pos = cache.view()  # (L, B, H, N, Dh), (N,)
        L, B, H, N, Dh = k_past.shape
        n_new = n_frames * self.config.tokens_per_frame
        cos_k, sin_k = self._rope(past_pos, k_past.dtype)
        keys = k_past.new_empty(L, B, H, N + n_new, Dh)
        values = v_past.new_empty(L, B, H, N + n_new, Dh)
        keys[:, :, :, :N] = apply_rope(k_past, cos_k, sin_k)
        values[:, :, :, :N] = v_past
        cos, sin = self._rope(cache.query_positions(n_frames), k_past.dtype)
        return PastContext(keys, values, N, n_frames, cos, sin)

    def forward_chunk(self, z_noisy, k, audio_ctx, past: PastContext, emotion=None, audio_keep=None,
                      need_attn: bool = False) -> ChunkOutput:
        """One chunk attending to the cached past (inference; `past` from `read_cache`, the cache is not changed).

        z_noisy (B, T, d_motion); k (B, T) or a float; audio_ctx (B, audio_past + T + audio_future, d_audio)
        (the frames around the chunk, zero-padded beyond the stream); emotion, audio_keep as in `forward`.
        need_attn: also return the attention the chunk's queries give the cached tokens (explicit path).
        """
        self._check(z_noisy, audio_ctx.shape[1])
        B, T, _ = z_noisy.shape
        if T != past.n_frames:
            raise InputError(f"chunk of {T} frames, but the past context was read for {past.n_frames}")
        if not torch.is_tensor(k):
            k = torch.full((B, T), float(k), device=z_noisy.device, dtype=z_noisy.dtype)
        x = self.embed_frames(z_noisy, k, audio_ctx, emotion, audio_keep)  # (B, T*tpf, D)
        ks, vs, ws = [], [], []
        for i, blk in enumerate(self.blocks):
            layer_past = (past.keys[i], past.values[i], past.n_past)
            x, k_i, v_i, w_i = blk(x, past.cos, past.sin, past.mask, layer_past, need_attn)
            ks.append(k_i)
            vs.append(v_i)
            ws.append(w_i)
        attn = torch.stack(ws) if need_attn else None
        return ChunkOutput(self._velocity(x), torch.stack(ks), torch.stack(vs), attn)

    def new_cache(self, config: CacheConfig, batch: int = 1) -> KVCache:
        """An empty cache of `config` sized for this model (validated against its chunk and token sizes)."""
        c = self.config
        p = next(self.parameters())
        dims = CacheDims(c.n_layers, c.n_heads, c.head_dim, c.tokens_per_frame, c.chunk_frames, batch,
                         p.device, p.dtype)
        return make_cache(config, dims)
