"""Server metrics for Prometheus (prometheus-client): sessions, frames sent/degraded, a latency histogram.

Each server has its own CollectorRegistry, so two servers in one process (tests, benchmarks) never share
counts, and nothing registers in prometheus-client's global default registry.
"""

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Upper bounds (ms) of the latency histogram: audio arrival at the server -> its frame sent.
LATENCY_BUCKETS_MS = (25.0, 50.0, 75.0, 100.0, 150.0, 200.0, 300.0, 450.0, 600.0, 1000.0, 2000.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST  # of `render()`'s text


class Metrics:
    """The counters of one server process; updated on the event loop, read by GET /metrics."""

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self._active = Gauge("actorcast_sessions_active", "Calls in progress.", registry=r)
        self._admitted = Counter("actorcast_sessions", "Calls admitted since start.", registry=r)
        self._rejected = Counter("actorcast_sessions_rejected", "Offers refused because the server was full.",
                                 registry=r)
        self._sent = Counter("actorcast_frames_sent", "Video frames sent to peers.", registry=r)
        self._degraded = Counter("actorcast_frames_degraded",
                                 "Frames sent degraded (fewer steps, repeated or dropped).", registry=r)
        self._latency = Histogram("actorcast_frame_latency_ms", "Audio arrival at the server to its video frame "
                                  "sent, in ms.", buckets=LATENCY_BUCKETS_MS, registry=r)

    # ---- updates ----------------------------------------------------------------------------------------------

    def set_active(self, calls: int) -> None:
        self._active.set(calls)

    def session_admitted(self) -> None:
        self._admitted.inc()

    def session_rejected(self) -> None:
        self._rejected.inc()

    def frame_sent(self, degraded: bool, latency_ms: float | None) -> None:
        self._sent.inc()
        if degraded:
            self._degraded.inc()
        if latency_ms is not None:
            self._latency.observe(latency_ms)

    # ---- reads ------------------------------------------------------------------------------------------------

    def _value(self, sample: str) -> int:
        return int(self.registry.get_sample_value(sample) or 0)

    @property
    def sessions_total(self) -> int:
        return self._value("actorcast_sessions_total")

    @property
    def sessions_rejected(self) -> int:
        return self._value("actorcast_sessions_rejected_total")

    @property
    def frames_sent(self) -> int:
        return self._value("actorcast_frames_sent_total")

    def render(self) -> bytes:
        """The exposition text of every metric (Content-Type: CONTENT_TYPE)."""
        return generate_latest(self.registry)
