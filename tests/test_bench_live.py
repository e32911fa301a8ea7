"""bench/live_capacity.py: the capacity search, the server's CPU from /proc and its cores per call, the plot."""

import asyncio
from pathlib import Path

import pytest

from bench.live_capacity import (CpuSample, calls_per_cores, calls_summary, core_seconds_per_call_second,
                                 holds_25fps, parse_stat, plot_calls, search_capacity, tree_ticks)


def report(fps: float = 25.0, degraded_after_startup: int = 0, sent: int = 500) -> dict:
    return {"received_fps": fps, "sent_degraded_after_startup_frames": degraded_after_startup, "sent_frames": sent}


def test_holds_25fps_by_share_of_frames():
    assert holds_25fps(report(degraded_after_startup=5))  # 1 % of 500
    assert not holds_25fps(report(degraded_after_startup=6))
    assert not holds_25fps(report(degraded_after_startup=3), max_degraded_share=0.005)  # photo calls: 0.5 %
    assert holds_25fps(report(degraded_after_startup=2), max_degraded_share=0.005)
    assert not holds_25fps(report(fps=23.9))


def search(held_up_to: int, most: int, fail_also: tuple[int, ...] = ()) -> tuple[int, list[int]]:
    """Runs search_capacity against calls that hold up to `held_up_to` at once; the count and the tries made."""
    tried = []

    async def try_calls(n: int) -> list[dict]:
        tried.append(n)
        ok = n <= held_up_to and n not in fail_also
        return [report(degraded_after_startup=0 if ok else 50)] * n

    best, reports = asyncio.run(search_capacity(try_calls, holds_25fps, most=most))
    assert sorted(reports) == tried and all(len(reports[n]) == n for n in tried)
    return best, tried


def test_search_tries_three_always_then_on_while_they_hold():
    assert search(held_up_to=0, most=12) == (0, [1, 2, 3])
    assert search(held_up_to=2, most=12) == (2, [1, 2, 3])
    assert search(held_up_to=5, most=12) == (5, [1, 2, 3, 4, 5, 6])
    assert search(held_up_to=20, most=12) == (12, list(range(1, 13)))
    assert search(held_up_to=20, most=2) == (2, [1, 2])  # a cap under three, for a short check


def test_search_counts_only_an_unbroken_run_from_one():
    # one call failed: passes at 2 and 3 do not count, as in the original loop
    assert search(held_up_to=4, most=4, fail_also=(1,)) == (0, [1, 2, 3, 4])


def stat_line(pid: int, comm: str, ppid: int, utime: int, stime: int) -> str:
    # fields 1-15 of proc(5) and a few after them; the children's cutime/cstime (16, 17) must not be counted
    return f"{pid} ({comm}) S {ppid} {pid} {pid} 0 -1 4194304 100 0 0 0 {utime} {stime} 999 999 20 0 8 0\n"


def test_parse_stat_counts_from_the_last_parenthesis():
    assert parse_stat(stat_line(42, "python", 1, 300, 45)) == (1, 345)
    assert parse_stat(stat_line(43, "odd) name (x", 42, 7, 3)) == (42, 10)


def fake_proc(tmp_path: Path, procs: list[tuple[int, str, int, int, int]]) -> Path:
    for pid, comm, ppid, utime, stime in procs:
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(stat_line(pid, comm, ppid, utime, stime))
    (tmp_path / "self").mkdir()  # not a pid: skipped
    (tmp_path / "77").mkdir()  # a process that ended while /proc was read: no stat, skipped
    return tmp_path


def test_tree_ticks_counts_the_server_and_its_children_less_the_callers(tmp_path):
    proc = fake_proc(tmp_path, [
        (1, "init", 0, 5000, 5000),
        (100, "python", 1, 300, 100),          # the server (the benchmark's process)
        (101, "face_worker", 100, 40, 10),     # a child of the server: counted
        (102, "face_worker helper", 101, 5, 5),  # and its child
        (200, "python", 100, 900, 100),        # the callers: excluded, with their children
        (201, "ffmpeg", 200, 50, 50),
        (300, "python", 1, 70, 0),             # another process on the machine
    ])
    assert tree_ticks(100, frozenset({200}), proc) == 400 + 50 + 10
    assert tree_ticks(100, frozenset(), proc) == 400 + 50 + 10 + 1000 + 100
    assert tree_ticks(100, frozenset({100}), proc) == 0
    assert tree_ticks(555, frozenset(), proc) == 0  # gone


def samples(rows: list[tuple[float, float, int]]) -> list[CpuSample]:
    return [CpuSample(t, cpu, calls) for t, cpu, calls in rows]


def test_core_seconds_over_the_calls_past_their_start_up():
    # 2 calls in from t=1; start-up to t=3 costs more; then 1.5 cores until one ends at t=9
    rows = [(0.0, 0.0, 0), (1.0, 0.5, 1), (1.5, 1.0, 2), (2.5, 3.0, 2), (3.5, 4.0, 2), (5.5, 7.0, 2), (8.5, 11.5, 2),
            (9.0, 12.0, 1), (9.5, 12.2, 0)]
    assert core_seconds_per_call_second(samples(rows), 2) == pytest.approx((11.5 - 4.0) / (8.5 - 3.5) / 2)
    assert core_seconds_per_call_second(samples(rows), 2, startup_s=0.0) == pytest.approx((11.5 - 1.0) / 7.0 / 2)
    # one call: from t=1 (its first sample) + 2 s; 2 calls count as at least one, until the count falls under it
    assert core_seconds_per_call_second(samples(rows), 1) == pytest.approx((12.0 - 4.0) / (9.0 - 3.5))


def test_core_seconds_skip_a_call_still_closing_from_before():
    # the previous call is in progress at the first sample and ends; the one measured comes in at t=2
    rows = [(0.0, 0.0, 1), (0.5, 0.4, 1), (1.0, 0.5, 0), (2.0, 0.6, 1), (4.0, 1.0, 1), (5.0, 1.8, 1), (8.0, 4.2, 1),
            (8.5, 4.3, 0)]
    assert core_seconds_per_call_second(samples(rows), 1) == pytest.approx((4.2 - 1.0) / (8.0 - 4.0))


def test_core_seconds_none_without_a_span():
    assert core_seconds_per_call_second([], 1) is None
    assert core_seconds_per_call_second(samples([(0.0, 0.0, 1), (1.0, 1.0, 1)]), 2) is None  # never 2 calls
    assert core_seconds_per_call_second(samples([(0.0, 0.0, 1), (1.0, 1.0, 1), (2.5, 2.0, 1)]), 1) is None


def test_calls_per_cores():
    assert calls_per_cores(0.5) == 32
    assert calls_per_cores(0.3, cores=16) == 53
    assert calls_per_cores(None) is None and calls_per_cores(0.0) is None


def test_calls_summary_and_plot(tmp_path):
    entries = [{"sent": 500, "degraded_after_startup": 2, "p95_ms": 300.0},
               {"sent": 500, "degraded_after_startup": 0, "p95_ms": None}]
    summary = calls_summary(entries)
    assert summary == {"degraded_after_startup_share": 0.002, "p95_ms": 300.0}
    path = plot_calls(tmp_path / "calls.png", {"built-in": {1: summary, 2: summary}, "photo": {1: summary}},
                      "Test CPU", 2)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_servers_cpu_is_split_into_its_own_process_and_each_stage_worker(tmp_path):
    from bench.live_capacity import core_seconds_by_part, tree_ticks_by_part

    proc = fake_proc(tmp_path, [
        (100, "python", 1, 300, 100),          # the server: its event loop, WebRTC, encoding
        (101, "ac-motion", 100, 200, 0),       # a stage worker, named by actors/worker_process.py
        (102, "ac-decoder0", 100, 50, 10),
        (103, "face_worker", 102, 5, 5),       # a worker's own child counts to its stage
        (104, "face_worker", 100, 7, 0),       # any other child of the server
        (200, "python", 100, 900, 100),        # the callers: excluded
    ])
    parts = tree_ticks_by_part(100, frozenset({200}), proc)
    assert parts == {"server": 400, "motion": 200, "decoder0": 70, "other": 7}
    assert sum(parts.values()) == tree_ticks(100, frozenset({200}), proc)
    rows = [CpuSample(0.0, 0.0, 1, {"server": 0.0, "motion": 0.0}),
            CpuSample(2.0, 1.0, 1, {"server": 0.5, "motion": 0.5}),   # start-up: not read
            CpuSample(3.0, 1.6, 1, {"server": 0.8, "motion": 0.8}),
            CpuSample(5.0, 2.8, 1, {"server": 1.2, "motion": 1.4, "decoder0": 0.2})]
    by_part = core_seconds_by_part(rows, 1, startup_s=2.0)
    assert by_part == pytest.approx({"server": 0.7 / 3, "motion": 0.9 / 3, "decoder0": 0.2 / 3})  # from t = 2 s
    assert sum(by_part.values()) == pytest.approx(core_seconds_per_call_second(rows, 1, startup_s=2.0))
    assert core_seconds_by_part(rows[:1], 1) == {}
