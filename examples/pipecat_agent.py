"""actorcast as the face of a Pipecat voice agent.

    make install                                   # installs the `pipecat` extra (pip install 'actorcast[pipecat]')
    .venv/bin/python examples/pipecat_agent.py     # then open http://127.0.0.1:7860/ and press Start

The avatar (streaming.pipecat.ActorcastVideoService) goes between the TTS and the output transport, where
Pipecat's avatar services go; in a full agent:

    Pipeline([transport.input(), stt, user_context, llm, tts, avatar, transport.output(), assistant_context])

To run here without keys for any speech service, espeak-ng (Debian `espeak-ng`, through models/data/tts.py)
stands in for the TTS and the page's text box for the LLM: what you type, the avatar says. "Interrupt" sends
Pipecat's InterruptionFrame, as a user barging in does. Video and voice reach the page over Pipecat's SmallWebRTC
transport; with --host 127.0.0.1 (the default) its ICE candidates are loopback only and no STUN server is asked.
"""

import argparse
import asyncio
import logging
import sys
import uuid
from pathlib import Path

import numpy as np
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

try:  # first: without the extra this says, in one line, what to install
    from actorcast.streaming.pipecat import ActorcastVideoService
except ImportError as e:
    sys.exit(f"pipecat_agent: {e}")

from loguru import logger  # noqa: E402  (Pipecat logs through loguru)
from pipecat.frames.frames import (  # noqa: E402
    InterruptionFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.pipeline.worker import PipelineWorker  # noqa: E402
from pipecat.processors.frame_processor import FrameProcessor  # noqa: E402
from pipecat.transports.base_transport import TransportParams  # noqa: E402
from pipecat.transports.smallwebrtc.connection import SmallWebRTCConnection  # noqa: E402
from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport  # noqa: E402
from pipecat.workers.runner import WorkerRunner  # noqa: E402

from actorcast.actors.engine import Engine  # noqa: E402
from actorcast.models.errors import ActorcastError, InputError  # noqa: E402
from actorcast.streaming.guard import error, guard, parse_json, read_body  # noqa: E402
from actorcast.streaming.ice import candidate_hosts, hosts_for  # noqa: E402
from actorcast.streaming.limits import HEADER_TIMEOUT_S  # noqa: E402

log = logging.getLogger("pipecat_agent")

MAX_BODY = 2**20  # bytes: an SDP offer or a line of text

PAGE = """<!doctype html><meta charset="utf-8"><title>actorcast in Pipecat</title>
<video id="v" autoplay playsinline width="384" height="384" style="background:#222"></video>
<p><button id="start">Start</button> <input id="text" size="50" value="Hello! I am the face of this agent.">
<button id="say">Say</button> <button id="stop">Interrupt</button> <span id="msg"></span>
<script>
const $ = (id) => document.getElementById(id);
const post = (path, body) => fetch(path, {method: "POST", headers: {"Content-Type": "application/json"},
                                          body: JSON.stringify(body)}).then((r) => r.json());
$("start").onclick = async () => {
  const pc = new RTCPeerConnection();
  pc.addTransceiver("audio", {direction: "recvonly"});  // Pipecat's SmallWebRTC: audio first, then video
  pc.addTransceiver("video", {direction: "recvonly"});
  pc.ontrack = (e) => {
    $("v").srcObject = $("v").srcObject || new MediaStream(); $("v").srcObject.addTrack(e.track);
  };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((done) => pc.iceGatheringState === "complete" ? done() :
    pc.addEventListener("icegatheringstatechange", () => pc.iceGatheringState === "complete" && done()));
  const answer = await post("/offer", {sdp: pc.localDescription.sdp, type: "offer"});
  if (answer.error) { $("msg").textContent = answer.error; return; }
  await pc.setRemoteDescription(answer);
};
$("say").onclick = async () => {
  const r = await post("/say", {text: $("text").value}); $("msg").textContent = r.error || "";
};
$("stop").onclick = () => post("/interrupt", {});
</script>"""


class EspeakTTS(FrameProcessor):
    """A stand-in TTS service: TTSSpeakFrame(text) -> TTSStarted, 20 ms TTSAudioRawFrames at 16 kHz, TTSStopped."""

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        if not isinstance(frame, TTSSpeakFrame):
            await self.push_frame(frame, direction)
            return
        from actorcast.models.data.tts import speak

        try:
            utterance = await asyncio.to_thread(speak, frame.text)  # synthesis runs off the event loop
        except ActorcastError as e:
            log.warning("not said: %s", e)
            return
        pcm = (utterance.audio.numpy() * 32767).round().clip(-32768, 32767).astype(np.int16)
        context = uuid.uuid4().hex[:8]
        await self.push_frame(TTSStartedFrame(context_id=context))
        for start in range(0, len(pcm), 320):
            await self.push_frame(TTSAudioRawFrame(pcm[start:start + 320].tobytes(), 16_000, 1, context_id=context))
        await self.push_frame(TTSStoppedFrame(context_id=context))


class Agent:
    """One call at a time: its pipeline (TTS -> avatar -> SmallWebRTC output) runs on a shared runner."""

    def __init__(self, engine: Engine, host: str, identity: int):
        self.engine, self.host, self.identity = engine, host, identity
        self.runner = WorkerRunner(handle_sigint=False)
        self.worker: PipelineWorker | None = None

    async def offer(self, request: web.Request) -> web.Response:
        body = parse_json(await read_body(request), '{"sdp": "<offer SDP>", "type": "offer"}')
        if not isinstance(body, dict) or not isinstance(body.get("sdp"), str) or body.get("type") != "offer":
            raise InputError('send {"sdp": "<offer SDP>", "type": "offer"}')
        connection = SmallWebRTCConnection(ice_servers=[])
        try:
            with candidate_hosts(hosts_for(self.host)):  # loopback candidates for a loopback server
                await connection.initialize(sdp=body["sdp"], type=body["type"])
        except Exception as e:  # aiortc's SDP parser raises ValueError, AssertionError, ... for a bad offer
            await connection.disconnect()
            raise InputError(f"the SDP offer cannot be used ({e.__class__.__name__}: {str(e) or 'malformed'}); "
                             "send a WebRTC offer with a video m-line") from None
        if self.worker is not None:  # a new call replaces the last one
            await self.worker.cancel()
        avatar = ActorcastVideoService(engine=self.engine, identity=self.identity)
        transport = SmallWebRTCTransport(connection, TransportParams(**avatar.output_params()))
        self.worker = PipelineWorker(Pipeline([EspeakTTS(), avatar, transport.output()]), idle_timeout_secs=None)
        await self.runner.add_workers(self.worker)
        return web.json_response(connection.get_answer())

    async def say(self, request: web.Request) -> web.Response:
        if self.worker is None:
            return error(409, "no call yet: press Start first")
        body = parse_json(await read_body(request), '{"text": "..."}')
        if not isinstance(body, dict) or not isinstance(body.get("text"), str) or not body["text"].strip():
            raise InputError('send {"text": "<what the avatar says>"} with some words in it')
        await self.worker.queue_frame(TTSSpeakFrame(body["text"]))
        return web.json_response({})

    async def interrupt(self, request: web.Request) -> web.Response:
        if self.worker is not None:
            await self.worker.queue_frame(InterruptionFrame())
        return web.json_response({})


async def page(request: web.Request) -> web.Response:
    return web.Response(text=PAGE, content_type="text/html")


def create_app(agent: Agent) -> web.Application:
    """The page and the agent's routes; every refusal is a 4xx JSON error (actorcast.streaming.guard)."""
    app = web.Application(middlewares=[guard(None, lambda path: False)], client_max_size=MAX_BODY)
    app.router.add_get("/", page)
    app.router.add_post("/offer", agent.offer)
    app.router.add_post("/say", agent.say)
    app.router.add_post("/interrupt", agent.interrupt)
    return app


async def main(args: argparse.Namespace) -> None:
    engine = await asyncio.to_thread(Engine, stage_threads=1)  # the shipped weights, in this process
    agent = Agent(engine, args.host, args.identity)
    # a connection that has not sent a whole request by then is closed (aiohttp's keep-alive timer)
    site_runner = web.AppRunner(create_app(agent), keepalive_timeout=HEADER_TIMEOUT_S)
    await site_runner.setup()
    await web.TCPSite(site_runner, args.host, args.port).start()
    print(f"open http://{args.host}:{args.port}/ (Ctrl-C to stop)", flush=True)
    try:
        await agent.runner.run(auto_end=False)
    finally:
        await site_runner.cleanup()
        engine.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--identity", type=int, default=3, help="built-in identity of the avatar")
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(main(parser.parse_args()))
    except KeyboardInterrupt:
        pass
