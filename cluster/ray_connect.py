"""Joining Ray from a driver: the cluster at an address or a local one, Ray's log lines kept in a file, and a
check that every node runs the driver's actorcast and Ray.

Cluster runtime that the actors layer may import (the engine joins Ray through `ensure_ray`): it imports only
actorcast.models and Ray, and Ray only inside its functions.

Ray checks its own version (and Python's) between a driver and the cluster when the driver connects; its
multi-line message becomes one line here. actorcast's own version is asked of every alive node by a
zero-CPU task pinned to it, so a node with an older install fails the job at start, not halfway through with
a pickling error or a model that loads differently.
"""

import contextlib
import importlib.metadata
import ipaddress
import logging
import os
import re
import socket
import tempfile
from pathlib import Path

from actorcast.models.errors import ActorcastError


def installed_version() -> str:
    """This process's actorcast version (the installed distribution's)."""
    try:
        return importlib.metadata.version("actorcast")
    except importlib.metadata.PackageNotFoundError:  # a source tree that was never installed
        return "(source tree, not installed)"


def _node_versions() -> dict:
    import ray

    return {"actorcast": installed_version(), "ray": ray.__version__}


def version_mismatch_line(ray_message: str, address: str) -> str:
    """One line from Ray's "Version mismatch" error, naming the cluster's versions and this process's."""
    rays = re.findall(r"Ray: (\S+)", ray_message)
    pythons = re.findall(r"Python: (\S+)", ray_message)
    if len(rays) >= 2 and len(pythons) >= 2:
        return (f"the Ray cluster at {address} runs Ray {rays[0]} on Python {pythons[0]}, this actorcast runs "
                f"Ray {rays[1]} on Python {pythons[1]}: install the same versions on every node and here")
    return f"the Ray cluster at {address} runs another Ray or Python version than this actorcast; install the same"


def check_node_versions(address: str, timeout: float = 120.0) -> None:
    """ActorcastError naming both versions if an alive node of the joined cluster runs another actorcast or Ray."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    mine = _node_versions()
    probe = ray.remote(num_cpus=0, max_retries=0)(_node_versions)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
            for n in nodes]
    for node, theirs in zip(nodes, ray.get(refs, timeout=timeout)):
        if theirs != mine:
            where = f"node {node['NodeManagerAddress']} ({node['NodeID'][:8]})"
            raise ActorcastError(
                f"{where} of the cluster at {address} runs actorcast {theirs['actorcast']} with Ray {theirs['ray']}, "
                f"this driver actorcast {mine['actorcast']} with Ray {mine['ray']}: install the same versions on "
                "every node")


def check_address(address: str, timeout: float = 3.0) -> None:
    """Fail fast (ray.init would wait for minutes) when nothing answers at a host:port Ray address."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://")[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ActorcastError(f"Ray address {address!r} is not host:port; give e.g. 127.0.0.1:6379")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise ActorcastError(f"cannot reach the Ray cluster at {address} ({e.strerror or e.__class__.__name__}); "
                             "check the address or leave --address out to start a local one") from None


def ray_driver_log() -> Path:
    """The file that Ray's own log lines in this process go to (Ray's servers log under ray_logs_dir())."""
    return Path(tempfile.gettempdir()) / "ray" / "actorcast-driver.log"


@contextlib.contextmanager
def _ray_lines_to_file():
    """Send Ray's own log lines in this process to ray_driver_log(), so that the user sees actorcast's lines only
    (a local start announces token authentication each time, for one); errors name the file (ray_logs_note).

    ray.init(configure_logging=False) clears the `ray` logger's handlers and leaves it not propagating, so what
    Ray logs during init falls through to logging.lastResort (stderr): that is pointed at the file meanwhile,
    and the file handler is attached to the `ray` logger once init is done."""
    path = ray_driver_log()
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(f"%(asctime)s pid {os.getpid()} %(levelname)s %(name)s: %(message)s"))
    previous, logging.lastResort = logging.lastResort, handler
    try:
        yield
    finally:
        logging.lastResort = previous
        ray_logger = logging.getLogger("ray")
        for old in list(ray_logger.handlers):
            if isinstance(old, logging.StreamHandler) and not isinstance(old, logging.FileHandler):
                ray_logger.removeHandler(old)
        ray_logger.addHandler(handler)
        ray_logger.propagate = False


def _cluster_errors_to_file() -> None:
    """Send what the cluster publishes to drivers (a lost node's last raylet log lines, dozens of lines of
    scheduler state) to the `ray` logger, so to ray_driver_log(), instead of this process's stdout.

    Ray prints those messages from a thread of its own, `ray._private.worker.listen_error_messages`, which runs
    whatever `log_to_driver` says and has no switch; it looks up `print_to_stdstream` each time, and that is
    what is replaced here (for messages from the raylet or the autoscaler only). actorcast's own lines say
    what happened to the job, in one line each."""
    import ray._private.worker as ray_worker

    printer = ray_worker.print_to_stdstream
    if getattr(printer, "actorcast_to_file", False):
        return
    ray_logger = logging.getLogger("ray")

    def to_file(data: dict, ignore_prefix: bool) -> None:
        if data.get("pid") not in ("raylet", "autoscaler"):
            printer(data, ignore_prefix)
            return
        for line in data.get("lines", []):
            ray_logger.warning("cluster message: %s", line)

    to_file.actorcast_to_file = True
    ray_worker.print_to_stdstream = to_file


def ray_logs_note() -> str | None:
    """Where Ray's logs of this process are, when it joined Ray (for error messages); else None."""
    import sys

    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    try:
        logs = ray._private.worker.global_worker.node.get_logs_dir_path()
    except AttributeError:  # a client connection or another Ray version: no local node
        logs = None
    where = f"{logs} and {ray_driver_log()}" if logs else str(ray_driver_log())
    return f"Ray's logs are in {where}"


def _is_loopback(address: str) -> bool:
    host = address.split("://")[-1].rpartition(":")[0].strip("[]")
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join Ray if this process has not: the cluster at `address`, or a local one bound to loopback only.

    A cluster on this machine's loopback (`actorcast cluster up`) is joined on loopback too: without Ray's
    loopback switch, Ray turns 127.0.0.1 into the machine's network address and looks for the head there.
    Token authentication (on by default for clusters started by `ray start --head`) is used whenever this
    machine holds Ray's token (~/.ray/auth_token), as Ray itself does for a cluster it finds on its own."""
    if address is None or _is_loopback(address):
        # Every Ray server binds 127.0.0.1. Ray reads this once, when it is first imported, so it is set before:
        # set after, a local start looked for the machine's address by probing a public one instead.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    if address is not None and "RAY_AUTH_MODE" not in os.environ and (Path.home() / ".ray" / "auth_token").is_file():
        os.environ["RAY_AUTH_MODE"] = "token"
    import ray

    if ray.is_initialized():
        return
    if address is None:
        with _ray_lines_to_file():
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
            _cluster_errors_to_file()
        return
    check_address(address)
    try:
        with _ray_lines_to_file():
            ray.init(address=address, log_to_driver=False, configure_logging=False)
            _cluster_errors_to_file()
    except (ConnectionError, RuntimeError, ValueError) as e:
        text = str(e).strip()
        if "Version mismatch" in text:  # Ray's own check: another Ray or Python on the cluster
            raise ActorcastError(version_mismatch_line(text, address)) from None
        first = text.splitlines()[0] if text else e.__class__.__name__
        raise ActorcastError(f"cannot reach the Ray cluster at {address} ({first}); check the address or "
                             "leave --address out to start a local one") from None
    check_node_versions(address)
