"""Live-call benchmark: `python bench/live.py --out DIR [--quick]` -> DIR/live.json (its keys:
docs/ARCHITECTURE.md "Benchmarks").

One process runs the server on 127.0.0.1 (tiny preset, 256^2); the Python aiortc callers that measure calls run
in another (bench/callers.py), so that their H.264 and audio decoding does not share the server's event loop and
GIL, as callers on other machines would not. A first call gives time to first frame, server latency, fps,
degraded frames and the receiver's A/V offset; headless Chromium (if installed) the latency the page measures
(capture -> presented); an agent-mode caller that interrupts (barge-in), in the server's process, the time back
to idle; then 1, 2, 3 (4 if 3 held) concurrent calls (frames degraded in a call's first 2 s, while it warms up,
do not count); `sessions`: those calls' degraded share and p95, and the cost per session of 1, 2 and 4 sessions
at once as a ratio to 1, with and without continuous batching (actors/batching.py); `pipecat`: the Pipecat
service's added latency (bench/pipecat_latency.py); `livekit`: the same for the LiveKit avatar
(bench/livekit_latency.py).
"""

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
from aiohttp import web  # noqa: E402

from actorcast.actors.engine import Engine  # noqa: E402
from bench import livekit_latency, pipecat_latency  # noqa: E402
from bench.common import ROOT, parse_args, write_json  # noqa: E402
from actorcast.models.data.media import write_wav  # noqa: E402
from actorcast.models.data.performance import generate_speech  # noqa: E402
from actorcast.streaming.app import LIVE_STAGE_THREADS, ServerConfig, create_app  # noqa: E402
from actorcast.streaming.client import LiveCaller  # noqa: E402
from actorcast.streaming.tracks import VOICE_RATE  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")


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


@contextlib.asynccontextmanager
async def serving(engine, max_sessions: int):
    runner = web.AppRunner(create_app(engine, ServerConfig(max_sessions=max_sessions)))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def concurrent_calls(url: str, wav: Path, n: int, seconds: float) -> list[dict]:
    """`n` calls at once, each sending `wav` for `seconds`, made by bench/callers.py in a process of its own;
    the callers' reports (`LiveCaller.report`)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.callers", url, str(wav), "--calls", str(n), "--seconds", str(seconds),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
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


def holds_25fps(report: dict) -> bool:
    """25 fps at the receiver and no more than 1% of the frames degraded once the call has started (the first
    2 s, while the pipeline warms up, are not held against it)."""
    return report["received_fps"] >= 24.0 and (report["sent_degraded_after_startup_frames"] or 0) <= \
        0.01 * max(1, report["sent_frames"] or 0)


async def main_async(args) -> dict:
    seconds = 10.0 if args.quick else 60.0
    work = Path(tempfile.mkdtemp(prefix="actorcast-live-"))
    wav = work / "speech.wav"
    write_wav(wav, generate_speech(11, seconds + 2))
    result: dict = {"seconds": seconds, "preset": "tiny", "size": 256}
    with Engine(stage_threads=LIVE_STAGE_THREADS) as engine:
        async with serving(engine, max_sessions=8) as url:
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
            scaling, best = {}, 0
            for n in range(1, 5):  # 1 to 3 calls always, 4 if 3 held
                reports = await concurrent_calls(url, wav, n, 8.0 if args.quick else 20.0)
                scaling[n] = [{"fps": r["received_fps"], "degraded": r["sent_degraded_frames"],
                               "degraded_after_startup": r["sent_degraded_after_startup_frames"],
                               "sent": r["sent_frames"], "p95_ms": (r["server_latency_ms"] or {}).get("p95")}
                              for r in reports]
                holds = all(holds_25fps(r) for r in reports)
                best = n if holds and best == n - 1 else best
                if not holds and n >= 3:
                    break
            result.update(max_sessions_at_25fps=best, scaling=scaling)
        result["sessions"] = {
            "max_sessions_at_25fps": best,
            **{f"calls_{n}": {"degraded_after_startup_share": round(
                sum(r["degraded_after_startup"] or 0 for r in reports) / max(1, sum(r["sent"] or 0 for r in reports)),
                3), "p95_ms": max((r["p95_ms"] or 0) for r in reports)} for n, reports in scaling.items()},
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


def main() -> None:
    args = parse_args("live", __doc__.splitlines()[0])
    result = asyncio.run(main_async(args))
    path = write_json(Path(args.out), "live", result)
    print(json.dumps(result, indent=1, default=float))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
