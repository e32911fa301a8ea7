"""Per-chunk generation time and cache memory vs stream length for every KV-cache policy (tiny preset).

    python bench/cache.py --out DIR [--quick]

Writes DIR/cache.json (`policies.<policy>.<seconds>.ms_per_chunk` and `.cache_bytes` for seconds 10, 60,
600), DIR/cache.md (the table) and DIR/cache.png (ms per chunk and cache bytes vs stream length).

Method: untrained tiny generator, batch 1, one CPU thread (the live pipeline shares two cores between
three stages). To reach a stream length quickly, the cache is pre-filled by appending random keys/values
chunk by chunk through the policy's own `append` (and, for deep_sink_pc, `observe` with random attention
so compression really runs); generating those frames with the network would only be slower, not
different: the time of one chunk depends on what the cache holds, not on how the values were made. So
`full` at 600 s really attends over 15,000 cached frames. Then the median time of `generate_chunk`
(S = 4 Euler steps + the cache-writing pass) is measured at that length.
"""

import logging

from common import median_seconds, parse_args, write_json  # noqa: I001  (bench/ is on sys.path)

import matplotlib
import torch

from actorcast.models.kv_cache import POLICY_NAMES, CACHE_PRESETS, CacheConfig, KVCache
from actorcast.models.motion import MOTION_PRESETS, MotionGenerator
from actorcast.models.sampling import SamplerConfig, generate_chunk
from actorcast.models.timebase import FPS

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

log = logging.getLogger("bench.cache")
SECONDS = (10, 60, 600)


def prefill(model: MotionGenerator, cache: KVCache, n_frames: int, g: torch.Generator) -> None:
    """Append `n_frames` frames of random keys/values chunk by chunk, as a stream of that length would."""
    c = model.config
    shape = (c.n_layers, cache.dims.batch, c.n_heads, c.chunk_frames * c.tokens_per_frame, c.head_dim)
    for t0 in range(0, n_frames, c.chunk_frames):
        if cache.needs_attention:
            logits = torch.randn(c.n_layers, 1, c.n_heads, shape[3], cache.used_tokens, generator=g)
            cache.observe(logits.softmax(dim=-1))
        pos = torch.arange(t0 + 1, t0 + 1 + c.chunk_frames).repeat_interleave(c.tokens_per_frame)
        cache.append(torch.randn(shape, generator=g), torch.randn(shape, generator=g), pos)


def measure(model: MotionGenerator, policy: str, seconds: int, repeats: int) -> dict:
    """ms per chunk and cache bytes of `policy` after a stream of `seconds`."""
    c = model.config
    g = torch.Generator().manual_seed(0)
    cache = model.new_cache(CacheConfig(**{**CACHE_PRESETS["tiny"].__dict__, "policy": policy}))
    with torch.no_grad():
        cache.reset(*model.prefix_kv(torch.randn(1, c.d_motion, generator=g)))
    prefill(model, cache, seconds * FPS, g)
    audio = torch.randn(1, c.audio_past + c.chunk_frames + c.audio_future, c.d_audio, generator=g)
    sampler = SamplerConfig()
    bytes_at_length, tokens_at_length = cache.nbytes, cache.used_tokens
    sec = median_seconds(lambda: generate_chunk(model, cache, audio, None, g, sampler), repeats, warmup=2)
    return {"ms_per_chunk": 1000.0 * sec, "cache_bytes": bytes_at_length, "cache_tokens": tokens_at_length}


def plot(result: dict, path) -> None:
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    for policy, rows in result["policies"].items():
        xs = [int(s) for s in rows]
        ax_t.plot(xs, [rows[s]["ms_per_chunk"] for s in rows], marker="o", label=policy)
        ax_m.plot(xs, [rows[s]["cache_bytes"] / 2**20 for s in rows], marker="o", label=policy)
    for ax, ylabel in ((ax_t, "ms per chunk (4 frames, S=4)"), (ax_m, "cache MiB")):
        ax.set_xscale("log")
        ax.set_xlabel("stream length (s)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    ax_m.set_yscale("log")
    ax_t.legend()
    fig.suptitle("KV-cache policies, tiny motion generator, 1 CPU thread")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(result: dict) -> str:
    lines = ["| policy | " + " | ".join(f"{s} s ms/chunk | {s} s KiB" for s in SECONDS) + " |",
             "|---|" + "---|---|" * len(SECONDS)]
    for policy, rows in result["policies"].items():
        cells = [f"{rows[str(s)]['ms_per_chunk']:.2f} | {rows[str(s)]['cache_bytes'] / 1024:.0f}" for s in SECONDS]
        lines.append(f"| {policy} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args("cache", __doc__.splitlines()[0])
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = MotionGenerator(MOTION_PRESETS["tiny"]).eval()
    repeats = 5 if args.quick else 25
    result = {"preset": "tiny", "chunk_frames": model.config.chunk_frames, "steps": model.config.sampler_steps,
              "threads": 1, "repeats": repeats, "cache": CACHE_PRESETS["tiny"].__dict__, "policies": {}}
    for policy in POLICY_NAMES:
        result["policies"][policy] = {}
        for seconds in SECONDS:
            row = measure(model, policy, seconds, repeats)
            result["policies"][policy][str(seconds)] = row
            log.info("%-13s %4d s  %7.2f ms/chunk  %9d bytes", policy, seconds, row["ms_per_chunk"], row["cache_bytes"])
    write_json(args.out, "cache", result)
    (args.out / "cache.md").write_text(table(result))
    plot(result, args.out / "cache.png")


if __name__ == "__main__":
    main()
