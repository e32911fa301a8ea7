"""What a session is set up with and what it leaves behind: its real-time settings (`SessionConfig`), the order
that decides who degrades first under overload (`Seniority`), and the point a stopped session resumes from
(`SessionCheckpoint`). The session itself is in actors/session.py."""

from dataclasses import dataclass


@dataclass(frozen=True)
class SessionConfig:
    """Pipelining and real-time settings of one session."""

    live: bool = True  # live: degrade instead of falling behind; offline (render): never degrade
    block_frames: int = 4  # audio is fed to the encoder in blocks of this many frames (one chunk)
    decode_piece_frames: int = 0  # 0: a chunk is decoded at once, split over the shards; n: in n-frame pieces,
    #                               each emitted as soon as it is decoded (live: the first frame shows sooner)
    queue_chunks: int = 2  # capacity of each queue between stages, in chunks
    decode_window: int = 2  # chunks being decoded at once
    inbox_seconds: float = 2.0  # `put` waits while more audio than this is queued
    degrade_after_s: float = 0.2  # live lag beyond the chunk's own delay -> fewer denoising steps
    repeat_after_s: float = 0.5  # live lag beyond this -> repeat the last frame instead of decoding
    degraded_steps: int = 1
    shard_retries: int = 3  # a piece of a chunk is tried on this many more shards (or restarts) before failing
    shard_return_s: float = 300.0  # how long a lost shard may take to come back before it is done without


@dataclass(frozen=True)
class SessionCheckpoint:
    """Where a session stood after `samples` fed samples: every frame before `next_frame` was emitted."""

    session_id: str
    samples: int
    next_frame: int
    audio_state: bytes
    motion_state: bytes


class Seniority:
    """The live sessions of one engine in the order they opened. Under overload the newest degrades first: a
    session's lag thresholds are multiplied by 1 + the number of live sessions opened after it, so the newest
    one drops denoising steps (and then repeats frames) while the older ones still have room, and what it
    stops asking for is what lets the others keep up."""

    def __init__(self):
        self._order: list[str] = []

    def join(self, session_id: str) -> None:
        self._order.append(session_id)

    def leave(self, session_id: str) -> None:
        if session_id in self._order:
            self._order.remove(session_id)

    def slack(self, session_id: str) -> int:
        """1 for the newest live session, 2 for the one before it, ..."""
        if session_id not in self._order:
            return 1
        return len(self._order) - self._order.index(session_id)
