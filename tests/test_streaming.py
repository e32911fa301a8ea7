"""Live calls over real aiortc peers on 127.0.0.1: auth, admission, bad input, control, vanished peers."""

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from actorcast.actors.engine import Engine
from actorcast.actors.stages import _loads
from actorcast.models.data.performance import generate_speech
from actorcast.models.errors import ActorcastError, InputError
from actorcast.models.media import write_wav
from actorcast.models.timebase import SAMPLES_PER_FRAME
from actorcast.streaming.app import LIVE_STAGE_THREADS
from actorcast.streaming.client import LiveCaller
from actorcast.streaming.figures import RECEIVER_FIGURES, SERVER_FIGURES
from actorcast.streaming.ice import candidate_hosts, hosts_for, is_loopback
from actorcast.streaming.tracks import VOICE_RATE, decode_audio_48k
from tests.helpers import run_on_virtual_clock
from tests.live_server import serving, wait_for

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def engine():
    # a worker process per stage, as `actorcast serve` runs them
    with Engine(stage_threads=LIVE_STAGE_THREADS, processes=True) as e:
        yield e


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("live") / "speech.wav"
    write_wav(path, generate_speech(3, 6.0))
    return path


def test_loopback_detection_and_candidate_scope():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("10.1.2.3") and not is_loopback("0.0.0.0")
    assert hosts_for("127.0.0.1") == ["127.0.0.1"] and hosts_for("192.168.1.5") is None
    import aioice.ice
    with candidate_hosts(["127.0.0.1"]):
        assert aioice.ice.get_host_addresses(True, False) == ["127.0.0.1"]
    assert "127.0.0.1" not in aioice.ice.get_host_addresses(True, False)  # aioice's own behaviour outside


@pytest.mark.asyncio
async def test_token_bad_input_and_a_good_call(engine, speech_wav):
    pcm = decode_audio_48k(speech_wav.read_bytes())
    async with serving(engine, token="s3cret", max_sessions=2) as (url, server):
        async with aiohttp.ClientSession() as http:
            async with http.post(url + "/offer", json={"sdp": "v=0", "type": "offer"}) as r:
                assert r.status == 401 and "bearer token" in (await r.json())["error"]
            auth = {"Authorization": "Bearer s3cret"}
            async with http.post(url + "/offer", data=b"{not json", headers=auth) as r:
                assert r.status == 400 and "not JSON" in (await r.json())["error"]
            async with http.post(url + "/offer", json={"sdp": "hello", "type": "offer"}, headers=auth) as r:
                assert r.status == 400 and "SDP" in (await r.json())["error"]
            bad_sdp = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
            async with http.post(url + "/offer", json={"sdp": bad_sdp, "type": "offer"}, headers=auth) as r:
                assert r.status == 400 and (await r.json())["error"]
        with pytest.raises(ActorcastError, match="401"):
            await LiveCaller(url, pcm, token="wrong").start()
        assert not server.calls and server.admitting == 0  # refused offers left nothing behind
        caller = LiveCaller(url, pcm, token="s3cret")
        await caller.start()
        await asyncio.sleep(4.0)
        report = caller.report()
        await caller.stop()
        # video arrived and every figure was measured; how fast is bench/live.py's business, not a test's
        assert report["received_frames"] > 0 and report["received_fps"] > 0 and report["ttff_s"] is not None
        assert report["av_offset_ms"] is not None and report["server_latency_ms"]["p95"] is not None
        assert set(report) == {f.key for f in RECEIVER_FIGURES + SERVER_FIGURES} - {"recorded_frames"}
        assert set(caller.rec.server[-1]) - {"type", "frames"} == {f.key for f in SERVER_FIGURES}  # all named
        assert report["sent_frames"] >= report["repeated_frames"] and report["generated_frames"] > 0
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/metrics") as r:
                text, metrics_type = await r.text(), r.headers["Content-Type"]
            async with http.get(url + "/health") as r:
                health = await r.json()
        sent = float(next(line.split()[1] for line in text.splitlines() if line.startswith("actorcast_frames_sent_total")))
        assert sent == server.metrics.frames_sent > 0 and 'actorcast_frame_latency_ms_bucket{le="+Inf"}' in text
        assert metrics_type.startswith("text/plain") and "actorcast_sessions_active 1.0" in text
        assert health["status"] == "ok" and health["token_required"] is True
        await wait_for(lambda: not server.calls, 30.0)


@pytest.mark.asyncio
async def test_capacity_503_and_recovery(engine, speech_wav):
    pcm = decode_audio_48k(speech_wav.read_bytes())
    async with serving(engine, max_sessions=1) as (url, server):
        first = LiveCaller(url, pcm)
        await first.start()
        with pytest.raises(ActorcastError, match=r"503: server full: 1 of 1 sessions"):
            await LiveCaller(url, pcm).start()
        await wait_for(lambda: len(first.rec.video) > 10, 60.0)  # the admitted call kept running (a hang guard)
        await first.stop()
        await wait_for(lambda: not server.calls, 30.0)
        second = LiveCaller(url, pcm)
        await second.start()  # the freed slot admits the next caller
        await second.stop()
        assert server.metrics.sessions_rejected == 1 and server.metrics.sessions_total == 2


@pytest.mark.asyncio
async def test_interrupt_emotion_and_speak(engine, speech_wav):
    silence = np.zeros(VOICE_RATE * 10, np.int16)
    async with serving(engine) as (url, server):
        caller = LiveCaller(url, silence, source="agent")
        await caller.start()
        call = server.calls[caller.session_id]
        at_interrupt = {}
        interrupt = call.interrupt

        def interrupt_and_look():  # what the call holds just before and just after the barge-in
            pos = call.voice.pos
            at_interrupt.update(shown=call.anchor[0], unplayed=call.content.read(pos, call.content.end - pos))
            interrupt()
            at_interrupt.update(frame=call.interrupts[-1]["frame"], fed=call.audio_in.fed,
                                fed_ahead=call.speech.fed_ahead, after=call.content.read(pos, call.content.end - pos))

        call.interrupt = interrupt_and_look
        with pytest.raises(ActorcastError, match="400: unknown emotion"):
            await caller.post(f"/calls/{caller.session_id}/emotion", json={"emotion": "bored"})
        await caller.post(f"/calls/{caller.session_id}/emotion", json={"emotion": "happy"})
        def emotion() -> int:  # the session's emotion as the motion stage (in its worker process) holds it
            saved = _loads(engine.motion.submit("snapshot", call.session.session_id).result())
            return int(saved["stream"]["emotion"][0])

        await wait_for(lambda: emotion() == 1, 30.0)  # EMOTIONS index of "happy" (applied in order with the motion
        #                                               stage's work)
        queued = await caller.post(f"/calls/{caller.session_id}/speak", data=speech_wav.read_bytes())
        assert abs(queued["queued_s"] - 6.0) < 0.05
        await asyncio.sleep(2.0)
        caller.send({"type": "emotion", "emotion": "sad"})
        caller.send({"type": "interrupt"})
        t_interrupt = time.time()
        await wait_for(lambda: call.interrupts and call.interrupts[0]["idle_wall_ms"] is not None, 30.0)
        await asyncio.sleep(1.0)
        await wait_for(lambda: emotion() == 2, 30.0)  # "sad", switched over the data channel
        caller.send({"type": "nonsense"})
        await asyncio.sleep(0.3)
        await caller.stop()
    acks = [m for m in caller.rec.messages if m["type"] == "ack"]
    assert [a["op"] for a in acks] == ["emotion", "interrupt"]
    assert any(m["type"] == "error" and "unknown control message" in m["error"] for m in caller.rec.messages)
    # the first idle frame is a chunk start after what was on screen, and it was shown (idle_wall_ms measured)
    session = call.session
    assert at_interrupt["frame"] % session.chunk_frames == 0 and at_interrupt["frame"] > at_interrupt["shown"]
    assert call.interrupts[0]["idle_wall_ms"] is not None and not call.speech.queue
    # the silence that makes that frame went in at once, not in real time (bench/live.py measures how fast the
    # avatar is idle); the feeder then skipped the 20 ms slots that silence had filled
    needed = (at_interrupt["frame"] + session.chunk_frames + session.lookahead) * SAMPLES_PER_FRAME
    assert at_interrupt["fed"] >= needed and at_interrupt["fed_ahead"] > 0
    assert call.speech.fed_ahead == 0
    # the voice goes quiet at once: the speech fed but not yet played became silence
    assert np.abs(at_interrupt["unplayed"]).max() > 1000 and not at_interrupt["after"].any()
    # and so the caller heard speech before the interrupt and silence at the end
    before = [b for b, t in zip(caller.rec.voice, caller.rec.voice_t) if t < t_interrupt][-25:]
    assert np.abs(np.concatenate(before)).mean() > 100
    assert np.abs(np.concatenate(list(caller.rec.voice)[-25:])).mean() < 5


@pytest.mark.asyncio
async def test_vanished_peer_frees_session_and_actors(engine, speech_wav, caplog):
    caplog.set_level(logging.INFO, logger="actorcast.streaming.peer")
    async with serving(engine) as (url, server):
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen([sys.executable, "-m", "actorcast.cluster.cli", "call", url, "--audio", str(speech_wav),
                                 "--seconds", "30"], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            await wait_for(lambda: server.calls and next(iter(server.calls.values())).frames_sent > 25, 30.0)
            call = next(iter(server.calls.values()))
            sid = call.session.session_id
            assert engine.shards[0].submit("has_session", sid).result()
            proc.send_signal(signal.SIGKILL)  # no goodbye: like a closed laptop lid or a dropped network
            await wait_for(lambda: not server.calls, 60.0)  # a hang guard: freeing takes IDLE_TIMEOUT_S
        finally:
            proc.kill()
            proc.wait()
        assert "nothing from the caller" in caplog.text  # the watchdog noticed the silence and closed the call
        assert not engine.shards[0].submit("has_session", sid).result()
        with pytest.raises(InputError, match="has no session"):
            engine.motion.submit("snapshot", sid).result()


@pytest.mark.asyncio
async def test_a_dead_stage_worker_ends_its_call_with_one_line_and_frees_the_slot(engine, speech_wav, caplog):
    """The motion stage's worker process dies mid-call: the call ends, the caller is told in one line, its slot is
    free, and the next call is served by a new worker."""
    caplog.set_level(logging.INFO, logger="actorcast.streaming.peer")
    pcm = decode_audio_48k(speech_wav.read_bytes())
    async with serving(engine, max_sessions=1) as (url, server):
        caller = LiveCaller(url, pcm)
        await caller.start()
        await wait_for(lambda: server.calls and next(iter(server.calls.values())).frames_sent > 10, 30.0)
        pid = engine.motion.pid
        os.kill(pid, signal.SIGKILL)
        await wait_for(lambda: not server.calls, 30.0)  # a hang guard
        await wait_for(lambda: any(m["type"] == "error" for m in caller.rec.messages), 5.0)
        await caller.stop()
        ended = [m["error"] for m in caller.rec.messages if m["type"] == "error"]
        assert ended == [f"the call ended: the motion stage's worker process ended (exit code -{signal.SIGKILL})"
                         "; the calls it served are over, new ones get a new worker"], ended
        assert not any(r.exc_info for r in caplog.records)  # one line, no traceback
        again = LiveCaller(url, pcm)
        await again.start()
        await wait_for(lambda: server.calls and next(iter(server.calls.values())).frames_sent > 10, 60.0)
        await again.stop()
    assert engine.motion.pid not in (None, pid)


async def _play_chunks(late_s: dict[int, float], chunks: int, frames: int):
    """4-frame chunks put into an AvatarVideoTrack one every 160 ms, chunk k `late_s.get(k, 0)` s late, while
    `frames` frames are sent. Returns the track, each chunk's first-frame wait for its slot in ms (chunk -> ms)
    and the track's repeat count just before each chunk was put. Run it on a virtual clock (run_on_virtual_clock):
    the waits are then those of the track's schedule alone, whatever else the machine does."""
    from actorcast.streaming.tracks import AvatarVideoTrack

    sent = []
    track = AvatarVideoTrack(sent.append, chunk_frames=4)
    image = np.zeros((16, 16, 3), np.uint8)
    put_at, repeated_before = {}, {}

    async def produce():
        t0 = time.monotonic()
        for k in range(chunks):
            await asyncio.sleep(max(0.0, t0 + 0.16 * k + late_s.get(k, 0.0) - time.monotonic()))
            repeated_before[k] = track.repeated
            put_at[k] = time.time()
            track.put(4 * k, np.stack([image] * 4), False)

    producer = asyncio.create_task(produce())
    while len(sent) < frames:
        await track.recv()
    await producer
    t_sent = {s.index: s.t_sent for s in sent if s.index is not None}
    waits = {k: (t_sent[4 * k] - t) * 1000 for k, t in put_at.items() if 4 * k in t_sent}
    return track, waits, repeated_before


def _play_on_virtual_clock(monkeypatch, late_s: dict[int, float], chunks: int, frames: int):
    """_play_chunks with this test file's and the track's clocks on one virtual clock."""
    from actorcast.streaming import tracks

    return run_on_virtual_clock(lambda: _play_chunks(late_s, chunks, frames), monkeypatch,
                                tracks, sys.modules[__name__])


def test_video_track_schedule_follows_the_source_and_drains_back(monkeypatch):
    """A chunk that comes 150 ms late moves the 25 fps schedule later; once chunks are on time again the
    schedule drains back, so the first frame of each chunk stops waiting in the buffer for its slot."""
    track, by_chunk, _ = _play_on_virtual_clock(monkeypatch, {3: 0.15}, chunks=25, frames=96)  # 4 s of chunks
    waits = [by_chunk[k] for k in sorted(by_chunk)]
    assert len(waits) >= 20 and track.repeated == 3, (waits, track.repeated)  # 150 ms late: 30 ms waited, then
    #                                                                       one repeat per 40 ms slot missed
    assert max(waits[4:8]) > 60, waits  # behind after the late chunk: on-time chunks waited for their slots
    assert max(waits[-6:]) < 30, waits  # drained back: each chunk's first frame goes out soon after it comes
    assert all(later <= earlier + 0.01 for earlier, later in zip(waits[4:], waits[5:])), waits  # draining: no
    #                                                                 chunk waits longer than the one before it


def test_video_track_keeps_a_margin_that_rides_out_a_late_chunk(monkeypatch):
    """Sending starts with the first frame, so once the schedule has drained back each chunk's first frame waits
    no more than target_wait_s (5 ms) for its slot, and a chunk that then comes 25 ms late goes out without a
    repeated frame (the track waits up to 30 ms for a frame that is due)."""
    # chunk 1 comes 100 ms late (the schedule follows, then drains back), chunk 14 25 ms
    track, waits, repeated_before = _play_on_virtual_clock(monkeypatch, {1: 0.1, 14: 0.025}, chunks=18, frames=70)
    assert max(waits[k] for k in (2, 3)) > 60, sorted(waits.items())  # behind after the late chunk
    assert all(0 <= waits[k] <= 6.0 for k in (11, 12, 13)), sorted(waits.items())  # drained to the margin at most
    assert track.repeated == repeated_before[8], (track.repeated, repeated_before)  # none from chunk 8 on


@pytest.mark.asyncio
async def test_call_cli_names_every_figure_with_its_unit(engine, speech_wav):
    """`actorcast call --json` gives each figure once, under a key that ends in its unit; the printed table gives
    the same figures with unit and meaning. No absolute timestamps (server_ms) and no second degraded count."""
    from actorcast.streaming.figures import FIGURES

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    async with serving(engine) as (url, server):
        outputs = []
        for flag in (["--json"], []):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "actorcast.cluster.cli", "call", url, "--audio", str(speech_wav), "--seconds", "2",
                *flag, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await proc.communicate()
            assert proc.returncode == 0, err.decode()[-2000:]
            outputs.append(out.decode())
    report, table = json.loads(outputs[0]), outputs[1].splitlines()
    assert set(report) == {f.key for f in RECEIVER_FIGURES + SERVER_FIGURES} - {"recorded_frames"}
    assert "server_ms" not in outputs[0] and "session" not in {k for k, v in report.items() if isinstance(v, dict)}
    suffix = {"ms": "_ms", "s": "_s", "frames": "_frames", "frames/s": "_fps"}
    for key in report:
        unit = FIGURES[key].unit
        assert unit == "" or key.endswith(suffix[unit]), (key, unit)
    assert report["received_frames"] > 0 and report["sent_frames"] > 0
    assert [line.split()[0] for line in table] == list(report)  # the same figures, in the same order
    row = next(line for line in table if line.startswith("sent_degraded_frames "))
    assert " frames " in row and "fewer denoising steps" in row


def test_offer_takes_any_identity_number():
    from actorcast.models.data.seeds import MAX_SEED
    from actorcast.streaming.app import call_options

    assert call_options({"identity_seed": 123456789}).identity_seed == 123456789
    assert call_options({"identity_seed": MAX_SEED}).identity_seed == MAX_SEED
    for bad in (-1, MAX_SEED + 1, 1.5, True, "7"):
        with pytest.raises(ActorcastError, match="identity_seed"):
            call_options({"identity_seed": bad})


def test_metrics_use_one_prometheus_registry_per_server():
    from prometheus_client import REGISTRY
    from prometheus_client.parser import text_string_to_metric_families

    from actorcast.streaming.metrics import Metrics

    a, b = Metrics(), Metrics()  # two servers in one process
    a.session_admitted()
    a.frame_sent(True, 30.0)
    a.frame_sent(False, None)
    b.session_rejected()
    families = {f.name: f for f in text_string_to_metric_families(a.render().decode())}
    assert families["actorcast_frames_sent"].samples[0].value == 2
    assert families["actorcast_frames_degraded"].samples[0].value == 1
    buckets = {s.labels["le"]: s.value for s in families["actorcast_frame_latency_ms"].samples
               if s.name.endswith("_bucket")}
    assert buckets["25.0"] == 0 and buckets["50.0"] == 1 and buckets["+Inf"] == 1
    assert (a.sessions_total, a.sessions_rejected, b.sessions_total, b.sessions_rejected) == (1, 0, 0, 1)
    assert REGISTRY.get_sample_value("actorcast_frames_sent_total") is None  # nothing in the global registry


def test_speech_handed_over_in_pieces_keeps_each_blocks_own_time(monkeypatch):
    """A stream of 20 ms pieces at 24 kHz resampled to 48 kHz does not fall on block boundaries: each block is
    stamped with the time its first sample came, not the time of the stream's first piece (which made the
    measured latency grow with the length of an utterance)."""
    from actorcast.streaming import speech_feed, tracks

    clock = iter(np.arange(0.0, 10.0, 0.02))
    monkeypatch.setattr(speech_feed.time, "time", lambda: float(next(clock)))
    feed = speech_feed.SpeechFeed(audio_in=None)
    piece = np.ones(tracks.VOICE_BLOCK - 37, np.int16)  # always a little short of a block
    for _ in range(50):
        feed.speak(piece, final=False)
    stamps = [t for block, t in feed.queue]
    assert len(stamps) == 48
    assert stamps == sorted(stamps) and stamps[-1] >= 0.9  # the 48th block began ~0.94 s in, not at 0
    assert all(0 < later - earlier < 0.05 for earlier, later in zip(stamps, stamps[1:]))
