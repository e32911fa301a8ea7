"""actorcast as the face of a Pipecat voice agent (`pip install 'actorcast[pipecat]'`).

    pipeline = Pipeline([transport.input(), stt, llm, tts, ActorcastVideoService(identity=3), transport.output()])

`ActorcastVideoService` sits after the TTS and before the output transport, where Pipecat's avatar services go.
It takes the agent's speech (TTSAudioRawFrame, any sample rate and channel count) and sends on 25 pictures a
second (OutputImageRawFrame) and the same speech, timed so that the transport plays each sound with its picture.
It runs the live-audio core (streaming.live_audio, shared with the LiveKit avatar and the WebRTC call) around one
Session, and paces its output with the voice as the clock (streaming.voice_clock), as a transport that is pushed
to needs:

    speech -> 48 kHz mono -> SpeechFeed (20 ms per 20 ms; silence when the agent is quiet) -> AudioInput
        -> ContentAudio (the voice by content position) and Session.feed (16 kHz)
    Session.frames() -> VoiceClock -> every 40 ms: picture of frame n, then its voice in two 20 ms frames

Time: session frame n shows the fed audio [640 n, 640 n + 640) at 16 kHz, [1920 n, 1920 n + 1920) at 48 kHz.
Pictures and audio carry pts = the pipeline clock when they were sent (ns); metadata["actorcast"] holds the frame
index of a picture ("frame", None for a repeat) and the content position of an audio frame ("content"); the
transport settings they are made for are `output_params()`. TTSStartedFrame and TTSStoppedFrame go out where the
speech they bracket starts and ends in the voice; between utterances the avatar idles on silence. An
InterruptionFrame drops the queued speech (Session.interrupt), silences the voice not yet sent, and the pictures
hold until the first frame made from silence only. Bad audio frames are dropped with a warning in the log.
"""

import asyncio
import collections
import logging
import time
from pathlib import Path

import numpy as np

from actorcast.models.errors import ActorcastError
from actorcast.models.photo.framing import Framing
from actorcast.models.timebase import FPS
from actorcast.streaming.agent_avatar import build_engine, engine_args, face_of, open_face
from actorcast.streaming.live_audio import VOICE_LAG, LiveVoice, VoiceResampler
from actorcast.streaming.live_audio import audio_problem as pcm_problem
from actorcast.streaming.tracks import VOICE_RATE
from actorcast.streaming.voice_clock import Slot

__all__ = ["VOICE_LAG", "ActorcastVideoService", "PipecatMissingError", "VoiceResampler", "audio_problem",
           "say_through"]  # VOICE_LAG and VoiceResampler: as this module had them


class PipecatMissingError(ActorcastError, ImportError):
    """The `pipecat` extra is not installed."""


try:
    from pipecat.frames.frames import (CancelFrame, EndFrame, Frame, InterruptionFrame, OutputAudioRawFrame,
                                       OutputImageRawFrame, StartFrame, TTSAudioRawFrame, TTSStartedFrame,
                                       TTSStoppedFrame)
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
except ImportError:
    raise PipecatMissingError("the Pipecat video service needs Pipecat: pip install 'actorcast[pipecat]'") from None

log = logging.getLogger(__name__)

END_GRACE_S = 10.0  # EndFrame: how long the speech still queued may take to come out, beyond its own length


def audio_problem(frame: OutputAudioRawFrame) -> str | None:
    """What makes an audio frame unusable (None if it is usable): 16-bit PCM, interleaved, with its rate."""
    return pcm_problem(frame.audio, frame.sample_rate, frame.num_channels)


class ActorcastVideoService(FrameProcessor):
    """A Pipecat FrameProcessor that turns the agent's speech into lip-synced 25 fps video plus that speech.

    engine: an actors.engine.Engine to open the session on (share one between the calls of a server); else one
    is built from weights/preset/size (in-process, or on Ray with use_ray, address or shards > 1) and closed
    with the pipeline. identity: a built-in identity number; portrait: a photo framed by
    models.photo.framing.frame_reference (animated by its own rig, models/photo/rig.py), or an (H, W, 3) uint8
    picture or an image file, used as it is. emotion: one of EMOTIONS.
    size: the side of the pictures sent.

    25 pictures and 50 voice frames a second go out, silence included; give the output transport
    `TransportParams(**service.output_params(), ...)`: "live" video (each picture shown as it comes, the
    transport's pacing at twice the rate so that it never holds pictures back), 48 kHz audio in 20 ms chunks
    (one per voice frame) and no silence of the transport's own (audio_out_auto_silence=False: after a late
    write its audio track catches up instead of falling behind the pictures for the rest of the call).
    """

    def __init__(self, *, engine=None, identity: int | None = None,
                 portrait: "Framing | np.ndarray | str | Path | None" = None,
                 emotion: str = "neutral", weights: str | Path | None = None, preset: str = "tiny",
                 use_ray: bool = False, address: str | None = None, shards: int = 1, size: int = 256,
                 seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.face = face_of(identity, portrait, emotion, seed)
        self.engine, self.own_engine = engine, engine is None
        self.engine_args = engine_args(weights, preset, use_ray, address, shards, size)
        self.size = engine.size if engine is not None else size
        self.live = LiveVoice(on_mark=lambda pos, frame: self.events.append((pos, frame)))
        self.events: collections.deque[tuple[int, Frame]] = collections.deque()  # (content pos 48 kHz, frame)
        self.tasks: list[asyncio.Task] = []
        self.context_id: str | None = None  # the utterance being sent (between TTSStarted and TTSStopped)
        self.speaking = False
        self.stopped = False

    # the live core's state, by the names the service has always had
    portrait = property(lambda self: self.face.portrait)
    landmarks = property(lambda self: self.face.landmarks)
    session = property(lambda self: self.live.session)
    content = property(lambda self: self.live.content)
    audio_in = property(lambda self: self.live.audio_in)
    feed = property(lambda self: self.live.feed)
    clock = property(lambda self: self.live.clock)
    voice_end = property(lambda self: self.live.voice_end)
    interrupts = property(lambda self: self.live.interrupts)
    pictures_sent = property(lambda self: self.live.pictures_sent)
    repeated_frames = property(lambda self: self.live.repeated_frames)
    added_ms = property(lambda self: self.live.added_ms)
    input_ms = property(lambda self: self.live.input_ms)

    def output_params(self) -> dict:
        """The output settings of Pipecat's TransportParams that this service's frames are made for.

        The service paces its pictures itself, 25 a second. Pipecat's live video output paces them again at
        video_out_framerate, and once it has fallen more than 5 frames behind (its task held up on a busy
        machine) it restarts its clock with the pictures that piled up still queued: at 25 they would stay
        queued, and the picture behind the voice by as much, for the rest of the call. At 50 it shows each
        picture as it comes and drains a backlog in about as long as it took to build."""
        return {"audio_out_enabled": True, "audio_out_sample_rate": VOICE_RATE, "audio_out_10ms_chunks": 2,
                "audio_out_auto_silence": False,
                "video_out_enabled": True, "video_out_is_live": True, "video_out_width": self.size,
                "video_out_height": self.size, "video_out_framerate": 2 * FPS}

    # ---- lifecycle ----------------------------------------------------------------------------------------

    async def setup(self, setup) -> None:
        """Build the engine (when not given) and open the session: Pipecat's place for slow start-up."""
        await super().setup(setup)
        if self.engine is None:
            self.engine = await build_engine(self.engine_args)
            self.size = self.engine.size
        self.live.attach(await open_face(self.engine, self.face))

    def _start(self) -> None:
        self.tasks = [self.create_task(self.feed.run(), "actorcast-feed"),
                      self.create_task(self._pump_frames(), "actorcast-frames"),
                      self.create_task(self._send(), "actorcast-send")]

    async def _stop(self) -> None:
        """Stop the tasks, close the session (and the engine if this service built it); idempotent."""
        if self.stopped:
            return
        self.stopped = True
        for task in self.tasks:
            await self.cancel_task(task)
        self.tasks = []
        if self.session is not None:
            await self.session.close()
        if self.own_engine and self.engine is not None:
            await asyncio.to_thread(self.engine.close)

    async def cleanup(self) -> None:
        await super().cleanup()
        await self._stop()

    # ---- frames in ----------------------------------------------------------------------------------------

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction != FrameDirection.DOWNSTREAM:
            await self.push_frame(frame, direction)
        elif isinstance(frame, StartFrame):
            await self.push_frame(frame, direction)
            self._start()
        elif isinstance(frame, OutputAudioRawFrame):  # TTSAudioRawFrame and any other speech of the agent
            self._take_audio(frame)
        elif isinstance(frame, TTSStartedFrame):
            self.feed.mark(frame)
        elif isinstance(frame, TTSStoppedFrame):
            self.live.end_speech()
            self.feed.mark(frame)
        elif isinstance(frame, InterruptionFrame):
            self.interrupt()
            await self.push_frame(frame, direction)
        elif isinstance(frame, EndFrame):
            await self._drain()
            await self._stop()
            await self.push_frame(frame, direction)
        elif isinstance(frame, CancelFrame):
            await self._stop()
            await self.push_frame(frame, direction)
        else:
            await self.push_frame(frame, direction)

    def _take_audio(self, frame: OutputAudioRawFrame) -> None:
        problem = self.live.take(frame.audio, frame.sample_rate, frame.num_channels)
        if problem is not None:
            log.warning("actorcast: dropped an audio frame (%s): send 16-bit PCM bytes with their sample_rate and "
                        "num_channels", problem)

    def interrupt(self) -> int:
        """Barge-in: drop the queued speech, silence the voice not yet sent, hold the picture until the first
        frame made from silence only (returned)."""
        self.events.clear()
        self.speaking, self.context_id = False, None
        return self.live.interrupt(self.get_clock().get_time())

    async def _drain(self) -> None:
        """EndFrame: let the speech still queued come out (and its TTSStoppedFrame) before the pipeline ends."""
        self.live.end_speech()
        deadline = time.monotonic() + self.feed.queued_s() + END_GRACE_S
        while (self.feed.queue or self.events or self.voice_end < self.live.queued_speech_end()) \
                and not self._failed():
            if time.monotonic() > deadline:
                log.warning("actorcast: the pipeline ended with %.1f s of speech not sent", self.feed.queued_s())
                return
            await asyncio.sleep(1.0 / FPS)

    def _failed(self) -> bool:
        return any(task.done() for task in self.tasks)

    # ---- frames out ---------------------------------------------------------------------------------------

    async def _pump_frames(self) -> None:
        """Session frames -> the voice clock; a failing session is reported upstream."""
        try:
            await self.live.run_frames()
        except ActorcastError as e:
            await self.push_error(f"actorcast: {e}", exception=e, force_treat_as_permanent=True)

    async def _send(self) -> None:
        """Every 40 ms: a picture, then the voice around it in two 20 ms frames, on a steady clock."""
        async for slot, half in self.live.paced_slots(self._no_marker_in):
            if not half and slot.image is not None:
                await self._send_picture(slot)
            await self._send_voice(slot.voice[half])

    def _no_marker_in(self, lo: int, hi: int) -> bool:
        """No TTS bracket waits in content [lo, hi): the voice clock may skip or wait over it."""
        return not any(lo <= pos < hi for pos, _ in self.events)

    async def _send_picture(self, slot: Slot) -> None:
        image = slot.image
        picture = OutputImageRawFrame(np.ascontiguousarray(image).tobytes(), (image.shape[1], image.shape[0]), "RGB")
        picture.pts = self.get_clock().get_time()
        picture.metadata["actorcast"] = {"frame": slot.index, "degraded": slot.degraded}
        await self.push_frame(picture)
        self.live.picture_sent(slot.index, slot.degraded, picture.pts)

    async def _send_voice(self, start: int | None) -> None:
        """One 20 ms voice frame with the TTS brackets where they fall: TTSAudioRawFrame inside an utterance,
        else OutputAudioRawFrame (silence too: a steady stream lets the transport's audio track catch up after a
        late write instead of inserting silence of its own)."""
        block = self.live.voice(start)
        if start is not None:
            await self._send_events(lambda pos, frame: pos <= start or (
                pos < start + len(block) and isinstance(frame, TTSStartedFrame)))
        audio = (TTSAudioRawFrame if self.speaking else OutputAudioRawFrame)(block.tobytes(), VOICE_RATE, 1)
        if self.speaking:
            audio.context_id = self.context_id
        audio.pts = self.get_clock().get_time()
        audio.metadata["actorcast"] = {"content": start}
        await self.push_frame(audio)
        self.live.voice_frames += 1
        if start is not None:
            await self._send_events(lambda pos, frame: pos <= self.voice_end and isinstance(frame, TTSStoppedFrame))

    async def _send_events(self, due) -> None:
        """Send the queued TTSStarted/TTSStopped frames, in order, while `due(content position, frame)` holds."""
        while self.events and due(*self.events[0]):
            _, frame = self.events.popleft()
            if isinstance(frame, TTSStartedFrame):
                self.speaking, self.context_id = True, frame.context_id
            else:
                self.speaking, self.context_id = False, None
            await self.push_frame(frame)

    # ---- figures ------------------------------------------------------------------------------------------

    def stats(self) -> dict:
        """The service's figures so far (LiveVoice.stats): input_to_output_ms runs from the TTS frame that
        brought a sound; interrupt_idle_media_ms is in pipeline-clock time."""
        return self.live.stats()


async def say_through(service: ActorcastVideoService, utterances: list[tuple[np.ndarray, int]],
                      pause_s: float = 1.0, observers: list | None = None) -> dict:
    """Run `service` alone in a Pipecat pipeline and say each (int16 mono speech, sample rate) as a TTS does
    (20 ms TTSAudioRawFrames, faster than real time), `pause_s` of idling after each; returns service.stats()
    once every frame is out. bench/live.py times the service's input->output frames with it."""
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineWorker
    from pipecat.workers.runner import WorkerRunner

    worker = PipelineWorker(Pipeline([service]), observers=observers or [], idle_timeout_secs=None)
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    try:
        while not service.tasks:  # set up (the engine may be built) and started
            if running.done():
                await running
                raise ActorcastError("the Pipecat pipeline ended before the service started")
            await asyncio.sleep(0.05)
        for k, (pcm, rate) in enumerate(utterances):
            step, context = rate // 50, f"utterance-{k}"
            await worker.queue_frames([TTSStartedFrame(context_id=context),
                                       *(TTSAudioRawFrame(pcm[i:i + step].tobytes(), rate, 1, context_id=context)
                                         for i in range(0, len(pcm), step)),
                                       TTSStoppedFrame(context_id=context)])
            while service.feed.queue or service.events:
                await asyncio.sleep(0.05)
            await asyncio.sleep(pause_s)
        await worker.queue_frame(EndFrame())  # the service lets its queued speech out first
        await running
    finally:
        if not running.done():
            await runner.cancel()
    return service.stats()
