"""Live-call benchmark: `python bench/live.py --out DIR [--quick] [--max-calls N]` -> DIR/live.json (its keys:
docs/ARCHITECTURE.md "Benchmarks").

One process runs the server on 127.0.0.1 (tiny preset, 256^2); the Python aiortc callers that measure calls run
in another (bench/callers.py), so that their H.264 and audio decoding does not share the server's event loop and
GIL, as callers on other machines would not. A first call gives time to first frame, server latency, fps,
degraded frames and the receiver's A/V offset; headless Chromium (if installed) the latency the page measures
(capture -> presented); an agent-mode caller that interrupts (barge-in), in the server's process, the time back
to idle; then 1, 2, 3 concurrent calls, and more while they hold, up to --max-calls (frames degraded in a call's
first 2 s, while it warms up, do not count): `max_sessions_at_25fps` (at most 1 % degraded) and `scaling`; the
same with photo calls, each caller uploading tests/data/astronaut.jpg to POST /portrait and calling with it as its
face: `max_photo_sessions_at_25fps` (at most 0.5 % degraded), `photo_scaling`, `photo_sessions` (or
`photo_skipped`: why the server refused the photo). `core_seconds_per_call_second` {builtin, photo}: the server's
CPU seconds (its process and children, bench/live_capacity.py) per second of one call, past its start-up;
`calls_per_16_cores` what 16 cores hold at that rate; `core_seconds_by_calls` the same per call at each number of
calls tried; `core_seconds_by_part` {builtin, photo}: one call's figure split into the server's own process (its
event loop, WebRTC and media encoding: "server") and each stage's worker ("audio", "motion", "decoder0", ...);
`calls_plot`: DIR/live_calls.png, p95 and degraded share against calls at once, both kinds.
`sessions`: the built-in calls' degraded share and p95, and the cost per session of 1, 2 and 4 sessions at once
as a ratio to 1, with and without continuous batching (actors/batching.py); `pipecat`: the Pipecat service's
added latency (bench/pipecat_latency.py); `livekit`: the same for the LiveKit avatar (bench/livekit_latency.py).
"""

import argparse
import asyncio
import contextlib
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402

from actorcast.actors.engine import Engine  # noqa: E402
from actorcast.actors.loading import motion_config, resolve_weights  # noqa: E402
from bench import livekit_latency, pipecat_latency  # noqa: E402
from bench.callers import portrait_data  # noqa: E402
from bench.common import ROOT, run_record, write_json  # noqa: E402
from bench.live_capacity import (PLANNING_CORES, CpuSampler, calls_per_cores, calls_summary,  # noqa: E402
                                 core_seconds_by_part, core_seconds_per_call_second, holds_25fps,
                                 plot_calls, scaling_entry,
                                 search_capacity)
from actorcast.models.data.performance import generate_speech  # noqa: E402
from actorcast.models.media import write_wav  # noqa: E402
from actorcast.streaming.app import LIVE_STAGE_THREADS, SERVER, LiveServer, ServerConfig, create_app  # noqa: E402
from actorcast.streaming.client import LiveCaller  # noqa: E402
from actorcast.streaming.tracks import VOICE_RATE  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
PHOTO = ROOT / "tests" / "data" / "astronaut.jpg"  # the photo calls' portrait
MOST_CALLS = 12  # the capacity searches go on while the calls hold, up to this many at once
BUILTIN_MAX_DEGRADED = 0.01  # a call holds with at most this share of its frames degraded after start-up,
PHOTO_MAX_DEGRADED = 0.005  # a photo call with at most this share


def chromium_flags(wav: Path) -> list[str]:
    return ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={wav}",
            "--allow-loopback-in-peer-connection", "--autoplay-policy=no-user-gesture-required"]


async def browser_call(url: str, wav: Path, seconds: float, screenshot: Path | None = None) -> dict:
    """Open the page at `url`, start a call, let it run, return the page's own stats (window.actorcast.stats())."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=chromium_flags(wav))
        try:
            page = await browser.new_page(viewport={"width": 1000, "height": 640})
            await page.goto(url + "/")
            await page.click("#start")
            await page.wait_for_function("window.actorcast.running === true", timeout=15000)
            await asyncio.sleep(seconds)
            stats = json.loads(await page.evaluate("JSON.stringify(window.actorcast.stats())"))
            stats["page_error"] = await page.text_content("#error")
            if screenshot is not None:
                await page.screenshot(path=str(screenshot))
            await page.click("#stop")
        finally:
            await browser.close()
    return stats


@dataclasses.dataclass(frozen=True)
class Served:
    """The benchmark's server: its URL, and its `LiveServer` (the calls in progress are `server.calls`)."""

    url: str
    server: LiveServer


@contextlib.asynccontextmanager
async def serving(engine, max_sessions: int):
    app = create_app(engine, ServerConfig(max_sessions=max_sessions))
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield Served(f"http://127.0.0.1:{runner.addresses[0][1]}", app[SERVER])
    finally:
        await runner.cleanup()


async def concurrent_calls(url: str, wav: Path, n: int, seconds: float, portrait: Path | None = None,
                           callers_pids: set[int] | None = None) -> list[dict]:
    """`n` calls at once, each sending `wav` for `seconds` (with `portrait` as its face, if given), made by
    bench/callers.py in a process of its own, whose pid goes into `callers_pids`; the callers' reports
    (`LiveCaller.report`)."""
    photo = ["--portrait", str(portrait)] if portrait is not None else []
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.callers", url, str(wav), "--calls", str(n), "--seconds", str(seconds), *photo,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    if callers_pids is not None:
        callers_pids.add(proc.pid)
    limit = seconds + 120.0  # start-up (imports) and stopping the calls take seconds beyond the calls themselves
    try:
        out, err = await asyncio.wait_for(proc.communicate(), limit)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        failure = f"did not finish in {limit:.0f} s"
    else:
        failure = f"exited with {proc.returncode}" if proc.returncode != 0 else None
    if failure is not None:
        raise RuntimeError(f"bench/callers.py ({n} calls) {failure}; its stderr ends:\n"
                           f"{err.decode(errors='replace')[-3000:]}")
    await asyncio.sleep(1.0)  # let the server free the sessions
    return json.loads(out)


async def interrupt_idle(url: str, wav: Path, times: int) -> list[float]:
    """Agent-mode call: speak, interrupt 1.5 s in, again `times` times; ms from each interrupt to the first
    frame made only from silence being sent (the server's own record)."""
    silence = np.zeros(VOICE_RATE * 60, np.int16)
    caller = LiveCaller(url, silence, source="agent")
    await caller.start()
    try:
        for _ in range(times):
            await caller.post(f"/calls/{caller.session_id}/speak", data=wav.read_bytes())
            await asyncio.sleep(1.5)
            caller.send({"type": "interrupt"})
            await asyncio.sleep(1.5)
        return [round(v, 1) for v in caller.rec.server[-1]["interrupt_idle_ms"] if v is not None]
    finally:
        await caller.stop()


async def session_cost(engine, n: int, pcm16: np.ndarray, batched: bool) -> float:
    """Wall seconds for `n` sessions to turn `pcm16` each into frames, all at once and as fast as the stages go.

    The sessions are cut like live ones (the live config's 80 ms audio blocks and 1-frame decode pieces) but never
    degrade, so every one does the whole work; `batched` shares the generator and decoder batches among them."""
    config = dataclasses.replace(engine.live_config(), live=False)

    async def one(i: int) -> None:
        session = await engine.open_session(identity_seed=i, seed=i, config=config, batched=batched)

        async def produce():
            for a in range(0, len(pcm16), 3200):
                await session.put(pcm16[a:a + 3200])
            session.end()

        session.produce(produce())
        async for _ in session.frames():
            pass
        await session.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return time.perf_counter() - t0


async def session_costs(engine, seconds: float) -> dict:
    """Cost per session of 1, 2 and 4 sessions at once, as a ratio to 1 session, with and without batching, and
    batched as a ratio to 1 session without (`batched_cost_vs_one_unbatched`)."""
    pcm16 = generate_speech(7, seconds)
    await session_cost(engine, 1, pcm16[:16000], True)  # warm up
    out, walls = {"audio_seconds": seconds}, {}
    for batched in (True, False):
        wall = walls[batched] = {n: await session_cost(engine, n, pcm16, batched) for n in (1, 2, 4)}
        key = "batched" if batched else "unbatched"
        out[f"{key}_wall_s"] = {n: round(w, 2) for n, w in wall.items()}
        out[f"{key}_cost_ratio"] = {n: round(w / n / wall[1], 3) for n, w in wall.items()}
    # A single session gains from batching too (its own frames queue up while the decoder works, and go as one
    # batch), so the batched ratio is taken against a batched single session; this is against one without.
    out["batched_cost_vs_one_unbatched"] = {n: round(w / n / walls[False][1], 3) for n, w in walls[True].items()}
    return out


@dataclasses.dataclass(frozen=True)
class Capacity:
    """One capacity search: the most calls at once that held, what each try kept of its calls' reports
    (`scaling_entry`) and the server's CPU seconds per second of call, by calls at once."""

    best: int
    scaling: dict[int, list[dict]]
    core_s: dict[int, float | None]
    parts: dict[int, dict[str, float]] = dataclasses.field(default_factory=dict)  # core_s by part of the server


async def capacity(served: Served, wav: Path, seconds: float, most: int, portrait: Path | None = None) -> Capacity:
    """Calls at once of one kind, tried as `search_capacity` does (1 to 3 always, then on while they hold, up to
    `most`): built-in faces, or `portrait` uploaded by each caller. Built-in calls hold with at most 1 % of their
    frames degraded after start-up, photo calls with at most 0.5 %."""
    share = BUILTIN_MAX_DEGRADED if portrait is None else PHOTO_MAX_DEGRADED
    callers_pids: set[int] = set()
    core_s: dict[int, float | None] = {}
    parts: dict[int, dict[str, float]] = {}

    async def try_calls(n: int) -> list[dict]:
        async with CpuSampler(lambda: len(served.server.calls), callers_pids) as sampler:
            reports = await concurrent_calls(served.url, wav, n, seconds, portrait, callers_pids)
        cores = core_seconds_per_call_second(sampler.samples, n)
        core_s[n] = None if cores is None else round(cores, 3)
        parts[n] = {k: round(v, 3) for k, v in core_seconds_by_part(sampler.samples, n).items()}
        return reports

    best, tried = await search_capacity(try_calls, lambda r: holds_25fps(r, share), most=most)
    return Capacity(best, {n: [scaling_entry(r) for r in reports] for n, reports in tried.items()}, core_s, parts)


async def portrait_refusal(url: str, photo: Path) -> str | None:
    """Why the server will not take `photo` as a face (POST /portrait), or None when it frames it."""
    async with aiohttp.ClientSession() as http:
        async with http.post(url + "/portrait", json={"portrait": portrait_data(photo)}) as resp:
            return None if resp.status == 200 else f"POST /portrait answered {resp.status}: {await resp.text()}"


def photo_figures(builtin: Capacity, photo: Capacity | None, refusal: str | None) -> dict:
    """The photo calls' capacity and the CPU figures of both kinds of call (one call at once; by calls at once in
    `core_seconds_by_calls`), or, when the server refused the photo, why."""
    one = {"builtin": builtin.core_s.get(1), "photo": photo.core_s.get(1) if photo else None}
    out = {"max_photo_sessions_at_25fps": photo.best if photo else None,
           "core_seconds_per_call_second": one,
           f"calls_per_{PLANNING_CORES}_cores": {kind: calls_per_cores(c) for kind, c in one.items()},
           "core_seconds_by_calls": {"builtin": builtin.core_s, "photo": photo.core_s if photo else {}},
           "core_seconds_by_part": {"builtin": builtin.parts.get(1, {}),
                                    "photo": photo.parts.get(1, {}) if photo else {}}}
    if photo is None:
        return {**out, "photo_skipped": refusal}
    return {**out, "photo_scaling": photo.scaling,
            "photo_sessions": {"max_photo_sessions_at_25fps": photo.best,
                               **{f"calls_{n}": calls_summary(e) for n, e in photo.scaling.items()}}}


async def calls_figures(served: Served, wav: Path, seconds: float, args) -> dict:
    """Both capacity searches (built-in faces, then the photo) with calls of `seconds`, the CPU figures, and the
    plot of latency and degraded frames against calls at once (args.out/live_calls.png)."""
    builtin = await capacity(served, wav, seconds, args.max_calls)
    refusal = await portrait_refusal(served.url, PHOTO)
    photo = await capacity(served, wav, seconds, args.max_calls, PHOTO) if refusal is None else None
    machine = run_record("live")["machine"]
    by_kind = {"built-in": builtin, **({"photo": photo} if photo else {})}
    plot = plot_calls(args.out / "live_calls.png", {
        kind: {n: calls_summary(e) for n, e in c.scaling.items()} for kind, c in by_kind.items()},
        machine["cpu"], machine["cores"])
    return {"max_sessions_at_25fps": builtin.best, "scaling": builtin.scaling,
            **photo_figures(builtin, photo, refusal), "calls_plot": plot.name}


async def main_async(args) -> dict:
    seconds = 10.0 if args.quick else 60.0
    work = Path(tempfile.mkdtemp(prefix="actorcast-live-"))
    wav = work / "speech.wav"
    write_wav(wav, generate_speech(11, seconds + 2))
    result: dict = {"seconds": seconds, "preset": "tiny", "size": 256, "stages": args.stages, "shards": args.shards,
                    "latency": args.latency}
    chunk = motion_config(resolve_weights(None)).trained_chunks[0] if args.latency == "low" else None
    with Engine(stage_threads=LIVE_STAGE_THREADS, processes=args.stages == "processes", shards=args.shards,
                chunk_frames=chunk) as engine:
        result["chunk_frames"] = engine.chunk_frames
        async with serving(engine, max_sessions=max(8, args.max_calls)) as served:
            url = served.url
            one = (await concurrent_calls(url, wav, 1, seconds))[0]
            result.update(ttff_s=one["ttff_s"], fps=one["received_fps"], degraded_frames=one["sent_degraded_frames"],
                          degraded_after_startup=one["sent_degraded_after_startup_frames"],
                          server_latency_ms=one["server_latency_ms"], av_offset_ms=one["av_offset_ms"],
                          av_offset_sender_ms=one["sender_av_offset_ms"],
                          session_latency_ms=one["generation_latency_ms"], repeated_frames=one["repeated_frames"],
                          dropped_frames=one["skipped_frames"])
            if CHROMIUM.exists():
                page = await browser_call(url, wav, min(seconds, 20.0))
                result.update(browser_latency_ms=page["latency_ms"], browser_av_offset_ms=page["av_offset_ms"],
                              browser_av_parts_ms=page["av_parts_ms"], browser_fps=page["fps"])
            idle = await interrupt_idle(url, wav, 3 if args.quick else 8)
            result.update(interrupt_idle_ms={"median": statistics.median(idle) if idle else None,
                                             "max": max(idle, default=None), "all": idle})
            result.update(await calls_figures(served, wav, 8.0 if args.quick else 20.0, args))
        best, scaling = result["max_sessions_at_25fps"], result["scaling"]
        result["sessions"] = {
            "max_sessions_at_25fps": best,
            **{f"calls_{n}": calls_summary(entries) for n, entries in scaling.items()},
            **await session_costs(engine, 6.0 if args.quick else 20.0)}
        result["pipecat"] = await pipecat_figures(engine, seconds)
        result["livekit"] = await livekit_figures(engine, seconds)
    return result


async def pipecat_figures(engine, seconds: float) -> dict:
    """The Pipecat service's added latency (bench/pipecat_latency.py), or why it was not measured."""
    try:
        return await pipecat_latency.measure(engine, seconds)
    except ImportError as e:  # streaming.pipecat.PipecatMissingError: the pipecat extra is not installed
        return {"skipped": str(e)}


async def livekit_figures(engine, seconds: float) -> dict:
    """The LiveKit avatar's added latency (bench/livekit_latency.py), or why it was not measured."""
    try:
        return await livekit_latency.measure(engine, seconds)
    except ImportError as e:  # streaming.livekit.LivekitMissingError: the livekit extra is not installed
        return {"skipped": str(e)}


def parse_args() -> argparse.Namespace:
    """The common `--out DIR [--quick]` (bench/common.py), and a cap on the calls the capacity searches try."""
    parser = argparse.ArgumentParser(prog="bench/live.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="directory for live.json and live_calls.png")
    parser.add_argument("--quick", action="store_true", help="a smaller run, for CI")
    parser.add_argument("--stages", choices=("processes", "threads"), default="processes",
                        help="where the server runs its stages: a worker process each (default, as serve does) or "
                             "worker threads of its process (serve --stages threads)")
    parser.add_argument("--latency", choices=("low", "balanced"), default="low",
                        help="the generator's chunk size as serve --latency takes it: low (default) the smallest "
                             "its weights are trained for, balanced its own")
    parser.add_argument("--shards", type=int, default=1,
                        help="decoder shards, each in a worker process of its own with --stages processes "
                             "(default 1)")
    parser.add_argument("--max-calls", type=int, default=MOST_CALLS,
                        help=f"the most calls at once the capacity searches try (default {MOST_CALLS}); a smaller "
                             "number makes a short check")
    args = parser.parse_args()
    if args.max_calls < 1:
        parser.error("--max-calls must be at least 1")
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def main() -> None:
    args = parse_args()
    result = asyncio.run(main_async(args))
    path = write_json(Path(args.out), "live", result)
    print(json.dumps(result, indent=1, default=float))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
