"""Shared plumbing for benchmarks: argument parsing, timing, and writing DIR/NAME.json atomically, with a `run`
record (date, machine, command) that bench/results.py puts beside the figures in bench/RESULTS.md."""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

# Benchmarks are run as `python bench/NAME.py`, so make the project root importable.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from actorcast.models.run_record import run_record as record_of_run  # noqa: E402


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


def run_record(name: str, argv: list[str] | None = None) -> dict:
    """What bench/results.py prints beside a benchmark's figures (actorcast/models/run_record.py), with the command
    line that ran it: the script's path relative to the checkout."""
    argv = sys.argv if argv is None else argv
    script = Path(argv[0]).resolve()
    shown = str(script.relative_to(ROOT)) if script.is_relative_to(ROOT) else argv[0]
    return record_of_run(name, ["python", shown, *argv[1:]], ROOT)


def write_json(out_dir: Path, name: str, result: dict) -> Path:
    """Write `result` to out_dir/name.json through a temporary name, so no half-written file is left. A `run`
    record (`run_record`) is added unless the result has one."""
    path = out_dir / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    result = {**result, "run": result.get("run") or run_record(name)}
    tmp.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path
