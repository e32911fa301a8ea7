"""KV cache policies: what each keeps, the positions it assigns, compression, memory, bad configs."""

import pytest
import torch

from actorcast.models.errors import ConfigError, InputError
from actorcast.models.kv_cache import POLICY_NAMES, CacheConfig, CacheDims, make_cache

L, B, H, DH = 2, 1, 2, 4


def dims(tpf=1, chunk=2, batch=B):
    return CacheDims(n_layers=L, n_heads=H, head_dim=DH, tokens_per_frame=tpf, chunk_frames=chunk, batch=batch)


def marked(positions: torch.Tensor, batch=B):
    """k, v (L, B, H, T, Dh) whose every entry is the token's absolute position (v: its negative)."""
    k = positions.float().view(1, 1, 1, -1, 1).expand(L, batch, H, -1, DH).clone()
    return k, -k


def started(config, tpf=1, chunk=2):
    cache = make_cache(config, dims(tpf, chunk))
    cache.reset(*marked(torch.zeros(tpf, dtype=torch.long)))
    return cache


def push(cache, n_frames, tpf=1):
    pos = torch.arange(cache.n_frames + 1, cache.n_frames + 1 + n_frames).repeat_interleave(tpf)
    cache.append(*marked(pos), pos)


def check_values_follow_positions(cache):
    """Every slot's key/value still holds the marker of the token whose position it records."""
    k, v, _ = cache.view()
    pos = cache.abs_positions().float()
    assert torch.equal(k[:, :, :, :, 0], pos.expand(L, B, H, -1))
    assert torch.equal(v[:, :, :, :, 0], -pos.expand(L, B, H, -1))


def by_time(cache):
    """(absolute positions, rope positions) of the cached frame tokens sorted by time, prefix excluded."""
    _, _, rope = cache.view()
    ab = cache.abs_positions()
    order = torch.argsort(ab[cache.P:], stable=True) + cache.P
    return ab[order], rope[order], rope[: cache.P]


def test_window_keeps_last_frames_at_absolute_positions():
    cache = started(CacheConfig("window", budget_frames=10), chunk=4)
    for _ in range(13):  # 52 frames; 10 is not a multiple of the chunk, so the ring wraps mid-chunk
        push(cache, 4)
        check_values_follow_positions(cache)
    ab, rope, prefix_rope = by_time(cache)
    assert ab.tolist() == list(range(43, 53))
    assert rope.tolist() == ab.tolist()
    assert prefix_rope.tolist() == [42]
    assert cache.query_positions(4).tolist() == [53, 54, 55, 56]


def test_sink_keeps_first_and_last_with_contiguous_positions():
    cache = started(CacheConfig("sink", budget_frames=10, sink_frames=3), chunk=2)
    for _ in range(20):
        push(cache, 2)
        check_values_follow_positions(cache)
    ab, rope, prefix_rope = by_time(cache)
    assert ab.tolist() == [1, 2, 3] + list(range(34, 41))
    assert rope.tolist() == list(range(1, 11))  # contiguous in cache order
    assert prefix_rope.tolist() == [0]
    assert cache.query_positions(2).tolist() == [11, 12]


@pytest.mark.parametrize("tpf", [1, 2])
def test_deep_sink_is_realigned_before_recent_window_at_every_step(tpf):
    cache = started(CacheConfig("deep_sink", budget_frames=12), tpf=tpf, chunk=4)
    S = 6
    for step in range(60):
        push(cache, 4, tpf)
        check_values_follow_positions(cache)
        ab, rope, prefix_rope = by_time(cache)
        sink, recent = ab <= S, ab > S
        recent_rope = rope[recent].unique_consecutive()
        n = cache.n_frames
        assert recent_rope.tolist() == list(range(n - len(recent_rope) + 1, n + 1))  # absolute, contiguous
        assert torch.equal(rope[recent], ab[recent])
        sink_frames = min(S, n)
        first_recent = n - len(recent_rope) + 1
        assert rope[sink].unique_consecutive().tolist() == list(range(first_recent - sink_frames, first_recent))
        assert prefix_rope.tolist() == [first_recent - sink_frames - 1] * tpf
        assert cache.query_positions(1).tolist() == [n + 1] * tpf
    assert ab[sink].unique().tolist() == list(range(1, S + 1))  # the sink is the first W/2 frames


def attention_on(cache, targets, n_queries=2):
    """Attention (L, B, H, Tq, N) of which all mass goes to the tokens at absolute positions `targets`."""
    hit = torch.isin(cache.abs_positions(), torch.tensor(targets)).float()
    w = hit / hit.sum().clamp(min=1)
    return w.expand(L, B, H, n_queries, -1).clone()


def test_participative_compression_keeps_exactly_the_attended_tokens():
    config = CacheConfig("deep_sink_pc", budget_frames=16, sink_frames=6, compress_tokens=3, query_tokens=2)
    cache = started(config, chunk=2)  # ring = 16 - 6 - 3 = 7 frames
    targets = [9, 12, 15]  # middle frames: they leave the ring and compete for the 3 compressed slots
    for _ in range(40):
        cache.observe(attention_on(cache, targets))
        push(cache, 2)
        check_values_follow_positions(cache)
    ab = cache.abs_positions()
    comp = ab[cache.c0: cache.c0 + cache.comp_fill]
    assert comp.tolist() == targets  # exactly the attended tokens survived, in time order
    assert ab[cache.s0: cache.r0].tolist() == list(range(1, 7))  # sink never evicted
    ring = sorted(ab[cache.r0: cache.c0].tolist())
    assert ring == list(range(74, 81))
    _, _, rope = cache.view()
    # ring absolute; compressed right before it; sink right before them; prefix before the sink
    assert rope[cache.c0: cache.c0 + 3].tolist() == [71, 72, 73]
    assert rope[cache.s0: cache.r0].tolist() == list(range(65, 71))
    assert rope[: cache.P].tolist() == [64]


def test_participative_compression_follows_the_last_queries():
    config = CacheConfig("deep_sink_pc", budget_frames=12, sink_frames=4, compress_tokens=2, query_tokens=4)
    cache = started(config, chunk=2)  # ring = 6 frames
    for _ in range(6):  # the first queries attend to frames 5 and 6
        cache.observe(attention_on(cache, [5, 6]))
        push(cache, 2)
    assert cache.abs_positions()[cache.c0: cache.c0 + 2].tolist() == [5, 6]
    for _ in range(10):  # newer queries attend only to the newest frame: 5 and 6 lose to newer tokens
        cache.observe(attention_on(cache, [cache.n_frames - 6]))
        push(cache, 2)
    comp = cache.abs_positions()[cache.c0: cache.c0 + 2].tolist()
    assert 5 not in comp and 6 not in comp
    assert cache.abs_positions()[cache.s0: cache.r0].tolist() == [1, 2, 3, 4]


@pytest.mark.parametrize("policy", [p for p in POLICY_NAMES if p != "full"])
def test_memory_is_constant_once_the_budget_fills(policy):
    config = CacheConfig(policy, budget_frames=24, compress_tokens=4, query_tokens=4)
    cache = started(config, chunk=4)
    budget_tokens = 24 + cache.P
    sizes, used = set(), set()
    for step in range(2500):  # 10,000 frames
        if cache.needs_attention:
            cache.observe(torch.rand(L, B, H, 4, cache.used_tokens))
        push(cache, 4)
        assert cache.used_tokens <= budget_tokens
        if cache.n_frames >= 24:
            sizes.add(cache.nbytes)
            used.add(cache.used_tokens)
    assert len(sizes) == 1 and len(used) == 1
    kv_bytes = 2 * L * B * H * DH * 4 + 8  # float32 k and v, int64 position, per slot
    score_bytes = config.query_tokens * 4 if policy == "deep_sink_pc" else 0  # PC's attention history
    assert sizes == {cache.capacity * (kv_bytes + score_bytes)}
    assert cache.capacity == budget_tokens
    check_values_follow_positions(cache)


def test_full_keeps_everything_and_grows():
    cache = started(CacheConfig("full", budget_frames=8), chunk=4)
    before = cache.nbytes
    for _ in range(25):
        push(cache, 4)
    check_values_follow_positions(cache)
    ab, rope, _ = by_time(cache)
    assert ab.tolist() == list(range(1, 101)) and rope.tolist() == ab.tolist()
    assert cache.nbytes > 8 * before


@pytest.mark.parametrize("kwargs, dims_kwargs, needle", [
    ({"policy": "lru"}, {}, "'lru'"),
    ({"policy": "sink", "budget_frames": 8, "sink_frames": 8}, {}, "sink_frames=8"),
    ({"policy": "window", "budget_frames": 2}, {"chunk": 4}, "chunk_frames=4"),
    ({"policy": "deep_sink", "budget_frames": 6}, {"chunk": 4}, "chunk_frames=4"),
    ({"policy": "deep_sink_pc", "budget_frames": 16, "compress_tokens": 6}, {"chunk": 4}, "compress_tokens=6"),
    ({"policy": "deep_sink_pc", "query_tokens": 0}, {}, "query_tokens=0"),
    ({"budget_frames": 0}, {}, "budget_frames=0"),
])
def test_bad_config_raises_config_error_naming_the_value(kwargs, dims_kwargs, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        make_cache(CacheConfig(**kwargs), dims(**dims_kwargs))


def test_bad_appends_raise_input_error():
    cache = make_cache(CacheConfig("window", budget_frames=8), dims())
    pos = torch.arange(1, 3)
    with pytest.raises(InputError, match="reset"):
        cache.append(*marked(pos), pos)
    cache.reset(*marked(torch.zeros(1, dtype=torch.long)))
    with pytest.raises(InputError, match="continues at 1"):
        cache.append(*marked(pos + 5), pos + 5)
    with pytest.raises(InputError, match="expected"):
        cache.append(*marked(pos, batch=2), pos)
