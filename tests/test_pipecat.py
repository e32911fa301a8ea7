"""ActorcastVideoService in real Pipecat pipelines: through the SmallWebRTC output transport to an aiortc client on
127.0.0.1 (no STUN), and through Pipecat's runner alone for the input-side checks."""

import asyncio
import logging
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest

pytest.importorskip("pipecat", reason="the pipecat extra is not installed: pip install 'actorcast[pipecat]'")

from aiortc import RTCPeerConnection, RTCSessionDescription  # noqa: E402
from aiortc.mediastreams import MediaStreamError  # noqa: E402
from loguru import logger  # noqa: E402
from pipecat.frames.frames import (EndFrame, InterruptionFrame, OutputAudioRawFrame,  # noqa: E402
                                   OutputImageRawFrame, TTSAudioRawFrame, TTSStartedFrame, TTSStoppedFrame)
from pipecat.observers.base_observer import BaseObserver, FramePushed  # noqa: E402
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.pipeline.worker import PipelineWorker  # noqa: E402
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor  # noqa: E402
from pipecat.transports.base_output import BaseOutputTransport  # noqa: E402
from pipecat.transports.base_transport import TransportParams  # noqa: E402
from pipecat.transports.smallwebrtc.connection import SmallWebRTCConnection  # noqa: E402
from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport  # noqa: E402
from pipecat.workers.runner import WorkerRunner  # noqa: E402

from actorcast.actors.engine import Engine  # noqa: E402
from actorcast.models.errors import ConfigError, InputError  # noqa: E402
from actorcast.models.timebase import SAMPLES_PER_FRAME  # noqa: E402
from actorcast.streaming.client import Received  # noqa: E402
from actorcast.streaming.ice import candidate_hosts, rtc_configuration, set_local_description  # noqa: E402
from actorcast.streaming.pipecat import VOICE_LAG, ActorcastVideoService, say_through  # noqa: E402
from actorcast.streaming.receiver import receiver_of, set_audio_prefetch  # noqa: E402
from actorcast.streaming.tracks import VOICE_RATE, decode_audio_48k  # noqa: E402
from tests.untrained import write_untrained_weights  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SIZE = 128  # pictures sent; the untrained decoder renders 64² (cheap on a busy 2-core machine)
BLOCK = 16  # side of the squares that stamp a frame index on a picture (VP8 keeps them black or white)

logger.remove()  # Pipecat logs through loguru at DEBUG by default
logger.add(sys.stderr, level="WARNING")


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    weights = write_untrained_weights(tmp_path_factory.mktemp("pipecat") / "weights", resolution=64)
    with Engine(weights=weights, size=SIZE, stage_threads=1) as e:
        yield e


def speech(rate: int, seconds: float, channels: int = 1, offset_s: float = 0.0) -> np.ndarray:
    """The sample speech at `rate` Hz as interleaved int16 (samples * channels,)."""
    pcm48 = decode_audio_48k((ROOT / "assets" / "sample_speech.wav").read_bytes())
    pcm48 = pcm48[int(offset_s * VOICE_RATE):int((offset_s + seconds) * VOICE_RATE)]
    return np.repeat(resample(pcm48, VOICE_RATE, rate), channels)


def resample(pcm: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    resampler = av.AudioResampler(format="s16", layout="mono", rate=rate_out)
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1).astype(np.int16), format="s16", layout="mono")
    frame.sample_rate = rate_in
    return np.concatenate([o.to_ndarray().reshape(-1) for o in [*resampler.resample(frame), *resampler.resample(None)]])


def tts_frames(pcm: np.ndarray, rate: int, channels: int, context: str) -> list:
    """An utterance as a TTS service sends it: started, 20 ms audio frames, stopped."""
    step = rate // 50 * channels
    return [TTSStartedFrame(context_id=context),
            *(TTSAudioRawFrame(pcm[i:i + step].tobytes(), rate, channels, context_id=context)
              for i in range(0, len(pcm), step)),
            TTSStoppedFrame(context_id=context)]


class Recorder(BaseObserver):
    """Every frame the service pushes downstream, with the wall time it was pushed."""

    def __init__(self, service):
        super().__init__()
        self.service, self.frames = service, []

    async def on_push_frame(self, data: FramePushed):
        if data.source is self.service and data.direction == FrameDirection.DOWNSTREAM:
            self.frames.append((time.time(), data.frame))


class StampIndex(FrameProcessor):
    """Writes each picture's session frame index (+1; 0 for a repeat) as 16 black/white squares on its top rows,
    so the client can tell which frame it received."""

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        if isinstance(frame, OutputImageRawFrame):
            w, h = frame.size
            image = np.frombuffer(frame.image, np.uint8).reshape(h, w, 3).copy()
            code = (frame.metadata["actorcast"]["frame"] or -1) + 1
            for bit in range(16):
                y, x = bit // (w // BLOCK) * BLOCK, bit % (w // BLOCK) * BLOCK
                image[y:y + BLOCK, x:x + BLOCK] = 255 * ((code >> bit) & 1)
            frame.image = image.tobytes()
        await self.push_frame(frame, direction)


def read_index(image: np.ndarray) -> int | None:
    w = image.shape[1]
    bits = [image[b // (w // BLOCK) * BLOCK + 4:b // (w // BLOCK) * BLOCK + 12,
                  b % (w // BLOCK) * BLOCK + 4:b % (w // BLOCK) * BLOCK + 12].mean() > 128 for b in range(16)]
    code = sum(int(bit) << b for b, bit in enumerate(bits))
    return code - 1 if code else None


async def collect(track, rec: Received, indices: list) -> None:
    resampler = av.AudioResampler(format="s16", layout="mono", rate=VOICE_RATE)
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        now = time.time()
        if track.kind == "video":
            indices.append((now, read_index(frame.to_ndarray(format="rgb24"))))
        else:
            for out in resampler.resample(frame):
                rec.voice.append(out.to_ndarray().reshape(-1))
                rec.voice_t.append(now)


async def wait_for(predicate, timeout: float) -> None:
    t0 = time.monotonic()
    while not predicate():
        assert time.monotonic() - t0 < timeout, "condition not reached in time"
        await asyncio.sleep(0.05)


def sound_blocks(frames) -> int:
    """How many of these audio frames hold sound (anything louder than -40 dBFS)."""
    return sum(int(np.abs(np.frombuffer(f.audio, np.int16)).max() > 300) for f in frames)


class StallOnce:
    """Holds up the output transport's video task once, for `seconds`, at the first picture it draws after `at`
    (wall time): what a busy machine does to it (its resize runs in a thread, so the task can wait while the
    event loop, and the service, go on)."""

    def __init__(self, monkeypatch, seconds: float):
        self.seconds, self.at, self.done = seconds, float("inf"), False
        draw = BaseOutputTransport.MediaSender._draw_image

        async def stalled(sender, frame):
            if not self.done and time.time() >= self.at:
                self.done = True
                await asyncio.sleep(self.seconds)
            await draw(sender, frame)

        monkeypatch.setattr(BaseOutputTransport.MediaSender, "_draw_image", stalled)


def pictures(recorded) -> list[tuple[float, OutputImageRawFrame]]:
    return [(t, f) for t, f in recorded if isinstance(f, OutputImageRawFrame)]


def pictures_after(recorded, pts: int) -> list[OutputImageRawFrame]:
    """The pictures pushed with a pipeline-clock time after `pts`, in order."""
    return [f for _, f in pictures(recorded) if f.pts > pts]


def media_frames(recorded) -> list:
    """The pictures and audio frames the service pushed, in order."""
    return [f for _, f in recorded if isinstance(f, (OutputImageRawFrame, OutputAudioRawFrame))]


@pytest.mark.slow
@pytest.mark.asyncio
async def test_speech_through_smallwebrtc_to_a_client(engine, caplog, monkeypatch):
    """Idle, an utterance at 24 kHz (with bad frames in it, and the transport's video held up 300 ms in it), idle,
    an utterance at 44.1 kHz stereo that is interrupted, idle: received over SmallWebRTC on loopback."""
    stall = StallOnce(monkeypatch, 0.3)
    service = ActorcastVideoService(engine=engine, identity=3)
    connection = SmallWebRTCConnection(ice_servers=[])
    client = RTCPeerConnection(rtc_configuration())
    rec, indices, tasks = Received(), [], []

    looked = {}
    interrupt = service.interrupt

    def interrupt_and_look():  # what the service holds just before and just after the barge-in
        looked["unplayed"] = service.content.read(service.voice_end, service.content.end - service.voice_end)
        idle_from = interrupt()
        session = service.session
        looked.update(fed=service.audio_in.fed, needed=(idle_from + session.chunk_frames + session.lookahead)
                      * SAMPLES_PER_FRAME, after=service.content.read(service.voice_end,
                                                                      service.content.end - service.voice_end))
        return idle_from

    service.interrupt = interrupt_and_look

    def on_track(track):
        if track.kind == "audio":
            set_audio_prefetch(receiver_of(client, track), 1)  # loopback: no jitter to absorb
        tasks.append(asyncio.create_task(collect(track, rec, indices)))

    client.on("track", on_track)
    client.addTransceiver("audio", direction="recvonly")
    client.addTransceiver("video", direction="recvonly")
    await set_local_description(client, await client.createOffer(), ["127.0.0.1"])
    with candidate_hosts(["127.0.0.1"]):  # aioice leaves 127.0.0.1 out of its candidates
        await connection.initialize(sdp=client.localDescription.sdp, type="offer")
    answer = connection.get_answer()
    await client.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))

    params = TransportParams(**service.output_params(), audio_out_end_silence_secs=0)
    transport = SmallWebRTCTransport(connection, params)
    recorder = Recorder(service)
    worker = PipelineWorker(Pipeline([service, StampIndex(), transport.output()]), observers=[recorder],
                            idle_timeout_secs=None)
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    try:
        await wait_for(lambda: len(indices) >= 25, 60.0)  # a second of video with no audio at all: idling
        first = speech(24_000, 2.5)
        utterance = tts_frames(first, 24_000, 1, "one")
        bad = [TTSAudioRawFrame(b"", 24_000, 1), TTSAudioRawFrame(b"\x00" * 5, 24_000, 1),
               TTSAudioRawFrame(b"\x00" * 960, 0, 1)]
        with caplog.at_level(logging.WARNING, logger="actorcast.streaming.pipecat"):
            stall.at = time.time() + 0.5
            await worker.queue_frames(utterance[:40] + bad + utterance[40:])  # faster than real time, like a TTS
            await wait_for(lambda: any(isinstance(f, TTSStoppedFrame) for _, f in recorder.frames), 30.0)
        await asyncio.sleep(1.5)  # idle between utterances
        t_second = time.time()
        await worker.queue_frames(tts_frames(speech(44_100, 4.0, channels=2, offset_s=3.0), 44_100, 2, "two")[:-1])
        await wait_for(lambda: sum(isinstance(f, TTSAudioRawFrame) and f.context_id == "two"
                                   for _, f in recorder.frames) >= 75, 30.0)  # 1.5 s of it was sent
        await worker.queue_frame(InterruptionFrame())
        await wait_for(lambda: service.interrupts and service.interrupts[0]["idle_media_ms"] is not None, 10.0)
        await asyncio.sleep(1.5)
        stats = service.stats()
        await worker.queue_frame(EndFrame())
        await asyncio.wait_for(running, 30.0)
    finally:
        if not running.done():
            await runner.cancel()
        await client.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    sent = recorder.frames
    pics = pictures(sent)
    # bad frames: a warning each, and the stream went on (the utterance around them came out whole)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert stats["bad_audio_frames"] == 3 and len(warnings) == 3
    assert "it is empty" in warnings[0] and "not a whole number" in warnings[1] and "sample_rate=0" in warnings[2]
    # 25 fps in media time: from the first picture on, each picture goes out with 40 ms of voice (two 20 ms frames
    # of 48 kHz), and an on-time picture of frame n with the voice from content position 1920 n - VOICE_LAG on
    # (its sound leaves VOICE_LAG_S after it: a receiver decodes video later than audio)
    media = media_frames(sent)
    media = media[next(i for i, f in enumerate(media) if isinstance(f, OutputImageRawFrame)):]
    slots = "".join("P" if isinstance(f, OutputImageRawFrame) else "a" for f in media).split("P")[1:]
    assert len(slots) > 100 and all(v == "aa" for v in slots[:-1]) and slots[-1] in ("", "a", "aa"), slots
    #                                                                              (the last slot may end early)
    assert all(len(f.audio) == 2 * 960 and f.sample_rate == VOICE_RATE for f in media[1:] if not isinstance(
        f, OutputImageRawFrame))
    on_time = [(f, media[i + 1]) for i, f in enumerate(media[:-1]) if isinstance(f, OutputImageRawFrame)
               and f.metadata["actorcast"]["frame"] is not None and not f.metadata["actorcast"]["degraded"]]
    assert len(on_time) > 50 and all(audio.metadata["actorcast"]["content"] == pic.metadata["actorcast"]["frame"]
                                     * 1920 - VOICE_LAG for pic, audio in on_time
                                     if pic.metadata["actorcast"]["frame"] > 0)
    # the client got the video: the pictures sent after its first frame, in order (the frame rate and A/V offset
    # it sees are wall-clock figures, a benchmark's business, not a test's)
    indices = indices[5:]  # (the first pictures, at the encoder's starting bitrate, are too blurred to read)
    real = [n for _, n in indices if n is not None]
    assert len(indices) > 50 and all(np.diff(real) >= 0)
    assert len(indices) - len(real) <= service.repeated_frames  # the rest: repeats, each counted by the service
    t_first = indices[0][0]
    sent_after = {f.metadata["actorcast"]["frame"] for t, f in pics if t >= t_first - 0.5} - {None}
    assert len(set(real) & sent_after) >= 0.9 * len(sent_after)  # the transport shows the latest picture
    assert stall.done  # (and the transport's held-up video drained: the pictures after it still came through)
    # TTS brackets: started before the first sound of each utterance, stopped after the last; idle in between
    kinds = [(type(f).__name__, getattr(f, "context_id", None)) for _, f in sent]
    assert kinds.count(("TTSStartedFrame", "one")) == 1 and kinds.count(("TTSStoppedFrame", "one")) == 1
    started, stopped = kinds.index(("TTSStartedFrame", "one")), kinds.index(("TTSStoppedFrame", "one"))
    voiced = [i for i, (_, f) in enumerate(sent) if isinstance(f, OutputAudioRawFrame)
              and np.abs(np.frombuffer(f.audio, np.int16)).max() > 300]
    assert voiced and started < voiced[0]
    first_voiced_after = [i for i in voiced if i > stopped]
    between = [f for t, f in sent[stopped + 1:] if t < t_second]
    between_audio = [f for f in between if isinstance(f, OutputAudioRawFrame)]
    assert between_audio and all(type(f) is OutputAudioRawFrame for f in between_audio)  # not TTS
    one = [f.metadata["actorcast"]["content"] for _, f in sent
           if isinstance(f, TTSAudioRawFrame) and f.context_id == "one"]
    one = [c for c in one if c is not None]  # (on a busy machine the clock may hold over digital silence inside
    #                                           the utterance: a silent frame with no content position, none skipped)
    end_of_one = max(one) + 960
    assert sound_blocks(between_audio) == 0  # silence after the utterance
    moving = {f.metadata["actorcast"]["frame"] for f in between if isinstance(f, OutputImageRawFrame)} - {None}
    assert len(moving) >= 2  # and the avatar went on moving
    assert first_voiced_after and sent[first_voiced_after[0]][0] >= t_second
    covered = np.zeros(end_of_one - min(one), bool)  # every 48 kHz sample of the first utterance was voiced
    for c in one:
        covered[c - min(one):c - min(one) + 960] = True
    assert covered.all() and 125 <= len(one) <= 127  # 2.5 s in 20 ms frames (+ the resampler's tail, + one frame
    #                                                    when the voice's frames straddle the utterance's ends)
    # interruption: the silence that makes the first idle frame went in at once (not in real time; how soon
    # the picture is idle is a wall-clock figure, measured for live calls by bench/live.py), the voice not yet
    # sent became silence, and no picture of the interrupted speech went out after it
    event = service.interrupts[0]
    assert stats["interrupt_idle_media_ms"][0] is not None
    assert looked["fed"] >= looked["needed"]
    assert np.abs(looked["unplayed"]).max() > 1000 and looked["after"].size and not looked["after"].any()
    shown_after = [f.metadata["actorcast"]["frame"] for f in pictures_after(sent, event["pts"])]
    real_after = [n for n in shown_after if n is not None]
    assert real_after and min(real_after) >= event["frame"]
    t_interrupted, voice_at = event["t"], event["voice_at"]
    late = [f for t, f in sent if isinstance(f, OutputAudioRawFrame) and t > t_interrupted]
    assert late and sound_blocks(f for f in late if (f.metadata["actorcast"]["content"] or voice_at) >= voice_at) == 0
    #    (a block read just before the interrupt may still go out: the transport drops it with its queue)
    assert not any(isinstance(f, TTSStoppedFrame) and f.context_id == "two" for _, f in sent)
    heard = list(rec.voice)[-25:]  # the last half second the client heard: silence, though "two" had 2.5 s left
    assert len(heard) == 25 and np.abs(np.concatenate(heard)).mean() < 5


@pytest.mark.asyncio
async def test_any_input_rate_reaches_the_session_at_16k(engine):
    """Speech at 8 kHz, 22.05 kHz and 44.1 kHz stereo, through Pipecat's runner: the session is fed 16 kHz
    (the same sound, its length kept), and the voice it sends on is that sound at 48 kHz."""
    service = ActorcastVideoService(engine=engine, identity=1)
    worker = PipelineWorker(Pipeline([service]), idle_timeout_secs=None)
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    fed = []
    try:
        await wait_for(lambda: service.session is not None and service.tasks, 30.0)
        feed = service.audio_in.feed
        service.audio_in.feed = lambda pcm: (fed.append(pcm.copy()), feed(pcm))  # what the session is given
        tone = np.sin(2 * np.pi * 440.0 * np.arange(0, 1.0, 1 / 48_000)) * 8000
        for rate, channels in ((8_000, 1), (22_050, 1), (44_100, 2)):
            pcm = np.repeat(resample(tone.astype(np.int16), 48_000, rate), channels)
            await worker.queue_frames(tts_frames(pcm, rate, channels, f"{rate}"))
        await worker.queue_frame(EndFrame())
        await asyncio.wait_for(running, 60.0)
    finally:
        if not running.done():
            await runner.cancel()
    pcm16 = np.concatenate(fed)
    loud = np.flatnonzero(np.abs(pcm16) > 0.05)
    assert abs((loud[-1] - loud[0]) / 16_000 - 3.0) < 0.1  # three one-second tones back to back
    spectrum = np.abs(np.fft.rfft(pcm16[loud[0]:loud[-1]]))
    assert abs(np.argmax(spectrum) * 16_000 / (loud[-1] - loud[0]) - 440.0) < 3.0
    assert all(abs(np.abs(pcm16[loud[0] + k * 16_000 + 2000:loud[0] + k * 16_000 + 14_000]).max() - 8000 / 32768)
               < 0.03 for k in range(3))  # each rate arrives at the same level
    voice = service.content.read(0, service.content.end).astype(np.float32)
    voiced = np.flatnonzero(np.abs(voice) > 1600)
    assert abs((voiced[-1] - voiced[0]) / 48_000 - 3.0) < 0.1
    assert abs(np.argmax(np.abs(np.fft.rfft(voice[voiced[0]:voiced[-1]]))) * 48_000 / (voiced[-1] - voiced[0])
               - 440.0) < 3.0


@pytest.mark.slow
@pytest.mark.asyncio
async def test_on_ray_the_service_builds_its_engine_and_closes_it(ray_local, tmp_path):
    """use_ray=True: the stages are Ray actors, built by the service in setup and gone after the EndFrame."""
    weights = write_untrained_weights(tmp_path / "weights", resolution=64)
    service = ActorcastVideoService(weights=weights, size=64, use_ray=True, identity=2)
    recorder = Recorder(service)
    started = asyncio.create_task(say_through(service, [(speech(16_000, 1.0), 16_000)], pause_s=0.5,
                                              observers=[recorder]))
    await wait_for(lambda: service.session is not None or started.done(), 120.0)
    actors = [service.engine.audio, service.engine.motion, *service.engine.shards]
    stats = await asyncio.wait_for(started, 120.0)
    spoken = [f for _, f in recorder.frames if isinstance(f, TTSAudioRawFrame) and f.context_id == "utterance-0"]
    assert stats["input_to_output_ms"]["p50"] > 0 and stats["added_latency_ms"]["p95"] > 0  # (the bench's figures)
    # the second of speech, all of it: 50 blocks, one more where it straddles an end and one for the 1 ms of
    # silence in front that stands for what the resampler holds back (VoiceResampler)
    assert 50 <= len(spoken) <= 52 and sound_blocks(spoken) > 25
    assert any(isinstance(f, OutputImageRawFrame) and f.size == (64, 64) for _, f in recorder.frames)

    def dead(stage) -> bool:
        try:
            ray_local.get(stage.actor.__ray_ready__.remote(), timeout=10)
        except ray_local.exceptions.RayActorError:
            return True
        return False

    await wait_for(lambda: all(dead(stage) for stage in actors), 60.0)  # the service built the engine: it closed it


def test_bad_options_are_refused_with_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="unknown emotion 'bored'; choose one of"):
        ActorcastVideoService(emotion="bored")
    with pytest.raises(ConfigError, match="an identity or a portrait, not both"):
        ActorcastVideoService(identity=1, portrait=np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(InputError, match="does not exist"):
        ActorcastVideoService(portrait=tmp_path / "me.png")
    with pytest.raises(InputError, match="uint8 RGB image"):
        ActorcastVideoService(portrait=np.zeros((64, 64), np.float32))


def test_a_framed_photo_goes_to_the_session_with_its_landmarks():
    """portrait=Framing: the session gets the framed square and the face's landmarks in its pixels (the photo rig)."""
    from actorcast.models.photo.framing import Face, Framing

    picture = np.random.default_rng(3).integers(0, 256, (120, 160, 3), np.uint8)
    marks = np.random.default_rng(4).uniform(40, 100, (478, 2)).astype(np.float32)
    framing = Framing(picture, (30, 10, 100), Face((40.0, 20.0, 110.0, 100.0), 0.9, marks))
    service = ActorcastVideoService(portrait=framing)
    assert np.array_equal(service.portrait, picture[10:110, 30:130])
    assert np.allclose(service.landmarks, marks - [30, 10])
    assert ActorcastVideoService(portrait=picture).landmarks is None


def test_missing_extra_names_the_install_command():
    code = ("import sys; sys.modules['pipecat'] = None\n"
            "try:\n    import streaming.pipecat\nexcept ImportError as e:\n    print(type(e).__name__, e)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == ("PipecatMissingError the Pipecat video service needs Pipecat: "
                                  "pip install 'actorcast[pipecat]'"), out.stderr
