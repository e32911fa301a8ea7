"""Capacity figures of the live benchmark (bench/live.py): how many calls at once hold 25 fps, the CPU the server
spends per second of call, and the plot of latency and degraded frames against the number of calls.

The server's CPU is read from /proc (Linux): user + system time of its process and of its descendants still
running (the MediaPipe face worker, while it frames a photo), less the callers' process (bench/callers.py),
which is the server's child only because the benchmark starts it. Time of children that already ended (their
cutime/cstime) is not counted, so the callers' CPU never leaks in after they exit. A `CpuSampler` reads it,
with the number of calls in progress, a few times a second on the server's event loop; `core_seconds_per_call_second`
turns those samples into cores per call over the time every call was in progress, past its start-up.
"""

import asyncio
import dataclasses
import os
from pathlib import Path
from typing import Awaitable, Callable, Mapping

from actorcast.streaming.peer import STARTUP_S

PLANNING_CORES = 16  # the machine size `calls_per_cores` plans for
SAMPLE_EVERY_S = 0.25


def holds_25fps(report: dict, max_degraded_share: float = 0.01) -> bool:
    """25 fps at the receiver and no more than `max_degraded_share` of the frames degraded once the call has
    started (the first STARTUP_S, while the pipeline warms up, are not held against it)."""
    return report["received_fps"] >= 24.0 and (report["sent_degraded_after_startup_frames"] or 0) <= \
        max_degraded_share * max(1, report["sent_frames"] or 0)


async def search_capacity(try_calls: Callable[[int], Awaitable[list[dict]]], holds: Callable[[dict], bool],
                          at_least: int = 3, most: int = 4) -> tuple[int, dict[int, list[dict]]]:
    """The most calls at once that all hold, and every try's reports by number of calls.

    Tries 1, 2, ... calls: always up to `at_least`, then on while they hold, never more than `most`. The count is
    the largest n such that 1 to n calls all held (a pass after a failure does not count)."""
    best, tried = 0, {}
    for n in range(1, most + 1):
        tried[n] = reports = await try_calls(n)
        held = all(holds(r) for r in reports)
        best = n if held and best == n - 1 else best
        if not held and n >= at_least:
            break
    return best, tried


# --- CPU of the server's process tree, from /proc --------------------------------------------------------------

def parse_stat(text: str) -> tuple[int, int]:
    """/proc/PID/stat -> (parent pid, user + system clock ticks). The command name (field 2) is in parentheses and
    may hold spaces or parentheses itself, so the fields are counted from the last ")": ppid is field 4, utime
    and stime fields 14 and 15 (proc(5))."""
    rest = text[text.rindex(")") + 2:].split()  # rest[0] is field 3 (state)
    return int(rest[1]), int(rest[11]) + int(rest[12])


STAGE_PREFIX = "ac-"  # the command name a stage's worker process gives itself (actors/worker_process.py)


def part_of(pid: int, root: int, text: str) -> str:
    """Which part of the server process /proc/PID/stat `text` is: "server" for the server's own process, a
    stage's name for a stage worker (its command name STAGE_PREFIX + name), "other" for any other descendant."""
    if pid == root:
        return "server"
    comm = text[text.index("(") + 1:text.rindex(")")]
    return comm[len(STAGE_PREFIX):] if comm.startswith(STAGE_PREFIX) else "other"


def tree_ticks_by_part(root: int, exclude: frozenset[int] = frozenset(), proc: Path = Path("/proc")) -> dict[str, int]:
    """User + system clock ticks of process `root` and its running descendants, less the processes in `exclude`
    and their descendants, by part (`part_of`; a descendant of a stage worker counts to the stage). A process that
    ends while /proc is read is skipped."""
    parent, ticks, part = {}, {}, {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
            pid = int(entry.name)
            parent[pid], ticks[pid] = parse_stat(text)
            part[pid] = part_of(pid, root, text)
        except (OSError, ValueError, IndexError):
            continue
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    totals: dict[str, int] = {}
    todo = [(root, None)] if root not in exclude else []
    while todo:
        pid, inherited = todo.pop()
        name = inherited or part.get(pid, "other")
        totals[name] = totals.get(name, 0) + ticks.get(pid, 0)
        below = name if name not in ("server", "other") else None
        todo += [(c, below) for c in children.get(pid, ()) if c not in exclude]
    return totals


def tree_ticks(root: int, exclude: frozenset[int] = frozenset(), proc: Path = Path("/proc")) -> int:
    """User + system clock ticks of process `root` and its running descendants, less the processes in `exclude`
    and their descendants (`tree_ticks_by_part`, summed)."""
    return sum(tree_ticks_by_part(root, exclude, proc).values())


@dataclasses.dataclass(frozen=True)
class CpuSample:
    """One reading: when (monotonic s), the server tree's CPU so far (s), the calls in progress, and the CPU so
    far by part of the server (`tree_ticks_by_part`, s)."""

    t: float
    cpu_s: float
    calls: int
    parts: Mapping[str, float] = dataclasses.field(default_factory=dict)


class CpuSampler:
    """Reads the server's CPU and calls in progress every SAMPLE_EVERY_S while in `async with`, on the server's
    loop; `exclude` (a set the caller may fill while it runs) names the callers' processes."""

    def __init__(self, calls_in_progress: Callable[[], int], exclude: set[int]):
        self.calls_in_progress, self.exclude = calls_in_progress, exclude
        self.samples: list[CpuSample] = []
        self.tick_s = 1.0 / os.sysconf("SC_CLK_TCK")
        self._task: asyncio.Task | None = None

    def read(self) -> None:
        parts = {k: v * self.tick_s for k, v in tree_ticks_by_part(os.getpid(), frozenset(self.exclude)).items()}
        self.samples.append(CpuSample(asyncio.get_running_loop().time(), sum(parts.values()),
                                      self.calls_in_progress(), parts))

    async def _run(self) -> None:
        while True:
            self.read()
            await asyncio.sleep(SAMPLE_EVERY_S)

    async def __aenter__(self) -> "CpuSampler":
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


def _measured_span(samples: list[CpuSample], calls: int, startup_s: float) -> list[CpuSample]:
    """The samples `core_seconds_per_call_second` reads (its docstring); fewer than two: nothing to read."""
    if calls < 1:
        return []
    stretches, current = [], []
    for s in samples:
        if s.calls >= calls:
            current.append(s)
        elif current:
            stretches.append(current)
            current = []
    stretches.append(current)
    longest = max(stretches, key=lambda run: run[-1].t - run[0].t if run else -1.0)
    span = [s for s in longest if s.t >= longest[0].t + startup_s] if longest else []
    return span if len(span) >= 2 and span[-1].t > span[0].t else []


def core_seconds_per_call_second(samples: list[CpuSample], calls: int, startup_s: float = STARTUP_S) -> float | None:
    """CPU seconds the server spent per second of each call, while `calls` calls were in progress: over the
    longest stretch of samples with at least that many in, from `startup_s` after its first sample (the calls'
    start-up, as the degraded count leaves it out) to its last. A call still closing from before (it ends within
    the first samples) makes a stretch of its own, so it is not taken for the calls measured. None when the
    stretch holds fewer than two samples past its start-up."""
    span = _measured_span(samples, calls, startup_s)
    if not span:
        return None
    return (span[-1].cpu_s - span[0].cpu_s) / (span[-1].t - span[0].t) / calls


def core_seconds_by_part(samples: list[CpuSample], calls: int, startup_s: float = STARTUP_S) -> dict[str, float]:
    """`core_seconds_per_call_second` split by part of the server (`part_of`: its own process, which runs the
    calls' WebRTC, and each stage's worker), over the same samples; {} when there is nothing to read."""
    span = _measured_span(samples, calls, startup_s)
    if not span:
        return {}
    seconds = (span[-1].t - span[0].t) * calls
    names = set(span[0].parts) | set(span[-1].parts)
    return {name: (span[-1].parts.get(name, 0.0) - span[0].parts.get(name, 0.0)) / seconds for name in sorted(names)}


def calls_per_cores(core_s_per_call_s: float | None, cores: int = PLANNING_CORES) -> int | None:
    """Calls `cores` cores hold if CPU were the only limit (one server process is also bound by its event loop)."""
    if not core_s_per_call_s or core_s_per_call_s <= 0:
        return None
    return int(cores / core_s_per_call_s)


# --- summaries and the plot --------------------------------------------------------------------------------------

def scaling_entry(report: dict) -> dict:
    """What `scaling` keeps of one caller's report."""
    return {"fps": report["received_fps"], "degraded": report["sent_degraded_frames"],
            "degraded_after_startup": report["sent_degraded_after_startup_frames"], "sent": report["sent_frames"],
            "p95_ms": (report["server_latency_ms"] or {}).get("p95")}


def calls_summary(entries: list[dict]) -> dict:
    """One try's calls together: the share of their frames degraded after start-up, and the worst call's p95."""
    sent = max(1, sum(e["sent"] or 0 for e in entries))
    return {"degraded_after_startup_share": round(sum(e["degraded_after_startup"] or 0 for e in entries) / sent, 3),
            "p95_ms": max((e["p95_ms"] or 0) for e in entries)}


def plot_calls(path: Path, summaries: Mapping[str, Mapping[int, dict]], cpu: str, cores: int | None) -> Path:
    """Worst p95 latency and degraded share against calls at once, one line per kind of call
    (`summaries[kind][n]` as `calls_summary` gives it), the machine in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat, deg) = plt.subplots(1, 2, figsize=(10, 4))
    for kind, by_n in summaries.items():
        ns = sorted(by_n)
        lat.plot(ns, [by_n[n]["p95_ms"] for n in ns], "o-", label=kind)
        deg.plot(ns, [100 * by_n[n]["degraded_after_startup_share"] for n in ns], "o-", label=kind)
    lat.set(xlabel="calls at once", ylabel="server latency p95 of the worst call, ms")
    deg.set(xlabel="calls at once", ylabel="frames degraded after start-up, %")
    for ax in (lat, deg):
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"Live calls on {cores or '?'} CPU cores ({cpu})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
