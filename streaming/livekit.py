"""actorcast as the face of a LiveKit agent (`pip install 'actorcast[livekit]'`), self-hosted, on CPU or Ray.

    avatar = ActorcastAvatarSession(identity=3)                 # or portrait=..., worker=True, address=...
    await avatar.start(agent_session, room=ctx.room)
    await agent_session.start(agent, room=ctx.room, room_output_options=RoomOutputOptions(audio_enabled=False))

`ActorcastAvatarSession` runs an ActorcastVideoGenerator (streaming/livekit_video.py: the agent's speech in, 25
pictures a second and the same speech out) in the agent's process (QueueAudioOutput + AvatarRunner, tracks
published by the agent), or as its own participant in a worker process (`worker=True`: DataStreamAudioOutput; the
worker is `python -m actorcast.streaming.livekit`, models in it or on Ray with `address`).
docs/ARCHITECTURE.md "A live call, through the files".
"""

import argparse
import asyncio
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from actorcast.models.errors import ActorcastError, ConfigError
from actorcast.streaming.agent_avatar import face_of
from actorcast.streaming.livekit_video import ActorcastVideoGenerator, LivekitMissingError

# after livekit_video, which raises LivekitMissingError (the install command) when livekit is missing
from livekit import rtc
from livekit.agents import get_job_context
from livekit.agents.types import ATTRIBUTE_PUBLISH_ON_BEHALF
from livekit.agents.voice.avatar import (AvatarRunner, AvatarSession, DataStreamAudioOutput, DataStreamAudioReceiver,
                                         QueueAudioOutput)

__all__ = ["TOKEN_ENV", "ActorcastAvatarSession", "ActorcastVideoGenerator", "LivekitMissingError", "main",
           "run_worker", "worker_args", "worker_token"]

TOKEN_ENV = "ACTORCAST_LIVEKIT_TOKEN"  # the worker's room token: in its environment, not on its command line


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
