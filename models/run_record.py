"""The record of a measuring run: which measure, when (UTC), on what machine, from which commit, and the command
line. Benchmarks (bench/common.py) and `actorcast eval --json` write it beside their figures, and bench/results.py
prints it above them."""

import datetime
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent  # the project's root when installed editable from a checkout


def cpu_model() -> str:
    """The CPU's model name as /proc/cpuinfo gives it (Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu() -> str | None:
    """The first CUDA device's name when the caller has imported torch and one is there, else None."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(0)


def commit(root: Path = CHECKOUT) -> str | None:
    """The checkout's short commit (with "+" when files differ from it), or None outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+" if dirty.stdout.strip() else "")


def run_record(name: str, command: list[str], root: Path = CHECKOUT) -> dict:
    """{'bench', 'date', 'machine', 'commit', 'command'} of the run `name` started by `command` (its words)."""
    pages = os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    ram_gib = round(pages * os.sysconf("SC_PAGE_SIZE") / 2**30, 1) if pages > 0 else None
    return {"bench": name,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "ram_gib": ram_gib, "gpu": gpu()},
            "commit": commit(root),
            "command": shlex.join(command)}
