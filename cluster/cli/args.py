"""Argument types shared by subcommands: each rejects a bad value with one line saying what is valid."""

import argparse
import math
import os
import tempfile
from pathlib import Path

from actorcast.models.data.seeds import MAX_SEED


def positive_seconds(text: str) -> float:
    """A finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"seconds must be a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"seconds must be > 0, got {text}")
    return value


def frame_size(text: str) -> int:
    """A square frame size in pixels, 64..512, a multiple of 16."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be an integer, got {text!r}") from None
    if not 64 <= value <= 512 or value % 16:
        raise argparse.ArgumentTypeError(f"size must be a multiple of 16 in 64..512, got {value}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value




def seed(text: str) -> int:
    """A random seed or identity number: an integer in 0..2**63-1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected a number in 0..{MAX_SEED}, got {value}")
    return value


def output_file(text: str) -> Path:
    """A file path whose directory exists and is writable (checked before any work starts)."""
    path = Path(text)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"output {text} is a directory; give a file name")
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"output directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise argparse.ArgumentTypeError(f"output directory {parent} is not writable; choose another path")
    try:  # access() says yes to root almost everywhere (/proc, read-only mounts): try a file for real
        with tempfile.NamedTemporaryFile(dir=parent, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as e:
        raise argparse.ArgumentTypeError(f"output directory {parent} cannot be written ({e.strerror or e}); "
                                         "choose another path") from None
    return path


def mp4_file(text: str) -> Path:
    """An output file (see output_file) named .mp4: the writer makes an mp4 whatever the name says."""
    path = output_file(text)
    if path.suffix.lower() != ".mp4":
        raise argparse.ArgumentTypeError(f"output {text} must end in .mp4 (the file is an H.264 + AAC mp4)")
    return path
