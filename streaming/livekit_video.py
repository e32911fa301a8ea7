"""LiveKit's VideoGenerator over one actorcast Session (`pip install 'actorcast[livekit]'`); streaming/livekit.py
runs it in an agent's room. docs/ARCHITECTURE.md "A live call, through the files".

`ActorcastVideoGenerator` is a `livekit.agents.voice.avatar.VideoGenerator`: the agent's speech comes in by
`push_audio` (rtc.AudioFrame at any rate and channel count, AudioSegmentEnd after each utterance); out come 25
rtc.VideoFrames a second and the same speech as 48 kHz mono rtc.AudioFrames, paced with the voice as the clock
exactly as the Pipecat service paces them (streaming.live_audio, the core both run):

    slot k (media time 40 k ms): picture of frame n, its voice [1920 n - lag, +960) | 20 ms later: the next 960

Only speech goes out as audio: between utterances the pictures go on alone (the session is fed silence and the
avatar idles), because LiveKit's AvatarRunner counts every audio frame it is given as playback of the current
utterance. So that the position it reports is the utterance's own, the voice clock neither holds nor skips inside
speech, audio frames are cut at an utterance's first and last sample, and silence the feed put in while the agent
was late is left out. An utterance's AudioSegmentEnd comes after its last sample and after the picture of the
frame that holds it; `clear_buffer` drops every utterance not yet ended (the runner reports it interrupted, with
the audio given out so far) and returns the face to idle, as an InterruptionFrame does in Pipecat.

Each picture carries userdata["actorcast"] = {"frame": index or None (a repeat), "degraded", "t": media time s},
each audio frame {"content": 48 kHz content position, "t": media time s, "segment": utterance number}.
"""

import asyncio
import collections
import itertools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from actorcast.models.errors import ActorcastError
from actorcast.models.photo.framing import Framing
from actorcast.models.timebase import FPS
from actorcast.streaming.agent_avatar import build_engine, engine_args, face_of, open_face
from actorcast.streaming.live_audio import HALF_S, SLOT_S, LiveVoice
from actorcast.streaming.tracks import VOICE_BLOCK, VOICE_PER_FRAME, VOICE_RATE
from actorcast.streaming.voice_clock import Slot


class LivekitMissingError(ActorcastError, ImportError):
    """The `livekit` extra is not installed."""


try:
    from livekit import rtc
    from livekit.agents.voice.avatar import AudioSegmentEnd, AvatarOptions, VideoGenerator
except ImportError:
    raise LivekitMissingError("the LiveKit avatar needs livekit-agents: pip install 'actorcast[livekit]'") from None

log = logging.getLogger("actorcast.streaming.livekit")  # the avatar's one logger, wherever its code lives

HOLD_WAIT_S = 1.0  # clear_buffer: how long to wait for the consumer to take the frame it holds


class AvatarPicture(rtc.VideoFrame):
    """An rtc.VideoFrame with userdata, as rtc.AudioFrame has."""

    def __init__(self, image: np.ndarray, userdata: dict):
        super().__init__(image.shape[1], image.shape[0], rtc.VideoBufferType.RGB24,
                         np.ascontiguousarray(image).tobytes())
        self.userdata = userdata


@dataclass(eq=False)
class Segment:
    """One utterance of the agent: its audio frames pushed, then its AudioSegmentEnd."""

    number: int
    spoken: int = 0  # 48 kHz samples of speech queued for it (the feed pads its last 20 ms block)
    fed: int = 0  # of them, how many the feed has put in the session
    last: int | None = None  # content position after its last sample fed
    marker: int | None = None  # content position where the feed reached its end (None: not yet)

    def end(self) -> int:
        """Content position after its speech (where its end marker went in, for an utterance without any)."""
        return self.last if self.last is not None else self.marker


class ActorcastVideoGenerator(VideoGenerator):
    """LiveKit's VideoGenerator over one actorcast Session (module docstring); give AvatarRunner
    `options=generator.avatar_options()`.

    engine: an actors.engine.Engine to open the session on (shared between calls); else one is built from
    weights/preset/size (in-process, or on Ray with use_ray, address or shards > 1) and closed by `aclose`.
    identity: a built-in identity; portrait: a photo framed by models.photo.framing.frame_reference (its rig animates
    it), or an (H, W, 3) uint8 picture or image file used as it is. emotion: one of EMOTIONS. size: the
    pictures' side. The models load in `start` (or at the first push or iteration).
    """

    def __init__(self, *, engine=None, identity: int | None = None,
                 portrait: "Framing | np.ndarray | str | Path | None" = None, emotion: str = "neutral",
                 weights: str | Path | None = None, preset: str = "tiny", use_ray: bool = False,
                 address: str | None = None, shards: int = 1, size: int = 256, seed: int = 0,
                 landmarks: np.ndarray | None = None):
        self.face = face_of(identity, portrait, emotion, seed, landmarks)
        self.engine, self.own_engine = engine, engine is None
        self.engine_args = engine_args(weights, preset, use_ray, address, shards, size)
        self.size = engine.size if engine is not None else size
        self.live = LiveVoice(on_mark=self._reached_end, on_speech=self._fed_speech)
        self.open: Segment | None = None  # the utterance being pushed
        self.segments: collections.deque[Segment] = collections.deque()  # pushed, AudioSegmentEnd not given yet
        self.speech: dict[int, tuple[Segment, int]] = {}  # content pos of a 20 ms block of speech -> (its
        #                                                   utterance, samples of speech in it)
        self.numbers = itertools.count()
        self.slots = 0  # media clock: 40 ms slots given out
        self.last_index = -1  # newest frame whose picture was given out
        self.segments_ended = 0
        self.tasks: list[asyncio.Task] = []
        self.epoch = 0  # interruptions so far
        self.holding: asyncio.Event | None = None  # set once the consumer comes back for the next item
        self.started, self.closed = False, False
        self.lock = asyncio.Lock()

    def avatar_options(self) -> AvatarOptions:
        return AvatarOptions(video_width=self.size, video_height=self.size, video_fps=FPS,
                             audio_sample_rate=VOICE_RATE, audio_channels=1)

    async def start(self) -> None:
        """Build the engine (when not given), open the session, start feeding it; idempotent."""
        async with self.lock:
            if self.started:
                return
            if self.closed:
                raise ActorcastError("the avatar was closed: make a new ActorcastVideoGenerator")
            if self.engine is None:
                self.engine = await build_engine(self.engine_args)
                self.size = self.engine.size
            self.live.attach(await open_face(self.engine, self.face))
            self.tasks = [asyncio.create_task(self.live.feed.run(), name="actorcast-feed"),
                          asyncio.create_task(self.live.run_frames(), name="actorcast-frames")]
            self.started = True

    async def aclose(self) -> None:
        """Stop, close the session (and the engine if this generator built it); idempotent."""
        if self.closed:
            return
        self.closed = True
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.live.session is not None:
            await self.live.session.close()
        if self.own_engine and self.engine is not None:
            await asyncio.to_thread(self.engine.close)

    # ---- audio in -----------------------------------------------------------------------------------------

    async def push_audio(self, frame: "rtc.AudioFrame | AudioSegmentEnd") -> None:
        if not self.started:
            await self.start()
        if isinstance(frame, AudioSegmentEnd):
            if self.open is None:  # nothing of it was pushed, or clear_buffer dropped it: nothing to report
                return
            before = self.live.speech_queued
            self.live.end_speech()
            self.open.spoken += self.live.speech_queued - before
            self.live.feed.mark(self.open)
            self.open = None
            return
        if self.open is None:
            self.open = Segment(next(self.numbers))
            self.segments.append(self.open)
        before = self.live.speech_queued
        problem = self._take(frame)
        self.open.spoken += self.live.speech_queued - before
        if problem is not None:  # the utterance still ends with its AudioSegmentEnd: the agent waits for it
            log.warning("actorcast: dropped an audio frame (%s): push rtc.AudioFrames of 16-bit PCM with their "
                        "sample_rate and num_channels", problem)

    def _take(self, frame) -> str | None:
        if not isinstance(frame, rtc.AudioFrame):
            self.live.bad_audio_frames += 1
            return f"it is {type(frame).__name__}, not an rtc.AudioFrame"
        samples = frame.samples_per_channel * frame.num_channels
        audio = np.frombuffer(frame.data, np.int16)[:max(samples, 0)].tobytes()
        return self.live.take(audio, frame.sample_rate, frame.num_channels)

    async def clear_buffer(self) -> None:
        """Interruption: drop the speech not yet played and return the face to idle (LiveVoice.interrupt).

        Returns once the consumer has taken the audio frame it was given last: AvatarRunner awaits this before it
        reads the playback position it reports, so that position counts the frame it was pushing meanwhile."""
        self.open = None
        self.segments.clear()
        self.speech.clear()
        self.epoch += 1  # what was cut before this is not given out
        if self.started:
            self.live.interrupt(self._media_ns())
        if self.holding is not None:
            try:
                await asyncio.wait_for(self.holding.wait(), HOLD_WAIT_S)
            except asyncio.TimeoutError:  # the consumer stopped taking frames
                pass

    def _fed_speech(self, pos: int) -> None:
        """The feed put a 20 ms block of speech in at content position `pos`: whose, and how much of it."""
        for segment in self.segments:
            if segment.fed < segment.spoken:
                samples = min(VOICE_BLOCK, segment.spoken - segment.fed)
                segment.fed += samples
                segment.last = pos + samples
                self.speech[pos] = (segment, samples)
                return

    def _reached_end(self, pos: int, segment: Segment) -> None:
        segment.marker = pos

    # ---- pictures and voice out ---------------------------------------------------------------------------

    def __aiter__(self):
        return self._frames()

    async def _frames(self):
        await self.start()
        async for slot, half in self.live.paced_slots(self._idle_between):
            stopped = next((task for task in self.tasks if task.done()), None)
            if stopped is not None:
                if self.closed:
                    return
                stopped.result()  # the session's ActorcastError
                raise ActorcastError("the avatar's session ended")
            t, epoch = self.slots * SLOT_S + half * HALF_S, self.epoch
            if not half and slot.image is not None:
                yield self._picture(slot)
            start = slot.voice[half]
            if start is None and not half and slot.voice[1] is not None:  # the first slot: it starts before
                start = slot.voice[1] - VOICE_BLOCK  # content 0, where speech pushed at once begins
            for item in [*self._voice(start, t), *(AudioSegmentEnd() for _ in self._due_ends(False))]:
                if self.epoch != epoch:  # clear_buffer came while the consumer held the last item
                    break
                self.holding = asyncio.Event()
                yield item
                self.holding.set()
                self.holding = None
            self.slots += half

    def _picture(self, slot: Slot) -> AvatarPicture:
        picture = AvatarPicture(slot.image, {"actorcast": {"frame": slot.index, "degraded": slot.degraded,
                                                           "t": self.slots * SLOT_S}})
        self.live.picture_sent(slot.index, slot.degraded, self._media_ns())
        if slot.index is not None:
            self.last_index = max(self.last_index, slot.index)
        return picture

    def _voice(self, start: int | None, t: float) -> list:
        """The speech in the 20 ms of voice from content position `start`, cut where utterances start and end
        (each piece an rtc.AudioFrame), with the end of an utterance that must come out before the next one."""
        if start is None:
            return []
        block, out = self.live.voice(start), []
        first = start // VOICE_BLOCK * VOICE_BLOCK
        for pos in (first, first + VOICE_BLOCK):  # the feed's 20 ms blocks this overlaps
            segment, samples = self.speech.get(pos, (None, 0))
            lo, hi = max(start, pos), min(start + VOICE_BLOCK, pos + samples)
            if segment is None or hi <= lo:
                continue
            if self.segments and self.segments[0] is not segment:  # the one before ends first
                out += [AudioSegmentEnd() for _ in self._due_ends(True, before=segment)]
            piece = block[lo - start:hi - start]
            out.append(rtc.AudioFrame(piece.tobytes(), VOICE_RATE, 1, len(piece), userdata={"actorcast": {
                "content": lo, "t": t + (lo - start) / VOICE_RATE, "segment": segment.number}}))
            self.live.voice_frames += 1
        for pos in [p for p in self.speech if p < first]:  # blocks the voice has passed
            del self.speech[pos]
        return out

    def _due_ends(self, force: bool, before: Segment | None = None):
        """Utterances whose end is due, oldest first: their last sample out and the picture that shows it.
        force: every utterance before `before` (its speech is out: the next one's is about to go)."""
        while self.segments and self.segments[0] is not before:
            segment = self.segments[0]
            if not force:
                if segment.marker is None or self.live.voice_end < segment.end():
                    return
                if self.last_index < (segment.end() - 1) // VOICE_PER_FRAME:
                    return
            self.segments.popleft()
            self.segments_ended += 1
            yield segment

    def _idle_between(self, lo: int, hi: int) -> bool:
        """Content [lo, hi) holds no speech and no utterance's end: the voice clock may skip or wait over it."""
        if any(pos < hi and lo < pos + VOICE_BLOCK for pos in self.speech):
            return False
        return not any(s.marker is not None and lo <= s.marker < hi for s in self.segments)

    def _media_ns(self) -> int:
        return round(self.slots * SLOT_S * 1e9)

    def stats(self) -> dict:
        """LiveVoice.stats (input_to_output_ms from the push of a sound; interrupt_idle_media_ms in media time),
        plus the utterances ended."""
        return {**self.live.stats(), "segments_ended": self.segments_ended}
