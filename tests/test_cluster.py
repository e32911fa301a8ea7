"""Several Ray nodes on loopback (cluster/local_cluster.py): jobs taken there by --address, and a lost node.

The cluster: a head (1 CPU) and two workers (2 and 1 CPUs), each with its own temp folder and a custom resource
named after it. The workers do not see the driver's folder (an empty tmpfs over it in their own mount
namespace), as another machine would not: a job that reads or writes a driver path on a worker fails here.
Drivers run as subprocesses (the CLI, or a short script), each with its own connection to the cluster.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest

from actorcast.cluster.local_cluster import LocalCluster, NodeSpec, can_hide_folders
from tests.netcheck import non_loopback_listeners
from tests.helpers import write_audio

ROOT = Path(__file__).resolve().parent.parent
# A lost node is declared dead after about 3 missed 1-second health checks instead of Ray's default ~30 s.
FAST_NODE_DEATH = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3,
                   "health_check_initial_delay_ms": 1000}
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def driver_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("driver")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, driver_dir):
    assert can_hide_folders(), "the multi-node tests need `unshare -m` and tmpfs mounts (root, or a user namespace)"
    hide = (str(driver_dir),)
    nodes = [NodeSpec("head", 1, head=True), NodeSpec("worker1", 2, hide=hide), NodeSpec("worker2", 1, hide=hide)]
    with LocalCluster(tmp_path_factory.mktemp("cluster"), nodes, system_config=FAST_NODE_DEATH) as c:
        yield c


def _restore(cluster: LocalCluster, name: str) -> None:
    """Bring a killed node back, so the next test finds the whole cluster."""
    spec = next(n for n in cluster.nodes if n.name == name)
    cluster.start_node(spec)


def _driver(cluster: LocalCluster, code: str, timeout: float = 600) -> dict:
    """Run `code` in a fresh driver joined to the cluster (`ray` and `address` are defined); its last stdout
    line is JSON."""
    prelude = ("import json, sys\nsys.path.insert(0, %r)\nfrom cluster.ray_connect import ensure_ray\n"
               "address = %r\nensure_ray(address)\nimport ray\n") % (str(ROOT), cluster.address)
    result = subprocess.run([sys.executable, "-c", prelude + code], cwd=ROOT, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "actorcast.cluster.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def _frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def _node_ids(cluster: LocalCluster) -> dict:
    return {cluster.state["nodes"][name]["node_id"]: name for name in cluster.state["nodes"]}


def test_three_nodes_own_resources_and_disks(cluster, driver_dir):
    (driver_dir / "only-here.txt").write_text("driver")
    seen = _driver(cluster, f"""
nodes = {{n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}}
@ray.remote(num_cpus=0)
def look():
    import os
    return ray.get_runtime_context().get_node_id(), os.path.exists({str(driver_dir / "only-here.txt")!r})
sees = {{name: ray.get(look.options(resources={{name: 0.01}}).remote()) for name in ("head", "worker1", "worker2")}}
print(json.dumps({{"nodes": nodes, "sees": sees, "driver": ray.get_runtime_context().get_node_id()}}))
""")
    names = _node_ids(cluster)
    cpus = {names[node]: res["CPU"] for node, res in seen["nodes"].items() if "CPU" in res}
    assert cpus == {"head": 1.0, "worker1": 2.0, "worker2": 1.0}
    assert all(seen["nodes"][node].get(name) == 1.0 for node, name in names.items())
    assert {name: names[node] for name, (node, _) in seen["sees"].items()} == {n: n for n in names.values()}
    assert {name: sees for name, (_, sees) in seen["sees"].items()} == {"head": True, "worker1": False,
                                                                        "worker2": False}
    assert names[seen["driver"]] == "head"  # a driver on this machine joins through the head's raylet
    assert non_loopback_listeners() == []


def test_render_shards_off_the_driver_node_and_a_lost_node(cluster, driver_dir):
    """Shards run on the workers; the render outlives the node of one shard, frame-identical to a clean one."""
    # 40 s: on a quiet machine 64² renders at ~130 frames/s, and a lost node takes seconds to go; with 6 s of audio
    # the render finished before the node did (seen in CI).
    audio = write_audio(driver_dir / "talk.wav", 40.0, 16000, "mono")
    clean = driver_dir / "clean.mp4"
    placed = _driver(cluster, f"""
from actorcast.actors.engine import Engine
from actorcast.actors.render_job import RenderJob, render
with Engine(shards=2, use_ray=True, address=address, size=64) as engine:
    where = [s.node_id() for s in engine.shards]
    render(RenderJob({str(audio)!r}, {str(clean)!r}, shards=2, size=64, checkpoint_every=1.0), engine=engine,
           progress=False)
print(json.dumps({{"driver": ray.get_runtime_context().get_node_id(), "shards": where}}))
""")
    names = _node_ids(cluster)
    assert names[placed["driver"]] == "head"
    assert sorted(names[n] for n in placed["shards"]) == ["worker1", "worker2"]  # spread, off the driver's node

    # Again by the CLI; worker1 is lost once the first second of video is saved. Its shard finds no room for its
    # 0.75 CPU (worker2 and the head have less left): the other shard takes its frames until a copy asking for
    # what the head has left is placed there (actors/executor.py RayStage).
    out, work = driver_dir / "survivor.mp4", driver_dir / "survivor.work"
    proc = subprocess.Popen([sys.executable, "-m", "actorcast.cluster.cli", "render", str(audio), "-o", str(out),
                             "--shards", "2", "--size", "64", "--checkpoint-every", "1", "--work-dir", str(work),
                             "--address", cluster.address], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    while proc.poll() is None and not (work / "seg_000001.mp4").is_file():
        time.sleep(0.1)
    assert proc.poll() is None, "the render ended before the node could be lost: " + proc.stderr.read()[-2000:]
    cluster.kill_node("worker1")
    _, stderr = proc.communicate(timeout=600)
    try:
        assert proc.returncode == 0, stderr[-3000:]
        assert "lost on frames" in stderr  # a shard really went with the node
        a, b = _frames(clean), _frames(out)
        assert a.shape == b.shape == (1000, 64, 64, 3)
        differ = [i for i in range(len(a)) if not np.array_equal(a[i], b[i])]
        assert not differ, f"frames {differ[:10]} ({len(differ)}) differ, max {np.abs(a.astype(int) - b).max()}"
    finally:
        _restore(cluster, "worker1")


def test_batch_spreads_over_workers_and_outlives_a_lost_node(cluster, driver_dir):
    """6 jobs whose inputs and outputs only the driver sees: spread over both workers, every one finished after
    worker2 is lost, each file identical to the same job's file from a run that lost nothing."""
    for i in range(6):
        write_audio(driver_dir / f"b{i}.wav", 2.0 + 0.2 * i, 16000, "mono")
    jobs = driver_dir / "jobs.jsonl"
    jobs.write_text("".join(json.dumps({"audio": f"b{i}.wav", "identity": i, "size": 64}) + "\n" for i in range(6)))
    clean = _cli("batch", str(jobs), "--out-dir", str(driver_dir / "clean"), "--address", cluster.address)
    assert clean.returncode == 0, clean.stderr[-3000:]
    rows = json.loads((driver_dir / "clean" / "batch_status.json").read_text())
    names = _node_ids(cluster)
    assert {names[row["node"]] for row in rows.values()} >= {"worker1", "worker2"}

    out = driver_dir / "lossy"
    proc = subprocess.Popen([sys.executable, "-m", "actorcast.cluster.cli", "batch", str(jobs), "--out-dir", str(out),
                             "--address", cluster.address], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()  # "[1/6] b?: done ..." once the first job has finished
    assert "done" in first, first + proc.stderr.read()[-2000:]
    cluster.kill_node("worker2")
    stdout, stderr = proc.communicate(timeout=600)
    try:
        assert proc.returncode == 0, stdout + stderr[-3000:]
        assert "6 of 6 jobs finished" in stdout
        for i in range(6):
            assert np.array_equal(_frames(out / f"b{i}.mp4"), _frames(driver_dir / "clean" / f"b{i}.mp4")), i
    finally:
        _restore(cluster, "worker2")


def test_train_spreads_two_workers_and_resumes_from_shared_storage(cluster, driver_dir, tmp_path_factory):
    """Two DeepSpeed workers on two nodes; checkpoints in a storage every node reaches, not the driver's --out
    (which the workers cannot see); progress through Ray; --resume continues from that storage."""
    storage = tmp_path_factory.mktemp("shared") / "ray"
    out = driver_dir / "probe-run"
    args = ["train", "--stage", "probe", "--workers", "2", "--steps", "4", "--batch-size", "2", "--size", "64",
            "--checkpoint-every", "2", "--out", str(out), "--storage", str(storage), "--address", cluster.address]
    first = _cli(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert [line.split()[1] for line in first.stdout.splitlines() if line.startswith("step ")][-1] == "4/4"
    ranks = json.loads((out / "workers.json").read_text())
    assert len(set(ranks.values())) == 2  # SPREAD: one rank per node
    assert (out / "probe.safetensors").is_file()
    assert sorted(p.name for p in (storage / "run").glob("checkpoint_*") if p.is_dir())
    assert not (out / "ray").exists()  # nothing was kept on the driver's disk but the export and the log

    before = len((out / "progress.jsonl").read_text().splitlines())
    resumed = _cli(*[a if a != "4" else "6" for a in args], "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in (out / "progress.jsonl").read_text().splitlines()]
    assert steps[before - 1] == 4 and steps[before:] and steps[-1] == 6
    assert min(steps[before:]) > 4  # continued from the step-4 checkpoint in the storage, not from step 1


def test_too_many_workers_for_the_cluster_is_one_line(cluster, driver_dir):
    result = _cli("train", "--stage", "probe", "--workers", "9", "--steps", "1", "--out", str(driver_dir / "x"),
                  "--address", cluster.address, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("actorcast: error: --workers 9 is more than the "
                                                             "cluster can place: it has 4 CPUs")
    assert "Traceback" not in result.stderr


def test_a_node_with_another_actorcast_version_stops_the_job_at_start(tmp_path):
    """A worker node whose Python finds actorcast 9.9.9 (a dist-info first on its PYTHONPATH, as an older or newer
    install would be found): a render sent to the cluster stops before any work, with one line naming both."""
    from actorcast.cluster.ray_connect import installed_version

    other = tmp_path / "other-install"
    (other / "actorcast-9.9.9.dist-info").mkdir(parents=True)
    (other / "actorcast-9.9.9.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: actorcast\n"
                                                                   "Version: 9.9.9\n")
    mine = installed_version()
    assert mine != "9.9.9"
    audio = write_audio(tmp_path / "talk.wav", 1.0, 16000, "mono")
    out = tmp_path / "never.mp4"
    nodes = [NodeSpec("head", 1, head=True), NodeSpec("stale", 1, env={"PYTHONPATH": str(other)})]
    with LocalCluster(tmp_path / "cluster", nodes) as cluster:
        # The installed console script, run from a folder of the user's: Ray puts the driver's working folder first
        # on every worker's path, and the source tree's own actorcast.egg-info would answer for the stale node.
        result = subprocess.run([str(Path(sys.executable).parent / "actorcast"), "render", str(audio), "-o",
                                 str(out), "--shards", "2", "--size", "64", "--address", cluster.address],
                                cwd=tmp_path, capture_output=True, text=True, timeout=300)
    import ray

    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0, result.stdout + result.stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert lines[0].startswith("actorcast: error: node 127.0.0.1 ")
    assert (f"runs actorcast 9.9.9 with Ray {ray.__version__}, this driver actorcast {mine} with Ray "
            f"{ray.__version__}") in lines[0]
    assert not out.exists()


def test_train_after_a_lost_node_continues_from_the_last_checkpoint(cluster, driver_dir, tmp_path_factory):
    """Two DeepSpeed workers on two nodes; once the first checkpoint is in the shared storage, the node of a rank
    that is not the driver's is lost. The run goes on from that checkpoint, not from step 1."""
    storage = tmp_path_factory.mktemp("shared-lost") / "ray"
    out = driver_dir / "probe-lost"
    steps, every = 30, 5  # progress lines come at every 5th step (checkpoints) and every 10th (log_every)
    args = ["train", "--stage", "probe", "--workers", "2", "--steps", str(steps), "--batch-size", "2", "--size",
            "64", "--checkpoint-every", str(every), "--out", str(out), "--storage", str(storage), "--address",
            cluster.address]
    proc = subprocess.Popen([sys.executable, "-m", "actorcast.cluster.cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    names = _node_ids(cluster)
    lines: list[str] = []
    for line in proc.stdout:  # "step S/N ..." as rank 0 reports; wait for a step after the first checkpoint
        lines.append(line)
        if line.startswith("step ") and int(line.split()[1].split("/")[0]) >= every + 2:
            break
    assert proc.poll() is None, "".join(lines) + proc.stderr.read()[-3000:]
    assert sorted(p.name for p in (storage / "run").glob("checkpoint_*") if p.is_dir())
    ranks = json.loads((out / "workers.json").read_text())
    lost = next(names[node] for node in ranks.values() if names[node] != "head")
    cluster.kill_node(lost)
    at_kill = [int(line.split()[1].split("/")[0]) for line in lines if line.startswith("step ")]
    stdout, stderr = proc.communicate(timeout=600)
    try:
        first = lines + stdout.splitlines(keepends=True)
        if proc.returncode != 0:  # the run gave up: bring the node back and continue the run with --resume
            how = "--resume"
            _restore(cluster, lost)
            lost = None
            resumed = _cli(*args, "--resume")
            assert resumed.returncode == 0, resumed.stderr[-3000:]
            before, after = first, resumed.stdout.splitlines()
        else:  # Ray Train restarted the worker group within the run
            how = "within the run"
            at = next((i for i, line in enumerate(first) if line.startswith("resuming from the checkpoint")), None)
            assert at is not None, "".join(first)
            before, after = first[:at], first[at:]
        restarts = [i for i, line in enumerate(after) if line.startswith("resuming from the checkpoint of step ")]
        assert restarts, (how, after)
        start = int(after[restarts[0]].split()[-1])
        before = [int(line.split()[1].split("/")[0]) for line in before if line.startswith("step ")]
        steps_after = [int(line.split()[1].split("/")[0]) for line in after[restarts[0]:] if line.startswith("step ")]
        print(f"recovered {how}: steps reported when the node was lost {at_kill}, before the restart {before}, "
              f"from the checkpoint of step {start}: {steps_after}")
        # From the newest checkpoint reported before the restart, or the one before it: the lost rank may not have
        # saved its shard of the last one (the node dies a little after the kill is issued, so steps reported after
        # at_kill count too). Not from step 0 (a fresh start says nothing of resuming).
        saved = [s for s in before if s % every == 0]
        assert start in saved[-2:] and start >= [s for s in at_kill if s % every == 0][-2:][0], (at_kill, before, start)
        assert steps_after[0] == start + every and steps_after[-1] == steps, steps_after
        assert (out / "probe.safetensors").is_file()
        progress = [json.loads(line)["step"] for line in (out / "progress.jsonl").read_text().splitlines()]
        assert progress[-1] == steps and progress == sorted(set(progress)), progress  # each step once
    finally:
        if lost:
            _restore(cluster, lost)
