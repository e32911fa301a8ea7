"""The live server under abuse: `python bench/abuse.py --out DIR [--quick]` -> DIR/abuse.json.

Runs `actorcast serve` on 127.0.0.1 in a process of its own (so its RSS is the server's alone) and, from here:
1. RSS with no call (after a first 3 s call has warmed the pipeline up), then with an agent-mode call running;
2. sends that call a 30-minute FLAC of silence (a few hundred kB that decodes to 165 MB) and then the most speech
   it may queue (MAX_QUEUED_SPEECH_S, as a WAV): the time until the former's 413, the RSS while the speech plays
   (its peak) and after the call has ended;
3. makes offers that never connect (the caller never applies the answer) until the server is full: how long
   each holds its slot, and whether a real call is then admitted;
4. the caller's side of a long call (streaming/av_offset.py, fed a simulated call of 60 s and of 300 s, 600 s
   without --quick): CPU seconds per call second, the time its figure takes once the call ends, and the peak
   memory it allocates (tracemalloc).

Keys: rss_mb {before_any_call, idle, call, peak_during_speech, after_call, after_ghosts}, speech_queued_s,
long_upload {status, seconds, bytes, error}, ghost_offer {connect_timeout_s, offers, server_full_while_held, held_s,
real_call_after}, caller_av_offset.<seconds> {cpu_s_per_call_s, report_s, peak_mb}.
"""

import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
import av  # noqa: E402
import numpy as np  # noqa: E402
from aiortc import RTCPeerConnection  # noqa: E402

from actorcast.models.data.performance import generate_speech  # noqa: E402
from actorcast.models.media import write_wav  # noqa: E402
from actorcast.streaming.av_offset import AvOffset  # noqa: E402
from actorcast.streaming.client import LiveCaller  # noqa: E402
from actorcast.streaming.ice import rtc_configuration  # noqa: E402
from actorcast.streaming.limits import CONNECT_TIMEOUT_S, MAX_QUEUED_SPEECH_S  # noqa: E402
from actorcast.streaming.tracks import VOICE_RATE  # noqa: E402
from bench.common import ROOT, parse_args, write_json  # noqa: E402

TOKEN = "bench-abuse"
MAX_SESSIONS = 2


def rss_mb(pid: int) -> float:
    """Resident memory of process `pid`, in MiB (VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def flac_of_silence(seconds: int, rate: int = 8000) -> bytes:
    out = io.BytesIO()
    with av.open(out, "w", format="flac") as container:
        stream = container.add_stream("flac", rate=rate, layout="mono")
        for k in range(seconds):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, rate), np.int16), format="s16", layout="mono")
            frame.sample_rate, frame.pts = rate, k * rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def health(http: aiohttp.ClientSession, url: str) -> dict:
    async with http.get(url + "/health") as r:
        return await r.json()


async def wait_up(http: aiohttp.ClientSession, url: str, proc: subprocess.Popen, timeout_s: float = 120.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"actorcast serve exited with {proc.returncode}")
        try:
            await health(http, url)
            return
        except aiohttp.ClientError:
            await asyncio.sleep(0.2)
    raise RuntimeError("actorcast serve did not come up")


async def wait_sessions(http: aiohttp.ClientSession, url: str, n: int, timeout_s: float = 120.0) -> float:
    """Seconds until the server has `n` sessions (polled every 50 ms)."""
    t0 = time.monotonic()
    while (await health(http, url))["sessions"] != n:
        if time.monotonic() - t0 > timeout_s:
            raise RuntimeError(f"the server did not reach {n} sessions in {timeout_s:.0f} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - t0


async def speech_and_memory(http, url: str, pid: int, work: Path, listen_s: float) -> dict:
    """An agent call sent the most speech it may queue, and a long upload it must refuse; RSS along the way."""
    wav = work / "speech.wav"  # made before any call: the caller's loop must not stall (the server would end it)
    write_wav(wav, generate_speech(5, MAX_QUEUED_SPEECH_S - 0.5))
    silence = flac_of_silence(1800)
    warm_up = LiveCaller(url, np.zeros(VOICE_RATE, np.int16), token=TOKEN)
    rss = {"before_any_call": rss_mb(pid)}
    await warm_up.start()
    await asyncio.sleep(3.0)
    await warm_up.stop()
    await wait_sessions(http, url, 0)
    await asyncio.sleep(1.0)
    rss["idle"] = rss_mb(pid)
    caller = LiveCaller(url, np.zeros(VOICE_RATE, np.int16), token=TOKEN, source="agent")
    await caller.start()
    await asyncio.sleep(3.0)
    rss["call"] = rss_mb(pid)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    speak = f"{url}/calls/{caller.session_id}/speak"
    t0 = time.monotonic()  # to an empty queue: decoded up to the whole 120 s of room, then refused
    async with http.post(speak, data=silence, headers=headers) as r:
        long_upload = {"status": r.status, "seconds": round(time.monotonic() - t0, 3), "bytes": len(silence),
                       "error": (await r.json()).get("error")}
    async with http.post(speak, data=wav.read_bytes(), headers=headers) as r:
        queued = (await r.json()).get("queued_s")
    peak, t_end = rss_mb(pid), time.monotonic() + listen_s
    while time.monotonic() < t_end:
        peak = max(peak, rss_mb(pid))
        await asyncio.sleep(0.2)
    rss["peak_during_speech"] = peak
    report = caller.report()
    await caller.stop()
    await wait_sessions(http, url, 0)
    await asyncio.sleep(1.0)
    rss["after_call"] = rss_mb(pid)
    return {"rss_mb": {k: round(v, 1) for k, v in rss.items()}, "speech_queued_s": queued,
            "long_upload": long_upload, "speech_listened_s": listen_s,
            "call_received_frames": report["received_frames"]}


async def ghost_offers(http, url: str) -> dict:
    """Fill every slot with offers that never connect; time until they are freed; then a real call."""
    ghosts = []
    for _ in range(MAX_SESSIONS):
        pc = RTCPeerConnection(rtc_configuration())
        pc.addTransceiver("audio", direction="sendrecv")
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        async with http.post(url + "/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"},
                             headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            assert r.status == 200, await r.text()
        ghosts.append(pc)
    t0 = time.monotonic()
    refused = LiveCaller(url, np.zeros(VOICE_RATE, np.int16), token=TOKEN)
    try:
        await refused.start()
        full = False
    except Exception:
        full = True
    finally:
        await refused.stop()
    await wait_sessions(http, url, 0)
    held = time.monotonic() - t0
    caller = LiveCaller(url, np.zeros(VOICE_RATE, np.int16), token=TOKEN)
    await caller.start()
    await asyncio.sleep(2.0)
    got_in = len(caller.rec.video) > 0
    await caller.stop()
    for pc in ghosts:
        await pc.close()
    return {"connect_timeout_s": CONNECT_TIMEOUT_S, "offers": MAX_SESSIONS, "server_full_while_held": full,
            "held_s": round(held, 2), "real_call_after": got_in}


def av_offset_cost(seconds: int) -> dict:
    """AvOffset fed a simulated call of `seconds`: speech sent, its voice back 60 ms after the video."""
    speech = generate_speech(9, 20.0)
    pcm16 = (speech.numpy() if hasattr(speech, "numpy") else np.asarray(speech)).reshape(-1)
    clip = np.repeat(np.clip(pcm16 * 32767, -32768, 32767).astype(np.int16), 3)
    sent = np.tile(clip, seconds // 20 + 1)[:seconds * VOICE_RATE]
    tracemalloc.start()
    t0 = time.process_time()
    offset = AvOffset(sent)
    for k in range(seconds * 50):  # 20 ms of voice per step; a video frame every other step
        if k % 2 == 0:
            n = k // 2
            offset.add_frame(k * 0.02, n * 3600)
            offset.add_sent(n * 3600, n)
        offset.add_voice(sent[k * 960:(k + 1) * 960], k * 0.02 + 0.06)
    fed = time.process_time() - t0
    t1 = time.perf_counter()
    median = offset.median_ms()
    report_s = time.perf_counter() - t1
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return {"cpu_s_per_call_s": round(fed / seconds, 4), "report_s": round(report_s, 4),
            "peak_mb": round(peak, 1), "av_offset_ms": None if median is None else round(median, 1)}


async def main_async(args) -> dict:
    work = Path(tempfile.mkdtemp(prefix="actorcast-abuse-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "ACTORCAST_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "actorcast.cluster.cli", "serve", "--host", "127.0.0.1",
                             "--port", str(port), "--max-sessions", str(MAX_SESSIONS), "--log-level", "warning"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=sys.stderr)
    try:
        async with aiohttp.ClientSession() as http:
            await wait_up(http, url, proc)
            result = await speech_and_memory(http, url, proc.pid, work, 10.0 if args.quick else MAX_QUEUED_SPEECH_S)
            result["ghost_offer"] = await ghost_offers(http, url)
            result["rss_mb"]["after_ghosts"] = round(rss_mb(proc.pid), 1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    result["caller_av_offset"] = {str(s): av_offset_cost(s) for s in ((60, 300) if args.quick else (60, 300, 600))}
    return {"max_queued_speech_s": MAX_QUEUED_SPEECH_S, "max_sessions": MAX_SESSIONS, **result}


def main() -> None:
    args = parse_args("abuse", __doc__.splitlines()[0])
    result = asyncio.run(main_async(args))
    path = write_json(Path(args.out), "abuse", result)
    print(json.dumps(result, indent=1, default=float))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
