"""The receiver's A/V offset, measured as the call goes, in bounded memory and time.

The voice that arrives is the sent audio played back in step with the video; frame n (the server's session
frame index, from its stats messages) carries audio content position 1920 n at 48 kHz. Each 0.25 s window of
received voice is located in the sent audio by normalised cross-correlation, searching only near where it is
expected: the content position of the video frame that arrived at about the same time, ± `search_s`. The
located window (content position p, arrival time t) gives, for each video frame of content position q near p
that arrived at t_v, an offset t + (q - p) / 48000 - t_v (positive: the voice arrives later).

Work per window is one FFT of (window + 2 search_s) samples, whatever the length of the call; what is kept is
a few seconds of windows and frames waiting for their frame index, and one float per measured frame.
"""

import collections

import numpy as np

from actorcast.streaming.tracks import VOICE_PER_FRAME, VOICE_RATE

DECIMATE = 3  # correlate at 16 kHz: speech is located as well, at a ninth of the cost
SILENT = 100.0  # mean |sample| below this (int16) cannot be located
MIN_SCORE = 0.75  # normalised correlation a match must reach
# Short windows: the server jumps the voice back into step when it drifts (voice_resyncs, several a second on a
# busy machine), and a window with a jump in it matches nothing; a quarter second still holds a few syllables.
WINDOW_S = 0.25
KEEP_FRAMES = 500  # video frames kept for matching (20 s at 25 fps): stats give their index within ~0.5 s


class AvOffset:
    """Feed it the received voice, the received video frames and the server's frame list as they come;
    `median_ms()` is the offset so far."""

    def __init__(self, sent48: np.ndarray, window_s: float = WINDOW_S, search_s: float = 1.0):
        self.sent = np.asarray(sent48, np.int16).reshape(-1)
        self.win = int(window_s * VOICE_RATE)  # samples at 48 kHz
        self.search = int(search_s * VOICE_RATE)
        self.window: list[np.ndarray] = []  # the voice window being filled
        self.filled = 0
        self.window_t: float | None = None  # arrival time of its first sample
        self.pending: collections.deque[tuple[np.ndarray, float]] = collections.deque(
            maxlen=int(20 / window_s))  # 20 s of windows
        self.index_of_pts: dict[int, int] = {}  # for frames received before their index was known
        self.unmapped: collections.deque[tuple[float, int]] = collections.deque(maxlen=KEEP_FRAMES)  # (t, pts)
        self.frames: collections.deque[tuple[float, int]] = collections.deque(maxlen=KEEP_FRAMES)  # (t, pos)
        self.diffs_ms: list[float] = []

    # ---- inputs -------------------------------------------------------------------------------------------

    def add_voice(self, block48: np.ndarray, t: float) -> None:
        """48 kHz mono int16 samples of received voice that arrived at wall time t."""
        block = np.asarray(block48, np.int16).reshape(-1)
        while len(block):
            if self.window_t is None:
                self.window_t = t
            take = block[:self.win - self.filled]
            self.window.append(take)
            self.filled += len(take)
            block = block[len(take):]
            if self.filled == self.win:
                self.pending.append((np.concatenate(self.window), self.window_t))
                self.window, self.filled, self.window_t = [], 0, None
        self._locate_ready()

    def add_frame(self, t: float, pts: int) -> None:
        """A video frame that arrived at wall time t with RTP-derived pts (n-th frame sent: pts = 3600 n)."""
        index = self.index_of_pts.pop(pts, None)
        if index is None:
            self.unmapped.append((t, pts))
        else:
            self.frames.append((t, index * VOICE_PER_FRAME))
        self._locate_ready()

    def add_sent(self, pts: int, index: int | None) -> None:
        """The server sent session frame `index` with this pts (None: a repeated frame, no content of its own)."""
        if index is None:
            return
        waiting = next((k for k, (_, p) in enumerate(self.unmapped) if p == pts), None)
        if waiting is None:
            self.index_of_pts[pts] = index
            while len(self.index_of_pts) > KEEP_FRAMES:  # frames that never arrived
                del self.index_of_pts[next(iter(self.index_of_pts))]
            return
        t, _ = self.unmapped[waiting]
        del self.unmapped[waiting]
        self._insert_frame(t, index * VOICE_PER_FRAME)
        self._locate_ready()

    def median_ms(self) -> float | None:
        """The median offset so far, in ms; windows still waiting for their frames' indices are located with
        the frames known."""
        self._locate_ready(final=True)
        return float(np.median(self.diffs_ms)) if self.diffs_ms else None

    # ---- matching -----------------------------------------------------------------------------------------

    def _insert_frame(self, t: float, pos: int) -> None:
        """Keep `frames` in arrival order (a frame's index may come after later frames were mapped)."""
        self.frames.append((t, pos))
        k = len(self.frames) - 1
        while k > 0 and self.frames[k - 1][0] > t:
            self.frames[k - 1], self.frames[k] = self.frames[k], self.frames[k - 1]
            k -= 1

    def _locate_ready(self, final: bool = False) -> None:
        """Locate every pending window that a mapped frame arrived after (its expected position is known), or
        with `final` every pending window."""
        while self.pending and self.frames and (
                final or self.frames[-1][0] >= self.pending[0][1] + self.win / VOICE_RATE):
            window, t = self.pending.popleft()
            if np.abs(window).mean() < SILENT:
                continue
            expected = min(self.frames, key=lambda f: abs(f[0] - t))[1]
            p = self._locate(window, expected)
            if p is not None:
                self._measure(p, t)

    def _locate(self, window: np.ndarray, expected: int) -> int | None:
        """Where `window` is in the sent audio within ± search of `expected` (48 kHz samples), or None."""
        lo = max(0, expected - self.search)
        hi = min(len(self.sent), expected + self.search + self.win)
        seg = window[::DECIMATE].astype(np.float64)
        ref = self.sent[lo:hi:DECIMATE].astype(np.float64)
        if len(ref) < len(seg):
            return None
        n_fft = 1 << int(np.ceil(np.log2(len(ref) + len(seg))))
        corr = np.fft.irfft(np.fft.rfft(ref, n_fft) * np.conj(np.fft.rfft(seg, n_fft)), n_fft)
        corr = corr[:len(ref) - len(seg) + 1]
        energy = np.concatenate([[0.0], np.cumsum(ref ** 2)])
        ref_energy = energy[len(seg):] - energy[:-len(seg)]  # energy of ref[i:i+len(seg)]
        seg_energy = float(np.dot(seg, seg))
        # normalised correlation; near-silent stretches of the sent audio cannot match a voiced window
        score = np.where(ref_energy > 0.1 * seg_energy,
                         corr / np.sqrt(np.maximum(ref_energy, 1.0) * seg_energy), 0.0)
        best = int(score.argmax())
        return lo + best * DECIMATE if score[best] > MIN_SCORE else None

    def _measure(self, p: int, t: float) -> None:
        """Offsets of the frames whose content lies within half a window of the located window's start."""
        for t_video, pos in self.frames:
            if -self.win // 2 <= pos - p < self.win // 2:  # each frame with the one window it is nearest
                self.diffs_ms.append((t + (pos - p) / VOICE_RATE - t_video) * 1000.0)
