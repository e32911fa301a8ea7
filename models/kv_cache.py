"""KV cache of the motion generator: five eviction/position policies behind one interface (docs/ARCHITECTURE.md
"KV cache").

Layout (one object per session, shared by all layers): keys and values live in two preallocated tensors
`k, v` of shape (L, B, H, capacity, Dh), stored BEFORE RoPE, plus a device vector `pos` (capacity,) with
the absolute frame position of every slot. Used slots are always the prefix [0, n_used) and split in
regions, each a contiguous slot range:

    [ prefix (P tokens) | sink (S frames) | recent ring (R frames) | compressed (K tokens, PC only) ]

* prefix: the reference-motion token(s) written by `reset`; always kept and NOT counted in the budget.
* sink: the first S frames of the stream; never evicted.
* recent ring: the last R frames; a ring buffer, so a new chunk overwrites the oldest frames in place.
* compressed: (deep_sink_pc) the top-K tokens, by attention received, of what left the ring; kept sorted
  by time.
Slot order inside a region does not matter for attention (every cached token is visible to every query
of the new chunk); only the positions do.

Position rule. Absolute positions: the prefix is 0 and stream frame i is i + 1 (all tokens of a frame
share its position). `view()` returns the RoPE positions each policy assigns:
* full, window: absolute; the prefix sits just before the oldest kept frame.
* sink: contiguous in cache order: prefix 0, sink 1..S, ring S+1..S+R, next chunk S+R+1.
* deep_sink: ring keeps absolute positions; the sink is re-aligned to the S positions just before the
  ring's oldest frame, the prefix just before the sink.
* deep_sink_pc: ring absolute; the compressed tokens take consecutive positions (one per distinct source
  frame, in time order) just before the ring; sink just before them; prefix just before the sink.
The next chunk always takes the position after the newest cached frame (`query_positions`). With a budget
larger than the stream nothing is evicted and every policy's positions equal the absolute ones.

Budget: `budget_frames` W frames of cached past (the chunk being generated is not counted), i.e.
W * tokens_per_frame tokens, plus the prefix. deep_sink_pc splits W into S sink frames, K compressed tokens
and R = W - S - ceil(K / tokens_per_frame) recent frames. Participative Compression: `observe` records, for
each of the last Q query tokens, the attention mass it gave every slot (summed over layers, heads and the
batch: one eviction decision per cache, shared by the batch); when the ring overflows, the frames leaving
it join the compressed tokens and only the top K by that mass survive. Bookkeeping is host-side ints;
selection runs on the device (no `.item()`, no host sync).
"""

from dataclasses import dataclass

import torch

from actorcast.models.errors import ConfigError, InputError

POLICY_NAMES = ("full", "window", "sink", "deep_sink", "deep_sink_pc")


@dataclass(frozen=True)
class CacheConfig:
    """Which policy, and its budget: `budget_frames` W, sink S (None = policy default), K and Q."""

    policy: str = "deep_sink_pc"
    budget_frames: int = 48
    sink_frames: int | None = None  # None: 4 for `sink` (StreamingLLM), W // 2 for deep_sink*
    compress_tokens: int = 8  # K, deep_sink_pc only
    query_tokens: int = 8  # Q: queries whose attention scores the compressed candidates

    def __post_init__(self) -> None:
        if self.policy not in POLICY_NAMES:
            raise ConfigError(f"cache policy {self.policy!r} is unknown; valid: {', '.join(POLICY_NAMES)}")
        if self.budget_frames < 1:
            raise ConfigError(f"budget_frames={self.budget_frames} must be >= 1")
        if self.query_tokens < 1:
            raise ConfigError(f"query_tokens={self.query_tokens} must be >= 1")
        if self.compress_tokens < 0:
            raise ConfigError(f"compress_tokens={self.compress_tokens} must be >= 0")
        if self.policy in ("sink", "deep_sink", "deep_sink_pc"):
            s = self.sink
            if not 1 <= s < self.budget_frames:
                raise ConfigError(f"sink_frames={s} must be in [1, {self.budget_frames - 1}] "
                                  f"(smaller than budget_frames={self.budget_frames})")

    @property
    def sink(self) -> int:
        """Sink frames this policy keeps (0 for full and window)."""
        if self.policy in ("full", "window"):
            return 0
        if self.sink_frames is not None:
            return self.sink_frames
        return min(4, self.budget_frames - 1) if self.policy == "sink" else self.budget_frames // 2


# Cache presets; budgets match the generator's training clip length so positions stay in distribution.
CACHE_PRESETS: dict[str, CacheConfig] = {
    "tiny": CacheConfig("deep_sink_pc", budget_frames=48, compress_tokens=8, query_tokens=8),
    "base": CacheConfig("deep_sink_pc", budget_frames=96, compress_tokens=16, query_tokens=16),
    "large": CacheConfig("deep_sink_pc", budget_frames=128, compress_tokens=24, query_tokens=16),
}


@dataclass(frozen=True)
class CacheDims:
    """Tensor sizes of the model that owns the cache."""

    n_layers: int
    n_heads: int
    head_dim: int
    tokens_per_frame: int = 1
    chunk_frames: int = 4
    batch: int = 1
    device: str | torch.device = "cpu"
    dtype: torch.dtype = torch.float32

    @property
    def prefix_tokens(self) -> int:
        return self.tokens_per_frame


class KVCache:
    """Base cache: prefix + sink + recent ring; subclasses set region sizes and the position rule."""

    needs_attention = False  # True when `observe` must be fed attention weights

    def __init__(self, config: CacheConfig, dims: CacheDims, sink_frames: int, ring_frames: int,
                 comp_tokens: int = 0):
        if ring_frames < dims.chunk_frames:
            raise ConfigError(f"chunk_frames={dims.chunk_frames} does not fit the {ring_frames} recent frames "
                              f"of policy {config.policy!r} (budget_frames={config.budget_frames}); "
                              f"use a budget of at least {config.budget_frames - ring_frames + dims.chunk_frames}")
        self.config, self.dims = config, dims
        tpf = dims.tokens_per_frame
        self.P, self.S, self.R, self.K = dims.prefix_tokens, sink_frames * tpf, ring_frames * tpf, comp_tokens
        self.sink_frames, self.ring_frames = sink_frames, ring_frames
        self.s0, self.r0 = self.P, self.P + self.S  # first slot of sink / ring
        self.c0 = self.r0 + self.R  # first slot of the compressed region
        self._alloc(self.c0 + self.K)
        self._clear()

    # ----- storage -----
    def _alloc(self, capacity: int) -> None:
        d = self.dims
        shape = (d.n_layers, d.batch, d.n_heads, capacity, d.head_dim)
        self.k = torch.zeros(shape, device=d.device, dtype=d.dtype)
        self.v = torch.zeros(shape, device=d.device, dtype=d.dtype)
        self.pos = torch.zeros(capacity, device=d.device, dtype=torch.long)

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    def _clear(self) -> None:
        self.n_frames = 0  # frames appended since reset
        self.sink_fill = self.ring_fill = self.ring_head = self.comp_fill = 0  # tokens
        self.has_prefix = False

    @property
    def used_tokens(self) -> int:
        """Cached tokens (prefix included) that attention sees."""
        return self.P * self.has_prefix + self.sink_fill + self.ring_fill + self.comp_fill

    @property
    def nbytes(self) -> int:
        """Bytes held by the cache's tensors (preallocated: constant for every bounded policy)."""
        return sum(t.numel() * t.element_size() for t in self._tensors())

    def _tensors(self) -> list[torch.Tensor]:
        return [self.k, self.v, self.pos]

    # ----- mutators -----
    def reset(self, k_prefix: torch.Tensor, v_prefix: torch.Tensor) -> None:
        """Start a new stream whose pinned prefix has keys/values (L, B, H, P, Dh)."""
        self._check_kv(k_prefix, v_prefix, self.P)
        self._clear()
        self.k[:, :, :, : self.P] = k_prefix
        self.v[:, :, :, : self.P] = v_prefix
        self.pos[: self.P] = 0
        self.has_prefix = True

    def append(self, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor) -> None:
        """Add whole frames: k, v (L, B, H, T, Dh) before RoPE; positions (T,) absolute, continuing the stream."""
        n = k.shape[3]
        self._check_kv(k, v, n)
        tpf = self.dims.tokens_per_frame
        if not self.has_prefix:
            raise InputError("KVCache.append before reset(k_prefix, v_prefix); reset the cache first")
        if n % tpf or positions.shape != (n,):
            raise InputError(f"append got {n} tokens and positions of shape {tuple(positions.shape)}; "
                             f"need whole frames ({tpf} tokens each) and positions of shape ({n},)")
        if positions.device.type == "cpu" and int(positions[0]) != self.n_frames + 1:
            raise InputError(f"append positions start at {int(positions[0])}; the stream continues at "
                             f"{self.n_frames + 1}")
        done = 0
        sink_room = self.S - self.sink_fill  # the first S frames fill the sink
        if sink_room > 0:
            done = min(sink_room, n)
            self._write(self.s0 + self.sink_fill, k, v, positions, 0, done)
            self.sink_fill += done
        if done < n:
            overflow = self.ring_fill + (n - done) - self.R
            if overflow > 0:
                self.evict(overflow)
            self._ring_write(k, v, positions, done, n)
        self.n_frames += n // tpf

    def evict(self, n_tokens: int) -> None:
        """Drop the `n_tokens` oldest tokens of the full ring (they are overwritten by the next write)."""
        if n_tokens > self.ring_fill:
            raise InputError(f"evict({n_tokens}) but the ring holds {self.ring_fill} tokens")
        self.ring_fill -= n_tokens

    def _oldest_ring_spans(self, n_tokens: int) -> list[tuple[int, int]]:
        """Slot ranges of the `n_tokens` oldest ring tokens."""
        return self._ring_spans((self.ring_head - self.ring_fill) % self.R, n_tokens)

    def observe(self, attn_weights: torch.Tensor) -> None:
        """Importance of cached tokens from attention (L, B, H, Tq, N); unused by this policy."""

    # ----- queries -----
    def view(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(k, v) each (L, B, H, N, Dh) before RoPE, and the RoPE positions (N,) int64 of the policy."""
        n = self.used_tokens
        return self.k[:, :, :, :n], self.v[:, :, :, :n], self._rope_positions(n)

    def query_positions(self, n_frames: int) -> torch.Tensor:
        """RoPE positions (n_frames * tokens_per_frame,) of the next chunk: just after the newest cached frame."""
        start = self._newest_position() + 1
        pos = torch.arange(start, start + n_frames, device=self.pos.device)
        return pos.repeat_interleave(self.dims.tokens_per_frame)

    def abs_positions(self) -> torch.Tensor:
        """Absolute positions (N,) of the cached tokens, in slot order (for tests and reports)."""
        return self.pos[: self.used_tokens]

    def _newest_position(self) -> int:
        return self.n_frames

    def _oldest_ring_position(self) -> int:
        """Absolute position of the oldest frame in the ring (or the next frame if the ring is empty)."""
        return self.n_frames - self.ring_fill // self.dims.tokens_per_frame + 1

    def _rope_positions(self, n: int) -> torch.Tensor:
        raise NotImplementedError  # every policy defines its position rule

    # ----- helpers -----
    def _check_kv(self, k: torch.Tensor, v: torch.Tensor, n: int) -> None:
        d = self.dims
        want = (d.n_layers, d.batch, d.n_heads, n, d.head_dim)
        if tuple(k.shape) != want or tuple(v.shape) != want:
            raise InputError(f"cache got k {tuple(k.shape)}, v {tuple(v.shape)}; expected {want} (L, B, H, T, Dh)")

    def _write(self, slot: int, k, v, positions, a: int, b: int) -> None:
        self.k[:, :, :, slot: slot + b - a] = k[:, :, :, a:b]
        self.v[:, :, :, slot: slot + b - a] = v[:, :, :, a:b]
        self.pos[slot: slot + b - a] = positions[a:b]

    def _ring_spans(self, start: int, n: int) -> list[tuple[int, int]]:
        """Slot ranges covering `n` ring tokens from ring offset `start`, wrapping once."""
        first = min(n, self.R - start)
        spans = [(self.r0 + start, self.r0 + start + first)]
        if n > first:
            spans.append((self.r0, self.r0 + n - first))
        return spans

    def _ring_write(self, k, v, positions, a: int, b: int) -> None:
        n = b - a
        for lo, hi in self._ring_spans(self.ring_head, n):
            self._write(lo, k, v, positions, a, a + hi - lo)
            a += hi - lo
        self.ring_head = (self.ring_head + n) % self.R
        self.ring_fill += n


class FullCache(KVCache):
    """`full`: keeps everything at absolute positions; storage doubles when it fills (baseline)."""

    def __init__(self, config: CacheConfig, dims: CacheDims):
        super().__init__(config, dims, 0, max(config.budget_frames, dims.chunk_frames))

    def append(self, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor) -> None:
        need = self.ring_fill + k.shape[3]
        if need > self.R:  # grow by doubling: amortised O(1) copies per token
            old_k, old_v, old_pos, used = self.k, self.v, self.pos, self.used_tokens
            while self.R < need:
                self.R *= 2
            self._alloc(self.r0 + self.R)
            self.k[:, :, :, :used] = old_k[:, :, :, :used]
            self.v[:, :, :, :used] = old_v[:, :, :, :used]
            self.pos[:used] = old_pos[:used]
            self.ring_frames = self.R // self.dims.tokens_per_frame
        self.ring_head = self.ring_fill  # the region never wraps: it grows instead
        super().append(k, v, positions)

    def _rope_positions(self, n: int) -> torch.Tensor:
        return self.pos[:n].clone()


class WindowCache(KVCache):
    """`window`: the last W frames at absolute positions; the prefix sits just before the oldest one."""

    def __init__(self, config: CacheConfig, dims: CacheDims):
        super().__init__(config, dims, 0, config.budget_frames)

    def _rope_positions(self, n: int) -> torch.Tensor:
        rope = self.pos[:n].clone()
        rope[: self.P] = self._oldest_ring_position() - 1
        return rope


class SinkCache(KVCache):
    """`sink` (StreamingLLM): first S frames + last W - S, positions contiguous in cache order."""

    def __init__(self, config: CacheConfig, dims: CacheDims):
        super().__init__(config, dims, config.sink, config.budget_frames - config.sink)

    def _newest_position(self) -> int:
        return (self.sink_fill + self.ring_fill) // self.dims.tokens_per_frame

    def _rope_positions(self, n: int) -> torch.Tensor:
        rope = self.pos[:n].clone()  # prefix 0, sink 1..S already
        shift = self._oldest_ring_position() - (self.sink_fill // self.dims.tokens_per_frame + 1)
        rope[self.r0: self.r0 + self.ring_fill] -= shift
        return rope


class DeepSinkCache(KVCache):
    """`deep_sink`: first W/2 frames as sink + last W/2; the sink is re-aligned to just before the ring."""

    def __init__(self, config: CacheConfig, dims: CacheDims, comp_tokens: int = 0):
        tpf = dims.tokens_per_frame
        ring = config.budget_frames - config.sink - -(-comp_tokens // tpf)
        super().__init__(config, dims, config.sink, ring, comp_tokens)

    def _rope_positions(self, n: int) -> torch.Tensor:
        rope = self.pos[:n].clone()  # the ring keeps absolute positions
        sink_start = self._oldest_ring_position() - self.sink_fill // self.dims.tokens_per_frame
        rope[self.s0: self.r0] += sink_start - 1  # sink frames 1..S -> sink_start..
        rope[: self.P] = sink_start - 1
        return rope


class DeepSinkPCCache(DeepSinkCache):
    """`deep_sink_pc`: Deep Sink + Participative Compression of what leaves the ring (top-K by attention)."""

    needs_attention = True

    def __init__(self, config: CacheConfig, dims: CacheDims):
        self.Q = config.query_tokens
        super().__init__(config, dims, config.compress_tokens)

    def _alloc(self, capacity: int) -> None:
        super()._alloc(capacity)
        # attention mass each of the last Q query tokens gave each slot (a ring over queries)
        self.hist = torch.zeros(self.Q, capacity, device=self.dims.device, dtype=torch.float32)
        self.q_head = 0

    def _tensors(self) -> list[torch.Tensor]:
        return super()._tensors() + [self.hist]

    def reset(self, k_prefix: torch.Tensor, v_prefix: torch.Tensor) -> None:
        super().reset(k_prefix, v_prefix)
        self.hist.zero_()
        self.q_head = 0

    def observe(self, attn_weights: torch.Tensor) -> None:
        """Record attention (L, B, H, Tq, N) of the newest queries over the N cached tokens."""
        n = self.used_tokens
        if attn_weights.dim() != 5 or attn_weights.shape[-1] != n:
            raise InputError(f"observe got attention of shape {tuple(attn_weights.shape)}; "
                             f"expected (L, B, H, Tq, {n}) over the cached tokens")
        mass = attn_weights.detach().float().sum(dim=(0, 1, 2))  # (Tq, N)
        m = min(mass.shape[0], self.Q)
        rows = (self.q_head + torch.arange(m, device=self.hist.device)) % self.Q
        self.hist[rows, :n] = mass[-m:]
        self.hist[rows, n:] = 0.0
        self.q_head = (self.q_head + m) % self.Q

    def evict(self, n_tokens: int) -> None:
        """The oldest ring tokens join the compressed ones; the top K by recent attention mass survive."""
        dev = self.pos.device
        spans = [(self.c0, self.c0 + self.comp_fill)] + self._oldest_ring_spans(n_tokens)
        cand = torch.cat([torch.arange(lo, hi, device=dev) for lo, hi in spans])  # (n_cand,) slots
        keep = min(self.K, cand.numel())
        if keep > 0:
            top = cand[self.hist[:, cand].sum(0).topk(keep).indices]
            sel = top[torch.argsort(self.pos[top] * self.capacity + top)]  # time order, ties by slot
            c1 = self.c0 + keep
            self.k[:, :, :, self.c0: c1] = self.k[:, :, :, sel]
            self.v[:, :, :, self.c0: c1] = self.v[:, :, :, sel]
            self.pos[self.c0: c1] = self.pos[sel]
            self.hist[:, self.c0: c1] = self.hist[:, sel]
        self.comp_fill = keep
        for lo, hi in spans[1:]:
            self.hist[:, lo:hi] = 0.0  # these ring slots will hold new tokens
        super().evict(n_tokens)

    def _rope_positions(self, n: int) -> torch.Tensor:
        rope = self.pos[:n].clone()
        c = self.pos[self.c0: self.c0 + self.comp_fill]  # sorted by time
        new_frame = torch.ones_like(c)
        new_frame[1:] = (c[1:] != c[:-1]).long()
        rank = new_frame.cumsum(0)  # 1..n_distinct, tokens of one frame share a rank
        n_distinct = rank[-1] if self.comp_fill else torch.zeros((), dtype=torch.long, device=c.device)
        oldest = self._oldest_ring_position()
        rope[self.c0: self.c0 + self.comp_fill] = oldest - n_distinct - 1 + rank
        sink_start = oldest - n_distinct - self.sink_fill // self.dims.tokens_per_frame
        rope[self.s0: self.r0] += sink_start - 1
        rope[: self.P] = sink_start - 1
        return rope


POLICIES: dict[str, type[KVCache]] = {
    "full": FullCache, "window": WindowCache, "sink": SinkCache,
    "deep_sink": DeepSinkCache, "deep_sink_pc": DeepSinkPCCache,
}


def make_cache(config: CacheConfig, dims: CacheDims) -> KVCache:
    """The cache of `config.policy`, validated against the model's dims (chunk, tokens per frame)."""
    if config.policy == "deep_sink_pc":
        tpf, c = dims.tokens_per_frame, dims.chunk_frames
        k_max = (config.budget_frames - config.sink - c) * tpf
        if config.compress_tokens > k_max:
            raise ConfigError(f"compress_tokens={config.compress_tokens} leaves fewer recent frames than "
                              f"chunk_frames={c}; valid: 0..{max(k_max, 0)} for budget_frames="
                              f"{config.budget_frames}, sink_frames={config.sink}")
    return POLICIES[config.policy](config, dims)
