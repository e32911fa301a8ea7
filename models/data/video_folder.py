"""Real talking-head data: a folder of videos with sound, read through PyAV into the clip format.

Each file is decoded once into memory-bounded clips of `seconds` length: audio resampled to 16 kHz mono,
video resampled to 25 fps (by picking the source frame nearest each 40 ms tick), centre-cropped to a
square and resized to `size`. Real data has no ground-truth motion parameters, so `Clip.params` is an
empty (T, 0) tensor and only the decoder/motion stages (which need frames and audio) can use it.
"""

import logging
from pathlib import Path
from typing import Iterator

import av
import numpy as np
import torch
from torch.utils.data import IterableDataset

from actorcast.models.data.dataset import Clip
from actorcast.models.data.images import square_image
from actorcast.models.errors import InputError
from actorcast.models.timebase import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME

log = logging.getLogger(__name__)
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi")


def list_videos(folder: Path | str) -> list[Path]:
    """The video files of a folder (recursively), sorted; InputError if there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"data folder {folder} does not exist or is not a directory")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
    if not files:
        raise InputError(f"data folder {folder} has no video files ({', '.join(VIDEO_SUFFIXES)})")
    return files


def _square(frame: np.ndarray, size: int) -> torch.Tensor:
    """(H, W, 3) uint8 → centre-cropped, resized (3, size, size) float in [0, 1]."""
    return square_image(frame, size)[0]


def read_video(path: Path | str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode one file: ((T, 3, size, size) frames at 25 fps, (T*640,) audio at 16 kHz mono)."""
    path = Path(path)
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, ValueError) as e:
        raise InputError(f"{path} cannot be read ({e.__class__.__name__}): re-encode it or remove it") from None
    with container:
        if not container.streams.video:
            raise InputError(f"{path} has no video stream: remove it from the data folder")
        if not container.streams.audio:
            raise InputError(f"{path} has no audio stream: talking-head training needs the sound")
        frames, audio = _decode(container, path, size)
    n = min(len(frames), len(audio) // SAMPLES_PER_FRAME)
    if n == 0:
        raise InputError(f"{path} holds no complete frame of video with audio")
    return torch.stack(frames[:n]), audio[:n * SAMPLES_PER_FRAME]


def _decode(container, path: Path, size: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Decode both streams: video resampled to 25 fps by nearest timestamp, audio to 16 kHz mono."""
    vstream, astream = container.streams.video[0], container.streams.audio[0]
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    frames: list[torch.Tensor] = []
    pcm: list[np.ndarray] = []
    try:
        for packet in container.demux(vstream, astream):
            for frame in packet.decode():
                if packet.stream.type == "audio":
                    pcm.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
                    continue
                t = float(frame.pts * frame.time_base) if frame.pts is not None else len(frames) / FPS
                # Emit one output frame per 40 ms tick that this source frame is nearest to.
                while len(frames) / FPS <= t + 0.5 / FPS:
                    frames.append(_square(frame.to_ndarray(format="rgb24"), size))
        pcm.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
    except av.error.FFmpegError as e:
        raise InputError(f"{path} is corrupt or truncated ({e}): re-encode it or remove it") from None
    audio = torch.from_numpy(np.concatenate(pcm).astype(np.float32)) if pcm else torch.zeros(0)
    return frames, audio


class VideoFolderClips(IterableDataset):
    """Clips of `seconds` from every readable video in a folder; unreadable files are skipped with a warning."""

    def __init__(self, folder: Path | str, seconds: float = 2.0, size: int = 128):
        self.files = list_videos(folder)
        self.folder, self.seconds, self.size = Path(folder), seconds, size
        self.frames_per_clip = max(1, round(seconds * FPS))

    def __iter__(self) -> Iterator[Clip]:
        usable = 0
        for path in self.files:
            try:
                frames, audio = read_video(path, self.size)
            except InputError as e:
                log.warning("skipping %s", e)
                continue
            usable += 1
            yield from self._split(frames, audio)
        if usable == 0:
            raise InputError(f"data folder {self.folder} has no usable clips (every file failed to read)")

    def _split(self, frames: torch.Tensor, audio: torch.Tensor) -> Iterator[Clip]:
        n = self.frames_per_clip
        for start in range(0, len(frames) - n + 1, n):
            clip_frames = frames[start:start + n]
            yield Clip(seed=-1, audio=audio[start * SAMPLES_PER_FRAME:(start + n) * SAMPLES_PER_FRAME],
                       params=torch.zeros(n, 0), emotion=0, frames=clip_frames, reference=frames[0],
                       frames_alt=None, reference_alt=None)
