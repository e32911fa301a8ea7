"""Render throughput, long-form memory and per-chunk time, and Ray overhead (docs/ARCHITECTURE.md "Benchmarks").

    python bench/render.py --out DIR [--quick]

Writes DIR/render.json with `rtf.1`, `rtf.2` (seconds of video per wall second, tiny preset at 256^2, 1 and 2
decoder shards on Ray, H.264 + AAC written), `encode_only_rtf` (H.264 encode of the same frames alone: the
ceiling), `rss_mb.<minutes>` and `ms_per_chunk.<minutes>` for a short and a long in-process render (each in a
fresh process, so its peak RSS is its own), `ray_overhead_ratio` (time per chunk through Ray actors over
in-process, same audio, same run), `cli_rtf.<seconds>` (seconds of video per wall second of the whole
`actorcast render` command with its defaults, start-up included: a fresh process, imports, weights, and Ray only
if the command starts it) for an 8 s and a 60 s render, and DIR/render_longform.png (RSS and time per chunk vs
position).
"""

import multiprocessing as mp
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import parse_args, write_json  # noqa: E402

SIZE = 256
SAMPLE = Path(__file__).resolve().parent.parent / "assets" / "sample_speech.wav"


def _long_audio(path: Path, minutes: float) -> Path:
    """A `minutes`-long wav made by repeating the shipped sample speech (written block by block)."""
    import av
    import numpy as np

    from actorcast.models.media import read_audio

    speech = (read_audio(SAMPLE).numpy().clip(-1, 1) * 32767).astype(np.int16)
    n = int(minutes * 60 * 16000)
    with av.open(str(path), "w", format="wav") as out:
        stream = out.add_stream("pcm_s16le", rate=16000, layout="mono")
        for start in range(0, n, speech.size):
            frame = av.AudioFrame.from_ndarray(speech[None, : n - start].copy(), format="s16", layout="mono")
            frame.sample_rate = 16000
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def _timed_render(audio: Path, out: Path, engine) -> tuple[float, list[float]]:
    """Wall seconds of one render and the time between successive chunks (ms)."""
    from actorcast.actors.render_job import RenderJob, render

    stamps = []
    t0 = time.perf_counter()
    render(RenderJob(str(audio), str(out), identity=3, size=SIZE), progress=False, engine=engine,
           on_frames=lambda n: stamps.append(time.perf_counter()))
    wall = time.perf_counter() - t0
    return wall, [1000 * (b - a) for a, b in zip(stamps[:-1], stamps[1:])]


def _longform_worker(minutes: float, tmp: str, queue) -> None:
    """Child process: render `minutes` of audio in-process; report chunk times and RSS along the way."""
    from actorcast.actors.engine import Engine
    from actorcast.actors.render_job import RenderJob, render

    audio = _long_audio(Path(tmp) / f"long_{minutes}.wav", minutes)
    curve, last = [], [time.perf_counter()]

    def on_frames(n: int) -> None:
        now = time.perf_counter()
        rss = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() / 2**20
        curve.append((n, 1000 * (now - last[0]), rss))
        last[0] = now

    with Engine(size=SIZE) as engine:
        render(RenderJob(str(audio), str(Path(tmp) / f"long_{minutes}.mp4"), identity=3, size=SIZE), progress=False,
               engine=engine, on_frames=on_frames)
    queue.put({"curve": curve, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def longform(minutes: float, tmp: Path) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_longform_worker, args=(minutes, str(tmp), queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


CLI_SECONDS = (8, 60)


def cli_rtf(seconds: float, tmp: Path) -> float:
    """Video seconds per wall second of `actorcast render AUDIO -o OUT` as a user runs it (default options but
    the identity and size of the other measures), from process start to exit."""
    audio = _long_audio(tmp / f"cli_{seconds:g}.wav", seconds / 60)
    cmd = [sys.executable, "-m", "actorcast.cluster.cli", "render", str(audio), "-o", str(tmp / f"cli_{seconds:g}.mp4"),
           "--identity", "3", "--size", str(SIZE)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=Path(__file__).resolve().parent.parent, capture_output=True)
    return round(seconds / (time.perf_counter() - t0), 3)


def encode_only(frames_file: Path, tmp: Path) -> float:
    """RTF of H.264-encoding the rendered frames alone (decoded first, so only encode is timed)."""
    import av
    import numpy as np

    from actorcast.actors.render_mux import SegmentWriter

    with av.open(str(frames_file)) as c:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    t0 = time.perf_counter()
    seg = SegmentWriter(tmp / "encode_only.mp4", SIZE)
    seg.write(frames)
    seg.close()
    return len(frames) / 25 / (time.perf_counter() - t0)


def plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for minutes, curve in curves.items():
        pos = [c[0] / 25 / 60 for c in curve]
        ax1.plot(pos, [c[2] for c in curve], label=f"{minutes} min")
        ax2.plot(pos, [c[1] for c in curve], ".", ms=1, alpha=0.4, label=f"{minutes} min")
    ax1.set(xlabel="position (min)", ylabel="RSS (MB)", title="memory vs position")
    ax2.set(xlabel="position (min)", ylabel="ms per chunk (4 frames)", title="time per chunk vs position")
    ax1.legend()
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    args = parse_args("render", __doc__.splitlines()[0])
    from actorcast.actors.engine import Engine
    from actorcast.cluster.ray_connect import ensure_ray

    tmp = args.out / "render_tmp"
    tmp.mkdir(exist_ok=True)
    seconds = 8.0 if args.quick else 32.0
    audio = _long_audio(tmp / "rtf.wav", seconds / 60)
    result: dict = {"size": SIZE, "preset": "tiny", "rtf": {}, "rss_mb": {}, "ms_per_chunk": {},
                    "audio_seconds": seconds}
    # before this process starts Ray, whose idle servers would share the CPU with the command
    result["cli_rtf"] = {str(s): cli_rtf(s, tmp) for s in CLI_SECONDS}
    ensure_ray(num_cpus=2)
    per_chunk = {}
    for shards in (1, 2):
        with Engine(size=SIZE, shards=shards, use_ray=True) as engine:
            _timed_render(audio, tmp / "warm.mp4", engine)  # warm-up: actor start, first-call costs
            wall, chunks = _timed_render(audio, tmp / f"ray{shards}.mp4", engine)
        result["rtf"][str(shards)] = round(seconds / wall, 3)
        per_chunk[f"ray{shards}"] = statistics.median(chunks)
    with Engine(size=SIZE) as engine:
        _timed_render(audio, tmp / "warm.mp4", engine)
        wall, chunks = _timed_render(audio, tmp / "local.mp4", engine)
    result["rtf_in_process"] = round(seconds / wall, 3)
    result["ray_overhead_ratio"] = round(per_chunk["ray1"] / statistics.median(chunks), 3)
    result["encode_only_rtf"] = round(encode_only(tmp / "ray1.mp4", tmp), 3)
    curves = {}
    for minutes in ((0.5, 2.0) if args.quick else (5.0, 60.0)):
        long = longform(minutes, tmp)
        key = f"{minutes:g}"
        curves[key] = long["curve"]
        result["rss_mb"][key] = round(long["peak_rss_mb"], 1)
        result["ms_per_chunk"][key] = round(statistics.median(c[1] for c in long["curve"]), 2)
        half = len(long["curve"]) // 2
        result.setdefault("ms_per_chunk_first_last_half", {})[key] = [
            round(statistics.median(c[1] for c in long["curve"][:half]), 2),
            round(statistics.median(c[1] for c in long["curve"][half:]), 2)]
    plot(curves, args.out / "render_longform.png")
    path = write_json(args.out, "render", result)
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    print(path.read_text())


if __name__ == "__main__":
    main()
