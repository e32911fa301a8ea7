"""A Python WebRTC caller (`actorcast call`): sends an audio file as its microphone, records what comes back.

Besides the recording it measures, at the receiver: time to first frame after the answer, the received
frame rate, and the A/V offset — where in the sent audio the voice that arrives with each video frame is
(found by cross-correlating the received voice with the sent file), versus the frame's own audio position.
"""

import asyncio
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

from actorcast.models.data.media import Mp4Writer
from actorcast.models.errors import ActorcastError, InputError
from actorcast.streaming.figures import SERVER_FIGURES
from actorcast.streaming.ice import hosts_for, rtc_configuration, set_local_description
from actorcast.streaming.receiver import audio_prefetch_for, receiver_of, set_audio_prefetch
from actorcast.streaming.tracks import VOICE_BLOCK, VOICE_PER_FRAME, VOICE_RATE, decode_audio_48k

log = logging.getLogger(__name__)


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
    """What came back: video frames (arrival time, pts, image) and voice samples with arrival times."""

    video: list[tuple[float, int, np.ndarray | None]] = field(default_factory=list)
    voice: list[np.ndarray] = field(default_factory=list)
    voice_t: list[float] = field(default_factory=list)  # arrival time of each voice block
    server: list[dict] = field(default_factory=list)  # stats messages from the data channel
    sent_index: list[int | None] = field(default_factory=list)  # session frame index of the n-th frame sent
    messages: list[dict] = field(default_factory=list)


async def _collect_video(track, rec: Received, keep: bool) -> None:
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        rec.video.append((time.time(), int(frame.pts), frame.to_ndarray(format="rgb24") if keep else None))


async def _collect_voice(track, rec: Received) -> None:
    resampler = av.AudioResampler(format="s16", layout="mono", rate=VOICE_RATE)
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        now = time.time()
        for out in resampler.resample(frame):
            rec.voice.append(out.to_ndarray().reshape(-1))
            rec.voice_t.append(now)


def _on_message(rec: Received, raw) -> None:
    msg = json.loads(raw)
    rec.messages.append(msg)
    if msg.get("type") == "stats":
        rec.server.append(msg)
        rec.sent_index += [f[2] for f in msg.get("frames", [])]


class LiveCaller:
    """One call to an actorcast server. Use `await start()`, control it, then `await stop()`."""

    def __init__(self, url: str, pcm48: np.ndarray, token: str | None = None, keep_frames: bool = False,
                 **offer_options):
        self.url = url.rstrip("/")
        self.token, self.keep, self.offer_options = token, keep_frames, offer_options
        self.pc = RTCPeerConnection(rtc_configuration())
        self.rec = Received()
        self.audio = FileAudioTrack(pcm48)
        self.tasks: list[asyncio.Task] = []
        self.session_id: str | None = None
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
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        self.t_answer = time.time()

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

    def report(self, sent48: np.ndarray) -> dict:
        """The call so far: what this caller measured, then the server's latest stats (streaming.figures)."""
        times = [t for t, _, _ in self.rec.video]
        fps = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
        last = self.rec.server[-1] if self.rec.server else {}
        return {"received_frames": len(times), "received_fps": round(fps, 2),
                "ttff_s": None if not times or self.t_answer is None else times[0] - self.t_answer,
                "av_offset_ms": av_offset_ms(self.rec, sent48),
                **{f.key: last.get(f.key) for f in SERVER_FIGURES}}


def av_offset_ms(rec: Received, sent48: np.ndarray, window_s: float = 0.5) -> float | None:
    """Median (voice arrival - frame arrival) for the same audio content, in ms (positive: voice later).

    Each 0.5 s window of received voice is located in the sent audio by cross-correlation (16 kHz); frame n
    (session index, from the server's per-frame list) carries audio position 1920 n at 48 kHz.
    """
    if not rec.voice or not rec.video or not rec.sent_index:
        return None
    voice = np.concatenate(rec.voice).astype(np.float32)[::3]
    sent = sent48.astype(np.float32)[::3]
    block_t = np.repeat(np.asarray(rec.voice_t), [len(b) for b in rec.voice])[::3]
    win = int(window_s * VOICE_RATE / 3)
    n_fft = 1 << int(np.ceil(np.log2(len(sent) + win)))
    sent_f = np.fft.rfft(sent, n_fft)
    energy = np.concatenate([[0.0], np.cumsum(sent.astype(np.float64) ** 2)])
    window_energy = energy[win:] - energy[:-win]  # energy of sent[i:i+win]
    anchors = []  # (content position at 48 kHz, arrival time)
    for start in range(0, len(voice) - win, win):
        seg = voice[start:start + win]
        if np.abs(seg).mean() < 100:  # silence cannot be located
            continue
        corr = np.fft.irfft(sent_f * np.conj(np.fft.rfft(seg, n_fft)), n_fft)[:len(window_energy)]
        seg_energy = float(np.dot(seg, seg))
        # normalised correlation; near-silent stretches of the sent audio cannot match a voiced window
        score = np.where(window_energy > 0.1 * seg_energy, corr / np.sqrt(np.maximum(window_energy, 1.0) * seg_energy), 0.0)
        best = int(score.argmax())
        if score[best] > 0.75:
            anchors.append((best * 3, float(block_t[start])))
    pts_index = {}
    for n, index in enumerate(rec.sent_index):
        if index is not None:
            pts_index[n * 3600] = index
    diffs = []
    for t_video, pts, _ in rec.video:
        index = pts_index.get(pts)
        if index is None:
            continue
        pos = index * VOICE_PER_FRAME
        near = [(abs(p - pos), p, t) for p, t in anchors if abs(p - pos) < VOICE_RATE * window_s]
        if near:
            _, p, t = min(near)
            diffs.append((t + (pos - p) / VOICE_RATE - t_video) * 1000.0)
    return float(np.median(diffs)) if diffs else None


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
        await asyncio.sleep(seconds)
        report = caller.report(pcm)
    finally:
        await caller.stop()
    if record_to is not None:
        report["recorded_frames"] = record(Path(record_to), caller.rec)
    return report
