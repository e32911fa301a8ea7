"""`actorcast cluster up|status|down`: a Ray cluster of several nodes on this machine's loopback
(cluster/local_cluster.py `LocalCluster`)."""

import argparse
import os
from pathlib import Path

from actorcast.cluster.local_cluster import DEFAULT_DIR, LocalCluster, default_nodes
from actorcast.models.errors import InputError


def add_parser(sub) -> None:
    p = sub.add_parser("cluster", help="start or stop a Ray cluster of several nodes on this machine (loopback)",
                       description="A head and worker nodes on 127.0.0.1, each a Ray node with its own CPUs, temp "
                                   "folder and a custom resource named after it: try --address on one machine. "
                                   "On real machines use `ray up cluster.yaml` (see README).")
    p.add_argument("action", choices=("up", "status", "down"))
    p.add_argument("--workers", type=int, default=2, help="worker nodes besides the head (default 2)")
    p.add_argument("--head-cpus", type=int, default=1, help="logical CPUs of the head (default 1)")
    p.add_argument("--worker-cpus", type=int, default=1, help="logical CPUs of each worker (default 1)")
    p.add_argument("--port", type=int, default=None, help="the head's port (default: a free one)")
    p.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"state and logs (default {DEFAULT_DIR})")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    if args.action == "up":
        if args.workers < 0 or args.head_cpus < 0 or args.worker_cpus < 1:
            raise InputError("--workers and --head-cpus must be >= 0 and --worker-cpus >= 1")
        cluster = LocalCluster(args.dir, default_nodes(args.workers, args.head_cpus, args.worker_cpus), args.port)
        address = cluster.up()
        print(f"Ray cluster up: head + {args.workers} workers at {address} (state and logs in {args.dir})")
        print(f"  use it:  actorcast render ... --address {address}")
        print("  stop it: actorcast cluster down" + (f" --dir {args.dir}" if args.dir != DEFAULT_DIR else ""))
        return 0
    cluster = LocalCluster.attach(args.dir)
    if args.action == "status":
        print(f"address {cluster.address}")
        for name, node in cluster.state["nodes"].items():
            alive = _alive(node["pid"])
            print(f"  {name:<10} {node['spec']['num_cpus']} CPU  {'running' if alive else 'stopped'}  "
                  f"pid {node['pid']}  log {node['log']}")
        return 0
    address = cluster.address
    cluster.down()
    print(f"Ray cluster at {address} stopped")
    return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
