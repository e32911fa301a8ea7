"""Typed clients of the pipeline stages: what sessions and the engine call, one method per stage method.

A stage runs behind a handle (actors/executor.py `LocalStage` or `RayStage`) whose `submit` names the stage's
method in a string; each client method here is the one place that string is written, with the method's real
arguments and the type of its future's result. Every method returns at once with a
`concurrent.futures.Future` (async code awaits `asyncio.wrap_future(...)`).

The motion generator's and the decoder shards' work goes through a lane (actors/batching.py): `Batched` gathers
the calls of the sessions that share the stage into one `process_many` / `decode_many` call per tick, `Solo`
sends each call alone as a list of one. The engine builds both kinds of client over the same stages
(`MotionClient.batched` / `.solo`) and gives each session the one it should use; other calls (open, snapshot,
close, ...) go straight to the stage, behind the batch in flight.
"""

import concurrent.futures
import threading
from dataclasses import dataclass

import numpy as np
import torch

from actorcast.actors.batching import Batched, Solo
from actorcast.actors.executor import StageHandle
from actorcast.actors.messages import AudioChunk, FeatureChunk, MotionChunk, PhotoFace
from actorcast.actors.stages import DecodedFrames, DecodeRequest, MotionRequest

Future = concurrent.futures.Future
MAX_BATCH = 16  # requests per batched call


class _StageClient:
    """What every client has: the stage handle, its name, and closing a session on it."""

    stage: StageHandle

    @property
    def name(self) -> str:
        return self.stage.name

    def close(self, session_id: str) -> "Future[None]":
        return self.stage.submit("close", session_id)


class _ResumableClient(_StageClient):
    """A stage that keeps per-session stream state, which a render's checkpoint saves and restores."""

    def snapshot(self, session_id: str) -> "Future[bytes]":
        return self.stage.submit("snapshot", session_id)

    def restore(self, session_id: str, data: bytes) -> "Future[None]":
        return self.stage.submit("restore", session_id, data)


class AudioClient(_ResumableClient):
    """AudioEncoderStage: AudioChunk -> FeatureChunk, per session."""

    def __init__(self, stage: StageHandle):
        self.stage = stage

    def lookahead_frames(self) -> "Future[int]":
        """The encoder's lookahead in frames, as its weights were trained."""
        return self.stage.submit("lookahead_frames")

    def open(self, session_id: str, first_frame: int = 0) -> "Future[np.ndarray]":
        """Start a stream; its result is the feature of steady silence (d_audio,)."""
        return self.stage.submit("open", session_id, first_frame)

    def process(self, chunk: AudioChunk) -> "Future[FeatureChunk]":
        return self.stage.submit("process", chunk)

    def end(self, session_id: str) -> "Future[FeatureChunk]":
        """Flush the last `lookahead` frames."""
        return self.stage.submit("end", session_id)

    def reset(self, session_id: str) -> "Future[None]":
        """Forget buffered audio (interrupt) without breaking the time base."""
        return self.stage.submit("reset", session_id)


class MotionClient(_ResumableClient):
    """MotionStage: FeatureChunk -> MotionChunks, through a batched or a solo lane."""

    def __init__(self, stage: StageHandle, lane: "Batched[MotionRequest, list[MotionChunk]] | Solo"):
        """Use `batched` or `solo`."""
        self.stage, self.lane = stage, lane

    @classmethod
    def batched(cls, stage: StageHandle, max_batch: int = MAX_BATCH) -> "MotionClient":
        """Chunks of all sessions sharing it run as one generator batch, at most one chunk per session."""
        return cls(stage, Batched(lambda requests: stage.submit("process_many", requests), max_batch,
                                  key=lambda request: request.chunk.session_id))

    @classmethod
    def solo(cls, stage: StageHandle) -> "MotionClient":
        """Each chunk runs alone."""
        return cls(stage, Solo(lambda requests: stage.submit("process_many", requests)))

    def process(self, chunk: FeatureChunk, steps: int | None = None) -> "Future[list[MotionChunk]]":
        """Every chunk the new features complete; `steps` below the session's own degrades (marked)."""
        return self.lane.submit(MotionRequest(chunk, steps))

    def open(self, session_id: str, reference: np.ndarray, emotion: str = "neutral", cache_policy: str | None = None,
             seed: int = 0, steps: int | None = None) -> "Future[None]":
        return self.stage.submit("open", session_id, reference, emotion, cache_policy, seed, steps)

    def stream_shape(self) -> "Future[tuple[int, tuple[int, ...]]]":
        """The chunk size the streams run, and every chunk size the generator is trained for."""
        return self.stage.submit("stream_shape")

    def rest_pose(self, session_id: str, silence: np.ndarray) -> "Future[np.ndarray]":
        """The session's idle motion parameters (N_PARAMS,) for a photo's rig."""
        return self.stage.submit("rest_pose", session_id, silence)

    def set_emotion(self, session_id: str, emotion: str) -> "Future[None]":
        return self.stage.submit("set_emotion", session_id, emotion)

    def end(self, session_id: str) -> "Future[list[MotionChunk]]":
        """Flush: the remaining frames."""
        return self.stage.submit("end", session_id)

class ShardClient(_StageClient):
    """One DecoderShard: motion latents -> frames, through a batched or a solo lane."""

    def __init__(self, stage: StageHandle, lane: "Batched[DecodeRequest, DecodedFrames] | Solo"):
        """Use `batched` or `solo`."""
        self.stage, self.lane = stage, lane

    @classmethod
    def batched(cls, stage: StageHandle, max_batch: int = MAX_BATCH) -> "ShardClient":
        """Frames of all sessions sharing it are decoded as one batch."""
        return cls(stage, Batched(lambda requests: stage.submit("decode_many", requests), max_batch))

    @classmethod
    def solo(cls, stage: StageHandle) -> "ShardClient":
        """Each part is decoded alone."""
        return cls(stage, Solo(lambda requests: stage.submit("decode_many", requests)))

    @property
    def retryable(self) -> tuple[type[BaseException], ...]:
        """Errors after which the shard may come back (its Ray actor restarted)."""
        return self.stage.retryable

    def wait_ready(self, timeout: float, stop: threading.Event | None = None) -> None:
        """Block until the shard answers again (see RayStage.wait_ready)."""
        self.stage.wait_ready(timeout, stop)

    def decode(self, session_id: str, first_frame: int, z: torch.Tensor) -> "Future[DecodedFrames]":
        """z (n, d_motion) -> frames first_frame.. (n, size, size, 3) uint8."""
        return self.lane.submit(DecodeRequest(session_id, first_frame, z))

    def open(self, session_id: str, reference: np.ndarray, photo: PhotoFace | None = None) -> "Future[None]":
        """Encode the session's reference (or set up a photo's rig) on this shard."""
        return self.stage.submit("open", session_id, reference, photo)

    def has_session(self, session_id: str) -> "Future[bool]":
        return self.stage.submit("has_session", session_id)

    def output_size(self) -> "Future[int]":
        """The side of the frames it makes, in pixels."""
        return self.stage.submit("output_size")


@dataclass(frozen=True)
class StageClients:
    """The clients one session calls: the audio encoder, the motion generator and the decoder shards."""

    audio: AudioClient
    motion: MotionClient
    shards: list[ShardClient]
