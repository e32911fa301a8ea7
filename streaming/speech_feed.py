"""Agent speech fed to a live session on a steady clock (`SpeechFeed`): the avatar's content clock runs in real time
whether the agent speaks or not. Used by the agent paths (streaming/live_audio.py, streaming/pipecat.py); the audio
it feeds goes through `AudioInput` (streaming/tracks.py).
"""

import asyncio
import collections
import contextlib
import time
from typing import Callable

import numpy as np

from actorcast.models.timebase import SAMPLE_RATE
from actorcast.streaming.tracks import BLOCK_S, VOICE_BLOCK, VOICE_RATE, AudioInput

FEED_MARGIN_S = 0.003  # its ticks fall this long after speech handed over in real time is due
_MARK = object()  # tags a marker in the queue


class SpeechFeed:
    """Agent speech fed to the session on a steady clock: every 20 ms the next 20 ms of queued speech, or silence.

    The session's content clock thus runs in real time whether the agent speaks or not (the avatar idles on
    silence), however fast or slow the speech is handed over. Speech is queued as 48 kHz mono int16 and cut into
    20 ms blocks; a stream handed over in pieces (`speak(..., final=False)`) is cut without padding between the
    pieces. Markers queued between speech (`mark`) reach `on_mark(content position at 48 kHz, marker)` when the
    feed gets to them, so that what brackets the speech can follow it out in step.

    The clock takes the speech's phase: speech handed over after a tick that fed silence for want of it goes in at
    once, not at the next tick, and the ticks after it fall `FEED_MARGIN_S` after the times its next blocks are due
    (a speech stream handed over in real time then waits that margin a block, not up to 20 ms; an earlier block
    of content, never a skipped or repeated one).
    """

    def __init__(self, audio_in: AudioInput, on_mark: Callable[[int, object], None] | None = None):
        self.audio_in, self.on_mark = audio_in, on_mark
        self.queue: collections.deque = collections.deque()  # (20 ms block, time handed over) or (_MARK, marker)
        self.partial = np.zeros(0, np.int16)  # the start of a block whose rest has not come yet
        self.partial_t = 0.0
        self.fed_ahead = 0  # 20 ms blocks of silence fed ahead of the clock (see preroll_silence)
        # (content position at 48 kHz, time handed over) of the speech blocks fed lately, for latency measures; a
        # reader may let go of the oldest
        self.received: collections.deque[tuple[int, float]] = collections.deque(maxlen=3000)
        self.handed = asyncio.Event()  # set when speech is queued: wakes a clock that fed silence for want of it

    def speak(self, pcm48: np.ndarray, final: bool = True) -> float:
        """Queue 48 kHz mono int16 speech; returns its length in seconds. final=False: more of the same stream
        follows, so a last partial block waits for it instead of being padded with silence."""
        now = time.time()
        if not self.partial.size:
            self.partial_t = now
        pcm = np.concatenate([self.partial, np.asarray(pcm48, np.int16).reshape(-1)])
        whole = len(pcm) // VOICE_BLOCK * VOICE_BLOCK
        for start in range(0, whole, VOICE_BLOCK):
            self.queue.append((pcm[start:start + VOICE_BLOCK], self.partial_t if start == 0 else now))
        self.partial = pcm[whole:]
        if whole:  # the samples left over came with this piece
            self.partial_t = now
            self.handed.set()
        if final:
            self.flush()
        return len(pcm48) / VOICE_RATE

    def flush(self) -> None:
        """Queue the last partial block, padded with silence to 20 ms."""
        if self.partial.size:
            self.queue.append((np.pad(self.partial, (0, VOICE_BLOCK - len(self.partial))), self.partial_t))
            self.partial = np.zeros(0, np.int16)
            self.handed.set()

    def mark(self, marker: object) -> None:
        """Queue a marker after the speech queued so far (a partial block is flushed first)."""
        self.flush()
        self.queue.append((_MARK, marker))

    def clear(self) -> None:
        """Drop every queued block and marker (barge-in)."""
        self.queue.clear()
        self.partial = np.zeros(0, np.int16)

    def queued_s(self) -> float:
        return (sum(1 for item in self.queue if item[0] is not _MARK) * VOICE_BLOCK + len(self.partial)) / VOICE_RATE

    def preroll_silence(self, until_sample: int) -> None:
        """Feed silence at once until the session has `until_sample` 16 kHz samples (plus one block); the clock
        then skips as many 20 ms slots, so the content clock stays on time. After a barge-in the audio that
        follows is known to be silence: generating from it need not wait for it to arrive in real time."""
        blocks = max(0, -(-(until_sample - self.audio_in.fed) * VOICE_RATE // SAMPLE_RATE // VOICE_BLOCK) + 1)
        for _ in range(blocks):
            self.audio_in.push_voice(np.zeros(VOICE_BLOCK, np.int16))
        self.fed_ahead += blocks

    def _has_speech(self) -> bool:
        return any(item[0] is not _MARK for item in self.queue)

    def _next_block(self) -> np.ndarray:
        while self.queue and self.queue[0][0] is _MARK:
            marker = self.queue.popleft()[1]
            if self.on_mark is not None:
                self.on_mark(self.audio_in.content.end, marker)
        if not self.queue:
            return np.zeros(VOICE_BLOCK, np.int16)
        block, t_handed = self.queue.popleft()
        self.received.append((self.audio_in.content.end, t_handed))
        return block

    async def run(self) -> None:
        """Feed one 20 ms block per 20 ms, for ever (cancel the task to stop)."""
        t0, k = time.monotonic(), 0
        while True:
            starved = False
            if self.fed_ahead:  # this slot's silence went in early (preroll_silence)
                self.fed_ahead -= 1
            else:
                starved = not self._has_speech()
                self.audio_in.push_voice(self._next_block())
            k += 1
            delay = t0 + k * BLOCK_S - time.monotonic()
            if starved and delay > 0:  # silence went in for want of speech: speech that comes goes in at once
                self.handed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.handed.wait(), delay)
                    t0, k = time.monotonic() + FEED_MARGIN_S, 0  # in now; the next tick a block and the margin on
                    continue
            await asyncio.sleep(max(0.0, t0 + k * BLOCK_S - time.monotonic()))
