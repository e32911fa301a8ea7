"""Connecting to Ray from the CLI: a loopback-only local instance, or an existing cluster by address.

The logic lives with the runtime (actors/engine.py `ensure_ray`), which needs it too; this is the CLI's name for it.
"""

from actorcast.actors.engine import ensure_ray


def connect(address: str | None = None, num_cpus: int | None = None) -> None:
    """Start a local loopback-only Ray (address None) or join the cluster at `address`; fails fast if unreachable."""
    ensure_ray(address, num_cpus)
