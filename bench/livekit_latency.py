"""Added latency of the LiveKit avatar: `python bench/livekit_latency.py --out DIR [--quick]` -> DIR/livekit.json.

`ActorcastVideoGenerator` (streaming/livekit.py) runs on an in-process engine (the live call's stage threads) and
feeds an rtc.AVSynchronizer with LiveKit's native audio and video sources, as AvatarRunner does (no room, no
server). It is spoken to as a streaming TTS speaks through an agent's audio output: after `warmup_s` of idling, one
utterance of `seconds` of the sample speech (assets/sample_speech.wav, repeated as needed) at 24 kHz mono in 20 ms
rtc.AudioFrames, each pushed at its own time in real time (frame k at t0 + 20 k ms), then an AudioSegmentEnd.

What is measured, per picture of speech (session frame n, timed when first given out; a slot whose frame is not
ready yet repeats the last picture and is not timed, and a frame that comes after a newer one is never shown):

    added latency(n) = t(the generator gives out the picture of frame n)
                       - t(push_audio took the rtc.AudioFrame that carried the first sample of frame n's 40 ms)

in wall-clock ms: what the avatar adds between the agent's audio output and the AVSynchronizer, where the speech
would otherwise go straight to the room's audio source. It holds the wait for the 20 ms feed clock, the rest of the
40 ms window and the model's lookahead, generation and decoding, and the wait for the picture's 25 fps slot. It is
the generator's own `input_to_output_ms` (LiveVoice._measure, over its last 1500 pictures of speech).
`fed_to_sent_ms_*` is the part after the feed clock (`added_latency_ms`, over every picture, idle ones too).

Frames out: the pictures given out from the utterance's first audio frame out to its AudioSegmentEnd, with the
repeated and degraded ones among them; `speech_out_s`: the utterance's audio given out (what AvatarRunner reports
as its playback position; the speech's own length when nothing is lost). `input_late_ms_p95`: how late this
script pushed its audio frames against the real-time schedule (a busy machine shows here first).
"""

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from bench.common import write_json  # noqa: E402
from bench.pipecat_latency import pct, tts_speech, wait_until  # noqa: E402
from actorcast.models.errors import ActorcastError, ConfigError  # noqa: E402
from actorcast.models.timebase import FPS  # noqa: E402

TTS_RATE = 24_000  # Hz: what streaming TTS services commonly send (PCM at 24 kHz)
FRAME_S = 0.02  # one rtc.AudioFrame per 20 ms of speech
START_TIMEOUT_S = 120.0  # engine set-up and the first picture
DRAIN_TIMEOUT_S = 30.0  # after the last audio frame: until the generator has given all of it out


class Consumer:
    """Takes everything the generator gives, as AvatarRunner does: media into an rtc.AVSynchronizer."""

    def __init__(self, generator, size: int):
        from livekit import rtc

        self.rtc = rtc
        self.audio_source = rtc.AudioSource(48_000, 1, queue_size_ms=100)
        self.video_source = rtc.VideoSource(size, size)
        self.sync = rtc.AVSynchronizer(audio_source=self.audio_source, video_source=self.video_source,
                                       video_fps=FPS, video_queue_size_ms=100)
        self.generator = generator
        self.pictures = []  # userdata["actorcast"] of the pictures given while the utterance plays
        self.speech_out_s = 0.0
        self.speaking = self.ended = False

    async def run(self) -> None:
        async for item in self.generator:
            if isinstance(item, self.rtc.AudioFrame):
                self.speaking = True
                self.speech_out_s += item.duration
            elif isinstance(item, self.rtc.VideoFrame):
                if self.speaking:
                    self.pictures.append(item.userdata["actorcast"])
            else:  # AudioSegmentEnd
                self.speaking, self.ended = False, True
                continue
            await self.sync.push(item)

    async def aclose(self) -> None:
        await self.sync.aclose()
        await self.audio_source.aclose()
        await self.video_source.aclose()


async def say_in_real_time(generator, pcm: np.ndarray, rate: int) -> list[float]:
    """Push one utterance as 20 ms rtc.AudioFrames, frame k at t0 + 20 k ms, then its AudioSegmentEnd; returns
    how late each frame was (ms)."""
    from livekit import rtc
    from livekit.agents.voice.avatar import AudioSegmentEnd

    step, late = int(rate * FRAME_S), []
    t0 = time.monotonic()
    for k, i in enumerate(range(0, len(pcm), step)):
        await asyncio.sleep(max(0.0, t0 + k * FRAME_S - time.monotonic()))
        late.append((time.monotonic() - t0 - k * FRAME_S) * 1000.0)
        piece = pcm[i:i + step]
        await generator.push_audio(rtc.AudioFrame(piece.tobytes(), rate, 1, len(piece)))
    await generator.push_audio(AudioSegmentEnd())
    return late


async def measure(engine, seconds: float = 10.0, *, identity: int = 3, rate: int = TTS_RATE,
                  warmup_s: float = 1.0) -> dict:
    """Speak `seconds` of speech at `rate` Hz through an ActorcastVideoGenerator on `engine` (an
    actors.engine.Engine, left open) in real time; its added latency and frames out, as a JSON-able dict (the
    module docstring defines each figure). LivekitMissingError without the livekit extra; ActorcastError if the
    generator fails or stalls."""
    if not seconds > 0 or not warmup_s >= 0:
        raise ConfigError(f"seconds={seconds!r} must be > 0 and warmup_s={warmup_s!r} >= 0")
    from actorcast.streaming.livekit import ActorcastVideoGenerator  # LivekitMissingError (the install command)

    pcm = tts_speech(seconds, rate)
    generator = ActorcastVideoGenerator(engine=engine, identity=identity)
    consumer = Consumer(generator, engine.size)
    running = asyncio.create_task(consumer.run())
    try:
        # 1. set up, then idle until the session makes pictures at its steady pace
        await wait_until(lambda: generator.live.pictures_sent, running, START_TIMEOUT_S, "first picture",
                         "the avatar")
        await asyncio.sleep(warmup_s)
        # 2. the utterance, in real time, and until all of it is out (its AudioSegmentEnd given)
        late = await say_in_real_time(generator, pcm, rate)
        await wait_until(lambda: consumer.ended, running, DRAIN_TIMEOUT_S, "end of the speech given out",
                         "the avatar")
        stats = generator.stats()
        added = list(generator.live.input_ms)  # per picture of speech: audio frame pushed -> picture out, ms
        fed = list(generator.live.added_ms)  # per picture: its first sample fed -> picture out, ms
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await consumer.aclose()
        await generator.aclose()
    pictures = consumer.pictures
    return {"speech_s": round(len(pcm) / rate, 3), "tts_rate_hz": rate, "tts_frame_ms": FRAME_S * 1000.0,
            "size": engine.size, "preset": engine.preset,
            "added_latency_ms_p50": pct(added, 50), "added_latency_ms_p95": pct(added, 95),
            "added_latency_ms_max": round(max(added), 1) if added else None, "latency_pictures": len(added),
            "fed_to_sent_ms_p50": pct(fed, 50), "fed_to_sent_ms_p95": pct(fed, 95),
            "frames_out": len(pictures), "expected_frames": round(len(pcm) / rate * FPS),
            "speech_out_s": round(consumer.speech_out_s, 3),
            "repeated_frames": sum(p["frame"] is None for p in pictures),
            "degraded_frames": sum(bool(p["degraded"]) for p in pictures),
            "frames_out_total": stats["sent_frames"], "degraded_frames_total": stats["degraded_frames"],
            "input_late_ms_p95": pct(late, 95)}


async def run(args: argparse.Namespace) -> dict:
    import actorcast.streaming.livekit  # noqa: F401  (without the livekit extra: LivekitMissingError before the engine is built)
    from actorcast.actors.engine import Engine
    from actorcast.streaming.app import LIVE_STAGE_THREADS

    engine = await asyncio.to_thread(Engine, weights=args.weights, stage_threads=LIVE_STAGE_THREADS)
    try:
        if args.quick:
            return await measure(engine, min(args.seconds, 2.0), warmup_s=0.5)
        return await measure(engine, args.seconds)
    finally:
        await asyncio.to_thread(engine.close)


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench/livekit_latency.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="directory for livekit.json")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of speech to say (default 10)")
    parser.add_argument("--weights", type=Path, default=None, help="weights directory (default: the shipped ones)")
    parser.add_argument("--quick", action="store_true", help="the small run: 2 s of speech after 0.5 s idle")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = asyncio.run(run(args))
    except ActorcastError as e:
        sys.exit(f"bench/livekit_latency.py: {e}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = write_json(args.out, "livekit", result)
    print(json.dumps(result, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
