"""Server metrics in the Prometheus text format: sessions, frames sent/degraded, a latency histogram."""

import bisect
from dataclasses import dataclass, field

# Upper bounds (ms) of the latency histogram: audio arrival at the server -> its frame sent.
LATENCY_BUCKETS_MS = (25.0, 50.0, 75.0, 100.0, 150.0, 200.0, 300.0, 450.0, 600.0, 1000.0, 2000.0)


@dataclass
class Histogram:
    """A cumulative Prometheus histogram with fixed bucket bounds."""

    bounds: tuple[float, ...] = LATENCY_BUCKETS_MS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)  # last one is +Inf

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str) -> list[str]:
        out, running = [], 0
        for bound, count in zip(self.bounds, self.counts):
            running += count
            out.append(f'{name}_bucket{{le="{bound:g}"}} {running}')
        out.append(f'{name}_bucket{{le="+Inf"}} {self.n}')
        out += [f"{name}_sum {self.total:.3f}", f"{name}_count {self.n}"]
        return out


@dataclass
class Metrics:
    """Counters of one server process; every mutation happens on the event loop (no locking needed)."""

    sessions_active: int = 0
    sessions_total: int = 0
    sessions_rejected: int = 0
    frames_sent: int = 0
    frames_degraded: int = 0
    latency_ms: Histogram = field(default_factory=Histogram)

    def frame_sent(self, degraded: bool, latency_ms: float | None) -> None:
        self.frames_sent += 1
        self.frames_degraded += int(degraded)
        if latency_ms is not None:
            self.latency_ms.observe(latency_ms)

    def render(self) -> str:
        """The whole exposition text (Content-Type text/plain; version=0.0.4)."""
        rows = [
            ("actorcast_sessions_active", "gauge", "Calls in progress.", self.sessions_active),
            ("actorcast_sessions_total", "counter", "Calls admitted since start.", self.sessions_total),
            ("actorcast_sessions_rejected_total", "counter", "Offers refused because the server was full.",
             self.sessions_rejected),
            ("actorcast_frames_sent_total", "counter", "Video frames sent to peers.", self.frames_sent),
            ("actorcast_frames_degraded_total", "counter", "Frames sent degraded (fewer steps, repeated or dropped).",
             self.frames_degraded),
        ]
        lines = []
        for name, kind, help_text, value in rows:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]
        name = "actorcast_frame_latency_ms"
        lines += [f"# HELP {name} Audio arrival at the server to its video frame sent, in ms.",
                  f"# TYPE {name} histogram"] + self.latency_ms.lines(name)
        return "\n".join(lines) + "\n"
