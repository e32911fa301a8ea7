"""`actorcast bench NAME --out DIR [--quick]`: run one of the benchmarks in bench/ (docs/ARCHITECTURE.md "Benchmarks").

The benchmarks live beside the packages in a source checkout (they are scripts, not part of the installed
library); this subcommand runs `python bench/NAME.py` from there in a child process and returns its exit code.
"""

import argparse
import subprocess
import sys
from pathlib import Path

from actorcast.models.errors import ConfigError

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"  # cluster/cli/bench.py -> the checkout
NAMES = ("data", "models", "cache", "render", "live", "portraits", "abuse")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `actorcast bench`."""
    p = sub.add_parser("bench", help="run a benchmark and write DIR/NAME.json",
                       description="data: synthetic data rates; models: per-stage cost; cache: KV-cache policies "
                                   "over 10 s/60 s/600 s; render: render RTF, long-form memory, Ray overhead; "
                                   "live: WebRTC latency, A/V offset, sessions at 25 fps; portraits: lip-sync, mouth range and "
                                   "paste-back fidelity on real photos; abuse: the live server's memory around "
                                   "the most speech a call may queue, and slots of offers that never connect. "
                                   "Each writes DIR/NAME.json.")
    p.add_argument("name", choices=NAMES, help="which benchmark")
    p.add_argument("--out", type=Path, required=True, help="directory for NAME.json (and its plots)")
    p.add_argument("--quick", action="store_true", help="the smaller run CI uses (minutes instead of tens of minutes)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    script = BENCH_DIR / f"{args.name}.py"
    if not script.is_file():
        raise ConfigError(f"{script} is missing: benchmarks ship with the source checkout; run from a clone")
    if args.out.exists() and not args.out.is_dir():
        raise ConfigError(f"--out {args.out} is a file: give a directory")
    cmd = [sys.executable, str(script), "--out", str(args.out)] + (["--quick"] if args.quick else [])
    return subprocess.run(cmd, cwd=BENCH_DIR.parent).returncode
