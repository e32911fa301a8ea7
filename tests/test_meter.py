"""The lip-sync meter (MediaPipe Face Mesh in its own venv) on the built-in cartoons: real renders, real worker."""

import sys

import numpy as np
import pytest
import torch

from actorcast.models.data.face import render
from actorcast.models.data.face_identity import sample_identities
from actorcast.models.data.params import PARAM_INDEX, neutral_params
from actorcast.models.errors import ActorcastError
from actorcast.models.mediapipe_env import PYTHON_ENV, MediaPipeUnavailable
from actorcast.models.training.meter import FaceMeter, MeterError

IDENTITIES = [0, 1, 2, 3, 4, 5]
# (jaw_open, blink) per row; blink closes both eyes.
POSES = [(0.0, 0.0), (0.5, 0.0), (1.0, 0.0), (0.0, 1.0)]
MARGIN_MOUTH = 0.03      # ~1/6 of the closed -> open span (0.00 -> ~0.19)
MARGIN_EYE = 0.15        # open ~0.40, closed ~0.12


@pytest.fixture(scope="module")
def poses_read():
    """The meter's reading of every identity in every pose, as (len(POSES), len(IDENTITIES)) arrays."""
    frames = []
    for jaw, blink in POSES:
        p = neutral_params(len(IDENTITIES))
        p[:, PARAM_INDEX["jaw_open"]] = jaw
        p[:, PARAM_INDEX["blink_l"]] = blink
        p[:, PARAM_INDEX["blink_r"]] = blink
        frames.append(render(sample_identities(IDENTITIES), p, 256))   # (6, 3, 256, 256) in [0, 1]
    reading = FaceMeter().read(torch.cat(frames), static=True)         # unrelated stills
    return reading, reading.mouth_open.reshape(len(POSES), -1), reading.eye_open.reshape(len(POSES), -1)


def test_every_cartoon_has_a_face(poses_read):
    reading, _, _ = poses_read
    assert len(reading) == len(POSES) * len(IDENTITIES)
    assert reading.n_missing == 0 and reading.found.all()
    assert reading.landmarks.shape == (len(reading), 478, 2)
    marks = reading.landmarks
    assert np.isfinite(marks).all() and (marks >= 0).all() and (marks < 256).all()


def test_mouth_opening_is_ordered(poses_read):
    _, mouth, _ = poses_read
    closed, half, wide = mouth[0], mouth[1], mouth[2]
    ordered = (closed + MARGIN_MOUTH < half) & (half + MARGIN_MOUTH < wide)
    # Face Mesh flattens (and on identity 2 collapses) above jaw_open ~0.7 on some cartoons: most, not all.
    assert ordered.sum() >= 4, f"closed {closed}, half {half}, open {wide}"
    assert (closed < 0.05).all(), closed


def test_eye_openness_is_ordered(poses_read):
    _, _, eye = poses_read
    assert (eye[0] > eye[3] + MARGIN_EYE).sum() >= 5, f"open {eye[0]}, closed {eye[3]}"


def test_blank_frame_counts_as_missing_not_dropped():
    p = neutral_params(2)
    p[1, PARAM_INDEX["jaw_open"]] = 1.0
    faces = render(sample_identities([3]), p, 128).mul(255).round().byte().permute(0, 2, 3, 1).numpy()
    grey = np.full((1, 128, 128, 3), 128, np.uint8)
    reading = FaceMeter().read(np.concatenate([faces[:1], grey, faces[1:]]))     # one tracked sequence
    assert reading.found.tolist() == [True, False, True]
    assert reading.n_missing == 1
    assert np.isnan(reading.mouth_open[1]) and np.isnan(reading.eye_open[1])
    assert np.isnan(reading.landmarks[1]).all()
    assert reading.mouth_open[0] + MARGIN_MOUTH < reading.mouth_open[2]


def test_missing_environment_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv(PYTHON_ENV, str(tmp_path / "no-venv" / "bin" / "python"))
    with pytest.raises(MediaPipeUnavailable) as err:
        FaceMeter()
    assert isinstance(err.value, ActorcastError)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg == (f"{PYTHON_ENV}={tmp_path}/no-venv/bin/python is not an executable python: point it at one that "
                   "has mediapipe, or unset it and run `actorcast setup`")


def test_worker_failure_reports_last_stderr_line(monkeypatch):
    # The project's own python has no mediapipe: the worker dies on import.
    monkeypatch.setenv(PYTHON_ENV, sys.executable)
    with pytest.raises(MeterError) as err:
        FaceMeter().read(np.zeros((1, 32, 32, 3), np.uint8))
    msg = str(err.value)
    assert msg.startswith("the lip-sync meter failed: ") and "\n" not in msg and "mediapipe" in msg

