"""A cluster of 1-CPU nodes, as `actorcast cluster up` makes it, on loopback: a render sent there with --address
fits its stages to the nodes before placing any (or stops with one line), and outlives the loss of a node with
a file identical to a render in this process.

The cluster: a head and one worker of 1 CPU each (`actorcast cluster up --workers 1`). After audio and motion the
head keeps 0.7 CPU free, so one decoder shard (which asked for 1.5 CPUs before) fits only the worker, and two
shards share 0.7 CPU each, one per node.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from actorcast.cluster.local_cluster import LocalCluster, default_nodes
from tests.helpers import write_audio
from tests.netcheck import non_loopback_listeners

ROOT = Path(__file__).resolve().parent.parent
# A lost node is declared dead after about 3 missed 1-second health checks instead of Ray's default ~30 s.
FAST_NODE_DEATH = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3,
                   "health_check_initial_delay_ms": 1000}
# What Ray prints to a driver when a raylet dies (its last log lines): it must stay in the log files.
RAY_DUMP = ("Raylet is terminated", "Last 20 lines", "Termination is unexpected")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    with LocalCluster(tmp_path_factory.mktemp("small"), default_nodes(workers=1),
                      system_config=FAST_NODE_DEATH) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def talk(tmp_path_factory) -> Path:
    # 40 s: a lost node takes seconds to be declared dead; a shorter render may finish before.
    return write_audio(tmp_path_factory.mktemp("audio") / "talk.wav", 40.0, 16000, "mono")


def _render(*args: str) -> list[str]:
    return [sys.executable, "-m", "actorcast.cluster.cli", "render", *args, "--size", "64", "--checkpoint-every", "1"]


def _clean(audio: Path, out: Path, shards: int) -> bytes:
    """The same render in one process of this machine (no Ray): the reference file. With one torch thread per
    stage, as Ray gives an actor of less than 2 CPUs: the generator's float sums depend on the thread count."""
    run = subprocess.run(_render(str(audio), "-o", str(out), "--shards", str(shards), "--in-process"), cwd=ROOT,
                         capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    return out.read_bytes()


def _render_losing_the_worker(cluster: LocalCluster, audio: Path, out: Path, shards: int) -> str:
    """Render on the cluster and lose the worker once the first second of video is saved; returns stderr (the
    output goes to files: a pipe nobody reads while the render runs could fill and stop it)."""
    work, stdout_file, stderr_file = out.with_suffix(".work"), out.with_suffix(".out"), out.with_suffix(".err")
    with open(stdout_file, "w") as stdout, open(stderr_file, "w") as stderr:
        proc = subprocess.Popen(_render(str(audio), "-o", str(out), "--shards", str(shards), "--work-dir", str(work),
                                        "--address", cluster.address), cwd=ROOT, stdout=stdout, stderr=stderr)
        while proc.poll() is None and not (work / "seg_000001.mp4").is_file():
            time.sleep(0.1)
        assert proc.poll() is None, "the render ended before the node could be lost: " + stderr_file.read_text()[-2000:]
        cluster.kill_node("worker1")
        proc.wait(timeout=600)
    printed, errors = stdout_file.read_text(), stderr_file.read_text()
    assert proc.returncode == 0, errors[-3000:]
    assert "lost on frames" in errors  # a shard really went with the node
    assert not any(dump in printed + errors for dump in RAY_DUMP), printed + errors[-3000:]
    assert "Traceback" not in errors
    return errors


def test_too_many_shards_stop_with_one_line_before_anything_is_placed(small, tmp_path):
    """The CLI in a driver whose Ray actors and weights holder are wired to fail: the refusal comes first."""
    audio = write_audio(tmp_path / "short.wav", 1.0, 16000, "mono")
    out = tmp_path / "never.mp4"
    code = f"""
import sys
from actorcast.actors import engine, executor
from actorcast.cluster.cli import main

def tripped(*args, **kwargs):
    raise AssertionError("a stage was placed before the resources were checked")

executor.RayStage.__init__ = tripped
engine._ship_weights = tripped
sys.exit(main(["render", {str(audio)!r}, "-o", {str(out)!r}, "--shards", "40", "--size", "64",
               "--address", {small.address!r}]))
"""
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1 and "Traceback" not in run.stderr, run.stderr[-3000:]
    # 0.05 CPU at least per shard: 14 in the head's 0.7 left after audio and motion, 20 in the worker's 1
    assert lines[0].startswith("actorcast: error: --shards 40 does not fit the Ray cluster"), lines[0]
    assert "pass --shards 34 or fewer" in lines[0]
    assert not out.exists()


def test_defaults_render_and_outlive_the_node_of_every_shard(small, talk, tmp_path):
    """`render --address` with one shard (which asked for 1.5 CPUs and hung before): it fits the worker alone,
    the worker is lost, and the shard is placed again on the head instead of waiting for the worker."""
    clean = _clean(talk, tmp_path / "clean.mp4", shards=1)
    out = tmp_path / "lost.mp4"
    try:
        _render_losing_the_worker(small, talk, out, shards=1)
    finally:
        small.start_node(next(n for n in small.nodes if n.name == "worker1"))
    assert out.read_bytes() == clean
    assert non_loopback_listeners() == []


def test_two_shards_on_one_cpu_nodes_outlive_a_lost_node(small, talk, tmp_path):
    """The head and the worker hold a shard each; the worker is lost mid-render. Its frames go to the head's
    shard, and the file is identical to a clean render in this process."""
    clean = _clean(talk, tmp_path / "clean.mp4", shards=2)
    out = tmp_path / "lost.mp4"
    try:
        _render_losing_the_worker(small, talk, out, shards=2)
    finally:
        small.start_node(next(n for n in small.nodes if n.name == "worker1"))
    assert out.read_bytes() == clean
