"""One live call: an aiortc peer connection around one runtime Session (docs/ARCHITECTURE.md "A live call,
through the files").

Inbound audio (the caller's microphone, or in "agent" mode audio handed to `speak`) is fed to the session
in real time; the session's frames go out on the 25 fps avatar track and the same audio comes back on the
voice track, aligned to the frame on screen. Control (emotion, interrupt, ping) arrives on a data channel
named "control" or through the HTTP routes of app.py; stats go back on the data channel twice a second.
The fed audio, the speech feed, interruption and the per-frame figures are the live-audio core's
(streaming/live_audio.py `LiveAudio`, shared with the Pipecat and LiveKit avatars); this module keeps what is
WebRTC's: the peer connection, its tracks, the data channel, the RTP timestamps and the call's lifecycle.
"""

import asyncio
import collections
import contextlib
import inspect
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from actorcast.models.data.params import emotion_index
from actorcast.models.errors import ActorcastError, InputError, TooLargeError
from actorcast.models.timebase import FPS
from actorcast.streaming.figures import percentiles
from actorcast.streaming.ice import rtc_configuration, set_local_description
from actorcast.streaming.limits import CONNECT_TIMEOUT_S, MAX_QUEUED_SPEECH_S
from actorcast.streaming.live_audio import LiveAudio
from actorcast.streaming.metrics import Metrics
from actorcast.streaming.receiver import DEFAULT_PREFETCH, receiver_of, rtp_origin, set_audio_prefetch
from actorcast.streaming.tracks import VOICE_RATE, AvatarVideoTrack, SentFrame, VoiceTrack

log = logging.getLogger(__name__)

SOURCES = ("mic", "agent")
IDLE_TIMEOUT_S = 3.0  # no audio and no control message for this long after connecting = the peer is gone
STATS_PERIOD_S = 0.5
STARTUP_S = 2.0  # frames degraded in the first seconds of a call (the pipeline warming up) are counted apart


@dataclass(frozen=True)
class CallOptions:
    """What the caller asked for in its offer."""

    emotion: str = "neutral"
    identity_seed: int | None = None
    reference: np.ndarray | None = None  # (H, W, 3) uint8 portrait
    landmarks: np.ndarray | None = None  # a photo's Face Mesh points (478, 2) in the reference's pixels
    source: str = "mic"  # "mic": the caller's audio drives the avatar; "agent": audio given to speak()


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class LiveCall:
    """A peer connection, its tracks and its session; `close()` frees all of them (idempotent)."""

    def __init__(self, call_id: str, session, options: CallOptions, metrics: Metrics,
                 on_closed: Callable[["LiveCall"], None], stun: str | None = None,
                 audio_prefetch: int = DEFAULT_PREFETCH, connect_timeout_s: float = CONNECT_TIMEOUT_S):
        self.call_id, self.session, self.options, self.metrics = call_id, session, options, metrics
        self.on_closed = on_closed
        self.connect_timeout_s = connect_timeout_s
        self.audio_prefetch = audio_prefetch
        self.pc = RTCPeerConnection(rtc_configuration(stun))
        # the live-audio core (streaming/live_audio.py): the fed audio, the speech feed, interrupts and figures
        self.live = LiveAudio(voice_at=lambda: self.voice.pos)
        self.live.attach(session)
        self.content, self.audio_in = self.live.content, self.live.audio_in
        self.speech = self.live.feed  # agent mode: the speech queued by `speak`, fed in real time
        self.video = self.live.pictures = AvatarVideoTrack(self._frame_sent, chunk_frames=session.chunk_frames)
        self.voice = VoiceTrack(self.content, lambda: self.anchor)
        self.anchor: tuple[int, float] | None = None  # (frame index, wall time sent) of the latest real frame
        self.sent_times: collections.deque[float] = collections.deque(maxlen=2 * FPS)
        self.pending_frames: list[list[float]] = []
        self.degraded_after_startup = 0
        self.t_answer: float | None = None
        self.t_answer_mono: float | None = None
        self.t_connected: float | None = None  # monotonic
        self.t_first_frame: float | None = None
        self.last_activity = time.monotonic()
        self.channel = None
        self.tasks: list[asyncio.Task] = []
        self.closed = asyncio.Event()
        self._closing = False

    # the live core's state, by the names the call has always had
    frames_sent = property(lambda self: self.live.pictures_sent)
    interrupts = property(lambda self: self.live.interrupts)

    # ---- set-up -------------------------------------------------------------------------------------------

    async def answer(self, offer: RTCSessionDescription, candidate_hosts: list[str] | None) -> RTCSessionDescription:
        """Apply the caller's offer and return our answer; raises InputError for an unusable offer."""
        self.pc.on("track", self._on_track)
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("connectionstatechange", self._on_state)
        try:
            await self._negotiate(offer, candidate_hosts)
        except InputError:
            raise
        except (ValueError, KeyError, IndexError, TypeError, AttributeError, AssertionError, RuntimeError) as e:
            # what aiortc raises on offers it cannot use: asserts in its SDP parser (an m= line without a port),
            # a StopIteration turned RuntimeError (a media section without codecs), mismatched sections (no a=mid)
            detail = str(e) or "malformed"
            raise InputError(f"the SDP offer cannot be used ({e.__class__.__name__}: {detail}); send a WebRTC offer "
                             "with an audio m-line and a video m-line") from None
        self.t_answer = time.time()
        self.t_answer_mono = time.monotonic()
        self.tasks.append(asyncio.create_task(self._await_connection(), name=f"{self.call_id}-connect"))
        self.tasks.append(asyncio.create_task(self._pump_frames(), name=f"{self.call_id}-frames"))
        self.tasks.append(asyncio.create_task(self._watchdog(), name=f"{self.call_id}-watchdog"))
        self.tasks.append(asyncio.create_task(self._send_stats(), name=f"{self.call_id}-stats"))
        if self.options.source == "agent":
            self.tasks.append(asyncio.create_task(self.speech.run(), name=f"{self.call_id}-speech"))
        return self.pc.localDescription

    async def _negotiate(self, offer: RTCSessionDescription, candidate_hosts: list[str] | None) -> None:
        await self.pc.setRemoteDescription(offer)
        if "video" not in {t.kind for t in self.pc.getTransceivers()}:
            raise InputError("the offer has no video m-line: add a recvonly video transceiver to receive the avatar")
        self.pc.addTrack(self.video)
        self.pc.addTrack(self.voice)
        await set_local_description(self.pc, await self.pc.createAnswer(), candidate_hosts)

    def _on_track(self, track) -> None:
        if track.kind == "audio":
            receiver = receiver_of(self.pc, track)
            if receiver is not None:
                self.audio_in.rtp_origin = rtp_origin(receiver)
                set_audio_prefetch(receiver, self.audio_prefetch)
            self.tasks.append(asyncio.create_task(self._pump_audio(track), name=f"{self.call_id}-audio"))

    def _on_datachannel(self, channel) -> None:
        self.channel = channel
        channel.on("message", self._on_message)

    async def _on_state(self) -> None:
        if self.pc.connectionState == "connected" and self.t_connected is None:
            self.t_connected = time.monotonic()
            log.info("call %s connected %.2f s after the answer", self.call_id, self.t_connected - self.t_answer_mono)
        if self.pc.connectionState in ("failed", "closed") and not self._closing:
            log.info("call %s: connection %s", self.call_id, self.pc.connectionState)
            await self.close()

    async def _await_connection(self) -> None:
        """Close the call when its connection is not up `connect_timeout_s` after the answer: an offer that never
        connects would otherwise hold its slot until ICE gives up (most of a minute)."""
        await asyncio.sleep(self.connect_timeout_s)
        if self.t_connected is None:
            log.info("call %s: not connected %.0f s after the answer, closing", self.call_id, self.connect_timeout_s)
            await self.close()

    # ---- media --------------------------------------------------------------------------------------------

    async def _pump_audio(self, track) -> None:
        """Caller audio -> session (mic mode), or just drained as a liveness signal (agent mode)."""
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                log.info("call %s: the caller's audio ended", self.call_id)
                await self.close()
                return
            self.last_activity = time.monotonic()
            if self.options.source == "mic":
                self.audio_in.push_frame(frame)

    async def _pump_frames(self) -> None:
        """Session frames -> the avatar track's buffer; ends the call when the session stops."""
        try:
            async for vf in self.session.frames():
                self.video.put(vf.first_frame, vf.frames, vf.degraded)
        except asyncio.CancelledError:
            raise
        except ActorcastError as e:  # a stage that failed (its worker died, say): one line, to the log and caller
            log.error("call %s ended: %s", self.call_id, e)
            self._send({"type": "error", "error": f"the call ended: {e}"})
        except Exception:
            log.exception("call %s: the session failed", self.call_id)
        await self.close()

    def _frame_sent(self, sent: SentFrame) -> None:
        latency = self.live.picture_sent(sent.index, sent.degraded, t=sent.t_sent)  # audio arrival -> sent, ms
        rtp = None
        if sent.index is not None:
            self.anchor = (sent.index, sent.t_sent)
            rtp = self.audio_in.rtp_timestamp(sent.index)
        if self.t_first_frame is None:
            self.t_first_frame = sent.t_sent
        self.degraded_after_startup += int(sent.degraded and sent.t_sent - self.t_first_frame > STARTUP_S)
        self.sent_times.append(sent.t_sent)
        self.metrics.frame_sent(sent.degraded, latency)
        # [sent ms, server latency ms, frame index, degraded, pts, RTP timestamp of its audio in the caller's
        # stream or None]: the browser turns the last into its own capture time
        self.pending_frames.append([round(sent.t_sent * 1000.0, 1), None if latency is None else round(latency, 1),
                                    sent.index, int(sent.degraded), sent.pts, rtp])

    # ---- control ------------------------------------------------------------------------------------------

    def set_emotion(self, emotion: str) -> None:
        emotion_index(emotion, InputError)
        self.session.set_emotion(emotion)

    def interrupt(self) -> None:
        """Barge-in (LiveAudio.interrupt): drop queued speech everywhere (agent queue, session, voice not yet
        played); the video track holds the last frame shown until the session's first all-silence frame. In agent
        mode the silence that follows is fed at once; a caller's microphone keeps feeding in real time."""
        self.live.interrupt(preroll=self.options.source == "agent")

    def check_agent(self) -> None:
        """InputError unless this call takes its speech from `speak` (source "agent")."""
        if self.options.source != "agent":
            raise InputError("this call drives the avatar from the caller's microphone; start it with "
                             '"source": "agent" to speak audio')

    def speech_room_s(self) -> float:
        """Seconds of speech the queue takes before it holds MAX_QUEUED_SPEECH_S."""
        return MAX_QUEUED_SPEECH_S - self.speech.queued_s()

    def speak(self, pcm48: np.ndarray) -> float:
        """Agent mode: queue 48 kHz mono int16 speech as the avatar's voice; returns its length in seconds.
        TooLargeError when the queue would then hold more than MAX_QUEUED_SPEECH_S."""
        self.check_agent()
        if len(pcm48) / VOICE_RATE > self.speech_room_s():
            raise TooLargeError(f"the speech is too long: the call's queue has room for {self.speech_room_s():.1f} s "
                                f"more (it holds at most {MAX_QUEUED_SPEECH_S:.0f} s); send shorter pieces")
        return self.speech.speak(pcm48)

    def _on_message(self, message) -> None:
        self.last_activity = time.monotonic()
        try:
            msg = json.loads(message)
            kind = msg["type"]
            if kind == "ping":
                self._send({"type": "pong", "t": msg.get("t"), "server_ms": time.time() * 1000.0})
            elif kind == "emotion":
                self.set_emotion(str(msg.get("emotion")))
                self._send({"type": "ack", "op": "emotion", "emotion": msg["emotion"]})
            elif kind == "interrupt":
                self.interrupt()
                self._send({"type": "ack", "op": "interrupt"})
            else:
                raise InputError(f"unknown control message type {kind!r}; use ping, emotion or interrupt")
        except (ValueError, KeyError, TypeError, RecursionError) as e:  # InputError is a ValueError
            self._send({"type": "error", "error": str(e) if isinstance(e, InputError) else
                        f"bad control message ({e.__class__.__name__}): send JSON with a \"type\""})

    def _send(self, payload: dict) -> None:
        if self.channel is not None and self.channel.readyState == "open":
            self.channel.send(json.dumps(payload))

    # ---- stats and lifecycle ------------------------------------------------------------------------------

    def stats(self) -> dict:
        """Live numbers of this call (also sent on the data channel); keys, units and meanings: streaming.figures."""
        times = list(self.sent_times)
        fps = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0
        session = self.session.stats()
        return {
            "session_id": self.call_id, "sent_frames": self.live.pictures_sent, "sent_fps": round(fps, 2),
            "sent_degraded_frames": self.live.degraded_frames,
            "sent_degraded_after_startup_frames": self.degraded_after_startup,
            "repeated_frames": self.live.repeated_frames, "skipped_frames": self.video.dropped,
            "generated_frames": session["frames_out"], "generated_degraded_frames": session["degraded_frames"],
            "server_latency_ms": percentiles(self.live.added_ms),
            "generation_latency_ms": session["latency_ms"],
            "sender_av_offset_ms": self.voice.offset_ms(), "voice_resyncs": self.voice.resyncs,
            "server_ttff_s": None if self.t_first_frame is None or self.t_answer is None
            else self.t_first_frame - self.t_answer,
            "interrupt_idle_ms": [e["idle_wall_ms"] for e in self.interrupts],
            "queued_speech_s": self.speech.queued_s(),
            "buffered_frames": len(self.video.queue),
        }

    async def _send_stats(self) -> None:
        while True:
            await asyncio.sleep(STATS_PERIOD_S)
            frames, self.pending_frames = self.pending_frames, []
            self._send({"type": "stats", **self.stats(), "frames": frames})

    async def _watchdog(self) -> None:
        """A caller that vanished without closing (tab killed, network gone) stops sending: free its call."""
        while True:
            await asyncio.sleep(0.5)
            if self.pc.connectionState == "connected" and time.monotonic() - self.last_activity > IDLE_TIMEOUT_S:
                log.info("call %s: nothing from the caller for %.0f s, closing", self.call_id, IDLE_TIMEOUT_S)
                await self.close()
                return

    def age_s(self) -> float:
        """Seconds since the answer (0 before it)."""
        return 0.0 if self.t_answer is None else time.time() - self.t_answer

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()
        for task in self.tasks:
            if task is not current:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self.video.stop()
        self.voice.stop()
        # aiortc's event handlers keep this call in reference cycles until Python's collector runs: drop the
        # large buffers now, so the memory handed back when the call closes includes them
        self.speech.clear()
        self.video.queue.clear()
        with contextlib.suppress(Exception):
            await self.pc.close()
        try:
            await _maybe_await(self.session.close())
        except Exception:
            log.exception("call %s: closing the session failed", self.call_id)
        self.closed.set()
        self.on_closed(self)
