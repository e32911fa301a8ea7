"""`actorcast call` and its LiveCaller: the A/V offset measured as the call goes, figures that count the same frames
on both sides, the token from the environment (real servers and aiortc peers on 127.0.0.1)."""

import asyncio
import json
import os
import sys

import numpy as np
import pytest

from actorcast.actors.engine import Engine
from actorcast.streaming.app import LIVE_STAGE_THREADS
from actorcast.streaming.client import LiveCaller
from actorcast.streaming.figures import percentile, percentiles
from tests.live_server import ROOT, TOKEN, serving, wait_for


@pytest.fixture(scope="module")
def engine():
    with Engine(stage_threads=LIVE_STAGE_THREADS) as e:
        yield e


def test_latency_percentiles_interpolate_and_are_none_when_empty():
    """The one percentile the call's, the Pipecat and LiveKit avatars' and the voice clock's figures share."""
    assert percentiles([]) == {"p50": None, "p95": None}
    assert percentiles([4.0, 1.0, 3.0, 2.0]) == {"p50": 2.5, "p95": pytest.approx(3.85)}
    assert percentile((0.1, 0.2, 0.3), 50) == 0.2 and percentile((), 95) is None


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
    from actorcast.models.media import write_wav
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


@pytest.mark.asyncio
async def test_call_takes_the_token_from_the_environment(engine, tmp_path):
    from actorcast.models.media import write_wav
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
