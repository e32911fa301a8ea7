"""The live-audio core (streaming/live_audio.py) that the WebRTC call, the Pipecat service and the LiveKit avatar
share, frames in and figures out with a fake session and a fake clock (no network, no models): an interrupt and
the latency bookkeeping work the same for all three."""

import types

import numpy as np
import pytest

from actorcast.models.timebase import SAMPLES_PER_FRAME
from actorcast.streaming import live_audio, speech_feed, tracks
from actorcast.streaming.live_audio import LiveAudio, LiveVoice
from actorcast.streaming.tracks import VOICE_BLOCK, VOICE_PER_FRAME


class FakeSession:
    """What the core needs of a Session: it records what it is fed; an interrupt resumes at frame `idle_from`."""

    chunk_frames, lookahead = 4, 2

    def __init__(self, idle_from: int = 12):
        self.idle_from, self.fed = idle_from, 0

    def feed(self, pcm: np.ndarray) -> None:
        self.fed += len(pcm)

    def interrupt(self) -> int:
        return self.idle_from


class Pictures:
    """Stands in for the AvatarVideoTrack or VoiceClock that sends the pictures."""

    def __init__(self):
        self.skipped = []

    def skip_until(self, frame_index: int) -> None:
        self.skipped.append(frame_index)


@pytest.fixture
def clock(monkeypatch) -> list[float]:
    """The wall clock of the core and of the tracks it feeds, set by the test: clock[0] seconds."""
    now = [100.0]
    fake = types.SimpleNamespace(time=lambda: now[0], monotonic=lambda: now[0])
    monkeypatch.setattr(live_audio, "time", fake)
    monkeypatch.setattr(tracks, "time", fake)
    monkeypatch.setattr(speech_feed, "time", fake)
    return now


def call_core(session) -> tuple[LiveAudio, dict]:
    """The core as a WebRTC call runs it: the voice track's read position given from outside."""
    voice = {"pos": None}
    live = LiveAudio(voice_at=lambda: voice["pos"])
    live.attach(session)
    live.pictures = Pictures()
    return live, voice


def speech(seconds: float) -> np.ndarray:
    return np.full(int(seconds * tracks.VOICE_RATE), 3000, np.int16)


@pytest.mark.parametrize("path", ["call-mic", "call-agent", "agent-framework"])
def test_an_interrupt_drops_the_speech_silences_the_voice_and_skips_the_pictures(clock, path):
    session = FakeSession(idle_from=12)
    if path == "agent-framework":
        live = LiveVoice()
        live.attach(session)
        live.voice(VOICE_BLOCK * 5)  # the voice read up to here to send
        voice_at = VOICE_BLOCK * 6
    else:
        live, voice = call_core(session)
        voice["pos"] = voice_at = VOICE_BLOCK * 6
    live.audio_in.push_voice(speech(0.4))  # 20 blocks fed, 14 of them not sent yet
    live.feed.speak(speech(1.0))  # queued, not fed
    fed_before = live.audio_in.fed
    assert live.interrupt(pts=None, preroll=path != "call-mic") == 12
    # the pictures resume at the idle frame: the call's video track, or the voice clock
    assert (live.clock.resume_at == 12 if path == "agent-framework" else live.pictures.skipped == [12])
    assert not live.feed.queue
    assert live.content.read(0, voice_at).all() and not live.content.read(voice_at, VOICE_BLOCK * 14).any()
    needed = (12 + session.chunk_frames + session.lookahead) * SAMPLES_PER_FRAME
    if path == "call-mic":  # the microphone goes on feeding in real time: nothing is fed ahead
        assert live.audio_in.fed == fed_before and live.feed.fed_ahead == 0
    else:  # the silence that follows went in at once, enough for the first idle chunk
        assert live.audio_in.fed >= needed and live.feed.fed_ahead > 0
    assert live.interrupts == [{"frame": 12, "voice_at": voice_at, "pts": None, "t": 100.0,
                                "idle_media_ms": None, "idle_wall_ms": None}]


def test_the_voice_is_left_alone_before_any_was_sent(clock):
    live, _ = call_core(FakeSession())
    live.audio_in.push_voice(speech(0.2))
    live.interrupt(preroll=False)
    assert live.content.read(0, live.content.end).all()


def test_latencies_counts_and_the_return_to_idle_are_measured_once(clock):
    """Each picture's added latency is its send time minus its audio's arrival; repeats and degraded pictures
    are counted; an interrupt's return to idle is timed at the first picture from its idle frame on, in wall time
    and, where the path has one, in media time."""
    live, _ = call_core(FakeSession(idle_from=8))
    for k in range(10):  # frame k's audio arrives at 100 + 0.04 k
        clock[0] = 100.0 + 0.04 * k
        live.audio_in.push_voice(np.zeros(VOICE_PER_FRAME, np.int16))
    assert live.picture_sent(0, False, t=100.25) == pytest.approx(250.0)
    assert live.picture_sent(None, True, t=100.29) is None  # the last picture again
    clock[0] = 101.0
    live.interrupt(pts=None, preroll=False)
    assert live.picture_sent(5, True, t=101.1) == pytest.approx(1100 - 200)
    assert live.picture_sent(8, False, t=101.3) == pytest.approx(1300 - 320)
    assert live.picture_sent(9, False, t=101.5) == pytest.approx(1500 - 360)  # later pictures leave it alone
    assert live.interrupts[0]["idle_wall_ms"] == pytest.approx(300.0) and live.interrupts[0]["idle_media_ms"] is None
    assert (live.pictures_sent, live.repeated_frames, live.degraded_frames) == (5, 1, 2)
    assert list(live.added_ms) == pytest.approx([250.0, 900.0, 980.0, 1140.0])

    clock[0] = 100.0
    agent = LiveVoice()  # the agent frameworks give their media clock too
    agent.attach(FakeSession(idle_from=0))
    agent.audio_in.push_voice(np.zeros(VOICE_PER_FRAME, np.int16))
    agent.interrupt(pts=2_000_000_000)
    clock[0] = 100.5
    agent.picture_sent(0, False, pts=2_120_000_000)
    assert agent.interrupts[0]["idle_media_ms"] == pytest.approx(120.0)
    assert agent.interrupts[0]["idle_wall_ms"] == pytest.approx(500.0)
    assert agent.stats()["interrupt_idle_media_ms"] == [pytest.approx(120.0)]


@pytest.mark.parametrize("rate", [16_000, 22_050, 24_000, 44_100, 48_000])
def test_each_20ms_frame_of_agent_speech_completes_its_48k_block(rate):
    """A resampler holds back a few samples of each frame; VoiceResampler starts the stream with as much silence,
    so every 20 ms frame handed over ends a whole 20 ms block at 48 kHz (no block waits for the next frame), and
    what follows is the plain resampler's output, sample for sample."""
    import av

    from actorcast.streaming.live_audio import VoiceResampler

    step = rate // 50
    pcm = (np.sin(np.arange(step * 10) * 0.05) * 8000).astype(np.int16)
    ours = VoiceResampler()
    outs = [np.concatenate(ours(pcm[i:i + step].tobytes(), rate, 1)) for i in range(0, len(pcm), step)]
    assert [len(o) for o in outs] == [960] * 10
    plain = av.AudioResampler(format="s16", layout="mono", rate=48_000)
    ref = []
    for i in range(0, len(pcm), step):
        frame = av.AudioFrame.from_ndarray(pcm[None, i:i + step], format="s16", layout="mono")
        frame.sample_rate = rate
        ref += [o.to_ndarray().reshape(-1) for o in plain.resample(frame)]
    ref = np.concatenate(ref)
    held = 9600 - len(ref)
    ours = np.concatenate(outs)
    assert not ours[:held].any() and np.array_equal(ours[held:], ref)


def test_speech_after_a_starved_tick_goes_in_at_once_and_the_ticks_take_its_phase(monkeypatch):
    """The feed's ticks are 20 ms apart; here 1000 s, so that only the speech's own arrival can feed it early."""
    import asyncio

    monkeypatch.setattr(speech_feed, "BLOCK_S", 1000.0)
    content = tracks.ContentAudio()
    fed = []
    feed = speech_feed.SpeechFeed(tracks.AudioInput(fed.append, content))

    async def scenario():
        task = asyncio.create_task(feed.run())
        for _ in range(5):
            await asyncio.sleep(0)
        assert content.end == VOICE_BLOCK and not content.read(0, VOICE_BLOCK).any()  # a tick of silence, starved
        feed.speak(np.full(2 * VOICE_BLOCK, 1000, np.int16))  # two blocks of speech, handed over now
        for _ in range(20):
            await asyncio.sleep(0.001)
        in_now = content.end, content.read(VOICE_BLOCK, VOICE_BLOCK).copy()
        task.cancel()
        return in_now

    end, block = asyncio.run(scenario())
    assert end == 2 * VOICE_BLOCK and (block == 1000).all()  # the first speech block went in at once
    assert len(feed.queue) == 1  # the second waits for the next tick, a whole block later
