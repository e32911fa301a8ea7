"""Chunk-wise sampler of the motion generator, apart from the network (DESIGN.md "Motion generator")."""

from dataclasses import dataclass

import torch

from models.data.params import EMOTION_INDEX, EMOTIONS
from models.errors import ConfigError, InputError
from models.kv_cache import CacheConfig, KVCache
from models.motion import MotionGenerator


@dataclass(frozen=True)
class SamplerConfig:
    """Euler steps per chunk, audio guidance scale, noise level of the written context, and the seed."""

    steps: int = 4  # S
    cfg_scale: float = 1.0  # classifier-free guidance on audio; 1.0 = off (one pass per step)
    k_ctx: float = 0.0  # the chunk is written to the cache at this noise level (0 = clean)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"sampler steps={self.steps} must be >= 1")
        if self.cfg_scale < 0:
            raise ConfigError(f"cfg_scale={self.cfg_scale} must be >= 0 (1.0 = no guidance)")
        if not 0.0 <= self.k_ctx < 1.0:
            raise ConfigError(f"k_ctx={self.k_ctx} must be in [0, 1)")


def _velocity(model, x, k, audio_ctx, past, emotion, config: SamplerConfig) -> torch.Tensor:
    """Velocity (B, T, d_motion) at noise level k, with classifier-free guidance on audio if asked."""
    v = model.forward_chunk(x, k, audio_ctx, past, emotion).velocity
    if config.cfg_scale == 1.0:
        return v
    no_audio = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    v_uncond = model.forward_chunk(x, k, audio_ctx, past, emotion, audio_keep=no_audio).velocity
    return v_uncond + config.cfg_scale * (v - v_uncond)


@torch.no_grad()
def generate_chunk(model: MotionGenerator, cache: KVCache, audio_ctx: torch.Tensor, emotion: torch.Tensor | None,
                   generator: torch.Generator, config: SamplerConfig = SamplerConfig()) -> torch.Tensor:
    """Generate the next chunk of motion latents and write it into the cache.

    audio_ctx (B, audio_past + T + audio_future, d_audio): audio features around the chunk's T frames.
    Returns z (B, T, d_motion). Noise comes from `generator` (CPU), so results are seeded and deterministic.
    """
    mc = model.config
    B, T = audio_ctx.shape[0], audio_ctx.shape[1] - mc.audio_past - mc.audio_future
    p = next(model.parameters())
    # 1. start from seeded noise at k = 1
    x = torch.randn((B, T, mc.d_motion), generator=generator).to(p.device, p.dtype)  # (B, T, d_motion)
    # 2. S Euler steps from k = 1 to k = 0, attending to the cached past (dx/dk = v = eps - z)
    past = model.read_cache(cache, T)  # cached keys rotated once, shared by all passes of this chunk
    levels = torch.linspace(1.0, 0.0, config.steps + 1).tolist()
    for k_now, k_next in zip(levels[:-1], levels[1:]):
        x = x + (k_next - k_now) * _velocity(model, x, k_now, audio_ctx, past, emotion, config)
    # 3. one pass of the clean (or k_ctx-noised) chunk writes its keys/values into the cache
    ctx = x
    if config.k_ctx > 0:
        eps = torch.randn((B, T, mc.d_motion), generator=generator).to(p.device, p.dtype)
        ctx = (1 - config.k_ctx) * x + config.k_ctx * eps
    out = model.forward_chunk(ctx, config.k_ctx, audio_ctx, past, emotion, need_attn=cache.needs_attention)
    if out.attn is not None:
        cache.observe(out.attn)  # importance for participative compression
    first = cache.n_frames + 1  # absolute position of the chunk's first frame (host int: no device sync)
    positions = torch.arange(first, first + T, device=p.device).repeat_interleave(mc.tokens_per_frame)
    cache.append(out.k, out.v, positions)
    # 4. return the chunk
    return x


def _emotion_index(emotion, batch: int, device) -> torch.Tensor | None:
    if emotion is None or torch.is_tensor(emotion):
        return emotion
    if emotion not in EMOTION_INDEX:
        raise ConfigError(f"emotion {emotion!r} is unknown; valid: {', '.join(EMOTIONS)}")
    return torch.full((batch,), EMOTION_INDEX[emotion], dtype=torch.long, device=device)


class MotionStream:
    """One session's generation state (cache, RNG, audio buffer): push audio features, get motion chunks.

    Frame t needs audio features up to t + audio_future, so a chunk is generated as soon as its audio (and
    that lookahead) has arrived; `flush` ends the stream, padding the missing lookahead with zeros.
    """

    def __init__(self, model: MotionGenerator, z_ref: torch.Tensor, emotion: str | torch.Tensor | None = None,
                 cache: CacheConfig = CacheConfig(), sampler: SamplerConfig = SamplerConfig()):
        mc = model.config
        if z_ref.dim() != 2 or z_ref.shape[1] != mc.d_motion:
            raise InputError(f"z_ref has shape {tuple(z_ref.shape)}; expected (B, {mc.d_motion})")
        p = next(model.parameters())
        self.model, self.sampler, self.batch = model, sampler, z_ref.shape[0]
        self.emotion = _emotion_index(emotion, self.batch, p.device)
        self.cache = model.new_cache(cache, batch=self.batch)
        with torch.no_grad():
            self.cache.reset(*model.prefix_kv(z_ref.to(p.device, p.dtype), self.emotion))
        self.generator = torch.Generator().manual_seed(sampler.seed)
        # audio of frames [frames_done - audio_past, ...): zeros stand for the time before the stream
        self._audio = torch.zeros(self.batch, mc.audio_past, mc.d_audio, device=p.device, dtype=p.dtype)
        self.frames_done = 0
        self.ended = False

    @property
    def pending_frames(self) -> int:
        """Frames whose audio has arrived but which are not generated yet."""
        return self._audio.shape[1] - self.model.config.audio_past

    def push(self, audio_feats: torch.Tensor) -> torch.Tensor:
        """audio_feats (B, n, d_audio), any n >= 0 -> every chunk now complete, z (B, m, d_motion), m % C == 0."""
        mc = self.model.config
        if self.ended:
            raise InputError("push after flush: this stream has ended; start a new MotionStream")
        if audio_feats.dim() != 3 or audio_feats.shape[0] != self.batch or audio_feats.shape[2] != mc.d_audio:
            raise InputError(f"audio features have shape {tuple(audio_feats.shape)}; "
                             f"expected ({self.batch}, n, {mc.d_audio})")
        self._audio = torch.cat((self._audio, audio_feats.to(self._audio)), dim=1)
        out = []
        while self.pending_frames >= mc.chunk_frames + mc.audio_future:
            out.append(self._next(mc.chunk_frames))
        return self._cat(out)

    def flush(self) -> torch.Tensor:
        """End of stream: generate the remaining frames (B, m, d_motion), zero audio beyond the end."""
        mc = self.model.config
        if not self.ended:
            pad = self._audio.new_zeros(self.batch, mc.audio_future, mc.d_audio)
            self._audio = torch.cat((self._audio, pad), dim=1)
            self.ended = True
        out = []
        while self.pending_frames - mc.audio_future > 0:
            out.append(self._next(min(mc.chunk_frames, self.pending_frames - mc.audio_future)))
        return self._cat(out)

    def _next(self, n_frames: int) -> torch.Tensor:
        mc = self.model.config
        ctx = self._audio[:, : mc.audio_past + n_frames + mc.audio_future]
        z = generate_chunk(self.model, self.cache, ctx, self.emotion, self.generator, self.sampler)
        self._audio = self._audio[:, n_frames:]
        self.frames_done += n_frames
        return z

    def _cat(self, chunks: list[torch.Tensor]) -> torch.Tensor:
        if chunks:
            return torch.cat(chunks, dim=1)
        return self._audio.new_zeros(self.batch, 0, self.model.config.d_motion)


def generate(model: MotionGenerator, audio_feats: torch.Tensor, z_ref: torch.Tensor,
             emotion: str | torch.Tensor | None = None, policy: CacheConfig | str = CacheConfig(),
             sampler: SamplerConfig = SamplerConfig()) -> torch.Tensor:
    """Motion latents (B, T, d_motion) for audio features (B, T, d_audio), chunk by chunk with a KV cache."""
    cache = CacheConfig(policy=policy) if isinstance(policy, str) else policy
    stream = MotionStream(model, z_ref, emotion, cache, sampler)
    return torch.cat((stream.push(audio_feats), stream.flush()), dim=1)
