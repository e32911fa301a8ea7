"""The live-audio core of an agent framework's avatar: one Session driven by the agent's speech as it comes.

Pipecat's ActorcastVideoService (streaming/pipecat.py) and LiveKit's ActorcastVideoGenerator (streaming/livekit.py)
both run this; each adds its framework's frame types and what brackets an utterance (Pipecat's TTS frames,
LiveKit's AudioSegmentEnd):

    speech (16-bit PCM, any rate and channels) -> VoiceResampler -> 48 kHz mono
        -> SpeechFeed (20 ms per 20 ms; silence when the agent is quiet) -> AudioInput
        -> ContentAudio (the voice by content position) and Session.feed (16 kHz)
    Session.frames() -> VoiceClock -> paced_slots: every 40 ms the picture of frame n and 20 ms of its voice,
                                       20 ms later the next 20 ms

Time: session frame n shows the fed audio [640 n, 640 n + 640) at 16 kHz, [1920 n, 1920 n + 1920) at 48 kHz (the
content position). Frame n's sound goes out VOICE_LAG after its picture (voice_clock.py). Between utterances the
session is fed silence and the avatar idles, as on every other path. An interrupt drops the queued speech,
silences the voice not yet sent, and the pictures hold until the first frame made from silence only.
"""

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from actorcast.actors.framing import Framing
from actorcast.actors.reference import check_portrait, load_image
from actorcast.models.data.params import emotion_index
from actorcast.models.errors import ConfigError
from actorcast.models.timebase import FPS, SAMPLES_PER_FRAME
from actorcast.streaming.app import LIVE_STAGE_THREADS
from actorcast.streaming.figures import percentiles
from actorcast.streaming.tracks import VOICE_BLOCK, VOICE_PER_FRAME, VOICE_RATE, AudioInput, ContentAudio, SpeechFeed
from actorcast.streaming.voice_clock import Slot, VoiceClock

MAX_CHANNELS = 8
RATES = (4_000, 384_000)  # sample rates accepted, Hz
# A frame's sound goes out this long after its picture (voice_clock.py): a receiver decodes video later than
# audio. With Pipecat's live video shown as it comes the offset at an aiortc client on loopback (voice - picture
# arrival) was -1 to -6 ms with 10 ms here, +19 to +20 ms with 30 ms.
VOICE_LAG = VOICE_BLOCK // 2  # 10 ms in 48 kHz samples
VOICE_LAG_S = VOICE_LAG / VOICE_RATE
SLOT_S = 1.0 / FPS  # one picture and two 20 ms voice frames per slot
HALF_S = VOICE_BLOCK / VOICE_RATE
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
    """Agent audio (16-bit PCM at any rate, interleaved channels) -> 48 kHz mono int16, one stream at a time."""

    def __init__(self):
        self.rate: int | None = None
        self.resampler: av.AudioResampler | None = None

    def __call__(self, audio: bytes, rate: int, channels: int) -> list[np.ndarray]:
        """The 48 kHz blocks of one frame; a change of rate flushes the stream before it (the tail comes first)."""
        out = self.flush() if rate != self.rate else []
        if self.resampler is None:
            self.rate, self.resampler = rate, av.AudioResampler(format="s16", layout="mono", rate=VOICE_RATE)
        pcm = np.frombuffer(audio, np.int16).reshape(-1, channels)  # (samples, channels)
        mono = pcm[:, 0] if channels == 1 else pcm.mean(axis=1).round().astype(np.int16)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(mono[None]), format="s16", layout="mono")
        frame.sample_rate = rate
        return out + [o.to_ndarray().reshape(-1) for o in self.resampler.resample(frame)]

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


@dataclass(frozen=True)
class AvatarFace:
    """Who the avatar is: a built-in identity or a portrait (with its landmarks when framed), and how it feels."""

    identity: int | None
    portrait: np.ndarray | None  # (H, W, 3) uint8
    landmarks: np.ndarray | None  # (478, 2) in the portrait's pixels, from actors.framing (the photo rig)
    emotion: str
    seed: int


def face_of(identity: int | None = None, portrait: "Framing | np.ndarray | str | Path | None" = None,
            emotion: str = "neutral", seed: int = 0, landmarks: np.ndarray | None = None) -> AvatarFace:
    """Check the avatar's options (ConfigError or InputError saying what to give) before anything loads.

    portrait: a photo framed by actors.framing.frame_reference (animated by its own rig, models/photo_rig.py), or an
    (H, W, 3) uint8 picture or an image file, used as it is (with `landmarks`, in its pixels, when it was framed
    before: the rig animates it)."""
    emotion_index(emotion)  # ConfigError naming the emotions
    if identity is not None and portrait is not None:
        raise ConfigError("give an identity or a portrait, not both")
    if isinstance(portrait, Framing):
        portrait, landmarks = portrait.crop(), portrait.crop_landmarks()
    if isinstance(portrait, (str, Path)):
        portrait = load_image(portrait)
    portrait = None if portrait is None else check_portrait(portrait, "the portrait")
    return AvatarFace(identity, portrait, landmarks, emotion, seed)


def engine_args(weights: str | Path | None = None, preset: str = "tiny", use_ray: bool = False,
                address: str | None = None, shards: int = 1, size: int = 256) -> dict:
    """The Engine an avatar builds when none is given: in-process with the live call's stage threads, or on Ray
    (use_ray, address or shards > 1)."""
    ray = use_ray or address is not None or shards > 1
    return {"weights": weights, "preset": preset, "shards": shards, "use_ray": ray, "address": address,
            "size": size, "stage_threads": None if ray else LIVE_STAGE_THREADS}


async def build_engine(args: dict):
    """An Engine from engine_args, built off the event loop when in-process."""
    from actorcast.actors.engine import Engine

    # Ray joins from this thread (it installs signal handlers); in-process stages load in a worker thread
    return Engine(**args) if args["use_ray"] else await asyncio.to_thread(Engine, **args)


async def open_face(engine, face: AvatarFace):
    return await engine.open_session(reference=face.portrait, identity_seed=face.identity, emotion=face.emotion,
                                     seed=face.seed, landmarks=face.landmarks)


class LiveVoice:
    """The agent's speech into one Session, and its pictures and voice out on the voice clock, with the figures.

    `attach(session)` wires the session in; until then only the figures exist. on_mark(content position, marker):
    markers queued between speech (`feed.mark`) as the feed reaches them; on_speech(content position): each 20 ms
    block of speech as it is fed.
    """

    def __init__(self, on_mark=None, on_speech: Callable[[int], None] | None = None, lag: int = VOICE_LAG):
        self.on_mark, self.on_speech, self.lag = on_mark, on_speech, lag
        self.session = self.content = self.audio_in = self.feed = self.clock = None
        self.resample = VoiceResampler()
        self.pictures_sent = self.voice_frames = self.repeated_frames = self.degraded_frames = 0
        self.bad_audio_frames = 0
        self.speech_queued = 0  # 48 kHz samples of speech handed to the feed so far
        self.voice_end = 0  # content position (48 kHz) after the last voice read to send
        self.speech_end = 0  # content position after the last speech fed
        self.interrupts: list[dict] = []
        self.added_ms: collections.deque[float] = collections.deque(maxlen=KEEP_FIGURES)  # fed -> sent
        self.input_ms: collections.deque[float] = collections.deque(maxlen=KEEP_FIGURES)  # handed over -> sent

    def attach(self, session) -> None:
        self.session = session
        self.content = ContentAudio()
        self.audio_in = AudioInput(session.feed, self.content)
        self.feed = WatchedFeed(self.audio_in, on_mark=self.on_mark, on_speech=self.on_speech)
        self.clock = VoiceClock(self.content, self.audio_in.arrival, lag=self.lag)

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

    def interrupt(self, pts) -> int:
        """Barge-in: drop the queued speech, silence the voice not yet sent, hold the picture until the first
        frame made from silence only (returned). pts: the service's clock now, for interrupt_idle_media_ms."""
        self.feed.clear()
        self.resample.reset()
        idle_from = self.session.interrupt()
        self.clock.skip_until(idle_from)
        self.content.silence_from(self.voice_end)
        self.feed.preroll_silence((idle_from + self.session.chunk_frames + self.session.lookahead)
                                  * SAMPLES_PER_FRAME)
        self.interrupts.append({"frame": idle_from, "voice_at": self.voice_end, "pts": pts, "t": time.time(),
                                "idle_media_ms": None, "idle_wall_ms": None})
        return idle_from

    def queued_speech_end(self) -> int:
        """The content position (48 kHz) after the last speech fed so far."""
        if self.feed.received:
            self.speech_end = max(self.speech_end, self.feed.received[-1][0] + VOICE_BLOCK)
        return self.speech_end

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
            slot = self.clock.next_slot(may_move)
            yield slot, 0
            await asyncio.sleep(max(0.0, t0 + k * SLOT_S + HALF_S - time.monotonic()))
            yield slot, 1
            k += 1
            delay = t0 + k * SLOT_S - time.monotonic()
            if delay < -0.25:  # the loop stalled: restart the clock instead of bursting frames
                t0, k = time.monotonic(), 0
            await asyncio.sleep(max(0.0, delay))

    def voice(self, start: int | None) -> np.ndarray:
        """The 20 ms of voice from content position `start` (silence for None), read when it goes out."""
        if start is None:
            return np.zeros(VOICE_BLOCK, np.int16)
        block = self.content.read(start, VOICE_BLOCK)
        self.voice_end = start + len(block)
        return block

    def picture_sent(self, slot: Slot, pts) -> None:
        """Count a picture sent at the service's clock time `pts`, and time it."""
        self.pictures_sent += 1
        self.repeated_frames += int(slot.index is None)
        self.degraded_frames += int(slot.degraded)
        if slot.index is not None:
            self._measure(slot.index, pts)

    def _measure(self, index: int, pts) -> None:
        """Latencies of a picture, and the return to idle after each interrupt."""
        start, now = index * VOICE_PER_FRAME, time.time()
        self.queued_speech_end()  # before the blocks already shown are let go
        received = self.feed.received
        while received and received[0][0] + VOICE_BLOCK <= start:
            received.popleft()
        if received and received[0][0] <= start:  # a picture of speech: since the frame that brought it came
            self.input_ms.append((now - received[0][1]) * 1000.0)
        arrival = self.audio_in.arrival(index)
        if arrival is not None:
            self.added_ms.append((now - arrival) * 1000.0)
        for event in self.interrupts:
            if event["idle_media_ms"] is None and index >= event["frame"]:
                event["idle_media_ms"] = (pts - event["pts"]) / 1e6
                event["idle_wall_ms"] = (now - event["t"]) * 1000.0

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
