"""actorcast as the face of a Pipecat voice agent (`pip install 'actorcast[pipecat]'`).

    pipeline = Pipeline([transport.input(), stt, llm, tts, ActorcastVideoService(identity=3), transport.output()])

`ActorcastVideoService` sits after the TTS and before the output transport, where Pipecat's avatar services go.
It takes the agent's speech (TTSAudioRawFrame, any sample rate and channel count) and sends on 25 pictures a
second (OutputImageRawFrame) and the same speech, timed so that the transport plays each sound with its picture.
It runs the live call's session machinery (streaming.tracks) around one Session, and paces its output with the
voice as the clock (streaming.voice_clock), as a transport that is pushed to needs:

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

import av
import numpy as np

from actorcast.actors.framing import Framing
from actorcast.actors.reference import check_portrait, load_image
from actorcast.models.data.params import EMOTIONS
from actorcast.models.errors import ActorcastError, ConfigError
from actorcast.models.timebase import FPS, SAMPLES_PER_FRAME
from actorcast.streaming.app import LIVE_STAGE_THREADS
from actorcast.streaming.tracks import VOICE_BLOCK, VOICE_PER_FRAME, VOICE_RATE, AudioInput, ContentAudio, SpeechFeed
from actorcast.streaming.voice_clock import Slot, VoiceClock


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

MAX_CHANNELS = 8
RATES = (4_000, 384_000)  # sample rates accepted, Hz
END_GRACE_S = 10.0  # EndFrame: how long the speech still queued may take to come out, beyond its own length
# A frame's sound goes out this long after its picture (voice_clock.py): a receiver decodes video later than
# audio. With Pipecat's live video shown as it comes (output_params) the offset at an aiortc client on loopback
# (voice - picture arrival) was -1 to -6 ms with 10 ms here, +19 to +20 ms with 30 ms.
VOICE_LAG = VOICE_BLOCK // 2  # 10 ms in 48 kHz samples
VOICE_LAG_S = VOICE_LAG / VOICE_RATE
SLOT_S = 1.0 / FPS  # one picture and two 20 ms voice frames per slot
HALF_S = VOICE_BLOCK / VOICE_RATE


def audio_problem(frame: OutputAudioRawFrame) -> str | None:
    """What makes an audio frame unusable (None if it is usable): 16-bit PCM, interleaved, with its rate."""
    audio, rate, channels = frame.audio, frame.sample_rate, frame.num_channels
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


class ActorcastVideoService(FrameProcessor):
    """A Pipecat FrameProcessor that turns the agent's speech into lip-synced 25 fps video plus that speech.

    engine: an actors.engine.Engine to open the session on (share one between the calls of a server); else one
    is built from weights/preset/size (in-process, or on Ray with use_ray, address or shards > 1) and closed
    with the pipeline. identity: a built-in identity number; portrait: a photo framed by
    actors.framing.frame_reference (animated by its own rig, models/photo_rig.py), or an (H, W, 3) uint8
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
        if emotion not in EMOTIONS:
            raise ConfigError(f"unknown emotion {emotion!r}; choose one of {', '.join(EMOTIONS)}")
        if identity is not None and portrait is not None:
            raise ConfigError("give an identity or a portrait, not both")
        self.landmarks = None
        if isinstance(portrait, Framing):
            portrait, self.landmarks = portrait.crop(), portrait.crop_landmarks()
        if isinstance(portrait, (str, Path)):
            portrait = load_image(portrait)
        self.portrait = None if portrait is None else check_portrait(portrait, "the portrait")
        self.identity, self.emotion, self.seed = identity, emotion, seed
        self.engine, self.own_engine = engine, engine is None
        ray = use_ray or address is not None or shards > 1
        self.engine_args = {"weights": weights, "preset": preset, "shards": shards, "use_ray": ray,
                            "address": address, "size": size, "stage_threads": None if ray else LIVE_STAGE_THREADS}
        self.size = engine.size if engine is not None else size
        self.session = None
        self.resample = VoiceResampler()
        self.events: collections.deque[tuple[int, Frame]] = collections.deque()  # (content pos 48 kHz, frame)
        self.tasks: list[asyncio.Task] = []
        self.pictures_sent = self.voice_frames = self.repeated_frames = self.degraded_frames = 0
        self.bad_audio_frames = 0
        self.voice_end = 0  # content position (48 kHz) after the last voice sent
        self.speech_end = 0  # content position after the last speech fed
        self.context_id: str | None = None  # the utterance being sent (between TTSStarted and TTSStopped)
        self.speaking = False
        self.interrupts: list[dict] = []
        self.added_ms: collections.deque[float] = collections.deque(maxlen=1500)  # fed -> sent
        self.input_ms: collections.deque[float] = collections.deque(maxlen=1500)  # handed over -> sent
        self.stopped = False

    def output_params(self) -> dict:
        """The output settings of Pipecat's TransportParams that this service's frames are made for.

        The service paces its pictures itself, 25 a second. Pipecat's live video output paces them again at
        video_out_framerate, and once it has fallen more than 5 frames behind (its task held up on a busy
        machine) it restarts its clock with the pictures that piled up still queued: at 25 they would stay
        queued, and the picture behind the voice by as much, for the rest of the call (a 300 ms hold-up: the
        picture 190 ms behind at an aiortc client). At 50 it shows each picture as it comes and drains a backlog
        in about as long as it took to build."""
        return {"audio_out_enabled": True, "audio_out_sample_rate": VOICE_RATE, "audio_out_10ms_chunks": 2,
                "audio_out_auto_silence": False,
                "video_out_enabled": True, "video_out_is_live": True, "video_out_width": self.size,
                "video_out_height": self.size, "video_out_framerate": 2 * FPS}

    # ---- lifecycle ----------------------------------------------------------------------------------------

    async def setup(self, setup) -> None:
        """Build the engine (when not given) and open the session: Pipecat's place for slow start-up."""
        await super().setup(setup)
        if self.engine is None:
            from actorcast.actors.engine import Engine

            args = self.engine_args
            # Ray joins from this thread (it installs signal handlers); in-process stages load in a worker thread
            self.engine = Engine(**args) if args["use_ray"] else await asyncio.to_thread(Engine, **args)
            self.size = self.engine.size
        self.session = await self.engine.open_session(reference=self.portrait, identity_seed=self.identity,
                                                      emotion=self.emotion, seed=self.seed, landmarks=self.landmarks)
        self.content = ContentAudio()
        self.audio_in = AudioInput(self.session.feed, self.content)
        self.feed = SpeechFeed(self.audio_in, on_mark=lambda pos, frame: self.events.append((pos, frame)))
        self.clock = VoiceClock(self.content, self.audio_in.arrival, lag=VOICE_LAG)

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
            self._speak(self.resample.flush(), final=True)
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
        problem = audio_problem(frame)
        if problem is not None:
            self.bad_audio_frames += 1
            log.warning("actorcast: dropped an audio frame (%s): send 16-bit PCM bytes with their sample_rate and "
                        "num_channels", problem)
            return
        self._speak(self.resample(bytes(frame.audio), frame.sample_rate, frame.num_channels), final=False)

    def _speak(self, blocks: list[np.ndarray], final: bool) -> None:
        if blocks:
            self.feed.speak(np.concatenate(blocks), final=False)
        if final:
            self.feed.flush()

    def interrupt(self) -> int:
        """Barge-in: drop the queued speech, silence the voice not yet sent, hold the picture until the first
        frame made from silence only (returned)."""
        self.feed.clear()
        self.resample.reset()
        self.events.clear()
        self.speaking, self.context_id = False, None
        idle_from = self.session.interrupt()
        self.clock.skip_until(idle_from)
        self.content.silence_from(self.voice_end)
        self.feed.preroll_silence((idle_from + self.session.chunk_frames + self.session.lookahead)
                                  * SAMPLES_PER_FRAME)
        self.interrupts.append({"frame": idle_from, "voice_at": self.voice_end, "pts": self.get_clock().get_time(),
                                "t": time.time(), "idle_media_ms": None, "idle_wall_ms": None})
        return idle_from

    async def _drain(self) -> None:
        """EndFrame: let the speech still queued come out (and its TTSStoppedFrame) before the pipeline ends."""
        self._speak(self.resample.flush(), final=True)
        deadline = time.monotonic() + self.feed.queued_s() + END_GRACE_S
        while (self.feed.queue or self.events or self.voice_end < self._speech_end()) and not self._failed():
            if time.monotonic() > deadline:
                log.warning("actorcast: the pipeline ended with %.1f s of speech not sent", self.feed.queued_s())
                return
            await asyncio.sleep(1.0 / FPS)

    def _speech_end(self) -> int:
        """The content position (48 kHz) after the last speech fed so far."""
        if self.feed.received:
            self.speech_end = max(self.speech_end, self.feed.received[-1][0] + VOICE_BLOCK)
        return self.speech_end

    def _failed(self) -> bool:
        return any(task.done() for task in self.tasks)

    # ---- frames out ---------------------------------------------------------------------------------------

    async def _pump_frames(self) -> None:
        """Session frames -> the voice clock; a failing session is reported upstream."""
        try:
            async for vf in self.session.frames():
                self.clock.put(vf.first_frame, vf.frames, vf.degraded)
        except ActorcastError as e:
            await self.push_error(f"actorcast: {e}", exception=e, force_treat_as_permanent=True)

    async def _send(self) -> None:
        """Every 40 ms: a picture, then the voice around it in two 20 ms frames, on a steady clock."""
        t0, k = time.monotonic(), 0
        while True:
            slot = self.clock.next_slot(self._no_marker_in)
            if slot.image is not None:
                await self._send_picture(slot)
            for half, start in enumerate(slot.voice):
                if half:
                    await asyncio.sleep(max(0.0, t0 + k * SLOT_S + HALF_S - time.monotonic()))
                await self._send_voice(start)
            k += 1
            delay = t0 + k * SLOT_S - time.monotonic()
            if delay < -0.25:  # the loop stalled: restart the clock instead of bursting frames
                t0, k = time.monotonic(), 0
            await asyncio.sleep(max(0.0, delay))

    def _no_marker_in(self, lo: int, hi: int) -> bool:
        """No TTS bracket waits in content [lo, hi): the voice clock may skip or wait over it."""
        return not any(lo <= pos < hi for pos, _ in self.events)

    async def _send_picture(self, slot: Slot) -> None:
        image = slot.image
        picture = OutputImageRawFrame(np.ascontiguousarray(image).tobytes(), (image.shape[1], image.shape[0]), "RGB")
        picture.pts = self.get_clock().get_time()
        picture.metadata["actorcast"] = {"frame": slot.index, "degraded": slot.degraded}
        await self.push_frame(picture)
        self.pictures_sent += 1
        self.repeated_frames += int(slot.index is None)
        self.degraded_frames += int(slot.degraded)
        if slot.index is not None:
            self._measure(slot.index, picture.pts)

    async def _send_voice(self, start: int | None) -> None:
        """One 20 ms voice frame with the TTS brackets where they fall: TTSAudioRawFrame inside an utterance,
        else OutputAudioRawFrame (silence too: a steady stream lets the transport's audio track catch up after a
        late write instead of inserting silence of its own)."""
        block = np.zeros(VOICE_BLOCK, np.int16) if start is None else self.content.read(start, VOICE_BLOCK)
        if start is not None:
            self.voice_end = start + len(block)
            await self._send_events(lambda pos, frame: pos <= start or (
                pos < start + len(block) and isinstance(frame, TTSStartedFrame)))
        audio = (TTSAudioRawFrame if self.speaking else OutputAudioRawFrame)(block.tobytes(), VOICE_RATE, 1)
        if self.speaking:
            audio.context_id = self.context_id
        audio.pts = self.get_clock().get_time()
        audio.metadata["actorcast"] = {"content": start}
        await self.push_frame(audio)
        self.voice_frames += 1
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

    def _measure(self, index: int, pts: int) -> None:
        """Latencies of a picture, and the return to idle after each interrupt."""
        start, now = index * VOICE_PER_FRAME, time.time()
        self._speech_end()  # before the blocks already shown are let go
        received = self.feed.received
        while received and received[0][0] + VOICE_BLOCK <= start:
            received.popleft()
        if received and received[0][0] <= start:  # a picture of speech: since its TTS frame came
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
        """The service's figures so far. Latencies in ms, p50 and p95 over the last 1500 pictures:
        added_latency_ms: from when a frame's sound was fed (due to be heard, were there no avatar) to its
        picture sent; input_to_output_ms, over pictures of speech: from the TTS frame that brought the sound to
        its picture sent (includes the wait in the real-time queue when the TTS is faster than real time).
        interrupt_idle_media_ms: pipeline-clock time from each interruption to the first idle picture."""
        def pct(values):
            if not values:
                return {"p50": None, "p95": None}
            return {"p50": float(np.percentile(values, 50)), "p95": float(np.percentile(values, 95))}

        return {"sent_frames": self.pictures_sent, "sent_voice_frames": self.voice_frames,
                "repeated_frames": self.repeated_frames, "degraded_frames": self.degraded_frames,
                "bad_audio_frames": self.bad_audio_frames,
                "added_latency_ms": pct(self.added_ms), "input_to_output_ms": pct(self.input_ms),
                "interrupt_idle_media_ms": [e["idle_media_ms"] for e in self.interrupts],
                "queued_speech_s": self.feed.queued_s() if self.session is not None else 0.0}



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
