"""actorcast as the face of a LiveKit agent (`pip install 'actorcast[livekit]'`), self-hosted, on CPU or Ray.

    avatar = ActorcastAvatarSession(identity=3)                 # or portrait=..., worker=True, address=...
    await avatar.start(agent_session, room=ctx.room)
    await agent_session.start(agent, room=ctx.room, room_output_options=RoomOutputOptions(audio_enabled=False))

`ActorcastVideoGenerator` is a `livekit.agents.voice.avatar.VideoGenerator` over one actorcast Session: the agent's
speech comes in by `push_audio` (rtc.AudioFrame at any rate and channel count, AudioSegmentEnd after each
utterance); out come 25 rtc.VideoFrames a second and the same speech as 48 kHz mono rtc.AudioFrames, paced with
the voice as the clock exactly as the Pipecat service paces them (streaming.live_audio, the core both run):

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

`ActorcastAvatarSession` runs it in the agent's process (QueueAudioOutput + AvatarRunner, tracks published by the
agent), or as its own participant in a worker process (`worker=True`: DataStreamAudioOutput; the worker is
`python -m actorcast.streaming.livekit`, models in it or on Ray with `address`).
"""

import argparse
import asyncio
import collections
import itertools
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from actorcast.actors.framing import Framing
from actorcast.models.errors import ActorcastError, ConfigError
from actorcast.models.timebase import FPS
from actorcast.streaming.agent_avatar import build_engine, engine_args, face_of, open_face
from actorcast.streaming.live_audio import HALF_S, SLOT_S, LiveVoice
from actorcast.streaming.tracks import VOICE_BLOCK, VOICE_PER_FRAME, VOICE_RATE
from actorcast.streaming.voice_clock import Slot


class LivekitMissingError(ActorcastError, ImportError):
    """The `livekit` extra is not installed."""


try:
    from livekit import rtc
    from livekit.agents import get_job_context
    from livekit.agents.types import ATTRIBUTE_PUBLISH_ON_BEHALF
    from livekit.agents.voice.avatar import (AudioSegmentEnd, AvatarOptions, AvatarRunner, AvatarSession,
                                             DataStreamAudioOutput, DataStreamAudioReceiver, QueueAudioOutput,
                                             VideoGenerator)
except ImportError:
    raise LivekitMissingError("the LiveKit avatar needs livekit-agents: pip install 'actorcast[livekit]'") from None

log = logging.getLogger(__name__)

HOLD_WAIT_S = 1.0  # clear_buffer: how long to wait for the consumer to take the frame it holds
TOKEN_ENV = "ACTORCAST_LIVEKIT_TOKEN"  # the worker's room token: in its environment, not on its command line


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
    identity: a built-in identity; portrait: a photo framed by actors.framing.frame_reference (its rig animates
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


def worker_token(api_key: str, api_secret: str, room: str, identity: str, name: str, agent_identity: str) -> str:
    """A room token for the avatar worker: an agent participant that publishes on behalf of `agent_identity`."""
    from livekit import api

    return (api.AccessToken(api_key, api_secret).with_kind("agent").with_identity(identity).with_name(name)
            .with_grants(api.VideoGrants(room_join=True, room=room))
            .with_attributes({ATTRIBUTE_PUBLISH_ON_BEHALF: agent_identity}).to_jwt())


class ActorcastAvatarSession(AvatarSession):
    """The avatar of a LiveKit agent: `await avatar.start(agent_session, room)`, then start the AgentSession with
    the room's audio output off (the avatar publishes the voice with its pictures).

    In the agent's process by default: an ActorcastVideoGenerator (the options as its own, `engine` to share
    one) behind a QueueAudioOutput and an AvatarRunner that publishes as the agent. worker=True: a worker process
    (`python -m actorcast.streaming.livekit`) joins the room as `avatar_identity` and publishes on the agent's
    behalf; the agent's audio reaches it as a DataStream. livekit_url, api_key and api_secret mint its token (else
    LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET); its models load in it, or on Ray with `address`.
    """

    def __init__(self, *, worker: bool = False, avatar_identity: str = "actorcast-avatar",
                 avatar_name: str = "actorcast", livekit_url: str | None = None, api_key: str | None = None,
                 api_secret: str | None = None, engine=None, **options):
        super().__init__()
        if worker and engine is not None:
            raise ConfigError("a worker builds its own engine: leave engine out with worker=True (address= puts "
                              "its models on Ray)")
        self.worker, self.identity, self.name = worker, avatar_identity, avatar_name
        self.credentials = (livekit_url, api_key, api_secret)
        # checked now, before anything loads; the generator is built here in-process, or in the worker
        self.generator = None if worker else ActorcastVideoGenerator(engine=engine, **options)
        self.worker_args = worker_args(**options) if worker else []
        self.runner: AvatarRunner | None = None
        self.process: asyncio.subprocess.Process | None = None
        self.local_identity: str | None = None

    @property
    def avatar_identity(self) -> str:
        return self.identity if self.worker else (self.local_identity or self.identity)

    @property
    def provider(self) -> str:
        return "actorcast"

    async def start(self, agent_session, room: "rtc.Room") -> None:
        if self.worker:
            await super().start(agent_session, room)  # the worker joins: metrics, removed when the job ends
            await self._start_worker(room)
            agent_session.output.audio = DataStreamAudioOutput(room, destination_identity=self.identity,
                                                               wait_remote_track=rtc.TrackKind.KIND_VIDEO)
            return
        # in-process: the agent itself publishes the tracks, so the base class's join wait and removal of the
        # avatar's participant (the agent's own) are left out
        job = get_job_context(required=False)
        if job is not None:
            job.add_shutdown_callback(self.aclose)
        self.local_identity = room.local_participant.identity if room.isconnected() else None
        await self.generator.start()
        audio = QueueAudioOutput()
        self.runner = AvatarRunner(room, audio_recv=audio, video_gen=self.generator,
                                   options=self.generator.avatar_options())
        await self.runner.start()
        agent_session.output.audio = audio

    async def _start_worker(self, room: "rtc.Room") -> None:
        url, key, secret = (given or os.environ.get(env) for given, env in zip(
            self.credentials, ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET")))
        if not (url and key and secret):
            raise ConfigError("the avatar worker needs the LiveKit server's URL, API key and secret: give "
                              "livekit_url/api_key/api_secret or set LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET")
        agent = room.local_participant.identity
        token = worker_token(key, secret, room.name, self.identity, self.name, agent)
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "actorcast.streaming.livekit", "--url", url, "--agent", agent, *self.worker_args,
            env={**os.environ, TOKEN_ENV: token})

    async def aclose(self) -> None:
        if self.runner is not None:
            await self.runner.aclose()
            self.runner = None
        if self.generator is not None:
            await self.generator.aclose()
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()
        if "--portrait" in self.worker_args:  # the picture handed to the worker (worker_args)
            Path(self.worker_args[self.worker_args.index("--portrait") + 1]).unlink(missing_ok=True)
        if self.worker:
            await super().aclose()


def worker_args(*, identity: int | None = None, portrait=None, emotion: str = "neutral", weights=None,
                preset: str = "tiny", use_ray: bool = False, address: str | None = None, shards: int = 1,
                size: int = 256, seed: int = 0, landmarks: np.ndarray | None = None) -> list[str]:
    """The worker's command-line options for these avatar options (checked here first). A portrait given as a
    picture or a framed photo travels as a .npz file (with its landmarks)."""
    face = face_of(identity, portrait, emotion, seed, landmarks)
    args = ["--emotion", emotion, "--preset", preset, "--shards", str(shards), "--size", str(size),
            "--seed", str(seed)]
    if identity is not None:
        args += ["--identity", str(identity)]
    if face.portrait is not None:
        fd, path = tempfile.mkstemp(prefix="actorcast-portrait-", suffix=".npz")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, portrait=face.portrait,
                     **({} if face.landmarks is None else {"landmarks": face.landmarks}))
        args += ["--portrait", path]
    if weights is not None:
        args += ["--weights", str(weights)]
    if use_ray:
        args += ["--use-ray"]
    if address is not None:
        args += ["--address", address]
    return args


def generator_from_args(args: argparse.Namespace) -> ActorcastVideoGenerator:
    portrait, landmarks = args.portrait, None
    if portrait is not None and portrait.suffix == ".npz":
        with np.load(portrait) as saved:
            portrait = saved["portrait"]
            landmarks = saved["landmarks"] if "landmarks" in saved else None
    return ActorcastVideoGenerator(identity=args.identity, portrait=portrait, landmarks=landmarks,
                                   emotion=args.emotion, weights=args.weights, preset=args.preset,
                                   use_ray=args.use_ray, address=args.address, shards=args.shards, size=args.size,
                                   seed=args.seed)


async def run_worker(url: str, token: str, generator: ActorcastVideoGenerator, agent: str | None = None) -> None:
    """Join the room as the avatar, take the agent's audio as a DataStream (from `agent`, else the first agent
    participant) and publish the avatar until the agent leaves or the room closes."""
    await generator.start()  # the models load before joining: the agent's audio waits for the video track
    room = rtc.Room()
    try:
        await room.connect(url, token)
    except rtc.ConnectError as e:
        await generator.aclose()
        raise ActorcastError(f"cannot join the LiveKit room at {url} ({e}); check the URL and that the token "
                             "is for this server") from None
    stop = asyncio.Event()
    room.on("disconnected", lambda *_: stop.set())
    room.on("participant_disconnected", lambda p: stop.set() if (
        p.identity == agent if agent else p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT) else None)
    runner = AvatarRunner(room, audio_recv=DataStreamAudioReceiver(room, sender_identity=agent),
                          video_gen=generator, options=generator.avatar_options())
    try:
        await runner.start()
        done = asyncio.create_task(runner.wait_for_complete())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({done, stopped}, return_when=asyncio.FIRST_COMPLETED)
        for task in (done, stopped):
            task.cancel()
    finally:
        await runner.aclose()
        await generator.aclose()
        await room.disconnect()


def worker_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m actorcast.streaming.livekit", description=main.__doc__)
    parser.add_argument("--url", required=True, help="the LiveKit server, e.g. ws://127.0.0.1:7880")
    parser.add_argument("--agent", default=None, help="identity of the agent whose audio to take")
    parser.add_argument("--identity", type=int, default=None)
    parser.add_argument("--portrait", type=Path, default=None, help="an image file, or a .npz made by worker_args")
    parser.add_argument("--emotion", default="neutral")
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--use-ray", action="store_true")
    parser.add_argument("--address", default=None, help="a Ray cluster for the models")
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> None:
    """The avatar worker: `python -m actorcast.streaming.livekit --url URL` with the room token in
    $ACTORCAST_LIVEKIT_TOKEN (ActorcastAvatarSession(worker=True) starts it so)."""
    args = worker_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        token = os.environ.get(TOKEN_ENV)
        if not token:
            raise ConfigError(f"no room token: set {TOKEN_ENV} (ActorcastAvatarSession(worker=True) does)")
        asyncio.run(run_worker(args.url, token, generator_from_args(args), args.agent))
    except ActorcastError as e:
        sys.exit(f"actorcast livekit worker: {e}")
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
