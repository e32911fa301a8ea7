"""Every node of a cluster must run the same actorcast and Ray as the driver: checked when a job joins a cluster.

Ray checks its own version (and Python's) between a driver and the cluster when the driver connects; its
multi-line message becomes one line here. actorcast's own version is asked of every alive node by a
zero-CPU task pinned to it, so a node with an older install fails the job at start, not halfway through with
a pickling error or a model that loads differently.
"""

import importlib.metadata
import re

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
