"""The live server under abuse, on real servers and real aiortc peers on 127.0.0.1: bounded speech per call, slots
of never-connecting offers freed, every bad request a 4xx JSON error, the access and call log, token hygiene,
slow clients closed."""

import asyncio
import contextlib
import io
import json
import logging
import os
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import aiohttp
import av
import numpy as np
import pytest
from aiohttp import web
from aiortc import RTCPeerConnection

from actorcast.actors.engine import Engine
from actorcast.models.errors import ActorcastError
from actorcast.streaming.app import LIVE_STAGE_THREADS, SERVER, ServerConfig, app_runner, call_options, create_app
from actorcast.streaming.client import LiveCaller
from actorcast.streaming.ice import rtc_configuration
from actorcast.streaming.limits import MAX_QUEUED_SPEECH_S
from actorcast.streaming.tracks import VOICE_RATE

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "s3cret"


@pytest.fixture(scope="module")
def engine():
    with Engine(stage_threads=LIVE_STAGE_THREADS) as e:
        yield e


@contextlib.asynccontextmanager
async def serving(engine, **config):
    config = ServerConfig(**config)
    runner = app_runner(create_app(engine, config), config)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", runner.app[SERVER]
    finally:
        await runner.cleanup()


async def wait_for(predicate, timeout: float) -> None:
    """Until predicate() holds; fails after `timeout` s (a guard against a hang, not a measure)."""
    t0 = time.monotonic()
    while not predicate():
        assert time.monotonic() - t0 < timeout, "condition not reached in time"
        await asyncio.sleep(0.05)


def flac_of_silence(seconds: float, rate: int = 8000) -> bytes:
    """A FLAC file of `seconds` of silence: a few hundred bytes per minute, whatever it decodes to."""
    out = io.BytesIO()
    with av.open(out, "w", format="flac") as container:
        stream = container.add_stream("flac", rate=rate, layout="mono")
        block = np.zeros((1, rate), np.int16)
        for k in range(int(seconds)):
            frame = av.AudioFrame.from_ndarray(block, format="s16", layout="mono")
            frame.sample_rate, frame.pts = rate, k * rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


async def post(url: str, path: str, token: str | None = TOKEN, **kwargs) -> tuple[int, str, object]:
    """(status, Content-Type, JSON body or text) of a POST."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    headers.update(kwargs.pop("headers", {}))
    async with aiohttp.ClientSession() as http:
        async with http.post(url + path, headers=headers, **kwargs) as r:
            text = await r.text()
            kind = r.content_type
            return r.status, kind, json.loads(text) if kind.startswith("application/json") else text


@pytest.mark.asyncio
async def test_speech_past_the_queue_limit_is_413_and_memory_comes_back(engine):
    """An upload that decodes to far more than a call may queue is refused with 413 JSON once decoding passes the
    room left (not after decoding it all); the queue holds at most MAX_QUEUED_SPEECH_S; the server's memory stays
    within 60 MB of where it was and comes back once the call ends."""
    half_hour = flac_of_silence(1800)
    fits = flac_of_silence(MAX_QUEUED_SPEECH_S - 20)
    assert len(half_hour) < 400_000  # tiny on the wire
    samples, stop = [], threading.Event()

    def sample():
        while not stop.wait(0.05):
            samples.append(rss_mb())

    async with serving(engine, token=TOKEN) as (url, server):
        caller = LiveCaller(url, np.zeros(VOICE_RATE, np.int16), token=TOKEN, source="agent")
        await caller.start()
        call = server.calls[caller.session_id]
        await wait_for(lambda: call.frames_sent > 10, 30.0)
        before = rss_mb()
        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            status, kind, body = await post(url, f"/calls/{caller.session_id}/speak", data=half_hour)
            assert (status, kind) == (413, "application/json") and "too long" in body["error"]
            assert call.speech.queued_s() == 0
            status, _, body = await post(url, f"/calls/{caller.session_id}/speak", data=fits)
            assert status == 200 and body["queued_s"] == pytest.approx(MAX_QUEUED_SPEECH_S - 20, abs=0.05)
            status, _, body = await post(url, f"/calls/{caller.session_id}/speak", data=flac_of_silence(30))
            assert status == 413 and "room for" in body["error"]  # the queue is nearly full
            assert call.speech.queued_s() <= MAX_QUEUED_SPEECH_S
        finally:
            stop.set()
            sampler.join()
        await caller.stop()
        await wait_for(lambda: not server.calls, 10.0)
        await server.memory_returned
    after = rss_mb()
    assert max(samples) - before < 60, (before, max(samples))
    assert after - before < 40, (before, after)


@pytest.mark.asyncio
async def test_speak_on_a_microphone_call_is_refused_before_decoding(engine):
    async with serving(engine) as (url, server):
        caller = LiveCaller(url, np.zeros(VOICE_RATE, np.int16))
        await caller.start()
        status, _, body = await post(url, f"/calls/{caller.session_id}/speak", token=None, data=b"not audio at all")
        await caller.stop()
    assert status == 400 and "microphone" in body["error"]  # not "cannot be decoded": nothing was decoded


@pytest.mark.asyncio
async def test_a_never_connecting_offer_frees_its_slot(engine, caplog):
    """An answered offer whose caller never applies the answer is closed after the connect timeout (1 s here), and
    a real call then gets the only slot."""
    caplog.set_level(logging.INFO, logger="actorcast")
    async with serving(engine, max_sessions=1, connect_timeout_s=1.0) as (url, server):
        ghost = RTCPeerConnection(rtc_configuration())
        ghost.addTransceiver("audio", direction="sendrecv")
        ghost.addTransceiver("video", direction="recvonly")
        await ghost.setLocalDescription(await ghost.createOffer())
        status, _, answer = await post(url, "/offer", token=None, json={"sdp": ghost.localDescription.sdp,
                                                                        "type": "offer"})
        assert status == 200 and answer["session_id"] in server.calls  # answered, holding the slot
        await wait_for(lambda: not server.calls, 15.0)
        caller = LiveCaller(url, np.zeros(VOICE_RATE, np.int16))
        await caller.start()  # the freed slot admits a real caller
        await wait_for(lambda: len(caller.rec.video) > 5, 30.0)
        await caller.stop()
        await ghost.close()
    assert any("not connected 1 s after the answer, closing" in r.getMessage() for r in caplog.records)


@pytest.mark.asyncio
async def test_every_bad_request_is_a_4xx_json_error(engine):
    deep = b"[" * 100_000 + b"]" * 100_000
    peer = RTCPeerConnection(rtc_configuration())
    peer.addTransceiver("audio")
    peer.addTransceiver("video", direction="recvonly")
    await peer.setLocalDescription(await peer.createOffer())
    lines = peer.localDescription.sdp.split("\r\n")
    await peer.close()
    no_codecs = "\r\n".join(line for line in lines if not line.startswith("a=rtpmap"))  # StopIteration in aiortc
    no_mid = "\r\n".join(line for line in lines if not line.startswith("a=mid"))  # sections that do not match
    async with serving(engine, token=TOKEN) as (url, server):
        cases = {
            "no codecs": ("/offer", {"json": {"sdp": no_codecs, "type": "offer"}}, 400, "SDP offer cannot be used"),
            "no mid": ("/offer", {"json": {"sdp": no_mid, "type": "offer"}}, 400, "SDP offer cannot be used"),
            "garbage SDP": ("/offer", {"json": {"sdp": "v=0\r\nm=garbage", "type": "offer"}}, 400, "SDP"),
            "deep JSON": ("/offer", {"data": deep}, 400, "nested too deep"),
            "deep JSON portrait": ("/portrait", {"data": deep}, 400, "nested too deep"),
            "unknown key": ("/offer", {"json": {"sdp": "v=0\r\nm=x", "type": "offer", "identiy": 5}}, 400,
                            "unknown key(s) in the offer: 'identiy'; the known ones are sdp, type"),
            "wrong type": ("/offer", {"json": {"sdp": "v=0\r\nm=x", "type": "offer", "identity": "5"}}, 400,
                           "identity must be a whole number"),
            "too large": ("/offer", {"data": b"x" * (17 * 2**20)}, 413, "too large: at most 16 MiB"),
            "no such call": ("/calls/nope/interrupt", {}, 404, "no such call"),
            "no such path": ("/nowhere", {}, 404, "no such path"),
        }
        for name, (path, kwargs, status, reason) in cases.items():
            got, kind, body = await post(url, path, **kwargs)
            assert (got, kind) == (status, "application/json"), (name, got, body)
            assert reason in body["error"], (name, body)
        async with aiohttp.ClientSession() as http:  # a GET where only POST is routed
            async with http.get(url + "/offer", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                assert r.status == 405 and "use POST" in (await r.json())["error"]
            async with http.get(url + "/static/%2e%2e/app.py") as r:  # out of the static folder: not found
                assert r.status == 404 and r.content_type == "application/json"
        assert not server.calls and server.admitting == 0


@pytest.mark.asyncio
async def test_too_large_and_video_portraits_are_named_so(engine):
    """A picture over the pixel limit is "too large" (413) in any encoding, also past ffmpeg's own size limit
    where PyAV cannot read its size; a video is not a portrait."""
    import base64

    from PIL import Image

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))
    out = io.BytesIO()
    Image.new("RGB", (64, 64)).save(out, "JPEG")
    jpeg = bytearray(out.getvalue())
    struct.pack_into(">HH", jpeg, jpeg.index(b"\xff\xc0") + 5, 9000, 9000)  # 81 Mpx in the frame header
    video = io.BytesIO()
    with av.open(video, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width = stream.height = 64
        for _ in range(5):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    async with serving(engine) as (url, server):
        answers = {}
        for name, data in (("png", png), ("jpeg", bytes(jpeg)), ("mp4", video.getvalue())):
            portrait = "data:image/png;base64," + base64.b64encode(data).decode()
            answers[name] = await post(url, "/portrait", token=None, json={"portrait": portrait})
    for name in ("png", "jpeg"):
        status, _, body = answers[name]
        assert status == 413 and "too large" in body["error"], (name, body)
    assert answers["jpeg"][2]["error"].startswith("the portrait is 9000x9000 = 81 Mpx, too large")
    assert answers["mp4"][0] == 400 and "not a still picture" in answers["mp4"][2]["error"]


def test_offer_identity_key_and_its_old_name():
    assert call_options({"identity": 5}).identity_seed == 5
    assert call_options({"identity_seed": 7}).identity_seed == 7
    assert call_options({"identity": 5, "identity_seed": 5}).identity_seed == 5
    with pytest.raises(ActorcastError, match="differ"):
        call_options({"identity": 5, "identity_seed": 6})


@pytest.mark.asyncio
async def test_bearer_scheme_is_case_insensitive(engine):
    async with serving(engine, token=TOKEN) as (url, server):
        statuses = [(await post(url, "/offer", token=None, headers={"Authorization": f"{scheme} {token}"},
                                json={"sdp": "hello", "type": "offer"}))[0]
                    for scheme, token in (("bearer", TOKEN), ("BEARER", TOKEN), ("Bearer", "wrong"),
                                          ("Basic", TOKEN))]
    assert statuses == [400, 400, 401, 401]  # 400: past the token check, the SDP is refused


@pytest.mark.asyncio
async def test_access_and_call_log_lines_without_secrets(engine, caplog):
    caplog.set_level(logging.INFO, logger="actorcast")
    async with serving(engine, token=TOKEN, max_sessions=1) as (url, server):
        await post(url, "/offer", token="wrong", json={})
        await post(url, "/offer", json={"sdp": "v=0\r\nm=garbage", "type": "offer"})
        caller = LiveCaller(url, np.zeros(VOICE_RATE, np.int16), token=TOKEN)
        await caller.start()
        await wait_for(lambda: len(caller.rec.video) > 5, 30.0)
        with pytest.raises(ActorcastError, match="503"):
            await LiveCaller(url, np.zeros(VOICE_RATE, np.int16), token=TOKEN).start()
        await caller.stop()
        await wait_for(lambda: not server.calls, 10.0)
    lines = [r.getMessage() for r in caplog.records]
    access = [line for r, line in zip(caplog.records, lines) if r.name == "actorcast.access"]
    assert [line.split()[:3] for line in access] == [["POST", "/offer", "401"], ["POST", "/offer", "400"],
                                                     ["POST", "/offer", "200"], ["POST", "/offer", "503"]]
    assert all(line.endswith(" ms") for line in access)
    sid = caller.session_id
    assert any(line.startswith(f"call {sid} admitted") for line in lines)
    assert any(line.startswith(f"call {sid} connected") for line in lines)
    assert any("offer refused: server full" in line for line in lines)
    assert any(line.startswith("offer refused: the SDP offer cannot be used") for line in lines)
    assert sum(" closed after " in line for line in lines) == 1  # the refused offer was never a call
    closed = next(line for line in lines if line.startswith(f"call {sid} closed after"))
    assert int(closed.split(" frames sent")[0].split()[-1]) > 5
    assert not any(TOKEN in line or "v=0" in line for line in lines)


@pytest.mark.asyncio
async def test_a_half_sent_request_is_closed_after_the_header_timeout(engine):
    async with serving(engine, header_timeout_s=1.0) as (url, server):
        port = int(url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # and nothing more
        await writer.drain()
        closed = await asyncio.wait_for(reader.read(), 10.0)  # b"" once the server closes the connection
        writer.close()
    assert closed == b""


@pytest.mark.asyncio
async def test_a_body_that_does_not_come_is_a_408(engine, monkeypatch):
    """Headers sent, then only part of the body: refused once the body timeout (1 s here) has passed."""
    from actorcast.streaming import limits

    monkeypatch.setattr(limits, "BODY_TIMEOUT_S", 1.0)
    async with serving(engine) as (url, server):
        port = int(url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /offer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"sdp\": ")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
        length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
                     .split(b":")[1])
        body = await reader.readexactly(length)
        writer.close()
    assert head.startswith(b"HTTP/1.1 408") and b"application/json" in head and b"Connection: close" in head
    assert "did not arrive within 1 s" in json.loads(body)["error"]


def test_token_from_file_environment_or_flag(tmp_path):
    from actorcast.cluster.serve import open_server_warning, resolve_token

    path = tmp_path / "token"
    path.write_text("from-file\n")
    assert resolve_token(None, path, environ={}) == "from-file"
    assert resolve_token(None, None, environ={"ACTORCAST_TOKEN": "from-env"}) == "from-env"
    assert resolve_token("flag", None, environ={"ACTORCAST_TOKEN": "from-env"}) == "flag"
    assert resolve_token(None, None, environ={}) is None
    with pytest.raises(ActorcastError, match="not both"):
        resolve_token("flag", path, environ={})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ActorcastError, match="is empty"):
        resolve_token(None, tmp_path / "empty", environ={})
    with pytest.raises(ActorcastError, match="cannot read"):
        resolve_token(None, tmp_path / "missing", environ={})
    assert open_server_warning("127.0.0.1", None) is None and open_server_warning("10.1.2.3", "t") is None
    assert "without a token" in open_server_warning("10.1.2.3", None)


@pytest.mark.asyncio
async def test_the_pipecat_examples_offer_refuses_bad_bodies_with_json():
    """examples/pipecat_agent.py: bad bodies and unusable SDP are 4xx JSON errors, not 500s with tracebacks."""
    import importlib.util

    pytest.importorskip("pipecat", reason="the pipecat extra is not installed")
    spec = importlib.util.spec_from_file_location("pipecat_agent", ROOT / "examples" / "pipecat_agent.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    runner = web.AppRunner(example.create_app(example.Agent(None, "127.0.0.1", 3)))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        answers = [await post(url, path, token=None, **kwargs) for path, kwargs in (
            ("/offer", {"data": b"{not json"}),
            ("/offer", {"data": b"[" * 100_000 + b"]" * 100_000}),
            ("/offer", {"json": {"sdp": 5, "type": "offer"}}),
            ("/offer", {"json": {"sdp": "v=0\r\nm=garbage", "type": "offer"}}),
            ("/offer", {"data": b"x" * (2 * 2**20)}),
            ("/say", {"json": {"text": "hello"}}),
        )]
    finally:
        await runner.cleanup()
    assert [(status, kind) for status, kind, _ in answers] == [(400, "application/json")] * 4 + [
        (413, "application/json"), (409, "application/json")]
    reasons = [body["error"] for _, _, body in answers]
    assert "not JSON" in reasons[0] and "nested too deep" in reasons[1] and "SDP" in reasons[3]
    assert "too large: at most 1 MiB" in reasons[4] and "press Start" in reasons[5]


def test_av_offset_is_measured_as_it_goes_near_the_expected_position(monkeypatch):
    """Voice arriving 80 ms after the video of the same content reads +80 ms; each window is correlated only
    against the sent audio near where it is expected, so the FFT size is the same for a 20 s and a 10 min
    call (the whole-file correlation grew with the call and made long calls quadratic)."""
    from actorcast.models.data.performance import generate_speech
    from actorcast.streaming import av_offset as module
    from actorcast.streaming.av_offset import AvOffset
    from actorcast.streaming.tracks import VOICE_PER_FRAME

    speech = generate_speech(7, 20.0)
    pcm16 = (speech.numpy() if hasattr(speech, "numpy") else np.asarray(speech)).reshape(-1)
    pcm48 = np.repeat((pcm16 * 20000).astype(np.int16), 3)  # 16 kHz -> 48 kHz, crudely: the correlation is at 16k
    sizes = []
    rfft = np.fft.rfft
    monkeypatch.setattr(module.np.fft, "rfft", lambda x, n=None: sizes.append(n) or rfft(x, n))

    def play(sent: np.ndarray, seconds: float) -> float | None:
        offset = AvOffset(sent)
        events = [(n / 25, "frame", n) for n in range(int(seconds * 25))]  # frame n at n / 25 s
        events += [(k * 0.02 + 0.08, "voice", k) for k in range(int(seconds * 50))]  # voice 80 ms later
        for n in range(int(seconds * 25)):
            offset.add_sent(n * 3600, n)
        for t, kind, k in sorted(events):
            if kind == "frame":
                offset.add_frame(t, k * 3600)
            else:
                offset.add_voice(pcm48[k * 960:(k + 1) * 960], t)
        return offset.median_ms()

    assert play(pcm48, 18.0) == pytest.approx(80.0, abs=2.0)
    short = max(sizes)
    sizes.clear()
    long_sent = np.concatenate([pcm48] + [np.zeros(len(pcm48), np.int16)] * 29)  # 10 min sent, same voice
    assert play(long_sent, 18.0) == pytest.approx(80.0, abs=2.0)
    assert max(sizes) == short and short < 4 * VOICE_PER_FRAME * 25  # about 2.5 s of 16 kHz, not the file


@pytest.mark.asyncio
async def test_call_figures_count_the_same_frames_on_both_sides(engine, tmp_path):
    """received_frames counts the frames of sent_frames that arrived (the server's figure comes from its latest
    stats, up to 0.5 s old: counting every frame received made the caller report more than the server sent),
    and the A/V offset is there at once from what was measured during the call."""
    from actorcast.models.data.media import write_wav
    from actorcast.models.data.performance import generate_speech
    from actorcast.streaming.tracks import decode_audio_48k

    write_wav(tmp_path / "speech.wav", generate_speech(3, 6.0))
    pcm48 = decode_audio_48k((tmp_path / "speech.wav").read_bytes())
    async with serving(engine) as (url, server):
        caller = LiveCaller(url, pcm48)
        await caller.start()
        await wait_for(lambda: caller.rec.frames_received > 100, 60.0)
        await asyncio.sleep(0.3)  # between two stats messages
        report = caller.report()
        await caller.stop()
    assert report["received_frames"] <= report["sent_frames"] < caller.rec.frames_received
    assert report["sent_frames"] - report["received_frames"] <= 3  # frames still on their way
    assert report["av_offset_ms"] is not None
    assert len(caller.rec.messages) == 0 and len(caller.rec.server) <= 2  # stats are not all kept


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "actorcast.cluster.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_a_picture_pyav_cannot_decode_is_a_one_line_error(tmp_path):
    """An --image in a format PyAV demuxes but cannot decode (svg) was an AttributeError traceback."""
    from actorcast.actors.reference import check_portrait, decode_image
    from actorcast.models.errors import InputError, TooLargeError

    svg = tmp_path / "face.svg"
    svg.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"/>')
    with pytest.raises(InputError, match="svg_pipe picture, which PyAV cannot decode: convert it to png or jpeg"):
        decode_image(str(svg), "face.svg")
    with pytest.raises(TooLargeError, match="too large"):  # a picture handed over decoded says the same
        check_portrait(np.zeros((7000, 7000, 3), np.uint8))
    done = _cli("render", "--say", "hello", "--image", str(svg), "-o", str(tmp_path / "out.mp4"), cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"actorcast: error: {svg} is a svg_pipe picture, which PyAV cannot decode: convert it to png or jpeg"]


def test_a_jobs_file_without_jobs_is_an_error(tmp_path):
    (tmp_path / "blank.jsonl").write_text("\n  \n")
    done = _cli("batch", "blank.jsonl", "--out-dir", "renders", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "actorcast: error: jobs file blank.jsonl has no jobs (it is empty or blank): put one JSON object per line, "
        'e.g. {"audio": "speech.wav"}']


def test_a_jobs_line_nested_too_deep_fails_that_job_only(tmp_path):
    from actorcast.cluster.batch import parse_jobs

    (tmp_path / "jobs.jsonl").write_text("[" * 100_000 + "]" * 100_000 + "\n")
    jobs = parse_jobs(tmp_path / "jobs.jsonl", tmp_path)
    assert jobs == [("line1", None, "line 1: the JSON is nested too deep; give one flat object per job")]


def test_serve_help_states_the_limits_and_log_level_sets_the_servers_loggers():
    from actorcast.cluster.cli import build_parser
    from actorcast.cluster.serve import set_log_level

    parser = build_parser()
    serve = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "serve")[1]
    text = serve.format_help()
    assert "not up within 10 s is closed and its session slot freed" in text
    assert "--token-file PATH" in text and "ACTORCAST_TOKEN" in text and "--log-level" in text
    logger = logging.getLogger("actorcast")
    before = logger.level
    try:
        set_log_level("warning")
        assert not logging.getLogger("actorcast.access").isEnabledFor(logging.INFO)
        set_log_level("info")
        assert logging.getLogger("actorcast.access").isEnabledFor(logging.INFO)
    finally:
        logger.setLevel(before)


@pytest.mark.asyncio
async def test_call_takes_the_token_from_the_environment(engine, tmp_path):
    from actorcast.models.data.media import write_wav
    from actorcast.models.data.performance import generate_speech

    write_wav(tmp_path / "speech.wav", generate_speech(3, 1.0))
    async with serving(engine, token=TOKEN) as (url, server):
        results = []
        for extra in ({"ACTORCAST_TOKEN": TOKEN}, {"ACTORCAST_TOKEN": "wrong"}):
            env = {**os.environ, "PYTHONPATH": str(ROOT), **extra}
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "actorcast.cluster.cli", "call", url, "--audio", str(tmp_path / "speech.wav"),
                "--seconds", "1", "--json", cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
            out, err = await proc.communicate()
            results.append((proc.returncode, out.decode(), err.decode()))
    assert results[0][0] == 0 and json.loads(results[0][1])["sent_frames"] is not None
    assert results[1][0] == 2 and "401" in results[1][2] and "Traceback" not in results[1][2]
