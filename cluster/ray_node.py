"""One Ray node on loopback, in a process of its own: `python -m actorcast.cluster.ray_node SPEC_JSON`.

What `ray start --block` does, with one difference that makes several nodes on one machine possible without
leaving loopback: `ray start` turns `--node-ip-address=127.0.0.1` into the machine's network address (it wants
a node that other machines can reach), and refuses a second node on the same machine while Ray's loopback
switch (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0) is set. This process sets the switch, so every Ray server it starts
binds and advertises 127.0.0.1 only, and builds the node from Ray's own `Node` class as Ray's test clusters
(`ray.cluster_utils.Cluster`) do. It writes SPEC["ready_file"] once the node has joined the cluster, then
blocks: SIGTERM stops the node's processes; if the raylet dies (a node lost), everything else of the node goes
too, as on a machine that went away.

SPEC (JSON): head (bool), port (head: the GCS port), address (workers: the head's host:port), num_cpus,
resources ({name: amount}), temp_dir, object_store_mb, ready_file, hide ([folders this node must not see]).
"""

import json
import os
import signal
import subprocess
import sys
import time

# Before Ray is imported: Ray reads both once, at import. Token authentication, as `ray start --head` has by
# default: drivers need RAY_AUTH_MODE=token too (cluster/ray_connect.py ensure_ray sets it when a token exists).
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_AUTH_MODE", "token")


def hide_folders(folders: list[str]) -> None:
    """Mount an empty tmpfs over each folder in this process's own mount namespace (set up by `unshare -m`), so
    that this node cannot read what only the driver has, as on another machine. Needs the mount privilege."""
    for folder in folders:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0555", "actorcast-hidden", folder],
                       check=True, capture_output=True)


def serve(spec: dict) -> int:
    import ray._private.node
    import ray._private.parameter
    import ray._private.services

    from ray._private.authentication.authentication_token_setup import ensure_token_if_auth_enabled

    hide_folders(spec.get("hide", []))
    # The head makes ~/.ray/auth_token if it is missing.
    ensure_token_if_auth_enabled(None, create_token_if_missing=spec["head"])
    params = ray._private.parameter.RayParams(
        node_ip_address="127.0.0.1", num_cpus=spec["num_cpus"], num_gpus=0, resources=spec.get("resources", {}),
        temp_dir=spec["temp_dir"], object_store_memory=int(spec.get("object_store_mb", 200)) * 2 ** 20,
        include_dashboard=False, dashboard_agent_listen_port=None, min_worker_port=0, max_worker_port=0,
        _system_config=spec.get("system_config") or None)
    if spec["head"]:
        params.gcs_server_port = spec["port"]
    else:
        params.update(gcs_address=spec["address"], node_manager_port=0)
    node = ray._private.node.Node(params, head=spec["head"], shutdown_at_exit=True, spawn_reaper=True)
    ray._private.services.wait_for_node(node.gcs_address, node.plasma_store_socket_name, 60)
    raylet = node.all_processes[ray._private.ray_constants.PROCESS_TYPE_RAYLET][0].process
    tmp = spec["ready_file"] + ".part"
    with open(tmp, "w") as f:
        json.dump({"address": node.gcs_address, "node_id": node.node_id, "raylet_pid": raylet.pid,
                   "pid": os.getpid()}, f)
    os.replace(tmp, spec["ready_file"])

    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
    while not stopping and raylet.poll() is None:
        time.sleep(0.5)
    node.kill_all_processes(check_alive=False, allow_graceful=bool(stopping), wait=True)
    return 0


if __name__ == "__main__":
    sys.exit(serve(json.loads(sys.argv[1])))
