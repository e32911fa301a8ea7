"""Typed messages between the pipeline stages: frozen, each with its session and first frame.

Frame indices are assigned once, from the audio (640 samples = 1 frame), and never renumbered: a message's
`first_frame` is the index of its first frame in the session's time base.
"""

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class AudioChunk:
    """pcm (n,) float32 16 kHz mono whose first sample starts frame `first_frame`; t_wall = when it was fed."""

    session_id: str
    first_frame: int
    pcm: np.ndarray
    t_wall: float


@dataclass(frozen=True)
class FeatureChunk:
    """Audio features (T, d_audio), one per video frame from `first_frame`; t_wall of the audio behind frame 0."""

    session_id: str
    first_frame: int
    feats: torch.Tensor
    t_wall: float | None = None


@dataclass(frozen=True)
class MotionChunk:
    """Motion latents (T, d_motion) from `first_frame`; degraded = made with fewer denoising steps."""

    session_id: str
    first_frame: int
    z: torch.Tensor
    degraded: bool = False
    t_wall: float | None = None


@dataclass(frozen=True)
class PhotoFace:
    """A photo's rig inputs: Face Mesh points (478, 2) in the reference's pixels; its rest pose's params (N_PARAMS,)."""

    landmarks: np.ndarray
    rest: np.ndarray | None = None


@dataclass(frozen=True)
class VideoFrames:
    """frames (T, H, W, 3) uint8 from `first_frame`; audio_t_wall = wall time the audio of the first frame was fed."""

    session_id: str
    first_frame: int
    frames: np.ndarray
    degraded: bool = False
    audio_t_wall: float | None = None

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])
