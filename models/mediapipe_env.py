"""The MediaPipe environment that the lip-sync meter and photo framing run in: where it is, how it is made, and
running a worker script in it (docs/ARCHITECTURE.md "Layers").

mediapipe 0.10.21 (the last release that bundles its face models) needs numpy<2 and the project needs numpy 2,
so MediaPipe lives in a venv of its own and its workers run as subprocesses (`run_in_mediapipe_env`: the meter's
models/training/meter_worker.py, photo framing's models/photo/face_worker.py). That venv is looked for, in this
order:

    1. $ACTORCAST_METER_PYTHON      a python that has mediapipe (used as it is)
    2. $ACTORCAST_METER_VENV        a venv made by `actorcast setup`
    3. REPO/.venv-meter             in a checkout, the venv `make install` makes (through `actorcast setup`)
    4. ~/.cache/actorcast/meter-venv   ($XDG_CACHE_HOME/actorcast/meter-venv): where `actorcast setup` puts it

A venv counts once its STAMP file is there: `build` writes it last, after MediaPipe imported, so a first build
that was cut short is not mistaken for a working one. The stamp holds what was installed (`wanted()`); a later
`actorcast setup` updates a venv whose stamp differs, in place. Every message about a missing venv names
SETUP_COMMAND. (The venv and its variables keep the meter's name, which `actorcast setup` has always used.)
"""

import os
import subprocess
import sys
import venv
from pathlib import Path
from typing import Callable

from actorcast.models.errors import ActorcastError

PYTHON_ENV = "ACTORCAST_METER_PYTHON"
VENV_ENV = "ACTORCAST_METER_VENV"
SETUP_COMMAND = "actorcast setup"
REQUIREMENTS = Path(__file__).with_name("meter-requirements.txt")
# Installed with --no-deps: mediapipe's declared dependencies pull in jax (1.1 GB) that face_mesh never uses;
# what face_mesh does import is in REQUIREMENTS.
MEDIAPIPE = "mediapipe==0.10.21"
STAMP = ".installed-stamp"
CHECKOUT_VENV = Path(__file__).resolve().parents[1] / ".venv-meter"  # only a checkout has one


class MediaPipeUnavailable(ActorcastError):
    """The MediaPipe environment is not installed (or the one named by an environment variable is unusable)."""


class MediaPipeError(ActorcastError):
    """A worker run in the MediaPipe environment failed; the message carries the last line of its stderr."""


class SetupError(ActorcastError):
    """Making the MediaPipe environment failed; the message carries the failing step's last line."""


def default_venv() -> Path:
    """Where `actorcast setup` makes the venv: $ACTORCAST_METER_VENV, else the per-user cache folder."""
    if os.environ.get(VENV_ENV):
        return Path(os.environ[VENV_ENV]).expanduser().absolute()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "actorcast" / "meter-venv"


def venv_python(folder: Path) -> Path:
    return folder / "bin" / "python"


def wanted() -> str:
    """What a venv made now would hold, its stamp's text: the requirement lines (comments left out, so editing
    one rebuilds nothing) and the mediapipe pin."""
    lines = [ln.split("#", 1)[0].strip() for ln in REQUIREMENTS.read_text().splitlines()]
    return "".join(f"{ln}\n" for ln in [*lines, MEDIAPIPE] if ln)


def is_complete(folder: Path) -> bool:
    """The venv's build finished (its stamp is there) and its python runs."""
    python = venv_python(folder)
    return (folder / STAMP).is_file() and python.is_file() and os.access(python, os.X_OK)


def mediapipe_python() -> Path:
    """The python that runs the MediaPipe workers (see the module docstring for the order), or
    MediaPipeUnavailable: one line that says what to run."""
    override = os.environ.get(PYTHON_ENV)
    if override:
        if not (Path(override).is_file() and os.access(override, os.X_OK)):
            raise MediaPipeUnavailable(f"{PYTHON_ENV}={override} is not an executable python: point it at one that has "
                                   f"mediapipe, or unset it and run `{SETUP_COMMAND}`")
        return Path(override)
    folders = [default_venv()] if os.environ.get(VENV_ENV) else [CHECKOUT_VENV, default_venv()]
    for folder in folders:
        if is_complete(folder):
            return venv_python(folder)
    where = default_venv()
    state = "is incomplete" if where.exists() else "is missing"
    raise MediaPipeUnavailable(f"the MediaPipe environment (for the lip-sync meter and photo framing) {state} at "
                           f"{where}: run `{SETUP_COMMAND}` to make it (about 400 MB, a few minutes)")


def run_in_mediapipe_env(script: Path, args: list[str], what: str) -> None:
    """Run `script args` with the MediaPipe venv's python; MediaPipeUnavailable without that venv; MediaPipeError
    "`what` failed: <last line of its stderr>" if it exits non-zero."""
    cmd = [str(mediapipe_python()), str(script), *args]
    # GLOG_minloglevel=2 keeps MediaPipe's start-up chatter out of stderr, so its last line is the error.
    env = {**os.environ, "GLOG_minloglevel": "2", "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, env=env)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        last = lines[-1].strip() if lines else f"exit status {proc.returncode}"
        raise MediaPipeError(f"{what} failed: {last}")


def build(folder: Path, progress: Callable[[str], None], fresh: bool = False) -> Path:
    """Make or update the venv at `folder`: create it (unless a venv is there and not `fresh`), install
    REQUIREMENTS, then MEDIAPIPE without its dependencies, check that Face Mesh imports, and write the stamp.

    An update installs in place, like the Makefile used to, so a venv in use keeps working meanwhile and keeps
    its old stamp until the new one is written. `fresh` empties a venv there first (its stamp goes at once). A
    folder that holds anything but a venv is refused, never emptied. `progress` gets one line per step. Returns
    the venv's python; SetupError if a step fails."""
    if folder.exists() and any(folder.iterdir()) and not (folder / "pyvenv.cfg").is_file():
        raise SetupError(f"{folder} is not empty and not a venv, so it is left alone: point {VENV_ENV} at a new or "
                         f"empty folder and run `{SETUP_COMMAND}` again")
    python = venv_python(folder)
    update = python.is_file() and not fresh
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    steps = [
        (f"installing {REQUIREMENTS.name} (numpy<2, OpenCV, protobuf, ...)", [*pip, "-r", str(REQUIREMENTS)]),
        (f"installing {MEDIAPIPE} without its dependencies", [*pip, "--no-deps", MEDIAPIPE]),
        ("checking that MediaPipe Face Mesh imports", [str(python), "-c", "from mediapipe.python.solutions import "
                                                                          "face_mesh"]),
    ]
    n = len(steps) + 1
    progress(f"[1/{n}] {'updating the venv' if update else 'creating a venv'} in {folder}")
    if not update:
        (folder / STAMP).unlink(missing_ok=True)
        _create(folder)
    for i, (what, cmd) in enumerate(steps, 2):
        progress(f"[{i}/{n}] {what}")
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
        if proc.returncode != 0:
            lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
            last = lines[-1] if lines else f"exit status {proc.returncode}"
            raise SetupError(f"{what} failed: {last}; check the network (pip downloads about 100 MB) and run "
                             f"`{SETUP_COMMAND}` again (--force starts from a new venv)")
    (folder / STAMP).write_text(wanted())
    return python


def _create(folder: Path) -> None:
    """A new venv with pip at `folder` (one there is emptied first); SetupError with what to install if not."""
    try:
        venv.EnvBuilder(clear=True, with_pip=True, symlinks=sys.platform != "win32").create(folder)
    except (OSError, subprocess.CalledProcessError) as e:
        raise SetupError(f"creating the venv in {folder} failed ({e}): check that Python's venv and ensurepip are "
                         "installed (Debian: apt-get install python3-venv) and that the folder can be written"
                         ) from None
