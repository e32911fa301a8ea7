"""Shared plumbing for benchmarks: argument parsing, timing, and writing DIR/NAME.json atomically, with a `run`
record (date, machine, command) that bench/results.py puts beside the figures in bench/RESULTS.md."""

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

# Benchmarks are run as `python bench/NAME.py`, so make the project root importable.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def parse_args(name: str, description: str) -> argparse.Namespace:
    """The common `--out DIR [--quick]` command line of every benchmark."""
    parser = argparse.ArgumentParser(prog=f"bench/{name}.py", description=description)
    parser.add_argument("--out", required=True, type=Path, help="directory for NAME.json and plots")
    parser.add_argument("--quick", action="store_true", help="a smaller run, for CI")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of `fn()` over `repeats` calls, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _cpu_model() -> str:
    """The CPU's model name as /proc/cpuinfo gives it (Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu() -> str | None:
    """The first CUDA device's name when the benchmark has imported torch and one is there, else None."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(0)


def _commit() -> str | None:
    """The checkout's short commit (with "+" when files differ from it), or None outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+" if dirty.stdout.strip() else "")


def run_record(name: str, argv: list[str] | None = None) -> dict:
    """What bench/results.py prints beside a benchmark's figures: which benchmark, when (UTC), on what machine,
    from which commit, and the command line that ran it (the script's path relative to the checkout)."""
    argv = sys.argv if argv is None else argv
    script = Path(argv[0]).resolve()
    shown = str(script.relative_to(ROOT)) if script.is_relative_to(ROOT) else argv[0]
    pages = os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    ram_gib = round(pages * os.sysconf("SC_PAGE_SIZE") / 2**30, 1) if pages > 0 else None
    return {"bench": name,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": {"cpu": _cpu_model(), "cores": os.cpu_count(), "ram_gib": ram_gib, "gpu": _gpu()},
            "commit": _commit(),
            "command": shlex.join(["python", shown, *argv[1:]])}


def write_json(out_dir: Path, name: str, result: dict) -> Path:
    """Write `result` to out_dir/name.json through a temporary name, so no half-written file is left. A `run`
    record (`run_record`) is added unless the result has one."""
    path = out_dir / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    result = {**result, "run": result.get("run") or run_record(name)}
    tmp.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path
