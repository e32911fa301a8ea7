"""The live-audio core of one Session, shared by every live path: the WebRTC call (streaming/peer.py `LiveCall`),
Pipecat's ActorcastVideoService (streaming/pipecat.py) and LiveKit's ActorcastVideoGenerator
(streaming/livekit_video.py); docs/ARCHITECTURE.md "A live call, through the files".

`LiveAudio` is what they all do the same way:

    audio in (the caller's microphone, or speech queued on the SpeechFeed: 20 ms per 20 ms, silence when the
    agent is quiet) -> AudioInput -> ContentAudio (the voice by content position) and Session.feed (16 kHz)
    interrupt: the queued speech dropped, the voice not yet sent silenced, the pictures skipped to the first
        frame made from silence only (where the feed is the audio, that silence fed at once)
    picture_sent: the counts, the latencies and each interrupt's return to idle

What carries the pictures and the voice out differs. A WebRTC call's tracks are pulled by aiortc: AvatarVideoTrack
schedules the pictures and VoiceTrack follows them (streaming/tracks.py). An agent framework pushes frames into its
transport, so `LiveVoice` takes the agent's speech at any rate (VoiceResampler) and paces both with the voice as
the clock (streaming/voice_clock.py):

    Session.frames() -> VoiceClock -> paced_slots: every 40 ms the picture of frame n and 20 ms of its voice,
                                       20 ms later the next 20 ms

Time: session frame n shows the fed audio [640 n, 640 n + 640) at 16 kHz, [1920 n, 1920 n + 1920) at 48 kHz (the
content position). Between utterances the session is fed silence and the avatar idles.
"""

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Callable

import av
import numpy as np

from actorcast.models.timebase import FPS, SAMPLES_PER_FRAME
from actorcast.streaming.figures import percentiles
from actorcast.streaming.speech_feed import SpeechFeed
from actorcast.streaming.tracks import (BLOCK_S, STALL_S, VOICE_BLOCK, VOICE_PER_FRAME, VOICE_RATE, AudioInput,
                                        ContentAudio)
from actorcast.streaming.voice_clock import SLOT_S, Slot, VoiceClock

MAX_CHANNELS = 8
RATES = (4_000, 384_000)  # sample rates accepted, Hz
# A frame's sound goes out this long after its picture (voice_clock.py): a receiver decodes video later than
# audio, and with 10 ms an aiortc client on loopback hears each sound within a few ms of its picture.
VOICE_LAG = VOICE_BLOCK // 2  # 10 ms in 48 kHz samples
VOICE_LAG_S = VOICE_LAG / VOICE_RATE
HALF_S = BLOCK_S  # a slot's second 20 ms voice frame goes out this long after its first
KEEP_FIGURES = 1500  # latencies kept for the percentiles: the last minute of pictures
MAX_WAITING_FRAMES = 2 * FPS  # frames generated and not sent that the voice clock keeps: past that, the oldest go
#                               (a consumer that stopped taking them, as LiveKit's runner while it publishes)


def audio_problem(audio, rate, channels) -> str | None:
    """What makes a piece of agent audio unusable (None if it is usable): 16-bit PCM bytes, interleaved
    `channels`, at `rate` Hz."""
    if not isinstance(audio, (bytes, bytearray, memoryview)):
        return f"its audio is {type(audio).__name__}, not bytes of 16-bit PCM"
    if not isinstance(channels, int) or not 1 <= channels <= MAX_CHANNELS:
        return f"num_channels={channels!r}; give 1..{MAX_CHANNELS}"
    if not isinstance(rate, int) or not RATES[0] <= rate <= RATES[1]:
        return f"sample_rate={rate!r}; give the rate in Hz, {RATES[0]}..{RATES[1]}"
    if not len(audio):
        return "it is empty"
    if len(audio) % (2 * channels):
        return f"{len(audio)} bytes is not a whole number of 16-bit samples for {channels} channel(s)"
    return None


class VoiceResampler:
    """Agent audio (16-bit PCM at any rate, interleaved channels) -> 48 kHz mono int16, one stream at a time.

    A resampler holds back the last few samples of each frame for its filter (24 kHz: 32 of the first 20 ms
    frame's 960). Cut into 20 ms blocks, every block would then wait for the next frame to be complete, 20 ms
    of latency for a fraction of a millisecond of filter. So a stream starts with that many samples of silence:
    from then on each frame's output ends where its input ends."""

    def __init__(self):
        self.rate: int | None = None
        self.resampler: av.AudioResampler | None = None

    def __call__(self, audio: bytes, rate: int, channels: int) -> list[np.ndarray]:
        """The 48 kHz blocks of one frame; a change of rate flushes the stream before it (the tail comes first)."""
        out = self.flush() if rate != self.rate else []
        first = self.resampler is None
        if first:
            self.rate, self.resampler = rate, av.AudioResampler(format="s16", layout="mono", rate=VOICE_RATE)
        pcm = np.frombuffer(audio, np.int16).reshape(-1, channels)  # (samples, channels)
        mono = pcm[:, 0] if channels == 1 else pcm.mean(axis=1).round().astype(np.int16)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(mono[None]), format="s16", layout="mono")
        frame.sample_rate = rate
        blocks = [o.to_ndarray().reshape(-1) for o in self.resampler.resample(frame)]
        if first:  # the filter's hold, as silence in front (class docstring)
            held = len(mono) * VOICE_RATE // rate - sum(len(b) for b in blocks)
            if held > 0:
                blocks.insert(0, np.zeros(held, np.int16))
        return out + blocks

    def flush(self) -> list[np.ndarray]:
        """The samples the resampler still holds (end of an utterance); the next frame starts a new stream."""
        if self.resampler is None:
            return []
        tail = [o.to_ndarray().reshape(-1) for o in self.resampler.resample(None)]
        self.rate, self.resampler = None, None
        return tail

    def reset(self) -> None:
        self.rate, self.resampler = None, None


class WatchedFeed(SpeechFeed):
    """A SpeechFeed that also reports each block of speech it feeds (its 48 kHz content position), so that a
    service can tell the speech it was handed from the silence the feed put in while the agent was quiet."""

    def __init__(self, audio_in: AudioInput, on_mark=None, on_speech: Callable[[int], None] | None = None):
        super().__init__(audio_in, on_mark)
        self.on_speech = on_speech

    def _next_block(self) -> np.ndarray:
        block = super()._next_block()
        pos = self.audio_in.content.end  # where this block goes in (it is pushed after this returns)
        if self.on_speech is not None and self.received and self.received[-1][0] == pos:  # a block of speech
            self.on_speech(pos)
        return block


class LiveAudio:
    """One Session's live audio, whatever carries the pictures and the voice out (module docstring).

    `attach(session)` wires the session in; until then only the figures exist. `pictures`: what sends the
    session's frames (a VoiceClock, or a call's AvatarVideoTrack), told by `skip_until(frame)` where an interrupt
    resumes. voice_at(): the content position (48 kHz) of the first voice not yet sent, None before any.
    on_mark(content position, marker): markers queued between speech (`feed.mark`) as the feed reaches them;
    on_speech(content position): each 20 ms block of speech as it is fed.
    """

    def __init__(self, voice_at: Callable[[], int | None], on_mark=None,
                 on_speech: Callable[[int], None] | None = None):
        self.voice_at, self.on_mark, self.on_speech = voice_at, on_mark, on_speech
        self.session = self.content = self.audio_in = self.feed = self.pictures = None
        self.pictures_sent = self.repeated_frames = self.degraded_frames = 0
        self.speech_end = 0  # content position after the last speech fed
        self.interrupts: list[dict] = []
        self.added_ms: collections.deque[float] = collections.deque(maxlen=KEEP_FIGURES)  # fed -> sent
        self.input_ms: collections.deque[float] = collections.deque(maxlen=KEEP_FIGURES)  # handed over -> sent

    def attach(self, session) -> None:
        self.session = session
        self.content = ContentAudio()
        self.audio_in = AudioInput(session.feed, self.content)
        self.feed = WatchedFeed(self.audio_in, on_mark=self.on_mark, on_speech=self.on_speech)

    def interrupt(self, pts: int | None = None, preroll: bool = True) -> int:
        """Barge-in: drop the queued speech, silence the voice not yet sent, hold the picture until the first
        frame made from silence only (returned). pts: the media clock now in ns, for interrupt_idle_media_ms
        (None: not measured). preroll: the feed is the session's audio, so the silence that follows is known and
        enough of it to generate that first idle chunk is fed at once (SpeechFeed.preroll_silence) instead of in
        real time; a caller's microphone keeps feeding as it comes."""
        self.feed.clear()
        idle_from = self.session.interrupt()
        self.pictures.skip_until(idle_from)
        voice_at = self.voice_at()
        if voice_at is not None:
            self.content.silence_from(voice_at)
        if preroll:
            self.feed.preroll_silence((idle_from + self.session.chunk_frames + self.session.lookahead)
                                      * SAMPLES_PER_FRAME)
        self.interrupts.append({"frame": idle_from, "voice_at": voice_at, "pts": pts, "t": time.time(),
                                "idle_media_ms": None, "idle_wall_ms": None})
        return idle_from

    def queued_speech_end(self) -> int:
        """The content position (48 kHz) after the last speech fed so far."""
        if self.feed.received:
            self.speech_end = max(self.speech_end, self.feed.received[-1][0] + VOICE_BLOCK)
        return self.speech_end

    def picture_sent(self, index: int | None, degraded: bool, pts: int | None = None,
                     t: float | None = None) -> float | None:
        """Count a picture sent (index None: the last one again) at media time `pts` (ns, or None) and wall time
        `t` (now when None), and time it; returns its added latency in ms (None when not known)."""
        self.pictures_sent += 1
        self.repeated_frames += int(index is None)
        self.degraded_frames += int(degraded)
        return None if index is None else self._measure(index, pts, time.time() if t is None else t)

    def _measure(self, index: int, pts: int | None, now: float) -> float | None:
        """Latencies of a picture sent at wall time `now`, and the return to idle after each interrupt."""
        start = index * VOICE_PER_FRAME
        self.queued_speech_end()  # before the blocks already shown are let go
        received = self.feed.received
        while received and received[0][0] + VOICE_BLOCK <= start:
            received.popleft()
        if received and received[0][0] <= start:  # a picture of speech: since the frame that brought it came
            self.input_ms.append((now - received[0][1]) * 1000.0)
        added = None
        arrival = self.audio_in.arrival(index)
        if arrival is not None:
            added = (now - arrival) * 1000.0
            self.added_ms.append(added)
        for event in self.interrupts:
            if event["idle_wall_ms"] is None and index >= event["frame"]:
                event["idle_wall_ms"] = (now - event["t"]) * 1000.0
                if pts is not None and event["pts"] is not None:
                    event["idle_media_ms"] = (pts - event["pts"]) / 1e6
        return added


class LiveVoice(LiveAudio):
    """LiveAudio for an agent framework's transport, which is pushed to: the agent's speech at any rate in
    (`take`), its pictures and voice out on the voice clock (`paced_slots`), frame n's sound `lag` (VOICE_LAG)
    after its picture. `attach(session)` also starts the clock."""

    def __init__(self, on_mark=None, on_speech: Callable[[int], None] | None = None, lag: int = VOICE_LAG):
        super().__init__(lambda: self.voice_end, on_mark, on_speech)
        self.lag = lag
        self.clock = None
        self.resample = VoiceResampler()
        self.voice_frames = self.bad_audio_frames = 0
        self.speech_queued = 0  # 48 kHz samples of speech handed to the feed so far
        self.voice_end = 0  # content position (48 kHz) after the last voice read to send

    def attach(self, session) -> None:
        super().attach(session)
        self.clock = self.pictures = VoiceClock(self.content, self.audio_in.arrival, lag=self.lag)

    # ---- speech in ----------------------------------------------------------------------------------------

    def take(self, audio, rate, channels) -> str | None:
        """Queue a piece of agent speech (16-bit PCM); what is wrong with it instead, when it is unusable."""
        problem = audio_problem(audio, rate, channels)
        if problem is not None:
            self.bad_audio_frames += 1
            return problem
        self.speak(self.resample(bytes(audio), rate, channels), final=False)
        return None

    def speak(self, blocks: list[np.ndarray], final: bool) -> None:
        if blocks:
            pcm = np.concatenate(blocks)
            self.feed.speak(pcm, final=False)
            self.speech_queued += len(pcm)
        if final:
            self.feed.flush()

    def end_speech(self) -> None:
        """The utterance ends here: what the resampler holds and the last partial block go in."""
        self.speak(self.resample.flush(), final=True)

    def interrupt(self, pts: int | None = None, preroll: bool = True) -> int:
        """LiveAudio.interrupt, with the resampler's held samples dropped too."""
        self.resample.reset()
        return super().interrupt(pts, preroll)

    # ---- pictures and voice out ---------------------------------------------------------------------------

    async def run_frames(self) -> None:
        """Session frames -> the voice clock, until the session ends (its ActorcastError, if it fails)."""
        async for vf in self.session.frames():
            self.clock.put(vf.first_frame, vf.frames, vf.degraded)
            waiting = self.clock.frames
            for index in sorted(waiting)[:max(0, len(waiting) - MAX_WAITING_FRAMES)]:
                del waiting[index]

    async def paced_slots(self, may_move: Callable[[int, int], bool]) -> AsyncIterator[tuple[Slot, int]]:
        """Every 40 ms a slot of the voice clock, twice: (slot, 0) when its picture and first 20 ms of voice are
        due, (slot, 1) 20 ms later for its second, on a steady clock. may_move(lo, hi): whether the clock may
        skip or wait over content [lo, hi) (VoiceClock.next_slot)."""
        t0, k = time.monotonic(), 0
        while True:
            wait = self.clock.wait_s(may_move)  # over silence: into the phase where frames are due
            if wait > 0:
                await asyncio.sleep(wait)
            t0 += wait  # late (< 0): the next slots come sooner
            slot = self.clock.next_slot(may_move)
            yield slot, 0
            await asyncio.sleep(max(0.0, t0 + k * SLOT_S + HALF_S - time.monotonic()))
            yield slot, 1
            k += 1
            delay = t0 + k * SLOT_S - time.monotonic()
            if delay < -STALL_S:
                t0, k = time.monotonic(), 0
            await asyncio.sleep(max(0.0, delay))

    def voice(self, start: int | None) -> np.ndarray:
        """The 20 ms of voice from content position `start` (silence for None), read when it goes out."""
        if start is None:
            return np.zeros(VOICE_BLOCK, np.int16)
        block = self.content.read(start, VOICE_BLOCK)
        self.voice_end = start + len(block)
        return block

    # ---- figures ------------------------------------------------------------------------------------------

    def stats(self) -> dict:
        """The figures so far. Latencies in ms, p50 and p95 over the last 1500 pictures:
        added_latency_ms: from when a frame's sound was fed (due to be heard, were there no avatar) to its
        picture sent; input_to_output_ms, over pictures of speech: from the frame that brought the sound to
        its picture sent (includes the wait in the real-time queue when the agent is faster than real time).
        interrupt_idle_media_ms: the service's clock time from each interruption to the first idle picture."""
        return {"sent_frames": self.pictures_sent, "sent_voice_frames": self.voice_frames,
                "repeated_frames": self.repeated_frames, "degraded_frames": self.degraded_frames,
                "bad_audio_frames": self.bad_audio_frames,
                "added_latency_ms": percentiles(self.added_ms), "input_to_output_ms": percentiles(self.input_ms),
                "interrupt_idle_media_ms": [e["idle_media_ms"] for e in self.interrupts],
                "queued_speech_s": self.feed.queued_s() if self.feed is not None else 0.0}
