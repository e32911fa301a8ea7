"""The LiveKit avatar's session and worker (streaming/livekit.py), without a LiveKit server: its options checked
before anything loads, a framed photo reaching the session in the agent's process and in a worker, the worker's
token, and the worker's one-line errors."""

import asyncio
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("livekit.agents", reason="the livekit extra is not installed: pip install 'actorcast[livekit]'")

from actorcast.models.errors import ActorcastError, ConfigError  # noqa: E402
from actorcast.streaming.livekit import (TOKEN_ENV, ActorcastAvatarSession, ActorcastVideoGenerator,  # noqa: E402
                                         generator_from_args, run_worker, worker_args, worker_parser, worker_token)
from tests.livekit_helpers import ROOT, SIZE, LoopbackRoom, untrained_engine  # noqa: E402


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    yield from untrained_engine(tmp_path_factory)


class FakeSession:
    """What the generator needs of a Session, recording what it is fed."""

    chunk_frames, lookahead = 4, 2

    def __init__(self):
        self.fed = []

    def feed(self, pcm):
        self.fed.append(pcm)

    async def frames(self):
        await asyncio.Event().wait()
        yield

    async def close(self):
        pass


class FakeEngine:
    size = SIZE

    def __init__(self):
        self.opened = {}

    async def open_session(self, **kwargs):
        self.opened = kwargs
        return FakeSession()

    def close(self):
        pass


@pytest.mark.asyncio
async def test_a_framed_photo_reaches_the_session_with_its_landmarks_in_process_and_in_a_worker(tmp_path):
    from actorcast.models.photo.framing import Face, Framing

    picture = np.random.default_rng(3).integers(0, 256, (120, 160, 3), np.uint8)
    marks = np.random.default_rng(4).uniform(40, 100, (478, 2)).astype(np.float32)
    framing = Framing(picture, (30, 10, 100), Face((40.0, 20.0, 110.0, 100.0), 0.9, marks))
    args = worker_parser().parse_args(["--url", "ws://127.0.0.1:7880", *worker_args(portrait=framing, emotion="happy")])
    for gen in (ActorcastVideoGenerator(engine=FakeEngine(), portrait=framing), generator_from_args(args)):
        if gen.engine is None:
            gen.engine = FakeEngine()
        await gen.start()
        opened = gen.engine.opened
        await gen.aclose()
        assert np.array_equal(opened["reference"], picture[10:110, 30:130])
        assert np.allclose(opened["landmarks"], marks - [30, 10]) and opened["identity_seed"] is None
    assert opened["emotion"] == "happy"
    assert ActorcastVideoGenerator(portrait=picture).face.landmarks is None


def test_bad_options_are_refused_with_what_to_do(engine, monkeypatch):
    with pytest.raises(ConfigError, match="unknown emotion 'bored'; choose one of"):
        ActorcastVideoGenerator(emotion="bored")
    with pytest.raises(ConfigError, match="an identity or a portrait, not both"):
        ActorcastAvatarSession(worker=True, identity=1, portrait=np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ConfigError, match="leave engine out with worker=True"):
        ActorcastAvatarSession(worker=True, engine=engine)
    for name in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"):
        monkeypatch.delenv(name, raising=False)
    avatar = ActorcastAvatarSession(worker=True, identity=1)
    with pytest.raises(ConfigError, match="LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET"):
        asyncio.run(avatar._start_worker(LoopbackRoom()))


def test_the_worker_token_joins_as_an_agent_on_the_agents_behalf():
    from livekit import api

    token = worker_token("key", "secret-of-at-least-32-characters-long", "room-1", "actorcast-avatar",
                         "actorcast", "agent-7")
    claims = api.TokenVerifier("key", "secret-of-at-least-32-characters-long").verify(token)
    assert claims.identity == "actorcast-avatar" and claims.kind == "agent"
    assert claims.video.room_join and claims.video.room == "room-1"
    assert claims.attributes == {"lk.publish_on_behalf": "agent-7"}


@pytest.mark.asyncio
async def test_a_worker_that_cannot_reach_the_server_says_so_in_one_line(engine):
    gen = ActorcastVideoGenerator(engine=engine, identity=1)
    with pytest.raises(ActorcastError, match=r"^cannot join the LiveKit room at ws://127.0.0.1:9 \(.*\); check"):
        await run_worker("ws://127.0.0.1:9", "not-a-token", gen)
    assert gen.closed


def test_missing_extra_names_the_install_command():
    code = ("import sys; sys.modules['livekit'] = None\n"
            "try:\n    import streaming.livekit\nexcept ImportError as e:\n    print(type(e).__name__, e)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == ("LivekitMissingError the LiveKit avatar needs livekit-agents: "
                                  "pip install 'actorcast[livekit]'"), out.stderr


def test_the_worker_wants_its_token(monkeypatch, capsys):
    from actorcast.streaming.livekit import main

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(SystemExit, match=f"no room token: set {TOKEN_ENV}"):
        main(["--url", "ws://127.0.0.1:9", "--identity", "1"])
