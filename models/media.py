"""Audio/video files through PyAV: read any audio as 16 kHz mono, write H.264 + AAC mp4 atomically."""

import logging
import os
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np
import torch

from actorcast.models.errors import InputError
from actorcast.models.timebase import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME

log = logging.getLogger(__name__)


def _open(path: Path, what: str) -> av.container.InputContainer:
    if not path.exists():
        raise InputError(f"{what} {path} does not exist: check the path")
    if path.is_dir():
        raise InputError(f"{what} {path} is a directory: give a file")
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as e:
        raise InputError(f"{what} {path} cannot be read ({e.__class__.__name__}): give an audio/video file PyAV can decode") from None


def iter_audio_blocks(path: Path | str) -> Iterator[np.ndarray]:
    """Yield the audio of any PyAV-readable file as 16 kHz mono float32 blocks (memory stays flat)."""
    path = Path(path)
    container = _open(path, "audio file")
    with container:
        if not container.streams.audio:
            raise InputError(f"{path} has no audio stream: give a file with sound")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    yield out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
            for out in resampler.resample(None):
                yield out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
        except av.error.FFmpegError as e:
            raise InputError(f"{path} is corrupt or truncated ({e}): re-export the audio") from None


def read_audio(path: Path | str) -> torch.Tensor:
    """The whole audio track of a file as a (N,) float32 tensor at 16 kHz mono."""
    blocks = list(iter_audio_blocks(path))
    if not blocks:
        return torch.zeros(0)
    return torch.from_numpy(np.concatenate(blocks))


def write_wav(path: Path | str, audio: torch.Tensor) -> None:
    """Write a (N,) float32 16 kHz mono tensor as 16-bit PCM WAV, through a temporary name."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.part")
    pcm = (audio.clamp(-1, 1) * 32767).round().to(torch.int16).numpy().reshape(1, -1)
    try:
        with av.open(str(tmp), mode="w", format="wav") as out:
            stream = out.add_stream("pcm_s16le", rate=SAMPLE_RATE, layout="mono")
            for start in range(0, pcm.shape[1], SAMPLE_RATE):
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm[:, start:start + SAMPLE_RATE]),
                                                   format="s16", layout="mono")
                frame.sample_rate = SAMPLE_RATE
                out.mux(stream.encode(frame))
            out.mux(stream.encode(None))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def yuv_frame(image: np.ndarray, pts: int) -> av.VideoFrame:
    """An (H, W, 3) uint8 RGB image (H, W even) as a yuv420p VideoFrame for libx264, converted exactly.

    The conversion is integer arithmetic here (BT.601 limited range, chroma from 2x2 means), not swscale:
    PyAV's swscale conversion with threads gave different YUV for the same pixels from encode to encode, so
    the same frames made different H.264 files and resumed renders were not frame-identical. This one is
    exact and repeatable (and decodes back within 2 levels on flat colour).
    """
    h, w = image.shape[:2]
    rgb = image.astype(np.uint16)  # 66*255 + 129*255 + 25*255 + 128 < 2**16: luma fits in 16 bits
    y = (rgb[..., 0] * 66 + rgb[..., 1] * 129 + rgb[..., 2] * 25 + 128) >> 8
    quad = (image[0::2, 0::2].astype(np.int32) + image[1::2, 0::2] + image[0::2, 1::2]
            + image[1::2, 1::2])  # 4x the 2x2 mean
    r4, g4, b4 = quad[..., 0], quad[..., 1], quad[..., 2]
    u = ((112 * b4 - 38 * r4 - 74 * g4 + 512) >> 10) + 128
    v = ((112 * r4 - 94 * g4 - 18 * b4 + 512) >> 10) + 128
    planes = np.empty(h * w * 3 // 2, np.uint8)
    planes[:h * w] = (y + 16).reshape(-1)  # at most 235
    planes[h * w:h * w * 5 // 4] = u.reshape(-1).clip(0, 255)
    planes[h * w * 5 // 4:] = v.reshape(-1).clip(0, 255)
    vf = av.VideoFrame.from_ndarray(planes.reshape(h * 3 // 2, w), format="yuv420p")
    vf.pts = pts
    return vf


class Mp4Writer:
    """H.264 + AAC mp4 writer that interleaves audio and video per frame and renames on success.

    Use as a context manager; `write(frames, audio)` takes (B, 3, H, W) floats in [0, 1] and exactly
    B * 640 samples of 16 kHz mono audio (or None for a silent video). On an exception the temporary file
    is deleted, so a half-written output never appears under the final name.
    """

    def __init__(self, path: Path | str, size: int, with_audio: bool = True, crf: int = 20):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.part")
        self.size, self.with_audio, self.crf = size, with_audio, crf
        self.frames_written = 0

    def __enter__(self) -> "Mp4Writer":
        self.container = av.open(str(self.tmp), mode="w", format="mp4")
        self.video = self.container.add_stream("libx264", rate=FPS)
        self.video.width = self.video.height = self.size
        self.video.pix_fmt = "yuv420p"
        self.video.options = {"preset": "veryfast", "crf": str(self.crf)}
        self.audio = None
        if self.with_audio:
            self.audio = self.container.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
            self.audio.time_base = Fraction(1, SAMPLE_RATE)
        return self

    def write(self, frames: torch.Tensor, audio: torch.Tensor | None = None) -> None:
        """Append (B, 3, H, W) frames in [0, 1] and their B*640 audio samples, interleaved per frame."""
        rgb = (frames.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
        if self.with_audio:
            pcm = audio.to(torch.float32).numpy().reshape(1, -1)
            assert pcm.shape[1] == len(rgb) * SAMPLES_PER_FRAME, "audio must be exactly 640 samples per frame"
        for i, image in enumerate(rgb):
            self.container.mux(self.video.encode(yuv_frame(image, self.frames_written)))
            if self.with_audio:
                af = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(pcm[:, i * SAMPLES_PER_FRAME:(i + 1) * SAMPLES_PER_FRAME]),
                    format="flt", layout="mono")
                af.sample_rate = SAMPLE_RATE
                af.pts = self.frames_written * SAMPLES_PER_FRAME
                self.container.mux(self.audio.encode(af))
            self.frames_written += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.container.mux(self.video.encode(None))
                if self.audio is not None:
                    self.container.mux(self.audio.encode(None))
            self.container.close()
            if exc_type is None:
                os.replace(self.tmp, self.path)
        finally:
            self.tmp.unlink(missing_ok=True)
