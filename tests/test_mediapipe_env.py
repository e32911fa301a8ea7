"""Where the MediaPipe environment is found, and `actorcast setup` where one is there already or the folder is
not its to take: real folders, the real worker run from a venv found through ACTORCAST_METER_VENV. (Building a
venv needs the network; CI's tests run without one, so `make install` is what builds it there.)"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from actorcast.models import mediapipe_env
from actorcast.models.data.face import render
from actorcast.models.data.face_identity import sample_identities
from actorcast.models.data.params import PARAM_INDEX, neutral_params
from actorcast.models.mediapipe_env import STAMP, VENV_ENV, MediaPipeUnavailable, mediapipe_python
from actorcast.models.training.meter import FaceMeter

CHECKOUT = mediapipe_env.CHECKOUT_VENV
needs_checkout_venv = pytest.mark.skipif(not mediapipe_env.is_complete(CHECKOUT),
                                         reason="needs the checkout's .venv-meter (`make install`)")


@pytest.fixture
def no_venv_set(monkeypatch, tmp_path):
    """No variable names a venv, and the per-user cache folder is an empty one of this test's."""
    monkeypatch.delenv(mediapipe_env.PYTHON_ENV, raising=False)
    monkeypatch.delenv(VENV_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "actorcast" / "meter-venv"


def linked_venv(folder: Path, stamp: str | None) -> Path:
    """A venv at `folder` that runs the checkout venv's MediaPipe: its own pyvenv.cfg and bin/python, the
    checkout venv's lib/ linked in. `stamp`: the stamp's text (None: no stamp, as after a build cut short)."""
    (folder / "bin").mkdir(parents=True)
    (folder / "pyvenv.cfg").write_text((CHECKOUT / "pyvenv.cfg").read_text())
    (folder / "bin" / "python").symlink_to((CHECKOUT / "bin" / "python").resolve())
    (folder / "lib").symlink_to(CHECKOUT / "lib")
    if stamp is not None:
        (folder / STAMP).write_text(stamp)
    return folder


def setup_cli(env_overrides: dict) -> subprocess.CompletedProcess:
    # PIP_NO_INDEX: pip may only find what is installed already; were anything missing it fails, not downloads.
    env = {**os.environ, "PIP_NO_INDEX": "1", **env_overrides}
    env.pop(mediapipe_env.PYTHON_ENV, None)
    return subprocess.run([sys.executable, "-m", "actorcast.cluster.cli", "setup"], capture_output=True, text=True,
                          env=env)


@needs_checkout_venv
def test_the_venv_named_by_the_variable_runs_the_meter(monkeypatch, tmp_path, no_venv_set):
    venv = linked_venv(tmp_path / "meter-venv", stamp=mediapipe_env.wanted())
    monkeypatch.setenv(VENV_ENV, str(venv))
    assert mediapipe_python() == venv / "bin" / "python"
    p = neutral_params(2)
    p[1, PARAM_INDEX["jaw_open"]] = 1.0
    faces = render(sample_identities([3]), p, 128).mul(255).round().byte().permute(0, 2, 3, 1).numpy()
    meter = FaceMeter()
    reading = meter.read(np.ascontiguousarray(faces))
    assert meter.python == venv / "bin" / "python"
    assert reading.found.all() and reading.mouth_open[1] > reading.mouth_open[0] + 0.03


@needs_checkout_venv
def test_a_venv_without_its_stamp_is_incomplete(monkeypatch, tmp_path, no_venv_set):
    venv = linked_venv(tmp_path / "meter-venv", stamp=None)
    monkeypatch.setenv(VENV_ENV, str(venv))
    with pytest.raises(MediaPipeUnavailable) as err:
        FaceMeter()
    assert str(err.value) == (f"the MediaPipe environment (for the lip-sync meter and photo framing) is incomplete "
                              f"at {venv}: run `actorcast setup` to make it (about 400 MB, a few minutes)")


def test_no_venv_anywhere_names_the_setup_command(monkeypatch, tmp_path, no_venv_set):
    monkeypatch.setattr(mediapipe_env, "CHECKOUT_VENV", tmp_path / "not-a-checkout" / ".venv-meter")
    with pytest.raises(MediaPipeUnavailable) as err:
        mediapipe_python()
    assert str(err.value) == (f"the MediaPipe environment (for the lip-sync meter and photo framing) is missing "
                              f"at {no_venv_set}: run `actorcast setup` to make it (about 400 MB, a few minutes)")


@needs_checkout_venv
def test_the_checkout_venv_comes_before_the_cache(no_venv_set):
    assert mediapipe_python() == CHECKOUT / "bin" / "python"


@needs_checkout_venv
def test_setup_leaves_an_up_to_date_venv_alone(tmp_path):
    venv = linked_venv(tmp_path / "meter-venv", stamp=mediapipe_env.wanted())
    before = sorted(p.name for p in venv.iterdir())
    run = setup_cli({VENV_ENV: str(venv)})
    assert run.returncode == 0, run.stderr
    assert run.stderr.splitlines() == [f"actorcast setup: the MediaPipe environment is up to date: {venv}/bin/python"]
    assert sorted(p.name for p in venv.iterdir()) == before and (venv / "lib").is_symlink()


@needs_checkout_venv
def test_setup_updates_a_venv_of_other_requirements_in_place(tmp_path):
    venv = linked_venv(tmp_path / "meter-venv", stamp="numpy<2\nmediapipe==0.10.20\n")
    run = setup_cli({VENV_ENV: str(venv)})
    assert run.returncode == 0, run.stderr
    assert run.stderr.splitlines() == [f"actorcast setup: [1/4] updating the venv in {venv}",
                                       "actorcast setup: [2/4] installing meter-requirements.txt (numpy<2, OpenCV, "
                                       "protobuf, ...)",
                                       "actorcast setup: [3/4] installing mediapipe==0.10.21 without its dependencies",
                                       "actorcast setup: [4/4] checking that MediaPipe Face Mesh imports",
                                       f"actorcast setup: done: {venv}/bin/python"]
    assert (venv / STAMP).read_text() == mediapipe_env.wanted()
    assert (venv / "lib").is_symlink()  # updated where it was, not emptied and made anew


@needs_checkout_venv
def test_setup_finds_the_checkout_venv_and_makes_no_other(tmp_path):
    run = setup_cli({"XDG_CACHE_HOME": str(tmp_path / "cache"), VENV_ENV: ""})
    assert run.returncode == 0, run.stderr
    target = tmp_path / "cache" / "actorcast" / "meter-venv"
    assert run.stderr.splitlines() == [f"actorcast setup: the MediaPipe environment is there already: "
                                       f"{CHECKOUT}/bin/python (--force makes one at {target})"]
    assert not (tmp_path / "cache").exists()


def test_setup_refuses_a_folder_that_is_not_a_venv(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    run = setup_cli({VENV_ENV: str(folder)})
    assert run.returncode == 2
    assert run.stderr.splitlines() == [f"actorcast: error: {folder} is not empty and not a venv, so it is left "
                                       f"alone: point {VENV_ENV} at a new or empty folder and run `actorcast setup` "
                                       "again"]
    assert [p.name for p in folder.iterdir()] == ["keep.txt"]
