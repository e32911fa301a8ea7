"""Helpers shared by several test files: small input files, an event loop on a virtual clock, and a session of an
engine rendered from audio."""

import asyncio
import selectors
import struct
import types
import wave
import zlib
from pathlib import Path

import av
import numpy as np


def write_audio(path: Path, seconds: float, rate: int = 44100, layout: str = "stereo", silent: bool = False):
    """A 220 Hz tone switched on and off twice a second (or silence) as 16-bit PCM (.wav) or AAC (other
    suffixes), at `rate` Hz, mono or stereo; returns `path`."""
    t = np.arange(int(rate * seconds)) / rate
    tone = 0.0 if silent else 0.3 * np.sin(2 * np.pi * 220 * t) * (np.sin(2 * np.pi * 2 * t) > 0)
    channels = 2 if layout == "stereo" else 1
    pcm = np.repeat(np.asarray(tone + 0 * t, np.float32)[None], channels, 0)
    codec = "pcm_s16le" if path.suffix == ".wav" else "aac"
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        fmt = "s16" if codec == "pcm_s16le" else "fltp"
        for i in range(0, pcm.shape[1], 1024):
            block = pcm[:, i:i + 1024]
            data = (block * 32767).astype(np.int16).T.reshape(1, -1) if fmt == "s16" else np.ascontiguousarray(block)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=fmt, layout=layout)
            frame.sample_rate, frame.pts = rate, i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def write_pcm_wav(path: Path, samples: int, keep_bytes: int | None = None) -> Path:
    """A 16 kHz mono 16-bit WAV (44-byte header) of `samples` samples, cut after `keep_bytes` bytes if given."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.sin(np.arange(samples) / 5) * 8000).astype("<i2").tobytes())
    if keep_bytes is not None:
        path.write_bytes(path.read_bytes()[:keep_bytes])
    return path


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height RGB pixels in its header but holds almost no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


class _AdvancingSelector(selectors.DefaultSelector):
    """A selector that never blocks: where the loop would wait `timeout` seconds for its next timer, the
    virtual clock moves on by that much instead."""

    def __init__(self):
        super().__init__()
        self.now = 0.0

    def select(self, timeout=None):
        events = super().select(0)
        if not events and timeout:
            self.now += timeout
        elif not events and timeout is None:
            raise RuntimeError("every task waits and no timer is set: nothing can ever wake them")
        return events


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock moves only while every task waits, and then straight to the next timer.

    `asyncio.sleep(0.16)` returns at once in real time with `loop.time()` 0.16 later; code run between awaits
    takes no virtual time. A test of timing logic (schedules, grace periods, timeouts) on it gives the same
    result on a busy machine as on an idle one. Not for code that waits on threads or sockets."""

    def __init__(self):
        self._clock = _AdvancingSelector()
        super().__init__(self._clock)

    def time(self) -> float:
        return self._clock.now


def run_on_virtual_clock(coro_fn, monkeypatch, *modules, epoch: float = 1.7e9):
    """Run `coro_fn()` on a VirtualClockLoop, with the `time` of each of `modules` replaced by the loop's
    clock (`monotonic()` = loop time, `time()` = epoch + loop time); returns its result."""
    loop = VirtualClockLoop()
    fake = types.SimpleNamespace(monotonic=loop.time, perf_counter=loop.time, time=lambda: epoch + loop.time())
    for module in modules:
        monkeypatch.setattr(module, "time", fake)
    try:
        return loop.run_until_complete(coro_fn())
    finally:
        loop.close()


def buzz_pcm(seconds: float, seed: int = 0) -> np.ndarray:
    """16 kHz float32: a 180 Hz buzz switched on and off 3 times a second, over a little noise (speech-like
    rhythm, seeded)."""
    t = np.arange(int(16000 * seconds)) / 16000
    noise = np.random.default_rng(seed).standard_normal(t.size) * 0.05
    return (0.3 * np.sin(2 * np.pi * 180 * t) * (np.sin(2 * np.pi * 3 * t) > 0) + noise).astype(np.float32)


async def render_session(engine, pcm, live=False, piece=3001, on_first=None, **open_kw):
    """One session of `engine` (identity 2, seed 5) fed `pcm` in ragged pieces of `piece` samples; `on_first(session)`
    is awaited at its first frames. Returns (frame indices, frames, session stats)."""
    session = await engine.open_session(identity_seed=2, seed=5, live=live, **open_kw)

    async def produce():
        for i in range(0, len(pcm), piece):
            await session.put(pcm[i:i + piece])
        session.end()

    producer = asyncio.create_task(produce())
    index, frames = [], []
    async for vf in session.frames():
        if on_first is not None and not index:
            await on_first(session)
        index += range(vf.first_frame, vf.first_frame + vf.n_frames)
        frames.append(vf.frames)
    await producer
    stats = session.stats()
    await session.close()
    return index, np.concatenate(frames), stats
