"""The lip-sync meter: MediaPipe Face Mesh reading mouth and eye opening off frames (docs/ARCHITECTURE.md "Measures").

Nobody here trained it, so it is an independent reader of generated frames. mediapipe 0.10.21 needs numpy<2,
so it runs in its own venv (made by `actorcast setup`; found and run by models/mediapipe_env.py) as a
subprocess:

    frames (N, H, W, 3) uint8 --np.save--> tmp/chunk_*.npy --meter venv's python meter_worker.py-->
    tmp/out.npz --np.load--> MeterReading

One worker call reads one video sequence (its face tracking carries across the chunks); the frames go to disk
in chunks of CHUNK_FRAMES so a float tensor is converted to uint8 a piece at a time. Cost: 1.4-2.6 s per call
(start-up, import, model load) plus the per-frame cost noted at `FaceMeter`.
"""

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from actorcast.models.errors import InputError
from actorcast.models.mediapipe_env import MediaPipeError, mediapipe_python, run_in_mediapipe_env

WORKER = Path(__file__).with_name("meter_worker.py")
CHUNK_FRAMES = 2000                                      # frames per .npy handed to the worker (~390 MB at 256²)


class MeterError(MediaPipeError):
    """The lip-sync meter's worker failed; the message carries the last line of its stderr."""


@dataclass(frozen=True)
class MeterReading:
    """What the meter read off N frames. Ratios are unitless (pixel distance / pixel distance); NaN where
    no face was found.

    mouth_open (N,): inner-lip gap (landmarks 13-14) / face height (10-152); ~0 closed, ~0.2 wide open.
    eye_open_l, eye_open_r (N,): lid gap / eye width of the subject's left (image right) and right eye;
    ~0.45 open, ~0.05 closed on the built-in cartoons. eye_open (N,): their mean.
    found (N,) bool: a face was found in the frame.
    landmarks (N, 478, 2) float32: (x, y) in pixels of Face Mesh's refined landmarks.
    """

    mouth_open: np.ndarray
    eye_open: np.ndarray
    eye_open_l: np.ndarray
    eye_open_r: np.ndarray
    found: np.ndarray
    landmarks: np.ndarray

    @property
    def n_missing(self) -> int:
        """Frames in which no face was found."""
        return int((~self.found).sum())

    def __len__(self) -> int:
        return len(self.found)


def _uint8_chunks(frames: np.ndarray | torch.Tensor):
    """Yield uint8 (n, H, W, 3) pieces of at most CHUNK_FRAMES frames of `frames` (see FaceMeter.read)."""
    if isinstance(frames, torch.Tensor):
        if not frames.is_floating_point() or frames.ndim != 4 or frames.shape[1] != 3:
            raise InputError(f"the meter reads float (N, 3, H, W) tensors in [0, 1], got {frames.dtype} "
                             f"{tuple(frames.shape)}")
        for a in range(0, frames.shape[0], CHUNK_FRAMES):
            x = frames[a:a + CHUNK_FRAMES].detach().float().clamp(0.0, 1.0).mul(255.0).round()
            yield x.to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()
    elif isinstance(frames, np.ndarray):
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise InputError(f"the meter reads uint8 (N, H, W, 3) RGB arrays, got {frames.dtype} {frames.shape}")
        for a in range(0, frames.shape[0], CHUNK_FRAMES):
            yield frames[a:a + CHUNK_FRAMES]
    else:
        raise InputError(f"the meter reads a numpy array or a torch tensor of frames, got {type(frames).__name__}")


class FaceMeter:
    """Reads mouth and eye opening off frames with MediaPipe Face Mesh in the MediaPipe venv (mediapipe_env.py).

    Measured on 256² cartoons, CPU, sharing the cores with other jobs (2026-11-29): 6-14 ms per frame
    tracking, ~24 ms per frame with static=True (detection on every frame); plus the per-call start-up.
    """

    def __init__(self) -> None:
        self.python = mediapipe_python()  # MediaPipeUnavailable now, not at the first read

    def read(self, frames: np.ndarray | torch.Tensor, static: bool = False) -> MeterReading:
        """Read N frames as one video sequence.

        frames: uint8 numpy (N, H, W, 3) RGB, or a float torch tensor (N, 3, H, W) in [0, 1] (any device).
        static: detect the face afresh on every frame (unrelated stills) instead of tracking it.
        Returns a MeterReading of N frames, in order; frames without a face are NaN there, not dropped.
        """
        if frames.shape[0] == 0:
            raise InputError("the meter got 0 frames: give it at least one")
        with tempfile.TemporaryDirectory(prefix="actorcast-meter-") as tmp:
            paths = []
            for i, chunk in enumerate(_uint8_chunks(frames)):
                paths.append(str(Path(tmp) / f"chunk_{i:05d}.npy"))
                np.save(paths[-1], chunk)
            out = str(Path(tmp) / "out.npz")
            try:
                run_in_mediapipe_env(WORKER, [*(["--static"] if static else []), out, *paths], "the lip-sync meter")
            except MediaPipeError as e:  # the meter's own type, so a failed read is told from a failed framing
                raise MeterError(str(e)) from None
            with np.load(out) as d:
                left, right = d["eye_open_l"], d["eye_open_r"]
                return MeterReading(mouth_open=d["mouth_open"], eye_open=(left + right) / 2, eye_open_l=left,
                                    eye_open_r=right, found=d["found"], landmarks=d["landmarks"])

