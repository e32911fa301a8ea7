"""The figures of a live call, each defined once here: key, unit and meaning.

The server's per-call stats (the data channel's "stats" messages, `GET /calls/ID`) carry the SERVER_FIGURES;
`actorcast call` adds the RECEIVER_FIGURES it measures itself and reports both under these keys, with
`--json` as values and otherwise as a table with each figure's unit and meaning. A key ends in its unit
(`_ms`, `_s`, `_fps`, `_frames`); `{p50, p95}` are percentiles over the call.
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Figure:
    key: str
    unit: str  # "" for identifiers and counts of events
    meaning: str


RECEIVER_FIGURES = (
    Figure("received_frames", "frames", "of the sent_frames, those that reached this caller (frames sent after "
                                        "the server's latest stats are not counted on either side)"),
    Figure("received_fps", "frames/s", "rate they arrived at, first to last"),
    Figure("ttff_s", "s", "the server's answer to the first frame arriving here"),
    Figure("av_offset_ms", "ms", "voice minus video arrival here for the same audio content, median "
                                 "(+: voice later)"),
    Figure("recorded_frames", "frames", "frames written to --record"),
    Figure("server_node", "", "the Ray node that served the call (serve --address); none from one machine"),
    Figure("call_ended", "", "why the server ended the call before this caller hung up (\"server lost\": the node "
                             "serving it was lost); none when it did not"),
)

SERVER_FIGURES = (
    Figure("session_id", "", "the call's id (for POST /calls/ID/...)"),
    Figure("sent_frames", "frames", "video frames the server sent on the call's track"),
    Figure("sent_fps", "frames/s", "rate the server sent them at, over the last 2 s"),
    Figure("sent_degraded_frames", "frames", "frames sent degraded: generated with fewer denoising steps, or "
                                             "the previous frame sent again because the next one was late"),
    Figure("sent_degraded_after_startup_frames", "frames", "sent_degraded_frames after the first 2 s (the "
                                                           "pipeline warming up)"),
    Figure("repeated_frames", "frames", "the previous frame sent again because the next one was late (counted "
                                        "in sent_degraded_frames)"),
    Figure("skipped_frames", "frames", "frames made but never sent: speech an interrupt cut, or skipped to "
                                       "catch up after a delay"),
    Figure("generated_frames", "frames", "frames the generation pipeline made for this call"),
    Figure("generated_degraded_frames", "frames", "of those, made with fewer denoising steps or repeated "
                                                  "because the pipeline fell behind real time"),
    Figure("server_latency_ms", "ms", "audio arriving at the server to the frame made from it sent, {p50, p95}"),
    Figure("generation_latency_ms", "ms", "audio fed to the pipeline to its frame made, {p50, p95}"),
    Figure("sender_av_offset_ms", "ms", "voice minus video content as the server sends them, smoothed "
                                        "(+: voice ahead)"),
    Figure("voice_resyncs", "", "times the returning voice drifted more than 10 ms from the video's content and "
                                "the server jumped it back into step (an audible skip or repeat); each time the "
                                "video schedule waits for a late frame or catches up, the voice follows this way"),
    Figure("server_ttff_s", "s", "the server's answer to its first frame sent"),
    Figure("interrupt_idle_ms", "ms", "per interrupt: the interrupt to the first frame made only from silence "
                                      "sent"),
    Figure("queued_speech_s", "s", "agent mode: speech waiting to be spoken"),
    Figure("buffered_frames", "frames", "frames made and waiting for their send slot"),
)

FIGURES = {f.key: f for f in RECEIVER_FIGURES + SERVER_FIGURES}


def percentile(values, q: float) -> float | None:
    """The q-th percentile (0..100, numpy's linear interpolation) of `values`, in their unit; None when empty."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else None


def percentiles(values) -> dict:
    """A latency figure's `{p50, p95}` over `values` (each None when there are none)."""
    return {"p50": percentile(values, 50), "p95": percentile(values, 95)}


def format_value(value) -> str:
    """A figure's value for the printed table: percentiles as 'p50 X / p95 Y', lists comma-separated."""
    if value is None:
        return "–"
    if isinstance(value, dict):
        return " / ".join(f"{k} {format_value(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(format_value(v) for v in value) or "none"
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def summary_table(report: dict) -> str:
    """One line per figure of `report` (in FIGURES order): key, value, unit, meaning."""
    rows = [(f.key, format_value(report[f.key]), f.unit, f.meaning) for f in FIGURES.values() if f.key in report]
    widths = [max(len(r[i]) for r in rows) for i in range(3)] if rows else [0, 0, 0]
    return "\n".join(f"{k:<{widths[0]}}  {v:>{widths[1]}}  {u:<{widths[2]}}  {m}".rstrip() for k, v, u, m in rows)
