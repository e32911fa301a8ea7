"""The live server under abuse, on real servers and real aiortc peers on 127.0.0.1: bounded speech per call, slots
of never-connecting offers freed, every bad request a 4xx JSON error, the access and call log, token hygiene,
slow clients closed."""

import asyncio
import io
import json
import logging
import struct
import threading
import zlib

import aiohttp
import av
import numpy as np
import pytest
from aiohttp import web
from aiortc import RTCPeerConnection

from actorcast.actors.engine import Engine
from actorcast.models.errors import ActorcastError
from actorcast.streaming.app import LIVE_STAGE_THREADS, call_options
from actorcast.streaming.client import LiveCaller
from actorcast.streaming.ice import rtc_configuration
from actorcast.streaming.limits import MAX_QUEUED_SPEECH_S
from actorcast.streaming.tracks import VOICE_RATE
from tests.live_server import ROOT, TOKEN, flac_of_silence, post, serving, wait_for


@pytest.fixture(scope="module")
def engine():
    with Engine(stage_threads=LIVE_STAGE_THREADS) as e:
        yield e


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


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
