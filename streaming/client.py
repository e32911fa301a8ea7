"""A Python WebRTC caller (`actorcast call`): sends an audio file as its microphone, records what comes back.

Besides the recording it measures, at the receiver: time to first frame after the answer, the received
frame rate, and the A/V offset (streaming/av_offset.py) — where in the sent audio the voice that arrives with each
video frame is, versus the frame's own audio position — as the call goes, so a call of any length reports at
once. Without --record, only the last KEEP_S of what came back is kept.
"""

import asyncio
import collections
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import aiohttp
import av
import numpy as np
import torch
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from actorcast.models.errors import ActorcastError, InputError
from actorcast.models.media import Mp4Writer
from actorcast.models.timebase import FPS
from actorcast.streaming.av_offset import WINDOW_S, AvOffset
from actorcast.streaming.figures import SERVER_FIGURES
from actorcast.streaming.ice import hosts_for, rtc_configuration, set_local_description
from actorcast.streaming.receiver import audio_prefetch_for, receiver_of, set_audio_prefetch
from actorcast.streaming.tracks import VIDEO_PTS_STEP, VOICE_BLOCK, VOICE_RATE, decode_audio_48k

log = logging.getLogger(__name__)

KEEP_S = 30  # seconds of received video and voice kept for inspection when the call is not recorded
WATCH_S = 1.0  # how often a call served by a cluster asks the head whether its server is still there


class FileAudioTrack(MediaStreamTrack):
    """48 kHz mono int16 samples sent in real time as 20 ms frames, then silence."""

    kind = "audio"

    def __init__(self, pcm48: np.ndarray):
        super().__init__()
        self.pcm, self.k, self.t0 = pcm48, 0, None

    async def recv(self) -> av.AudioFrame:
        if self.t0 is None:
            self.t0 = time.monotonic()
        await asyncio.sleep(max(0.0, self.t0 + self.k * VOICE_BLOCK / VOICE_RATE - time.monotonic()))
        block = self.pcm[self.k * VOICE_BLOCK:(self.k + 1) * VOICE_BLOCK]
        block = np.pad(block, (0, VOICE_BLOCK - len(block)))
        frame = av.AudioFrame.from_ndarray(block.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts = VOICE_RATE, self.k * VOICE_BLOCK
        self.k += 1
        return frame


@dataclass
class Received:
    """What came back: video frames (arrival time, pts, image) and voice samples with arrival times.

    `bounded(...)` keeps only the last KEEP_S of them; the counts and the A/V offset cover the whole call."""

    video: list[tuple[float, int, np.ndarray | None]] = field(default_factory=list)
    voice: list[np.ndarray] = field(default_factory=list)
    voice_t: list[float] = field(default_factory=list)  # arrival time of each voice block
    server: list[dict] = field(default_factory=list)  # stats messages from the data channel
    sent_index: list[int | None] = field(default_factory=list)  # session frame index of the n-th frame sent
    messages: list[dict] = field(default_factory=list)  # the other messages (acks, errors, pongs)
    offset: AvOffset | None = None  # the A/V offset, measured as things arrive
    frames_received: int = 0
    first_frame_t: float | None = None
    last_frame_t: float | None = None

    @classmethod
    def bounded(cls, sent48: np.ndarray) -> "Received":
        """Keeps the last KEEP_S of video and voice and the latest stats; measures the A/V offset against sent48."""
        frames, blocks = KEEP_S * FPS, KEEP_S * VOICE_RATE // VOICE_BLOCK
        return cls(video=collections.deque(maxlen=frames), voice=collections.deque(maxlen=blocks),
                   voice_t=collections.deque(maxlen=blocks), server=collections.deque(maxlen=2),
                   sent_index=collections.deque(maxlen=frames), offset=AvOffset(sent48))

    def add_frame(self, t: float, pts: int, image: np.ndarray | None) -> None:
        self.video.append((t, pts, image))
        self.frames_received += 1
        self.first_frame_t = t if self.first_frame_t is None else self.first_frame_t
        self.last_frame_t = t
        if self.offset is not None:
            self.offset.add_frame(t, pts)

    def add_voice(self, block: np.ndarray, t: float) -> None:
        self.voice.append(block)
        self.voice_t.append(t)
        if self.offset is not None:
            self.offset.add_voice(block, t)

    def add_sent(self, pts: int, index: int | None) -> None:
        self.sent_index.append(index)
        if self.offset is not None:
            self.offset.add_sent(pts, index)

    def received_of_sent(self, sent_frames: int) -> int:
        """Frames received among the server's first `sent_frames` (pts below sent_frames * 3600): the ones sent
        after its latest stats are left out, so the two counts describe the same frames."""
        cut = sent_frames * VIDEO_PTS_STEP
        later = 0
        for _, pts, _ in reversed(self.video):  # in arrival order, so pts increase
            if pts < cut:
                break
            later += 1
        return self.frames_received - later


async def _collect_video(track, rec: Received, keep: bool) -> None:
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        rec.add_frame(time.time(), int(frame.pts), frame.to_ndarray(format="rgb24") if keep else None)


async def _collect_voice(track, rec: Received) -> None:
    resampler = av.AudioResampler(format="s16", layout="mono", rate=VOICE_RATE)
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        now = time.time()
        for out in resampler.resample(frame):
            rec.add_voice(out.to_ndarray().reshape(-1), now)


def _on_message(rec: Received, raw) -> None:
    msg = json.loads(raw)
    if msg.get("type") != "stats":
        rec.messages.append(msg)
        return
    for frame in msg.pop("frames", []):  # [sent ms, latency ms, index, degraded, pts, RTP timestamp]
        rec.add_sent(frame[4], frame[2])
    rec.server.append(msg)


class LiveCaller:
    """One call to an actorcast server. Use `await start()`, control it, then `await stop()`."""

    def __init__(self, url: str, pcm48: np.ndarray, token: str | None = None, keep_frames: bool = False,
                 **offer_options):
        self.url = url.rstrip("/")
        self.token, self.keep, self.offer_options = token, keep_frames, offer_options
        self.pc = RTCPeerConnection(rtc_configuration())
        self.rec = Received(offset=AvOffset(pcm48)) if keep_frames else Received.bounded(pcm48)
        self.audio = FileAudioTrack(pcm48)
        self.tasks: list[asyncio.Task] = []
        self.session_id: str | None = None
        self.server_node: str | None = None  # the cluster node serving the call (serve --address)
        self.ended: str | None = None  # why the server ended the call ("server lost"), when it did
        self.ended_message: str | None = None
        self.server_lost = asyncio.Event()  # set with `ended`
        self.t_answer: float | None = None
        self.channel = None

    def _headers(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def start(self) -> None:
        self.pc.addTrack(self.audio)
        self.pc.addTransceiver("video", direction="recvonly")
        self.channel = self.pc.createDataChannel("control")
        self.channel.on("message", lambda raw: _on_message(self.rec, raw))
        self.pc.on("track", self._on_track)
        await set_local_description(self.pc, await self.pc.createOffer(), hosts_for(urlparse(self.url).hostname or ""))
        body = {"sdp": self.pc.localDescription.sdp, "type": "offer", **self.offer_options}
        answer = await self.post("/offer", json=body)
        self.session_id = answer["session_id"]
        self.server_node = answer.get("server_node")
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        self.t_answer = time.time()
        if self.server_node is not None:  # the media flows from a node: the head says when that node is lost
            self.tasks.append(asyncio.create_task(self._watch_server()))

    async def _watch_server(self) -> None:
        """Ask the head about the call (GET /calls/ID) until it answers 410: its server was lost."""
        async with aiohttp.ClientSession() as http:
            while True:
                await asyncio.sleep(WATCH_S)
                try:
                    async with http.get(f"{self.url}/calls/{self.session_id}", headers=self._headers()) as resp:
                        if resp.status == 410:
                            body = await resp.json()
                            self.ended, self.ended_message = body.get("ended"), body.get("error")
                            log.warning("%s", self.ended_message)
                            self.server_lost.set()
                            return
                except aiohttp.ClientError:  # the head unreachable for a moment: asked again
                    continue

    def _on_track(self, track) -> None:
        receiver = receiver_of(self.pc, track)
        if track.kind == "audio" and receiver is not None:
            set_audio_prefetch(receiver, audio_prefetch_for(urlparse(self.url).hostname or ""))
        coro = _collect_video(track, self.rec, self.keep) if track.kind == "video" else _collect_voice(track, self.rec)
        self.tasks.append(asyncio.create_task(coro))

    async def post(self, path: str, **kwargs) -> dict:
        """POST to the server; a refusal becomes an ActorcastError with the server's reason."""
        async with aiohttp.ClientSession() as http:
            try:
                async with http.post(self.url + path, headers=self._headers(), **kwargs) as resp:
                    text = await resp.text()
                    if resp.status != 200:
                        try:
                            reason = json.loads(text)["error"]
                        except (ValueError, KeyError, TypeError):
                            reason = text.strip() or resp.reason
                        raise ActorcastError(f"the server answered {resp.status}: {reason}")
                    return json.loads(text)
            except aiohttp.ClientError as e:
                raise ActorcastError(f"cannot reach {self.url} ({e.__class__.__name__}): is `actorcast serve` "
                                     "running there?") from None

    def send(self, payload: dict) -> None:
        """A control message on the data channel (emotion, interrupt, ping)."""
        self.channel.send(json.dumps(payload))

    async def stop(self) -> None:
        await self.pc.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def report(self) -> dict:
        """The call so far: what this caller measured, then the server's latest stats (streaming.figures).
        received_frames counts the frames of sent_frames that arrived, so the two describe the same frames."""
        rec = self.rec
        last = rec.server[-1] if rec.server else {}
        span = (rec.last_frame_t or 0.0) - (rec.first_frame_t or 0.0)
        return {"received_frames": rec.received_of_sent(last.get("sent_frames") or 0),
                "received_fps": round((rec.frames_received - 1) / span, 2) if span > 0 else 0.0,
                "ttff_s": None if rec.first_frame_t is None or self.t_answer is None
                else rec.first_frame_t - self.t_answer,
                "av_offset_ms": rec.offset.median_ms(),
                "server_node": self.server_node, "call_ended": self.ended,
                **{f.key: last.get(f.key) for f in SERVER_FIGURES}}


def av_offset_ms(rec: Received, sent48: np.ndarray, window_s: float = WINDOW_S) -> float | None:
    """The A/V offset (streaming/av_offset.py) of a recording made by other means: `rec.sent_index` gives the
    session frame index of the n-th frame sent (pts 3600 n); its voice and video are replayed in arrival order."""
    offset = AvOffset(sent48, window_s)
    for n, index in enumerate(rec.sent_index):
        offset.add_sent(n * VIDEO_PTS_STEP, index)
    events = [(t, 0, pts) for t, pts, _ in rec.video] + [(t, 1, k) for k, t in enumerate(rec.voice_t)]
    for t, kind, item in sorted(events):
        if kind == 0:
            offset.add_frame(t, item)
        else:
            offset.add_voice(rec.voice[item], t)
    return offset.median_ms()


def record(path: Path, rec: Received) -> int:
    """Write the received video (25 fps) and voice as an mp4; returns the number of frames written."""
    frames = [img for _, _, img in rec.video if img is not None]
    if not frames:
        raise InputError("no video frames were received, nothing to record")
    voice = np.concatenate(rec.voice).astype(np.float32) / 32768.0 if rec.voice else np.zeros(0, np.float32)
    voice16 = torch.from_numpy(voice[::3].copy())
    size = frames[0].shape[0]
    with Mp4Writer(path, size, with_audio=True) as writer:
        for i, img in enumerate(frames):
            audio = voice16[i * 640:(i + 1) * 640]
            audio = torch.nn.functional.pad(audio, (0, 640 - len(audio)))
            writer.write(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0, audio)
    return len(frames)


async def run_call(url: str, audio: Path, seconds: float | None = None, record_to: Path | None = None,
                   token: str | None = None, **offer_options) -> dict:
    """Call `url`, send `audio` for `seconds` (default: its length), optionally record, return the report."""
    if not Path(audio).is_file():
        raise InputError(f"audio file {audio} does not exist or is not a file: check the path")
    pcm = decode_audio_48k(Path(audio).read_bytes())
    seconds = seconds or len(pcm) / VOICE_RATE
    caller = LiveCaller(url, pcm, token=token, keep_frames=record_to is not None, **offer_options)
    try:
        await caller.start()
        with contextlib.suppress(asyncio.TimeoutError):  # the call ends early when its server is lost
            await asyncio.wait_for(caller.server_lost.wait(), seconds)
        report = caller.report()
    finally:
        await caller.stop()
    if record_to is not None:
        report["recorded_frames"] = record(Path(record_to), caller.rec)
    return report
