"""bench/cluster_live.py: the figures of one number of calls on the cluster, the single-machine figures put beside
them, the note, and their rows in bench/RESULTS.md (bench/results.py)."""

from pathlib import Path

from actorcast.cluster.local_cluster import default_nodes
from bench import results
from bench.cluster_live import calls_per_node, cluster_note, single_machine_figures, step_summary

NAMES = {"id-h": "head", "id-1": "worker1", "id-2": "worker2"}


def report(node: str | None, ttff: float = 0.5, p50: float = 100.0, p95: float = 200.0, fps: float = 25.0,
           degraded_after_startup: int = 0, sent: int = 400) -> dict:
    """A caller's report (streaming/client.py LiveCaller.report) with what the summary reads."""
    return {"server_node": node, "ttff_s": ttff, "server_latency_ms": {"p50": p50, "p95": p95},
            "received_fps": fps, "sent_frames": sent, "sent_degraded_frames": degraded_after_startup + 3,
            "sent_degraded_after_startup_frames": degraded_after_startup, "call_ended": None}


def test_calls_per_node_lists_every_node_and_the_unknown():
    reports = [report("id-1"), report("id-2"), report("id-1"), report(None)]
    assert calls_per_node(reports, NAMES) == {"head": 0, "worker1": 2, "worker2": 1, "unknown": 1}
    assert calls_per_node([], NAMES) == {"head": 0, "worker1": 0, "worker2": 0}


def test_step_summary_of_calls_on_two_nodes():
    reports = [report("id-1", ttff=0.4, p50=90.0, p95=180.0, fps=25.0),
               report("id-2", ttff=0.8, p50=110.0, p95=260.0, fps=24.5, degraded_after_startup=4)]
    step = step_summary(reports, NAMES)
    assert step["calls"] == 2
    assert step["calls_per_node"] == {"head": 0, "worker1": 1, "worker2": 1}
    assert step["ttff_s"] == {"p50": 0.6, "max": 0.8}
    assert step["server_latency_ms"] == {"p50": 100.0, "p95": 260.0}  # median of the p50s, the worst p95
    assert step["degraded_after_startup_share"] == 0.005  # 4 of 800 frames
    assert step["fps"] == {"min": 24.5, "p50": 24.75}
    assert step["held"] is True  # 4 of 400 is within 1 %
    assert [c["node"] for c in step["per_call"]] == ["worker1", "worker2"]
    assert step["per_call"][1]["p95_ms"] == 260.0 and step["per_call"][1]["ttff_s"] == 0.8


def test_step_summary_a_call_that_did_not_hold_and_one_without_figures():
    slow = report("id-h", fps=20.0)
    blank = {**report("id-1"), "ttff_s": None, "server_latency_ms": None}
    step = step_summary([slow, blank], NAMES)
    assert step["held"] is False
    assert step["ttff_s"] == {"p50": 0.5, "max": 0.5}
    assert step["server_latency_ms"] == {"p50": 100.0, "p95": 200.0}
    assert step_summary([blank], NAMES)["server_latency_ms"] == {"p50": None, "p95": None}


def test_single_machine_figures_keep_the_run_and_the_tries():
    live = {"ttff_s": 0.7, "fps": 25.0, "server_latency_ms": {"p50": 120.0, "p95": 210.0},
            "max_sessions_at_25fps": 2, "core_seconds_per_call_second": {"builtin": 0.8, "photo": 1.1},
            "sessions": {"max_sessions_at_25fps": 2, "calls_1": {"p95_ms": 210.0}, "batched_wall_s": {"1": 3.0}},
            "run": {"date": "2026-12-06 20:00 UTC", "machine": {"cores": 2}, "commit": "abc1234"}}
    figures = single_machine_figures(live)
    assert figures["ttff_s"] == 0.7 and figures["max_sessions_at_25fps"] == 2
    assert figures["server_latency_ms"] == {"p50": 120.0, "p95": 210.0}
    assert figures["core_seconds_per_call_second"] == {"builtin": 0.8, "photo": 1.1}
    assert figures["degraded_after_startup"] is None  # not in this live.json
    assert figures["calls"] == {"calls_1": {"p95_ms": 210.0}}
    assert (figures["date"], figures["machine"], figures["commit"]) == ("2026-12-06 20:00 UTC", {"cores": 2},
                                                                        "abc1234")


def test_note_names_the_shared_cores_and_the_arithmetic():
    note = cluster_note(default_nodes(workers=2), 2)
    assert note.startswith("All 3 nodes (1 + 1 + 1 Ray CPUs")
    assert "shared its 2 cores" in note and "not what 3 machines carry" in note
    assert "core_seconds_per_call_second.builtin" in note and "only the signalling" in note
    assert "shared its ? cores" in cluster_note(default_nodes(workers=1), None)


def test_results_table_shows_the_steps_and_the_single_machine():
    data = {"capacity": 3, "max_sessions_at_25fps": 2, "note": "on one machine",
            "steps": {"calls_1": step_summary([report("id-1")], NAMES)},
            "run": {"bench": "cluster_live", "date": "2026-12-06 22:00 UTC", "machine": {"cores": 2},
                    "command": "python bench/cluster_live.py --out o --quick"}}
    table = "\n".join(results.headline_table(results.Result("cluster_live", Path("c.json"), data, data["run"])))
    assert "| `capacity` | calls the loopback cluster takes at once" in table and "| 3 |" in table
    assert "| `steps.calls_1.calls_per_node` | calls each node served | head 0 / worker1 1 / worker2 0 |" in table
    assert "| `steps.calls_1.server_latency_ms` |" in table and "| p50 100 / p95 200 | p95 ≤ 300 |" in table
    assert "| `single_machine.ttff_s` | one machine (live.json beside): answer → first frame, s | not measured |" \
        in table
    assert results.ORDER.index("cluster_live") == results.ORDER.index("live") + 1
