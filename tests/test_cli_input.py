"""Bad input on the command line: one line naming the problem and what to do, exit 2, never a traceback; and the
options that keep a served token out of sight."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from actorcast.models.errors import ActorcastError
from tests.live_server import ROOT


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "actorcast.cluster.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_a_picture_pyav_cannot_decode_is_a_one_line_error(tmp_path):
    """An --image in a format PyAV demuxes but cannot decode (svg) was an AttributeError traceback."""
    from actorcast.models.photo.reference import check_portrait, decode_image
    from actorcast.models.errors import InputError, TooLargeError

    svg = tmp_path / "face.svg"
    svg.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"/>')
    with pytest.raises(InputError, match="svg_pipe picture, which PyAV cannot decode: convert it to png or jpeg"):
        decode_image(str(svg), "face.svg")
    with pytest.raises(TooLargeError, match="too large"):  # a picture handed over decoded says the same
        check_portrait(np.zeros((7000, 7000, 3), np.uint8))
    done = _cli("render", "--say", "hello", "--image", str(svg), "-o", str(tmp_path / "out.mp4"), cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"actorcast: error: {svg} is a svg_pipe picture, which PyAV cannot decode: convert it to png or jpeg"]


def test_a_jobs_file_without_jobs_is_an_error(tmp_path):
    (tmp_path / "blank.jsonl").write_text("\n  \n")
    done = _cli("batch", "blank.jsonl", "--out-dir", "renders", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "actorcast: error: jobs file blank.jsonl has no jobs (it is empty or blank): put one JSON object per line, "
        'e.g. {"audio": "speech.wav"}']


def test_a_jobs_line_nested_too_deep_fails_that_job_only(tmp_path):
    from actorcast.cluster.batch_job import parse_jobs

    (tmp_path / "jobs.jsonl").write_text("[" * 100_000 + "]" * 100_000 + "\n")
    jobs = parse_jobs(tmp_path / "jobs.jsonl", tmp_path)
    assert jobs == [("line1", None, "line 1: the JSON is nested too deep; give one flat object per job")]


def test_serve_help_states_the_limits_and_log_level_sets_the_servers_loggers():
    from actorcast.cluster.cli import build_parser
    from actorcast.cluster.cli.serve import set_log_level

    parser = build_parser()
    serve = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "serve")[1]
    text = serve.format_help()
    assert "not up within 10 s is closed and its session slot freed" in text
    assert "--token-file PATH" in text and "ACTORCAST_TOKEN" in text and "--log-level" in text
    logger = logging.getLogger("actorcast")
    before = logger.level
    try:
        set_log_level("warning")
        assert not logging.getLogger("actorcast.access").isEnabledFor(logging.INFO)
        set_log_level("info")
        assert logging.getLogger("actorcast.access").isEnabledFor(logging.INFO)
    finally:
        logger.setLevel(before)


def test_token_from_file_environment_or_flag(tmp_path):
    from actorcast.cluster.cli.serve import open_server_warning, resolve_token

    path = tmp_path / "token"
    path.write_text("from-file\n")
    assert resolve_token(None, path, environ={}) == "from-file"
    assert resolve_token(None, None, environ={"ACTORCAST_TOKEN": "from-env"}) == "from-env"
    assert resolve_token("flag", None, environ={"ACTORCAST_TOKEN": "from-env"}) == "flag"
    assert resolve_token(None, None, environ={}) is None
    with pytest.raises(ActorcastError, match="not both"):
        resolve_token("flag", path, environ={})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ActorcastError, match="is empty"):
        resolve_token(None, tmp_path / "empty", environ={})
    with pytest.raises(ActorcastError, match="cannot read"):
        resolve_token(None, tmp_path / "missing", environ={})
    assert open_server_warning("127.0.0.1", None) is None and open_server_warning("10.1.2.3", "t") is None
    assert "without a token" in open_server_warning("10.1.2.3", None)
