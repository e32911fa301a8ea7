"""The live-call web server: GET / (browser client), POST /offer, GET /health, GET /metrics, call control.

POST /portrait frames an uploaded photo (the face found, the square cut around it) and answers a preview, or
the error the call would get; POST /offer frames it again (the answer for the same upload is cached per server).

Call control for agents that drive the avatar themselves (like LiveKit's avatar VideoGenerator or Pipecat's
video services), all bearer-token protected when the server has a token:
  POST /calls/{id}/emotion   {"emotion": "happy"}
  POST /calls/{id}/interrupt  (barge-in: queued speech dropped, the avatar returns to idle)
  POST /calls/{id}/speak      body = an audio file (any format PyAV reads); calls offered with "source": "agent"
  GET  /calls/{id}            the call's live stats

Every refusal is a 4xx JSON error (streaming/guard.py). Work per request and per call is bounded: a body is at
most 16 MiB, queued speech at most MAX_QUEUED_SPEECH_S (an upload is decoded only up to the room left), and an
answered offer whose connection is not up within the connect timeout is closed, freeing its slot.
"""

import asyncio
import base64
import collections
import contextlib
import ctypes
import dataclasses
import hashlib
import io
import json
import logging
import time
import uuid
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from aiohttp import web
from aiortc import RTCSessionDescription

from actorcast.models.data.params import emotion_index
from actorcast.models.data.seeds import check_seed
from actorcast.models.errors import InputError, TooLargeError
from actorcast.models.photo.framing import Framing, frame_reference
from actorcast.models.photo.reference import decode_image as decode_picture
from actorcast.streaming.guard import error, guard, parse_json, read_body
from actorcast.streaming.ice import hosts_for
from actorcast.streaming.limits import CONNECT_TIMEOUT_S, HEADER_TIMEOUT_S, MAX_BODY, MAX_QUEUED_SPEECH_S
from actorcast.streaming.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from actorcast.streaming.metrics import Metrics
from actorcast.streaming.peer import SOURCES, CallOptions, LiveCall, _maybe_await
from actorcast.streaming.receiver import audio_prefetch_for
from actorcast.streaming.tracks import decode_audio_48k

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
FRAMINGS_KEPT = 8      # framed uploads remembered per server (a check, then the call, frame once)
PREVIEW_SIDE = 192     # px, the framed square shown in the page


# torch threads per in-process stage for a live server: with 1, the audio, motion and decoder stages and aiortc's
# codec threads share 2 cores without oversubscription, which lowers both the latency and the share of degraded
# frames (bench/live.py measures them).
LIVE_STAGE_THREADS = 1


@dataclass(frozen=True)
class ServerConfig:
    """How `actorcast serve` was started."""

    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None
    max_sessions: int = 2
    stun: str | None = None
    audio_prefetch: int | None = None  # inbound 20 ms audio frames held against jitter (None: 1 on loopback, else 4)
    connect_timeout_s: float = CONNECT_TIMEOUT_S  # an answered offer not connected by then is closed
    header_timeout_s: float = HEADER_TIMEOUT_S  # a connection without a whole request by then is closed


# The keys an offer may carry; anything else is refused with this list (a misspelt key would be ignored silently).
OFFER_KEYS = ("sdp", "type", "emotion", "source", "identity", "identity_seed", "portrait", "face")


def decode_image(data: str) -> np.ndarray:
    """A portrait sent as base64 (or a data: URL) of any image PyAV decodes -> upright (H, W, 3) uint8."""
    if not isinstance(data, str):
        raise InputError('"portrait" must be a base64 string or a data: URL of a PNG or JPEG')
    try:
        raw = base64.b64decode(data.split(",", 1)[-1], validate=False)
    except ValueError as e:
        raise InputError(f"the portrait is not base64 ({e}): send a PNG or JPEG") from None
    return decode_picture(io.BytesIO(raw), "the portrait")


def face_number(params: dict) -> int | None:
    """The "face" of a portrait upload: None (the largest) or a whole number >= 1."""
    face = params.get("face")
    if face is not None and (not isinstance(face, int) or isinstance(face, bool) or face < 1):
        raise InputError("face must be a whole number >= 1 (faces are numbered left to right), or left out for "
                         "the largest")
    return face


def frame_upload(data: str, face: int | None) -> Framing:
    """An uploaded portrait decoded and framed (a worker thread's job: decoding and face finding take ~1 s)."""
    return frame_reference(decode_image(data), face=face, option="face")


def preview_jpeg(square: np.ndarray) -> str:
    """A data: URL of the framed square as a JPEG, PREVIEW_SIDE² (shown in the page before the call)."""
    frame = av.VideoFrame.from_ndarray(square, format="rgb24").reformat(
        width=PREVIEW_SIDE, height=PREVIEW_SIDE, format="yuvj420p", interpolation="AREA")
    codec = av.CodecContext.create("mjpeg", "w")
    codec.width = codec.height = PREVIEW_SIDE
    codec.pix_fmt, codec.time_base = "yuvj420p", Fraction(1, 25)
    data = b"".join(bytes(p) for p in [*codec.encode(frame), *codec.encode(None)])
    return "data:image/jpeg;base64," + base64.b64encode(data).decode()


def parse_offer(body: bytes) -> tuple[RTCSessionDescription, dict]:
    """The JSON body of POST /offer -> (offer, options); InputError names what is wrong."""
    params = parse_json(body, '{"sdp": ..., "type": "offer"}')
    if not isinstance(params, dict):
        raise InputError("the body must be a JSON object with \"sdp\" and \"type\"")
    unknown = sorted(set(params) - set(OFFER_KEYS))
    if unknown:
        raise InputError(f"unknown key(s) in the offer: {', '.join(map(repr, unknown))}; the known ones are "
                         f"{', '.join(OFFER_KEYS)}")
    sdp, kind = params.get("sdp"), params.get("type")
    if not isinstance(sdp, str) or kind != "offer":
        raise InputError('send {"sdp": "<offer SDP>", "type": "offer"}')
    if not sdp.startswith("v=0") or "m=" not in sdp:
        raise InputError("\"sdp\" is not an SDP offer (it must start with v=0 and have m= lines)")
    return RTCSessionDescription(sdp=sdp, type="offer"), params


def call_options(params: dict) -> CallOptions:
    emotion = params.get("emotion", "neutral")
    emotion_index(emotion, InputError)
    source = params.get("source", "mic")
    if source not in SOURCES:
        raise InputError(f"unknown source {source!r}; choose mic or agent")
    seed = identity_of(params)
    return CallOptions(emotion=emotion, identity_seed=seed, source=source)  # the reference: LiveServer.frame


def identity_of(params: dict) -> int | None:
    """The built-in identity asked for: "identity" (as the CLI's --identity), or its older name "identity_seed"."""
    given = {key: params[key] for key in ("identity", "identity_seed") if params.get(key) is not None}
    if len(given) == 2 and given["identity"] != given["identity_seed"]:
        raise InputError('"identity" and "identity_seed" name the same thing and differ: send only "identity"')
    for key, seed in given.items():
        return check_seed(seed, key, InputError)
    return None


def return_freed_memory() -> None:
    """Hand the heap's free pages back to the system (glibc's malloc_trim). A call's buffers are freed when it
    ends, but glibc keeps freed pages of its per-thread arenas (the decoder, codec and executor threads) for
    reuse, so without this the server's RSS stays at its high-water mark after the calls are gone."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class LiveServer:
    """Admission, the calls in progress, and the HTTP handlers.

    Where calls live is this class's choice: here, in this process (`_admit` opens a session on `engine`);
    streaming/cluster_calls.py `ClusterServer` keeps the same routes and checks and places each call on a node of
    a Ray cluster instead. A call in `calls` is a LiveCall or anything with its control methods, plain or async."""

    def __init__(self, engine, config: ServerConfig):
        self.engine, self.config = engine, config
        self.audio_prefetch = config.audio_prefetch or audio_prefetch_for(config.host)
        self.metrics = Metrics()
        self.calls: dict[str, LiveCall] = {}
        self.framings: collections.OrderedDict[tuple[str, int | None], Framing] = collections.OrderedDict()
        self.admitting = 0  # offers being set up, counted against capacity before their session exists
        self.memory_returned: asyncio.Future | None = None  # the heap trim after the last call closed
        self.started = time.time()

    @staticmethod
    def protected(path: str) -> bool:
        """Paths that need the bearer token (when the server has one)."""
        return path in ("/offer", "/portrait") or path.startswith("/calls/")

    async def index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html")

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response(self.health_body())

    def health_body(self) -> dict:
        return {"status": "ok", "sessions": len(self.calls), "max_sessions": self.capacity(),
                "token_required": bool(self.config.token), "uptime_s": time.time() - self.started}

    def capacity(self) -> int:
        """Calls this server takes at once."""
        return self.config.max_sessions

    def refusal(self) -> str | None:
        """Why an offer is refused with 503 now (the server is full), or None when there is room."""
        if len(self.calls) + self.admitting < self.config.max_sessions:
            return None
        return (f"server full: {self.config.max_sessions} of {self.config.max_sessions} sessions in use; retry when "
                "a call ends or start serve with a larger --max-sessions")

    async def metrics_text(self, request: web.Request) -> web.Response:
        self.metrics.set_active(len(self.calls))
        return web.Response(body=self.metrics.render(), headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def frame(self, params: dict) -> Framing:
        """The call's reference, framed (models/photo/framing.py) off the event loop: the uploaded photo's face, or
        the built-in identity. Uploads are remembered by content, so a /portrait check and its call frame once."""
        face = face_number(params)
        if not params.get("portrait"):
            seed = call_options(params).identity_seed
            return await asyncio.to_thread(frame_reference, None, seed, face, option="face")
        data = params["portrait"]
        key = (hashlib.sha256(data.encode() if isinstance(data, str) else b"").hexdigest(), face)
        if key not in self.framings:
            self.framings[key] = await asyncio.to_thread(frame_upload, data, face)
            while len(self.framings) > FRAMINGS_KEPT:
                self.framings.popitem(last=False)
        self.framings.move_to_end(key)
        return self.framings[key]

    async def portrait(self, request: web.Request) -> web.Response:
        """POST /portrait {"portrait": data URL, "face": N}: where the face is and a preview of the square."""
        expected = '{"portrait": "<data: URL of a PNG or JPEG>", "face": N or null}'
        params = parse_json(await read_body(request), expected)
        if not isinstance(params, dict) or not params.get("portrait"):
            raise InputError(f"send {expected}")
        framing = await self.frame(params)
        height, width = framing.picture.shape[:2]
        return web.json_response({"faces": framing.n_faces, "face": framing.index, "largest": framing.largest,
                                  "box": list(framing.box), "width": width, "height": height,
                                  "note": framing.note("the Face field"),
                                  "preview": preview_jpeg(framing.crop())})

    async def offer(self, request: web.Request) -> web.Response:
        try:
            return await self._offer(request)
        except InputError as e:  # the call log says why; the caller gets the same reason as JSON
            log.info("offer refused: %s", e)
            raise

    async def _offer(self, request: web.Request) -> web.Response:
        offer, params = parse_offer(await read_body(request))
        options = call_options(params)
        face_number(params)
        full = self.refusal()
        if full is not None:
            self.metrics.session_rejected()
            log.info("offer refused: %s", full.split(";")[0])
            return error(503, full)
        self.admitting += 1
        try:
            framing = await self.frame(params)  # counted against capacity while the face is found
            options = dataclasses.replace(options, reference=framing.crop(), landmarks=framing.crop_landmarks())
            return web.json_response(await self._admit(offer, options))
        finally:
            self.admitting -= 1

    async def _admit(self, offer: RTCSessionDescription, options: CallOptions) -> dict:
        """Open the call's session and answer its offer here: the answer's JSON ({"sdp", "type", "session_id"})."""
        session = await _maybe_await(self.engine.open_session(
            reference=options.reference, identity_seed=options.identity_seed, emotion=options.emotion, live=True,
            landmarks=options.landmarks))
        call_id = str(getattr(session, "session_id", None) or uuid.uuid4().hex)
        call = LiveCall(call_id, session, options, self.metrics, self._closed, stun=self.config.stun,
                        audio_prefetch=self.audio_prefetch, connect_timeout_s=self.config.connect_timeout_s)
        try:
            answer = await call.answer(offer, hosts_for(self.config.host))
        except BaseException:
            await call.close()
            raise
        self.calls[call_id] = call
        self.metrics.session_admitted()
        self.metrics.set_active(len(self.calls))
        log.info("call %s admitted (%d/%d)", call_id, len(self.calls), self.config.max_sessions)
        return {"sdp": answer.sdp, "type": answer.type, "session_id": call_id}

    def _closed(self, call: LiveCall) -> None:
        self.memory_returned = asyncio.get_running_loop().run_in_executor(None, return_freed_memory)
        if self.calls.pop(call.call_id, None) is None:  # refused while answering: never admitted
            return
        self.metrics.set_active(len(self.calls))
        log.info("call %s closed after %.1f s, %d frames sent (%d left)", call.call_id, call.age_s(),
                 call.frames_sent, len(self.calls))

    def _call(self, request: web.Request) -> LiveCall:
        call = self.calls.get(request.match_info["call_id"])
        if call is None:
            raise web.HTTPNotFound(text=json.dumps({"error": "no such call: it ended or the id is wrong"}),
                                   content_type="application/json")
        return call

    async def call_stats(self, request: web.Request) -> web.Response:
        return web.json_response(await _maybe_await(self._call(request).stats()))

    async def emotion(self, request: web.Request) -> web.Response:
        call = self._call(request)
        try:
            emotion = parse_json(await read_body(request), '{"emotion": "<name>"}')["emotion"]
        except (KeyError, TypeError):
            raise InputError('send {"emotion": "<name>"}') from None
        await _maybe_await(call.set_emotion(emotion))
        return web.json_response({"ok": True, "emotion": emotion})

    async def interrupt(self, request: web.Request) -> web.Response:
        await _maybe_await(self._call(request).interrupt())
        return web.json_response({"ok": True})

    async def speak(self, request: web.Request) -> web.Response:
        """Queue an uploaded audio file as the avatar's speech. It is decoded only up to the room left in the
        call's queue (MAX_QUEUED_SPEECH_S): a longer one is refused with 413 as soon as the limit is passed."""
        call = self._call(request)
        call.check_agent()  # before the upload is read or decoded
        room = await _maybe_await(call.speech_room_s())
        if room <= 0:
            raise TooLargeError(f"this call already has {MAX_QUEUED_SPEECH_S:.0f} s of speech queued (the most a "
                                "call holds); wait for it to be spoken or interrupt")
        raw = await read_body(request)
        try:
            pcm = await asyncio.get_running_loop().run_in_executor(None, decode_audio_48k, raw, room)
        except TooLargeError:
            raise TooLargeError(f"the speech is too long: the call's queue has room for {room:.1f} s more (it holds "
                                f"at most {MAX_QUEUED_SPEECH_S:.0f} s); send shorter pieces") from None
        return web.json_response({"ok": True, "queued_s": await _maybe_await(call.speak(pcm))})

    async def shutdown(self, app: web.Application | None = None) -> None:
        """Close every call (frees sessions and actors); used on SIGINT/SIGTERM and app cleanup."""
        await asyncio.gather(*(call.close() for call in list(self.calls.values())), return_exceptions=True)


SERVER = web.AppKey("server", LiveServer)


def create_app(engine, config: ServerConfig, server: LiveServer | None = None) -> web.Application:
    """The aiohttp application; `engine.open_session(...)` makes one runtime Session per call. `server`: another
    LiveServer (a ClusterServer, whose calls live on the nodes of a cluster) behind the same routes."""
    server = server or LiveServer(engine, config)
    app = web.Application(middlewares=[guard(config.token, server.protected)], client_max_size=MAX_BODY)
    app[SERVER] = server
    app.router.add_get("/", server.index)
    app.router.add_static("/static/", STATIC)
    app.router.add_get("/health", server.health)
    app.router.add_get("/metrics", server.metrics_text)
    app.router.add_post("/offer", server.offer)
    app.router.add_post("/portrait", server.portrait)
    app.router.add_get("/calls/{call_id}", server.call_stats)
    app.router.add_post("/calls/{call_id}/emotion", server.emotion)
    app.router.add_post("/calls/{call_id}/interrupt", server.interrupt)
    app.router.add_post("/calls/{call_id}/speak", server.speak)
    app.on_shutdown.append(server.shutdown)
    return app


def app_runner(app: web.Application, config: ServerConfig, **kwargs) -> web.AppRunner:
    """The runner `serve` (and the tests) start the app with: the header timeout as aiohttp's keep-alive timeout,
    which also closes a connection that has not sent a whole request by then; aiohttp's own access log off
    (streaming/guard.py writes one line per request without headers)."""
    return web.AppRunner(app, access_log=None, keepalive_timeout=config.header_timeout_s, **kwargs)
