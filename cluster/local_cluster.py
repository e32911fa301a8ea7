"""A Ray cluster of several nodes on this machine, on loopback: `actorcast cluster up|status|down`, and the tests'.

Each node is a process of its own (cluster/ray_node.py) with its own CPUs, a custom resource named after it (so
work can be pinned to it: `{"worker1": 0.01}`), its own Ray temp folder and, optionally, folders it must not see
(an empty tmpfs over them in its own mount namespace: a stand-in for another machine's disk). The head listens
on 127.0.0.1:PORT; `--address 127.0.0.1:PORT` takes any actorcast job there.

    with LocalCluster(root, [NodeSpec("head", 1, head=True), NodeSpec("worker1", 2)]) as cluster:
        run(["actorcast", "batch", "jobs.jsonl", "--address", cluster.address])
        cluster.kill_node("worker1")   # its raylet is killed: the node and its actors are lost

Every process a node starts is in the node's own process group, so `down` (and a test's teardown) stops exactly
this cluster's processes and nothing else of Ray's that may run on the machine.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from actorcast.models.errors import ActorcastError, InputError

STATE_FILE = "cluster.json"
DEFAULT_DIR = Path(tempfile.gettempdir()) / "actorcast-cluster"


@dataclass(frozen=True)
class NodeSpec:
    """One node: its name (also a custom resource of 1 unit on it), logical CPUs and extra resources."""

    name: str
    num_cpus: int
    head: bool = False
    resources: dict = field(default_factory=dict)
    hide: tuple[str, ...] = ()  # folders this node must not see (needs mount privileges: see can_hide_folders)
    env: dict = field(default_factory=dict)  # extra environment of the node's processes; a PYTHONPATH goes first


def default_nodes(workers: int = 2, head_cpus: int = 1, worker_cpus: int = 1) -> list[NodeSpec]:
    return [NodeSpec("head", head_cpus, head=True)] + [NodeSpec(f"worker{i}", worker_cpus)
                                                        for i in range(1, workers + 1)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def can_hide_folders() -> bool:
    """Whether a node can be given its own view of the disk here (a private mount namespace and tmpfs mounts)."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                            "mount -t tmpfs none /mnt 2>/dev/null || mount -t tmpfs none /tmp"],
                           capture_output=True)
    return probe.returncode == 0


class LocalCluster:
    """Start, inspect, kill nodes of and stop a loopback cluster whose state lives in `root`."""

    def __init__(self, root: Path, nodes: list[NodeSpec] | None = None, port: int | None = None,
                 object_store_mb: int = 200, system_config: dict | None = None):
        self.root = Path(root)
        self.nodes = list(nodes or default_nodes())
        if sum(n.head for n in self.nodes) != 1 or not self.nodes[0].head:
            raise InputError("a cluster needs exactly one head node, listed first")
        self.port = port
        self.object_store_mb = object_store_mb
        self.system_config = system_config or {}
        self.state: dict = {}

    # ---- lifecycle -------------------------------------------------------------------------------------------

    def up(self, timeout: float = 180.0) -> str:
        """Start every node (the head first); returns the head's address once all have joined."""
        if (self.root / STATE_FILE).is_file():
            raise InputError(f"a cluster already runs from {self.root} (see its {STATE_FILE}): run `actorcast "
                             "cluster down` first, or give another --dir")
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self.state = {"address": f"127.0.0.1:{self.port}", "nodes": {}}
        try:
            for spec in self.nodes:
                self.start_node(spec, timeout)
        except BaseException:
            self.down()
            raise
        return self.address

    @property
    def address(self) -> str:
        return self.state["address"]

    def start_node(self, spec: NodeSpec, timeout: float = 180.0) -> dict:
        """Start one node (again, after kill_node) and wait until it has joined the cluster."""
        folder = self.root / spec.name
        folder.mkdir(parents=True, exist_ok=True)
        ready = folder / "ready.json"
        ready.unlink(missing_ok=True)
        if spec.name in self.state["nodes"]:  # started again after kill_node: its old temp folder goes
            shutil.rmtree(self.state["nodes"][spec.name]["temp_dir"], ignore_errors=True)
        # Ray's socket paths must stay under 108 bytes: the node's temp folder gets a short name of its own.
        temp_dir = tempfile.mkdtemp(prefix=f"ac-{spec.name[:8]}-")
        node_spec = {"head": spec.head, "port": self.port, "address": self.address, "num_cpus": spec.num_cpus,
                     "resources": {spec.name: 1.0, **spec.resources}, "temp_dir": temp_dir,
                     "object_store_mb": self.object_store_mb, "ready_file": str(ready), "hide": list(spec.hide),
                     "system_config": self.system_config if spec.head else {}}
        command = [sys.executable, "-m", "actorcast.cluster.ray_node", json.dumps(node_spec)]
        if spec.hide:
            command = ["unshare", "-m", "--propagation", "private", *command]
        env = {**os.environ, **spec.env,
               "PYTHONPATH": os.pathsep.join(filter(None, [spec.env.get("PYTHONPATH"),
                                                           str(Path(__file__).resolve().parents[1]),
                                                           os.environ.get("PYTHONPATH")]))}
        env.pop("RAY_ADDRESS", None)
        with open(folder / "node.log", "ab") as log:
            proc = subprocess.Popen(command, cwd=folder, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.state["nodes"][spec.name] = {"pid": proc.pid, "temp_dir": temp_dir, "log": str(folder / "node.log"),
                                          "spec": asdict(spec)}
        self._save()
        deadline = time.monotonic() + timeout
        while not ready.is_file():
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (folder / "node.log").read_text(errors="replace").strip().splitlines()[-3:]
                raise ActorcastError(f"Ray node {spec.name} did not start ({' | '.join(tail) or 'no output'}); "
                                     f"see {folder / 'node.log'}")
            time.sleep(0.2)
        self.state["nodes"][spec.name].update(json.loads(ready.read_text()))
        self._save()
        return self.state["nodes"][spec.name]

    def kill_node(self, name: str) -> None:
        """Lose node `name` as if its machine went away: SIGKILL its raylet (the node process then takes its
        other processes down) and wait until they are gone."""
        node = self.state["nodes"][name]
        try:
            os.kill(node["raylet_pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._wait_gone(node["pid"], 60.0)
        self._kill_group(node["pid"])
        node["killed"] = True
        self._save()

    def down(self) -> None:
        """Stop every node of this cluster (workers first), then remove its temp folders and state."""
        nodes = self.state.get("nodes") or self._load().get("nodes", {})
        for name in sorted(nodes, key=lambda n: n == "head"):
            pid = nodes[name]["pid"]
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            self._wait_gone(pid, 30.0)
            self._kill_group(pid)
            shutil.rmtree(nodes[name]["temp_dir"], ignore_errors=True)
        (self.root / STATE_FILE).unlink(missing_ok=True)
        self.state = {}

    def __enter__(self) -> "LocalCluster":
        self.up()
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    # ---- helpers ---------------------------------------------------------------------------------------------

    def _save(self) -> None:
        tmp = self.root / (STATE_FILE + ".part")
        tmp.write_text(json.dumps(self.state, indent=2) + "\n")
        os.replace(tmp, self.root / STATE_FILE)

    def _load(self) -> dict:
        try:
            return json.loads((self.root / STATE_FILE).read_text())
        except (OSError, ValueError):
            return {}

    @classmethod
    def attach(cls, root: Path) -> "LocalCluster":
        """The cluster started earlier from `root` (by `actorcast cluster up`)."""
        cluster = cls(root)
        cluster.state = cluster._load()
        if not cluster.state:
            raise InputError(f"no cluster runs from {root}: start one with `actorcast cluster up`")
        return cluster

    @staticmethod
    def _wait_gone(pid: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                finished, _ = os.waitpid(pid, os.WNOHANG)  # our child: reap it
                if finished:
                    return
            except ChildProcessError:  # started by another actorcast process: poll for it
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    return
            time.sleep(0.2)

    @staticmethod
    def _kill_group(pid: int) -> None:
        """Whatever is left in the node's process group (a node is a session leader: its group id is its pid)."""
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
