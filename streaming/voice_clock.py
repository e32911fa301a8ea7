"""The voice as the clock: an agent's speech and the avatar's pictures paced for a transport that is pushed to.

A live call's tracks are pulled by aiortc: AvatarVideoTrack schedules the pictures and VoiceTrack follows them,
skipping or repeating voice to resync. An agent framework (Pipecat) pushes frames into its transport's queues
instead, and its listener hears every skip or repeat of speech. Here the voice leads. Every 40 ms slot sends
the picture of frame n and 40 ms of voice (48 kHz content positions, 1920 per frame; `lag` in samples):

    slot n:  picture n, voice [1920 n - lag, 1920 n - lag + 960)  |  20 ms later: the next 960 samples

so frame n's sound starts `lag` after its picture (the Pipecat service sets it: a receiver decodes video later
than audio). While there is sound, n advances by one per slot: speech is
never skipped or repeated, and a picture not generated in time is replaced by the newest one before it, or the
last one again. Only where the voice is silent (and no marker lies) does the clock move: it skips silence while
it is further behind the feed than the playout delay, and holds (silence, the same picture) while it is closer.
The playout delay follows the generation latency: p95 over the last 100 frames (4 s), plus a 5 ms margin. A whole
frame moved at a time would leave the delay anywhere up to one frame above that; so over silence the slot itself
moves too, by less than a frame (`wait_s`): it goes out when its frame is due, the playout delay after its sound
was fed, and every later slot keeps that phase (the slots of speech are 40 ms apart, whatever the phase).
"""

import collections
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from actorcast.streaming.figures import percentile
from actorcast.streaming.tracks import VOICE_BLOCK, VOICE_PER_FRAME, VOICE_RATE, ContentAudio

SLOT_S = VOICE_PER_FRAME / VOICE_RATE  # 40 ms: one picture and its voice


@dataclass(frozen=True)
class Slot:
    """What one 40 ms slot sends."""

    index: int | None  # frame whose picture is sent; None: the last picture again (or none yet)
    image: np.ndarray | None  # (H, W, 3) uint8; None before the first frame
    degraded: bool  # a repeat, a late picture, or a degraded frame
    voice: tuple[int | None, int | None]  # content positions of its two 20 ms voice blocks (None: silence); read
    #                                       them when they go out, an interrupt may silence the second meanwhile


class VoiceClock:
    """Paces pictures and voice from the session's frames (`put`) and the fed audio (`content`).

    arrival(n): the wall time frame n's first sample was fed (AudioInput.arrival); `may_move(lo, hi)` given to
    `next_slot` says whether content [lo, hi) may be skipped or waited over (nothing bracketing speech there).
    """

    def __init__(self, content: ContentAudio, arrival: Callable[[int], float | None], lag: int = VOICE_BLOCK,
                 window: int = 100, margin_s: float = 0.005):
        self.content, self.arrival, self.lag, self.margin_s = content, arrival, lag, margin_s
        self.frames: dict[int, tuple[np.ndarray, bool]] = {}  # generated, not sent yet
        self.latencies: collections.deque[float] = collections.deque(maxlen=window)  # fed -> generated, s
        self.n: int | None = None  # frame of the last slot
        self.last: np.ndarray | None = None  # the last picture sent
        self.skip_before = 0  # frames before this are dropped (they show interrupted speech)
        self.resume_at: int | None = None  # after an interrupt: the first frame made from silence only
        self.holds = self.skips = 0  # slots held, frames skipped over silence

    def put(self, first_frame: int, frames: np.ndarray, degraded: bool, now: float | None = None) -> None:
        """(T, H, W, 3) uint8 frames of the session from frame `first_frame` on, generated at wall time `now`."""
        now = time.time() if now is None else now
        for k, image in enumerate(frames):
            index = first_frame + k
            t_fed = self.arrival(index)
            if t_fed is not None:
                self.latencies.append(now - t_fed)
            if index >= self.skip_before and (self.n is None or index > self.n):
                self.frames[index] = (image, degraded)

    def skip_until(self, frame_index: int) -> None:
        """Barge-in: drop every frame before `frame_index`; the voice jumps to it once it is generated."""
        self.skip_before = max(self.skip_before, frame_index)
        for index in [k for k in self.frames if k < frame_index]:
            del self.frames[index]
        self.resume_at = frame_index

    def delay_target_s(self) -> float | None:
        """The playout delay to hold: how long after its sound was fed a frame goes out."""
        if not self.latencies:
            return None
        return percentile(self.latencies, 95) + self.margin_s

    def position(self) -> int | None:
        """Content position after the last voice sent (None before the first slot)."""
        return None if self.n is None else self.n * VOICE_PER_FRAME - self.lag + VOICE_PER_FRAME

    def wait_s(self, may_move: Callable[[int, int], bool], now: float | None = None) -> float:
        """How long the next slot should wait before `next_slot`, at wall time `now`: over silence, until its
        frame is due (the playout delay after its sound was fed), up to one slot; negative where it is already
        late, by half of that (at most a quarter slot): the slots after it should come that much sooner. Else 0.
        Changes nothing."""
        target = self.delay_target_s()
        if self.n is None or target is None or self.resume_at is not None:
            return 0.0
        n = self.n + 1
        lo = n * VOICE_PER_FRAME - self.lag
        if not self._quiet(lo, lo + VOICE_PER_FRAME, may_move):
            return 0.0
        behind = (self.content.end - lo) / VOICE_RATE
        fed = self.arrival(n)
        if fed is None or behind < target - SLOT_S:  # next_slot holds a whole slot
            return 0.0
        early = fed + target - (time.time() if now is None else now)
        return min(SLOT_S, early) if early > 0 else max(-SLOT_S / 4, early / 2)

    def next_slot(self, may_move: Callable[[int, int], bool]) -> Slot:
        if self.n is None:
            if not self.frames:
                return Slot(None, None, True, (None, None))
            n = min(self.frames)
        else:
            n = self._advance(self.n + 1, may_move)
            if n is None:  # hold: silence and the same picture
                self.holds += 1
                return Slot(None, self.last, True, (None, None))
        self.n = n
        index, degraded = self._picture(n)
        lo = n * VOICE_PER_FRAME - self.lag
        return Slot(index, self.last, degraded, tuple(p if p >= 0 else None for p in (lo, lo + VOICE_BLOCK)))

    def _advance(self, n: int, may_move) -> int | None:
        """The frame of the next slot: n, later over silence, or None to hold."""
        lo = n * VOICE_PER_FRAME - self.lag  # the first sample this slot would send
        if self.resume_at is not None:
            if n >= self.resume_at:
                self.resume_at = None
            elif self.resume_at in self.frames and self._quiet(lo, self.resume_at * VOICE_PER_FRAME, may_move):
                self.skips += self.resume_at - n
                n, self.resume_at = self.resume_at, None
                return n
        target = self.delay_target_s()
        if target is None or not self._quiet(lo, lo + VOICE_PER_FRAME, may_move):
            return n
        behind = (self.content.end - lo) / VOICE_RATE
        if behind < target - SLOT_S:  # more than a slot early: hold; less: `wait_s` waited for it
            return None
        limit = int(self.content.end - target * VOICE_RATE) // VOICE_PER_FRAME
        while n < limit and self._quiet(lo + VOICE_PER_FRAME, lo + 2 * VOICE_PER_FRAME, may_move):
            n, lo = n + 1, lo + VOICE_PER_FRAME
            self.skips += 1
        return n

    def _quiet(self, lo: int, hi: int, may_move) -> bool:
        """Content [lo, hi) has been fed, is digital silence and may be moved over."""
        return hi <= self.content.end and not self.content.read(lo, hi - lo).any() and may_move(lo, hi)

    def _picture(self, n: int) -> tuple[int | None, bool]:
        """Frame n's picture, else the newest one before it not sent yet, else the last one again."""
        ready = [k for k in self.frames if k <= n]
        if not ready:
            return None, True
        index = max(ready)
        image, degraded = self.frames[index]
        for k in ready:
            del self.frames[k]
        self.last = image
        return index, degraded or index != n
