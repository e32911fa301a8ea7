"""Media of one call: inbound audio -> 16 kHz session feed, the 25 fps avatar track, the lip-synced voice track
(docs/ARCHITECTURE.md "Time base", "A live call, through the files").

Content time: the session numbers frames from the audio it is fed (frame n <-> fed 16 kHz samples
[640 n, 640 n + 640)); interrupts replace queued speech with silence, so that mapping never shifts. The
voice sent back is the fed audio itself (kept at 48 kHz), read at the content position of the video frame
on screen, so the receiver hears each sound together with its frame (the pipeline latency is the delay).
"""

import asyncio
import collections
import fractions
import io
import logging
import time
from dataclasses import dataclass
from typing import Callable

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from actorcast.models.errors import InputError, TooLargeError
from actorcast.models.timebase import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME

log = logging.getLogger(__name__)

VIDEO_CLOCK = 90_000
VIDEO_PTS_STEP = VIDEO_CLOCK // FPS  # 3600 ticks of 90 kHz per 25 fps frame
VOICE_RATE = 48_000
VOICE_PER_FRAME = SAMPLES_PER_FRAME * VOICE_RATE // SAMPLE_RATE  # 1920 samples of 48 kHz per video frame
VOICE_BLOCK = VOICE_RATE // 50  # 20 ms audio packets, as WebRTC peers send them
BLOCK_S = VOICE_BLOCK / VOICE_RATE
RESYNC_SAMPLES = VOICE_RATE // 100  # re-align the voice when it is off by more than 10 ms (smoothed)
RTP_AUDIO_CLOCK = 48_000  # Opus RTP timestamps count 48 kHz samples whatever the codec's rate
STALL_S = 0.25  # a paced loop this far behind its clock (the event loop stalled) restarts the clock instead of
#                 sending the frames it missed in a burst


def decode_audio_48k(raw: bytes, max_s: float | None = None) -> np.ndarray:
    """Any audio file PyAV decodes (as bytes) -> 48 kHz mono int16; InputError if it is not usable audio.

    Decoded packet by packet: past `max_s` seconds it stops and raises TooLargeError, so a small file that
    holds hours of audio (silence compresses to almost nothing) costs no more than `max_s` of samples."""
    limit = None if max_s is None else int(max_s * VOICE_RATE)
    resampler = av.AudioResampler(format="s16", layout="mono", rate=VOICE_RATE)
    blocks, total = [], 0
    try:
        with av.open(io.BytesIO(raw)) as container:
            if not container.streams.audio:
                raise InputError("the file has no audio stream: give a WAV/MP3/Opus file with speech")
            for frame in _frames_then_flush(container):
                for out in resampler.resample(frame):
                    blocks.append(out.to_ndarray().reshape(-1))
                    total += len(blocks[-1])
                if limit is not None and total > limit:
                    raise TooLargeError(f"the audio is longer than {max_s:.0f} s: send it in shorter pieces")
    except av.error.FFmpegError as e:
        raise InputError(f"the file cannot be decoded as audio ({e.__class__.__name__}): give WAV, MP3 or Opus") from None
    if not total:
        raise InputError("the audio is empty: give speech at least one frame (40 ms) long")
    return np.concatenate(blocks)


def _frames_then_flush(container):
    """The container's audio frames one at a time, then None (the resampler's flush)."""
    yield from container.decode(audio=0)
    yield None


class ContentAudio:
    """The fed audio at 48 kHz mono int16, addressed by absolute content position; keeps the last `keep_s`."""

    def __init__(self, keep_s: float = 20.0):
        self.capacity = int(keep_s * VOICE_RATE)
        self.buf = np.zeros(self.capacity, np.int16)
        self.end = 0  # content position one past the last sample written

    def append(self, block: np.ndarray) -> None:
        block = block[-self.capacity:]
        idx = (self.end + np.arange(len(block))) % self.capacity
        self.buf[idx] = block
        self.end += len(block)

    def read(self, pos: int, n: int) -> np.ndarray:
        """n samples from content position pos; silence where nothing (or nothing kept) was written."""
        out = np.zeros(n, np.int16)
        lo, hi = max(pos, self.end - self.capacity, 0), min(pos + n, self.end)
        if hi > lo:
            out[lo - pos:hi - pos] = self.buf[np.arange(lo, hi) % self.capacity]
        return out

    def silence_from(self, pos: int) -> None:
        """Replace everything written from content position pos on with silence (barge-in)."""
        lo = max(pos, self.end - self.capacity, 0)
        if self.end > lo:
            self.buf[np.arange(lo, self.end) % self.capacity] = 0


class AudioInput:
    """Turns inbound audio (any av.AudioFrame, or 48 kHz mono int16 blocks) into the session feed.

    Keeps the voice copy (ContentAudio), when each fed sample arrived and its RTP timestamp (the caller's
    clock for it: a browser maps that to its own capture time), for the latency measures.
    """

    def __init__(self, feed: Callable[[np.ndarray], None], content: ContentAudio):
        self.feed, self.content = feed, content
        # aiortc numbers decoded frames from its first packet: pts = RTP timestamp - origin. The call sets this to
        # read the origin back, so the caller's own RTP timestamps can be reported.
        self.rtp_origin: Callable[[], int | None] = lambda: None
        self.to_voice = av.AudioResampler(format="s16", layout="mono", rate=VOICE_RATE)
        self.to_model = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        self.fed = 0  # 16 kHz samples fed so far
        # (first fed sample, wall time it arrived, RTP timestamp of that sample or None)
        self.arrivals: collections.deque[tuple[int, float, int | None]] = collections.deque()

    def push_frame(self, frame: av.AudioFrame) -> None:
        """An inbound WebRTC audio frame (typically s16 stereo 48 kHz, 20 ms; pts counts 48 kHz samples)."""
        origin = self.rtp_origin()
        rtp = None if origin is None or frame.pts is None else (frame.pts + origin) % 2**32
        for out in self.to_voice.resample(frame):
            self.push_voice(out.to_ndarray().reshape(-1), rtp)
            rtp = None

    def push_voice(self, block: np.ndarray, rtp: int | None = None) -> None:
        """48 kHz mono int16 samples, in real time: keep them for the voice track and feed them at 16 kHz.

        rtp: the RTP timestamp of the block's first sample, when it came from a caller."""
        now = time.time()
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(block.reshape(1, -1)), format="s16", layout="mono")
        frame.sample_rate = VOICE_RATE
        self.content.append(block)
        pcm = [o.to_ndarray().reshape(-1) for o in self.to_model.resample(frame)]
        if pcm:
            pcm16 = np.concatenate(pcm).astype(np.float32, copy=False)
            self.arrivals.append((self.fed, now, rtp))
            self.fed += len(pcm16)
            self.feed(pcm16)
        while len(self.arrivals) > 3000:  # about a minute of 20 ms blocks
            self.arrivals.popleft()

    def arrival(self, frame_index: int) -> float | None:
        """Wall time at which the first sample of video frame `frame_index` was fed (None if not kept)."""
        found = self._block_of(frame_index)
        return None if found is None else found[1]

    def rtp_timestamp(self, frame_index: int) -> int | None:
        """The caller's RTP timestamp of the first audio sample of video frame `frame_index`, if known."""
        found = self._block_of(frame_index)
        if found is None or found[2] is None:
            return None
        return (found[2] + (frame_index * SAMPLES_PER_FRAME - found[0]) * RTP_AUDIO_CLOCK // SAMPLE_RATE) % 2**32

    def _block_of(self, frame_index: int) -> tuple[int, float, int | None] | None:
        pos = frame_index * SAMPLES_PER_FRAME
        if pos >= self.fed:
            return None
        for block in reversed(self.arrivals):
            if block[0] <= pos:
                return block
        return None


@dataclass
class SentFrame:
    """What the video track reports for each frame it sends."""

    pts: int  # in 1/90000 s
    index: int | None  # session frame index, None when the last frame was repeated (underrun)
    degraded: bool
    t_sent: float  # wall time


class AvatarVideoTrack(MediaStreamTrack):
    """Sends the session's frames at 25 fps on a 90 kHz clock (pts = n * 3600), as soon after they are made as
    the frame rate allows.

    Frames wait in a short buffer and go out on a 25 fps schedule that follows the source: a frame that is due
    but not there yet is waited for up to `late_grace_s` (the schedule then moves later by that much); past
    that the last frame is repeated (counted degraded). When every frame of the last two chunks waited longer
    than `target_wait_s` for its slot, the schedule moves earlier by at most `catch_up_s` per frame, so the
    latency drains back without a visible jump (a whole frame too early: that frame is skipped). A backlog
    beyond two chunks drops the oldest frames, so latency stays bounded whatever the session does.

    Sending starts with the first frame (`prebuffer_frames` more may be asked for), so the schedule starts where
    the frames come: a frame on time waits 0 to `target_wait_s` (5 ms) for its slot, one a little late is waited
    for up to `late_grace_s` (30 ms) and moves the schedule with it, and a frame that waited longer than the margin
    drains back at `catch_up_s` a frame. Any wait is latency every frame pays; one call's 1-frame chunks come
    within about 3 ms of their time, and bench/live.py counts the repeats. A buffered frame at the start would
    delay the first picture, and with 1-frame chunks every later one, by a whole frame (40 ms).
    """

    kind = "video"

    def __init__(self, on_sent: Callable[[SentFrame], None], prebuffer_frames: int = 0, chunk_frames: int = 1,
                 late_grace_s: float = 0.03, target_wait_s: float = 0.005, catch_up_s: float = 0.004):
        super().__init__()
        self.on_sent = on_sent
        self.queue: collections.deque[tuple[int, np.ndarray, bool, float]] = collections.deque()
        self.max_chunk = chunk_frames  # frames arrive in bursts of a generated chunk (even when put in pieces)
        self.prebuffer = prebuffer_frames
        self.late_grace_s, self.target_wait_s, self.catch_up_s = late_grace_s, target_wait_s, catch_up_s
        self.waits: collections.deque[float] = collections.deque(maxlen=2 * chunk_frames)  # queue time of frames sent
        self.have_frames = asyncio.Event()  # the prebuffer is full: sending may start
        self.arrived = asyncio.Event()  # a frame was queued
        self.n = 0
        self.t0: float | None = None
        self.last: np.ndarray | None = None
        self.dropped = 0
        self.repeated = 0
        self.skip_before = 0  # frames with a lower index are dropped on arrival (they show interrupted speech)

    def put(self, first_frame: int, frames: np.ndarray, degraded: bool) -> None:
        """Queue (T, H, W, 3) uint8 frames starting at session frame `first_frame`."""
        self.max_chunk = max(self.max_chunk, len(frames))
        now = time.monotonic()
        for k, image in enumerate(frames):
            if first_frame + k < self.skip_before:
                self.dropped += 1
                continue
            self.queue.append((first_frame + k, image, degraded, now))
        bound = 2 * self.max_chunk + 2
        while len(self.queue) > bound:
            self.queue.popleft()
            self.dropped += 1
        self.arrived.set()
        if len(self.queue) >= min(self.prebuffer + 1, bound) or self.t0 is not None:
            self.have_frames.set()

    def skip_until(self, frame_index: int) -> None:
        """Drop every frame before `frame_index`, queued or still to come (barge-in); the last frame shown is
        held until then."""
        self.dropped += len(self.queue)
        self.queue.clear()
        self.skip_before = max(self.skip_before, frame_index)

    async def _wait_late_frame(self) -> None:
        """The next frame is due and not there: wait up to late_grace_s; the schedule follows if it comes."""
        t_due = time.monotonic()
        self.arrived.clear()
        try:
            await asyncio.wait_for(self.arrived.wait(), self.late_grace_s)
        except asyncio.TimeoutError:
            return
        self.t0 += time.monotonic() - t_due

    def _catch_up(self, waited: float) -> None:
        self.waits.append(waited)
        if len(self.waits) == self.waits.maxlen:
            excess = min(self.waits) - self.target_wait_s
            if excess > 1.0 / FPS and self.queue:  # a whole frame behind: skip one (a 40 ms jump)
                self.queue.popleft()
                self.dropped += 1
                self.waits.clear()
            elif excess > 0:
                self.t0 -= min(excess, self.catch_up_s)

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self.t0 is None:
            await self.have_frames.wait()
            self.t0 = time.monotonic()
        deadline = self.t0 + self.n / FPS
        delay = deadline - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -STALL_S:
            self.t0 = time.monotonic() - self.n / FPS
        if not self.queue and self.last is not None and self.late_grace_s > 0:
            await self._wait_late_frame()
        if self.queue:
            index, image, degraded, t_put = self.queue.popleft()
            self._catch_up(time.monotonic() - t_put)
            self.last = image
        else:
            index, image, degraded = None, self.last, True
            self.repeated += 1
            self.waits.clear()
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = self.n * VIDEO_PTS_STEP, fractions.Fraction(1, VIDEO_CLOCK)
        self.on_sent(SentFrame(frame.pts, index, degraded, time.time()))
        self.n += 1
        return frame


class VoiceTrack(MediaStreamTrack):
    """The voice sent back: the fed audio, read at the content position of the frame being sent.

    `clock()` returns (session frame index, wall time it was sent) of the latest frame sent, or None before
    the first; the voice plays content sample 1920 n exactly when frame n goes out.
    """

    kind = "audio"

    def __init__(self, content: ContentAudio, clock: Callable[[], tuple[int, float] | None]):
        super().__init__()
        self.content, self.clock = content, clock
        self.k = 0
        self.t0: float | None = None
        self.pos: int | None = None
        self.error = 0.0  # smoothed (read position - target), in samples
        self.resyncs = 0

    def _target(self) -> int | None:
        anchor = self.clock()
        if anchor is None:
            return None
        index, t_sent = anchor
        return index * VOICE_PER_FRAME + int((time.time() - t_sent) * VOICE_RATE)

    async def recv(self) -> av.AudioFrame:
        if self.t0 is None:
            self.t0 = time.monotonic()
        delay = self.t0 + self.k * VOICE_BLOCK / VOICE_RATE - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -STALL_S:
            self.t0 = time.monotonic() - self.k * VOICE_BLOCK / VOICE_RATE
        target = self._target()
        if target is None:
            samples = np.zeros(VOICE_BLOCK, np.int16)
        else:
            if self.pos is None:
                self.pos = target
            self.error = 0.8 * self.error + 0.2 * (self.pos - target)
            if abs(self.error) > RESYNC_SAMPLES:
                self.pos, self.error = target, 0.0
                self.resyncs += 1
            samples = self.content.read(self.pos, VOICE_BLOCK)
            self.pos += VOICE_BLOCK
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = VOICE_RATE
        frame.pts, frame.time_base = self.k * VOICE_BLOCK, fractions.Fraction(1, VOICE_RATE)
        self.k += 1
        return frame

    def offset_ms(self) -> float | None:
        """Smoothed voice minus video content position when a voice packet goes out, in ms (+ = voice ahead)."""
        return None if self.pos is None else self.error * 1000.0 / VOICE_RATE
