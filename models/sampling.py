"""Chunk-wise sampler of the motion generator, apart from the network (docs/ARCHITECTURE.md "Sampler")."""

import dataclasses
from dataclasses import dataclass

import torch

from actorcast.models.data.params import emotion_index
from actorcast.models.errors import ConfigError, InputError
from actorcast.models.free_motion import FreeMotionStream
from actorcast.models.kv_cache import CacheConfig, KVCache
from actorcast.models.motion import NULL_EMOTION, MotionGenerator, PastContext


@dataclass(frozen=True)
class SamplerConfig:
    """Euler steps per chunk, audio guidance scale, noise level of the written context, and the seed."""

    # S = 4. With 2 steps the generated jaw, lips and rounding follow the truth more closely in the latent alone
    # (8 held-out clips: jaw r 0.79 vs 0.78 on espeak), but the meter reads the decoded frames worse (eval lip-sync
    # 0.726 / 0.555 against 0.746 / 0.564, babble / espeak; the lips jitter more between frames): judge by frames.
    # None: the generator's own (MotionConfig.sampler_steps: 4, or fewer for a step-distilled generator).
    steps: int | None = None  # S
    cfg_scale: float = 1.0  # classifier-free guidance on audio; 1.0 = off (one pass per step)
    k_ctx: float = 0.0  # the chunk is written to the cache at this noise level (0 = clean)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps is not None and self.steps < 1:
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
    x = _euler(model, x, audio_ctx, past, emotion, config)
    # 3. one pass of the clean (or k_ctx-noised) chunk writes its keys/values into the cache
    ctx = x
    if config.k_ctx > 0:
        eps = torch.randn((B, T, mc.d_motion), generator=generator).to(p.device, p.dtype)
        ctx = (1 - config.k_ctx) * x + config.k_ctx * eps
    out = model.forward_chunk(ctx, config.k_ctx, audio_ctx, past, emotion, need_attn=cache.needs_attention)
    _write(model, cache, out.k, out.v, out.attn, T)
    # 4. return the chunk
    return x


def _euler(model, x, audio_ctx, past, emotion, config: SamplerConfig) -> torch.Tensor:
    """S Euler steps of the chunk x from k = 1 (noise) to k = 0, attending to the cached past (dx/dk = v)."""
    levels = torch.linspace(1.0, 0.0, (config.steps or model.config.sampler_steps) + 1).tolist()
    for k_now, k_next in zip(levels[:-1], levels[1:]):
        x = x + (k_next - k_now) * _velocity(model, x, k_now, audio_ctx, past, emotion, config)
    return x


def _write(model, cache: KVCache, k: torch.Tensor, v: torch.Tensor, attn: torch.Tensor | None, n_frames: int) -> None:
    """Append one chunk's keys/values to its cache at the next absolute positions; attn feeds compression."""
    if attn is not None:  # given only for a cache that needs it
        cache.observe(attn)  # importance for participative compression
    first = cache.n_frames + 1  # absolute position of the chunk's first frame (host int: no device sync)
    positions = torch.arange(first, first + n_frames, device=k.device).repeat_interleave(model.config.tokens_per_frame)
    cache.append(k, v, positions)


def _pad_pasts(pasts: list[PastContext]) -> PastContext:
    """Several sessions' past contexts as one batch: each past padded to the longest, padding masked out.

    Every session keeps its own cached keys, length and RoPE positions; the chunk's scratch slots sit after the
    longest past for all of them, so each session's queries see exactly its own past plus its own chunk."""
    n_max = max(p.n_past for p in pasts)
    n_new = pasts[0].keys.shape[3] - pasts[0].n_past
    L, _, H, _, Dh = pasts[0].keys.shape
    rows = sum(p.keys.shape[1] for p in pasts)
    ref = pasts[0].keys
    keys = ref.new_zeros(L, rows, H, n_max + n_new, Dh)
    values = ref.new_zeros(L, rows, H, n_max + n_new, Dh)
    mask = torch.zeros(rows, 1, 1, n_max + n_new, dtype=torch.bool, device=ref.device)
    cos, sin, r = [], [], 0
    for p in pasts:
        b = p.keys.shape[1]
        keys[:, r:r + b, :, :p.n_past] = p.keys[:, :, :, :p.n_past]
        values[:, r:r + b, :, :p.n_past] = p.values[:, :, :, :p.n_past]
        mask[r:r + b, :, :, :p.n_past] = True
        cos.append(p.cos.expand(b, 1, *p.cos.shape))
        sin.append(p.sin.expand(b, 1, *p.sin.shape))
        r += b
    mask[:, :, :, n_max:] = True
    return PastContext(keys, values, n_max, pasts[0].n_frames, torch.cat(cos), torch.cat(sin), mask)


@torch.no_grad()
def generate_chunks(model: MotionGenerator, streams: list["MotionStream"], n_frames: int) -> list[torch.Tensor]:
    """The next chunk of `n_frames` frames of several streams at once: one batch through the network per pass.

    Each stream keeps its own cache (its own length, positions and eviction), noise generator and emotion, so
    its chunk is what `generate_chunk` gives it alone, up to float rounding of the batched products
    (tests/test_batching.py states the tolerance). The streams must share their sampler settings. Returns
    each stream's z (B_i, n_frames, d_motion) and writes each chunk into its stream's cache."""
    config = streams[0].sampler
    if any(s.sampler != dataclasses.replace(config, seed=s.sampler.seed) for s in streams):
        raise InputError("generate_chunks needs streams with the same sampler steps, guidance and k_ctx")
    mc = model.config
    p = next(model.parameters())
    T = n_frames
    caches = [s.cache for s in streams]
    sizes = [s.batch for s in streams]
    audio_ctx = torch.cat([s._audio[:, : mc.audio_past + T + mc.audio_future] for s in streams])
    emotions = [s.emotion for s in streams]
    emotion = None if all(e is None for e in emotions) else torch.cat(
        [_emotion_index(e, b, p.device) if e is not None else
         torch.full((b,), NULL_EMOTION, dtype=torch.long, device=p.device) for e, b in zip(emotions, sizes)])
    # 1. each stream's own seeded noise, drawn as generate_chunk draws it
    x = torch.cat([torch.randn((b, T, mc.d_motion), generator=s.generator) for s, b in zip(streams, sizes)])
    x = x.to(p.device, p.dtype)
    # 2. Euler steps over the padded pasts
    past = _pad_pasts([model.read_cache(c, T) for c in caches])
    x = _euler(model, x, audio_ctx, past, emotion, config)
    # 3. the context pass; each stream's keys, values and attention go to its own cache
    ctx = x
    if config.k_ctx > 0:
        eps = torch.cat([torch.randn((b, T, mc.d_motion), generator=s.generator) for s, b in zip(streams, sizes)])
        ctx = (1 - config.k_ctx) * x + config.k_ctx * eps.to(p.device, p.dtype)
    need = any(c.needs_attention for c in caches)
    out = model.forward_chunk(ctx, config.k_ctx, audio_ctx, past, emotion, need_attn=need)
    outs, r = [], 0
    for cache, b in zip(caches, sizes):
        attn = out.attn[:, r:r + b, :, :, :cache.used_tokens] if cache.needs_attention else None
        _write(model, cache, out.k[:, r:r + b], out.v[:, r:r + b], attn, T)
        outs.append(calibrated(model, x[r:r + b]))
        r += b
    return outs


def calibrated(model: MotionGenerator, z: torch.Tensor) -> torch.Tensor:
    """z as it leaves the sampler: the generator's spread calibration applied, if its export has one
    (models/calibration.py). The cache has already been written with z itself."""
    return z if model.calibration is None else model.calibration.apply(z)


def _emotion_index(emotion, batch: int, device) -> torch.Tensor | None:
    if emotion is None or torch.is_tensor(emotion):
        return emotion
    return torch.full((batch,), emotion_index(emotion), dtype=torch.long, device=device)


class MotionStream:
    """One session's generation state (cache, RNG, audio buffer): push audio features, get motion chunks.

    Frame t needs audio features up to t + audio_future, so a chunk is generated as soon as its audio (and
    that lookahead) has arrived; `flush` ends the stream, padding the missing lookahead with zeros. If the
    generator's export has a free-motion model (models/free_motion.py) and `free_motion` is on, each chunk's
    brows, blinks, gaze and head are drawn by it, from the stream's own seeded state.
    """

    def __init__(self, model: MotionGenerator, z_ref: torch.Tensor, emotion: str | torch.Tensor | None = None,
                 cache: CacheConfig = CacheConfig(), sampler: SamplerConfig = SamplerConfig(),
                 free_motion: bool = True):
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
        self.free = FreeMotionStream(model.free_motion, self.batch, sampler.seed) \
            if free_motion and model.free_motion is not None else None

    @property
    def pending_frames(self) -> int:
        """Frames whose audio has arrived but which are not generated yet."""
        return self._audio.shape[1] - self.model.config.audio_past

    def feed(self, audio_feats: torch.Tensor) -> None:
        """Buffer audio_feats (B, n, d_audio), any n >= 0, without generating (see `push`, `push_many`)."""
        mc = self.model.config
        if self.ended:
            raise InputError("push after flush: this stream has ended; start a new MotionStream")
        if audio_feats.dim() != 3 or audio_feats.shape[0] != self.batch or audio_feats.shape[2] != mc.d_audio:
            raise InputError(f"audio features have shape {tuple(audio_feats.shape)}; "
                             f"expected ({self.batch}, n, {mc.d_audio})")
        self._audio = torch.cat((self._audio, audio_feats.to(self._audio)), dim=1)

    def ready_frames(self) -> int:
        """Frames of the chunk that can be generated now: C while the stream runs, fewer at its end, 0 if none."""
        mc = self.model.config
        if self.ended:
            return max(0, min(mc.chunk_frames, self.pending_frames - mc.audio_future))
        return mc.chunk_frames if self.pending_frames >= mc.chunk_frames + mc.audio_future else 0

    def push(self, audio_feats: torch.Tensor) -> torch.Tensor:
        """audio_feats (B, n, d_audio), any n >= 0 -> every chunk now complete, z (B, m, d_motion), m % C == 0."""
        self.feed(audio_feats)
        out = []
        while self.ready_frames():
            out.append(self._next(self.ready_frames()))
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
        return self._finish(calibrated(self.model, z), n_frames)

    def _finish(self, z: torch.Tensor, n_frames: int) -> torch.Tensor:
        """The chunk z (B, n_frames, d_motion) as it leaves the stream (its free motion drawn), and the stream
        moved past it."""
        if self.free is not None:
            first = self.model.config.audio_past  # the buffer's row of the chunk's first frame
            z = self.free.apply(z, self._audio[:, first:first + n_frames], self.emotion)
        self._advance(n_frames)
        return z

    def _advance(self, n_frames: int) -> None:
        self._audio = self._audio[:, n_frames:]
        self.frames_done += n_frames

    def _cat(self, chunks: list[torch.Tensor]) -> torch.Tensor:
        if chunks:
            return torch.cat(chunks, dim=1)
        return self._audio.new_zeros(self.batch, 0, self.model.config.d_motion)


def push_many(streams: list[MotionStream], audio_feats: list[torch.Tensor]) -> list[torch.Tensor]:
    """`push` for several streams of one model at once (continuous batching across live sessions).

    Every chunk the new features complete is generated, one round per chunk, each round batching the streams
    that have a chunk ready and share its length and sampler settings (a degraded stream with fewer steps
    goes in its own batch). Returns each stream's z (B_i, m_i, d_motion), as its own `push` would."""
    if len({id(s) for s in streams}) != len(streams):
        raise InputError("push_many got the same stream twice; push its features together")
    for stream, feats in zip(streams, audio_feats, strict=True):
        stream.feed(feats)
    outs: list[list[torch.Tensor]] = [[] for _ in streams]
    while True:
        groups: dict[tuple, list[int]] = {}
        for i, stream in enumerate(streams):
            n = stream.ready_frames()
            if n:
                key = (n, dataclasses.replace(stream.sampler, seed=0))
                groups.setdefault(key, []).append(i)
        if not groups:
            break
        for (n, _), members in groups.items():
            if len(members) == 1:
                outs[members[0]].append(streams[members[0]]._next(n))
                continue
            zs = generate_chunks(streams[0].model, [streams[i] for i in members], n)
            for i, z in zip(members, zs):
                outs[i].append(streams[i]._finish(z, n))
    return [stream._cat(out) for stream, out in zip(streams, outs)]


def generate(model: MotionGenerator, audio_feats: torch.Tensor, z_ref: torch.Tensor,
             emotion: str | torch.Tensor | None = None, policy: CacheConfig | str = CacheConfig(),
             sampler: SamplerConfig = SamplerConfig()) -> torch.Tensor:
    """Motion latents (B, T, d_motion) for audio features (B, T, d_audio), chunk by chunk with a KV cache."""
    cache = CacheConfig(policy=policy) if isinstance(policy, str) else policy
    stream = MotionStream(model, z_ref, emotion, cache, sampler)
    return torch.cat((stream.push(audio_feats), stream.flush()), dim=1)
