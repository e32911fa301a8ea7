"""Live calls on a loopback Ray cluster: `python bench/cluster_live.py --out DIR [--quick] [--live FILE]` ->
DIR/cluster_live.json.

Starts three 1-CPU Ray nodes on this machine (a head and two workers, each with its own Ray temp folder:
cluster/local_cluster.py), `actorcast serve --address` on them in a process of its own (one call per node, the
default for 1 CPU), and makes 1, 2, 3 calls at once (up to the capacity /health gives) with the live benchmark's
callers (bench/callers.py, through bench/live.py `concurrent_calls`), each sending built-in speech. Written:

- `steps.calls_<n>`: `calls_per_node` (node name -> calls it served, from each call's `server_node`), `ttff_s`
  {p50, max} over the calls, `server_latency_ms` {p50: median of the calls' p50, p95: the worst call's p95},
  `degraded_after_startup_share` (frames degraded after the first 2 s, all calls together), `fps` {min, p50} at
  the receivers, `held` (every call held 25 fps by bench/live.py's rule) and `per_call`;
- `max_sessions_at_25fps`: the most calls at once that held, searched as bench/live.py searches
  (bench/live_capacity.py); `capacity`: the calls the cluster takes (/health); `nodes`; `seconds` per call;
- `single_machine`: the same figures from a single-machine run (bench/live.py's live.json: --live, by default
  DIR/live.json when it is there), to read beside these;
- `note`: what the figures mean when the nodes share one machine's cores.

Everything started here (the nodes, the server, the callers) is stopped on the way out, on failure too.
"""

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402

from actorcast.cluster.local_cluster import LocalCluster, NodeSpec, default_nodes  # noqa: E402
from actorcast.models.data.performance import generate_speech  # noqa: E402
from actorcast.models.media import write_wav  # noqa: E402
from bench.common import ROOT, write_json  # noqa: E402
from bench.live import BUILTIN_MAX_DEGRADED, concurrent_calls  # noqa: E402
from bench.live_capacity import calls_summary, holds_25fps, parse_stat, scaling_entry, search_capacity  # noqa: E402

NODES = default_nodes(workers=2)  # head + worker1 + worker2, 1 Ray CPU each: one call each by default
MOST_CALLS = 3                    # 1, 2, 3 calls at once, fewer if the cluster takes fewer
START_WAIT_S = 600.0              # the server and its nodes' engines, on a busy machine (a hang guard)
FREE_WAIT_S = 60.0                # the head sees ended calls about once a second (a hang guard)
STOP_WAIT_S = 60.0                # the server's own shutdown (it stops the nodes' engines) before SIGKILL
SERVING = "serving live calls on"
SINGLE_MACHINE_KEYS = ("ttff_s", "fps", "server_latency_ms", "degraded_after_startup", "max_sessions_at_25fps",
                       "core_seconds_per_call_second")


# --- figures (pure) ---------------------------------------------------------------------------------------------

def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def calls_per_node(reports: list[dict], names: dict[str, str]) -> dict[str, int]:
    """Calls each node served, by node name (every node listed, 0 for none), from the calls' `server_node` (a Ray
    node id; `names` maps it to the node's name). A call no node is known for counts under "unknown"."""
    counts = dict.fromkeys(names.values(), 0)
    for report in reports:
        name = names.get(report.get("server_node"), "unknown")
        counts[name] = counts.get(name, 0) + 1
    return counts


def step_summary(reports: list[dict], names: dict[str, str]) -> dict:
    """One number of calls at once: where they ran, first-frame time, server latency, degraded share, fps and
    whether every call held 25 fps (bench/live.py's rule for built-in faces)."""
    ttff = [round(r["ttff_s"], 3) for r in reports if r.get("ttff_s") is not None]
    latency = [r.get("server_latency_ms") or {} for r in reports]
    p50 = _median([x["p50"] for x in latency if x.get("p50") is not None])
    p95 = max((x["p95"] for x in latency if x.get("p95") is not None), default=None)
    fps = [r["received_fps"] for r in reports]
    entries = [scaling_entry(r) for r in reports]
    together = calls_summary(entries)
    return {"calls": len(reports), "calls_per_node": calls_per_node(reports, names),
            "ttff_s": {"p50": round(_median(ttff), 3) if ttff else None, "max": max(ttff, default=None)},
            "server_latency_ms": {"p50": None if p50 is None else round(p50, 1), "p95": p95},
            "degraded_after_startup_share": together["degraded_after_startup_share"],
            "fps": {"min": min(fps, default=None), "p50": _median(fps)},
            "held": all(holds_25fps(r, BUILTIN_MAX_DEGRADED) for r in reports),
            "per_call": [{**e, "ttff_s": r.get("ttff_s"), "node": names.get(r.get("server_node"), "unknown"),
                          "call_ended": r.get("call_ended")} for e, r in zip(entries, reports)]}


def single_machine_figures(live: dict) -> dict:
    """What a single-machine run (bench/live.py's live.json) measured of the same things, with its date and
    machine: the first call's figures, its capacity and CPU per call, and its tries of several calls at once."""
    run = live.get("run") or {}
    tries = {k: v for k, v in (live.get("sessions") or {}).items() if k.startswith("calls_")}
    return {**{k: live.get(k) for k in SINGLE_MACHINE_KEYS}, "calls": tries, "date": run.get("date"),
            "machine": run.get("machine"), "commit": run.get("commit")}


def cluster_note(nodes: list[NodeSpec], cores: int | None) -> str:
    """What the figures mean: the nodes ran on one machine and shared its cores; how N real machines add up."""
    cpus = " + ".join(str(n.num_cpus) for n in nodes)
    return (f"All {len(nodes)} nodes ({cpus} Ray CPUs, a scheduling label, not pinned cores) ran on this one machine "
            f"and shared its {cores or '?'} cores with the server's signalling and the callers' process, so a call "
            "on one node slows the others: these figures show calls placed and served across nodes, not what "
            f"{len(nodes)} machines carry. On real machines each node's calls use its own cores and each call's "
            "media goes to its node directly, so the head carries only the signalling: calls in all ≈ the sum over "
            "nodes of the node's cores ÷ core_seconds_per_call_second.builtin (bench/live.py, live.json).")


# --- the server and the callers -----------------------------------------------------------------------------------

def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.is_file() else "(no log)"


@contextlib.contextmanager
def serving(address: str, log_path: Path):
    """`actorcast serve --address` in a process of its own (a Ray driver on the head's node): yields its URL once it
    serves; on the way out, whatever happened, SIGINT (it closes the calls and stops the nodes' engines), then
    SIGKILL after STOP_WAIT_S."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "actorcast.cluster.cli", "serve", "--address", address,
                                 "--port", "0"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_WAIT_S
        while SERVING not in log_path.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                why = f"exited with {proc.returncode}" if proc.returncode is not None else \
                    f"did not serve within {START_WAIT_S:.0f} s"
                raise RuntimeError(f"actorcast serve --address {why}; its log ends:\n{_tail(log_path)}")
            time.sleep(0.2)
        line = next(x for x in log_path.read_text(errors="replace").splitlines() if SERVING in x)
        yield line.split("on ", 1)[1].split("/ ", 1)[0]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def stop_callers(pids: set[int]) -> None:
    """Kill the callers' processes still running as this process's children (a run cut short leaves them)."""
    for pid in pids:
        try:
            parent, _ = parse_stat(Path(f"/proc/{pid}/stat").read_text())
        except (OSError, ValueError, IndexError):
            continue  # gone
        if parent == os.getpid():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def health(url: str) -> dict:
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/health") as resp:
            return await resp.json()


async def wait_health(url: str, ok, timeout: float, what: str) -> dict:
    """/health once `ok(body)`; RuntimeError after `timeout` s (a hang guard)."""
    deadline = time.monotonic() + timeout
    while True:
        body = await health(url)
        if ok(body):
            return body
        if time.monotonic() > deadline:
            raise RuntimeError(f"the cluster's server did not {what} within {timeout:.0f} s: /health says "
                               f"{json.dumps(body)}")
        await asyncio.sleep(0.5)


async def measure(url: str, names: dict[str, str], wav: Path, seconds: float, callers_pids: set[int]) -> dict:
    """Calls at once, 1 to the cluster's capacity (at most MOST_CALLS), each try once the previous calls are freed;
    their summaries by number and the most that held."""
    body = await wait_health(url, lambda h: len([n for n in h["nodes"] if n["state"] == "ready"]) == len(names),
                             START_WAIT_S, "have every node ready")
    most = min(MOST_CALLS, body["max_sessions"])

    async def try_calls(n: int) -> list[dict]:
        await wait_health(url, lambda h: h["sessions"] == 0, FREE_WAIT_S, "free the previous calls")
        return await concurrent_calls(url, wav, n, seconds, callers_pids=callers_pids)

    try:
        best, tried = await search_capacity(try_calls, lambda r: holds_25fps(r, BUILTIN_MAX_DEGRADED),
                                            at_least=most, most=most)
    finally:  # a try cut short leaves its callers running: stop them while this loop can still see them exit
        stop_callers(callers_pids)
        await asyncio.sleep(0.5)
    nodes = {names.get(n["node_id"], n["node_id"]): {"address": n["address"], "capacity": n["capacity"]}
             for n in body["nodes"]}
    return {"capacity": body["max_sessions"], "nodes": nodes, "max_sessions_at_25fps": best,
            "steps": {f"calls_{n}": step_summary(reports, names) for n, reports in tried.items()}}


def run(args: argparse.Namespace) -> dict:
    """The cluster up, the server on it, the calls; everything stopped again, on failure too."""
    seconds = 5.0 if args.quick else 15.0
    work = Path(tempfile.mkdtemp(prefix="actorcast-cluster-live-"))
    callers_pids: set[int] = set()
    try:
        wav = work / "speech.wav"
        write_wav(wav, generate_speech(11, seconds + 2))
        with LocalCluster(work / "cluster", NODES) as cluster:
            names = {info["node_id"]: name for name, info in cluster.state["nodes"].items()}
            with serving(cluster.address, work / "serve.log") as url:
                result = asyncio.run(measure(url, names, wav, seconds, callers_pids))
        shutil.rmtree(work, ignore_errors=True)
    except BaseException:
        sys.stderr.write(f"bench/cluster_live.py: the nodes' and the server's logs are in {work}\n")
        raise
    finally:
        stop_callers(callers_pids)
    return {"seconds": seconds, "preset": "tiny", "size": 256, **result}


def parse_args() -> argparse.Namespace:
    """The common `--out DIR [--quick]` (bench/common.py), and the single-machine run to put beside."""
    parser = argparse.ArgumentParser(prog="bench/cluster_live.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="directory for cluster_live.json")
    parser.add_argument("--quick", action="store_true", help="a smaller run, for CI")
    parser.add_argument("--live", type=Path, help="bench/live.py's live.json to put beside (default: DIR/live.json "
                        "when it is there)")
    args = parser.parse_args()
    if args.live is not None and not args.live.is_file():
        parser.error(f"--live {args.live} is not a file; give bench/live.py's live.json")
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def main() -> None:
    args = parse_args()
    # SIGTERM unwinds like Ctrl-C, so the nodes, the server and the callers are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result = run(args)
    live = args.live or args.out / "live.json"
    if live.is_file():
        result["single_machine"] = single_machine_figures(json.loads(live.read_text()))
    result["note"] = cluster_note(NODES, os.cpu_count())
    path = write_json(args.out, "cluster_live", result)
    print(json.dumps(result, indent=1, default=float))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
