"""actorcast as the face of a LiveKit agent, self-hosted: the avatar's models run here (or on your Ray cluster).

    make install                                   # installs the `livekit` extra (pip install 'actorcast[livekit]')
    export LIVEKIT_URL=ws://127.0.0.1:7880 LIVEKIT_API_KEY=devkey LIVEKIT_API_SECRET=secret   # your LiveKit server
    .venv/bin/python examples/livekit_agent.py dev # LiveKit's agent CLI; then join a room (the Agents Playground,
                                                   # or any LiveKit client) and type in its chat

In a full agent the avatar starts before the AgentSession, whose own audio output is then turned off (the avatar
publishes the voice with its pictures):

    avatar = ActorcastAvatarSession(identity=3)
    await avatar.start(session, room=ctx.room)
    await session.start(agent, room=ctx.room, room_options=RoomOptions(audio_output=False))

To run without keys for any speech service, espeak-ng (Debian `espeak-ng`, through models/data/tts.py) speaks
what you type in the room's chat, and `/stop` interrupts it as a user barging in does. LiveKit's CLI owns the
command line, so the avatar's options come from the environment:

    ACTORCAST_IDENTITY=3          a built-in identity
    ACTORCAST_PORTRAIT=me.jpg     a photo instead: framed, and animated by its own rig (needs `actorcast setup`)
    ACTORCAST_AVATAR_WORKER=1     the avatar as its own participant, in a worker process (DataStream audio)
    ACTORCAST_RAY_ADDRESS=host:port   its models on a Ray cluster
"""

import asyncio
import logging
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

try:  # first: without the extra this says, in one line, what to install
    from actorcast.streaming.livekit import ActorcastAvatarSession
except ImportError as e:
    sys.exit(f"livekit_agent: {e}")

from livekit import rtc  # noqa: E402
from livekit.agents import Agent, AgentServer, AgentSession, JobContext, cli, room_io  # noqa: E402

from actorcast.models.errors import ActorcastError  # noqa: E402

log = logging.getLogger("livekit_agent")

CHAT_TOPIC = "lk.chat"  # where LiveKit clients send typed messages
SPEECH_RATE = 16_000  # espeak-ng's speech, as models/data/tts.py gives it
server = AgentServer()


def avatar_options() -> dict:
    """The avatar's options from the environment (module docstring)."""
    options: dict = {"worker": os.environ.get("ACTORCAST_AVATAR_WORKER") == "1",
                     "address": os.environ.get("ACTORCAST_RAY_ADDRESS")}
    portrait = os.environ.get("ACTORCAST_PORTRAIT")
    if portrait:
        from actorcast.models.photo.framing import frame_reference
        from actorcast.models.photo.reference import load_image

        options["portrait"] = frame_reference(load_image(portrait))
    else:
        options["identity"] = int(os.environ.get("ACTORCAST_IDENTITY", "3"))
    return options


async def spoken(text: str):
    """`text` said by espeak-ng, as 20 ms rtc.AudioFrames (what a TTS service would stream)."""
    from actorcast.models.data.tts import speak

    utterance = await asyncio.to_thread(speak, text)  # synthesis runs off the event loop
    pcm = (utterance.audio.numpy() * 32767).round().clip(-32768, 32767).astype(np.int16)
    step = SPEECH_RATE // 50
    for start in range(0, len(pcm), step):
        piece = pcm[start:start + step]
        yield rtc.AudioFrame(piece.tobytes(), SPEECH_RATE, 1, len(piece))


@server.rtc_session()
async def entrypoint(ctx: JobContext) -> None:
    await ctx.connect()
    session = AgentSession()
    try:
        avatar = ActorcastAvatarSession(**avatar_options())
        await avatar.start(session, room=ctx.room)
    except ActorcastError as e:  # an option or the models: one line that says what to do
        log.error("the avatar did not start: %s", e)
        ctx.shutdown(str(e))
        return
    await session.start(Agent(instructions="Say what you are given."), room=ctx.room,
                        room_options=room_io.RoomOptions(audio_output=False, text_input=False))

    async def say(reader: rtc.TextStreamReader, _participant: str) -> None:
        text = (await reader.read_all()).strip()
        if text == "/stop":
            await session.interrupt()
        elif text:
            session.say(text, audio=spoken(text))

    ctx.room.register_text_stream_handler(
        CHAT_TOPIC, lambda reader, participant: asyncio.ensure_future(say(reader, participant)))
    session.say("Hello! I am the face of this agent.", audio=spoken("Hello! I am the face of this agent."))


if __name__ == "__main__":
    cli.run_app(server)
