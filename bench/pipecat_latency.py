"""Added latency of the Pipecat video service: `python bench/pipecat_latency.py --out DIR` -> DIR/pipecat.json.

`ActorcastVideoService` runs alone in a Pipecat pipeline on an in-process engine (the live call's stage threads)
and is spoken to as a streaming TTS speaks: after `warmup_s` of idling, one utterance of `seconds` of the sample
speech (assets/sample_speech.wav, repeated as needed) at 24 kHz mono in 20 ms TTSAudioRawFrames, each queued at
its own time in real time (frame k at t0 + 20 k ms), between a TTSStartedFrame and a TTSStoppedFrame.

What is measured, per picture of speech (session frame n, timed when first sent; a slot whose frame is not
ready yet repeats the last picture and is not timed, and a frame that comes after a newer one is never shown):

    added latency(n) = t(picture n pushed downstream by the service)
                       - t(the service's process_frame took the TTSAudioRawFrame that carried the first sample of
                           frame n's 40 ms of speech)

in wall-clock ms: what the avatar adds between the TTS and the output transport, where the speech would otherwise
go straight through. It holds the wait for the service's 20 ms feed clock (0-20 ms; a frame that comes after
its tick waits a tick more), the rest of the 40 ms window and the model's lookahead, generation and decoding, and
the wait for the picture's 25 fps slot. It is the service's own `input_to_output_ms` (ActorcastVideoService.
_measure, over its last 1500 pictures of speech); since the input comes in real time, no TTS backlog is in it.
`fed_to_sent_ms_*` is the part after the feed clock: the service's `added_latency_ms`, from when a picture's
first sample was fed to the session to the picture sent, over every picture (idle ones too).

Frames out: the pictures the service sent from its TTSStartedFrame to its TTSStoppedFrame, with the repeated (no
new frame ready) and degraded (late) ones among them; `voice_frames_out`: the utterance's 20 ms TTSAudioRawFrames
it sent in that time. The service sends one picture per two voice frames, so frames_out is voice_frames_out / 2
(+-1 at each end), and voice_frames_out is the speech's length in 20 ms (+1 where the voice's frames straddle
its ends, +1 where the under-a-millisecond of silence a resampled stream starts with tips it over) plus 1 per 20 ms
of silence the feed put in because an audio frame came after its tick (on a busy
machine: see input_late_ms_p95). `input_late_ms_p95`: how
late this script queued its audio frames against the real-time schedule (a busy machine shows here first).
"""

import argparse
import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import av  # noqa: E402
import numpy as np  # noqa: E402

from bench.common import write_json  # noqa: E402
from actorcast.models.errors import ActorcastError, ConfigError  # noqa: E402
from actorcast.models.timebase import FPS  # noqa: E402
from actorcast.streaming.figures import percentile  # noqa: E402

SAMPLE = Path(__file__).resolve().parent.parent / "assets" / "sample_speech.wav"
TTS_RATE = 24_000  # Hz: what streaming TTS services commonly send (PCM at 24 kHz)
FRAME_S = 0.02  # one TTSAudioRawFrame per 20 ms of speech
CONTEXT = "bench"
START_TIMEOUT_S = 120.0  # engine set-up and the first picture
DRAIN_TIMEOUT_S = 30.0  # after the last audio frame: until the service has sent all of it


def tts_speech(seconds: float, rate: int = TTS_RATE, path: Path = SAMPLE) -> np.ndarray:
    """`seconds` of the speech in `path` (repeated when shorter) as (seconds * rate,) int16 mono at `rate` Hz."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
    with av.open(str(path)) as container:
        blocks = [o.to_ndarray().reshape(-1) for f in container.decode(audio=0) for o in resampler.resample(f)]
    pcm = np.concatenate(blocks + [o.to_ndarray().reshape(-1) for o in resampler.resample(None)])
    n = round(seconds * rate)
    return np.tile(pcm, -(-n // len(pcm)))[:n]


def speech_pictures(service):
    """A Pipecat observer that keeps the metadata["actorcast"] of the pictures `service` sends while it speaks
    (from its TTSStartedFrame to its TTSStoppedFrame). Built here: Pipecat is imported only once it is needed."""
    from pipecat.frames.frames import OutputImageRawFrame, TTSAudioRawFrame, TTSStartedFrame, TTSStoppedFrame
    from pipecat.observers.base_observer import BaseObserver, FramePushed
    from pipecat.processors.frame_processor import FrameDirection

    class SpeechPictures(BaseObserver):
        def __init__(self):
            super().__init__()
            self.speaking = self.stopped = False  # stopped: the TTSStoppedFrame went out
            self.pictures = []  # [{"frame": index or None, "degraded": bool}, ...]
            self.voice_frames = 0  # the utterance's 20 ms voice frames sent

        async def on_push_frame(self, data: FramePushed):
            if data.source is not service or data.direction != FrameDirection.DOWNSTREAM:
                return
            if isinstance(data.frame, (TTSStartedFrame, TTSStoppedFrame)):
                self.speaking = isinstance(data.frame, TTSStartedFrame)
                self.stopped = not self.speaking
            elif isinstance(data.frame, OutputImageRawFrame) and self.speaking:
                self.pictures.append(data.frame.metadata["actorcast"])
            elif isinstance(data.frame, TTSAudioRawFrame) and data.frame.context_id == CONTEXT:
                self.voice_frames += 1

    return SpeechPictures()


async def wait_until(predicate, running: asyncio.Task, timeout_s: float, what: str,
                     who: str = "the Pipecat pipeline") -> None:
    """Poll `predicate` every 20 ms; ActorcastError if `running` (`who`) ends first or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if running.done():
            await running  # its own error, if it failed
            raise ActorcastError(f"{who} ended before {what}")
        if time.monotonic() > deadline:
            raise ActorcastError(f"no {what} within {timeout_s:.0f} s: is the machine overloaded?")
        await asyncio.sleep(FRAME_S)


async def say_in_real_time(worker, pcm: np.ndarray, rate: int) -> list[float]:
    """Queue one utterance as 20 ms TTSAudioRawFrames, frame k at t0 + 20 k ms; returns how late each was (ms)."""
    from pipecat.frames.frames import TTSAudioRawFrame, TTSStartedFrame, TTSStoppedFrame

    step, late = int(rate * FRAME_S), []
    await worker.queue_frame(TTSStartedFrame(context_id=CONTEXT))
    t0 = time.monotonic()
    for k, i in enumerate(range(0, len(pcm), step)):
        await asyncio.sleep(max(0.0, t0 + k * FRAME_S - time.monotonic()))
        late.append((time.monotonic() - t0 - k * FRAME_S) * 1000.0)
        await worker.queue_frame(TTSAudioRawFrame(pcm[i:i + step].tobytes(), rate, 1, context_id=CONTEXT))
    await worker.queue_frame(TTSStoppedFrame(context_id=CONTEXT))
    return late


def pct(values, q: float) -> float | None:
    """The q-th percentile of `values` (ms) to 0.1 ms, as the JSON keeps it; None when empty."""
    value = percentile(values, q)
    return None if value is None else round(value, 1)


async def measure(engine, seconds: float = 10.0, *, identity: int = 3, rate: int = TTS_RATE,
                  warmup_s: float = 1.0) -> dict:
    """Speak `seconds` of speech at `rate` Hz through an ActorcastVideoService on `engine` (an actors.engine.Engine,
    left open) in real time; the service's added latency and frames out, as a JSON-able dict (the module
    docstring defines each figure). PipecatMissingError without the pipecat extra; ActorcastError if the
    pipeline fails or stalls."""
    if not seconds > 0 or not warmup_s >= 0:
        raise ConfigError(f"seconds={seconds!r} must be > 0 and warmup_s={warmup_s!r} >= 0")
    from actorcast.streaming.pipecat import ActorcastVideoService  # PipecatMissingError (with the install command) first

    from pipecat.frames.frames import EndFrame
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineWorker
    from pipecat.workers.runner import WorkerRunner

    pcm = tts_speech(seconds, rate)
    service = ActorcastVideoService(engine=engine, identity=identity)
    log = speech_pictures(service)
    worker = PipelineWorker(Pipeline([service]), observers=[log], idle_timeout_secs=None)
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    try:
        # 1. set up, then idle until the session makes pictures at its steady pace
        await wait_until(lambda: service.tasks and service.pictures_sent, running, START_TIMEOUT_S, "first picture")
        await asyncio.sleep(warmup_s)
        # 2. the utterance, in real time, and until all of it is out (its TTSStoppedFrame sent)
        late = await say_in_real_time(worker, pcm, rate)
        await wait_until(lambda: log.stopped, running, DRAIN_TIMEOUT_S, "end of the speech sent")
        stats = service.stats()
        added = list(service.input_ms)  # per picture of speech: TTS frame taken -> picture sent, ms
        fed = list(service.added_ms)  # per picture: its first sample fed -> picture sent, ms
        await worker.queue_frame(EndFrame())
        await asyncio.wait_for(running, DRAIN_TIMEOUT_S)
    finally:
        if not running.done():
            await runner.cancel()
    pictures = log.pictures
    return {"speech_s": round(len(pcm) / rate, 3), "tts_rate_hz": rate, "tts_frame_ms": FRAME_S * 1000.0,
            "size": service.size, "preset": engine.preset,
            "added_latency_ms_p50": pct(added, 50), "added_latency_ms_p95": pct(added, 95),
            "added_latency_ms_max": round(max(added), 1) if added else None, "latency_pictures": len(added),
            "fed_to_sent_ms_p50": pct(fed, 50), "fed_to_sent_ms_p95": pct(fed, 95),
            "frames_out": len(pictures), "expected_frames": round(len(pcm) / rate * FPS),
            "voice_frames_out": log.voice_frames, "expected_voice_frames": -(-len(pcm) // int(rate * FRAME_S)),
            "repeated_frames": sum(p["frame"] is None for p in pictures),
            "degraded_frames": sum(bool(p["degraded"]) for p in pictures),
            "frames_out_total": stats["sent_frames"], "degraded_frames_total": stats["degraded_frames"],
            "input_late_ms_p95": pct(late, 95)}


async def run(args: argparse.Namespace) -> dict:
    import actorcast.streaming.pipecat  # noqa: F401  (without the pipecat extra: PipecatMissingError before the engine is built)
    from actorcast.actors.engine import Engine
    from actorcast.streaming.app import LIVE_STAGE_THREADS

    engine = await asyncio.to_thread(Engine, weights=args.weights, stage_threads=LIVE_STAGE_THREADS)
    try:
        return await measure(engine, args.seconds)
    finally:
        await asyncio.to_thread(engine.close)


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench/pipecat_latency.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="directory for pipecat.json")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of speech to say (default 10)")
    parser.add_argument("--weights", type=Path, default=None, help="weights directory (default: the shipped ones)")
    args = parser.parse_args()
    with contextlib.suppress(ImportError):  # Pipecat logs through loguru, at DEBUG by default
        from loguru import logger

        logger.remove()
        logger.add(sys.stderr, level="WARNING")
    try:
        result = asyncio.run(run(args))
    except ActorcastError as e:
        sys.exit(f"bench/pipecat_latency.py: {e}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = write_json(args.out, "pipecat", result)
    print(json.dumps(result, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
