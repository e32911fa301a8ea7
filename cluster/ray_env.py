"""Connecting to Ray: start a loopback-only local instance, or join an existing cluster by address."""

import logging
import os

from models.errors import ActorcastError

log = logging.getLogger(__name__)

# With this set (before Ray starts its processes) every Ray server binds and advertises 127.0.0.1 instead
# of the machine's first interface, so a local instance is unreachable from the network.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def use_loopback() -> None:
    """Make Ray processes started from this process bind loopback only."""
    os.environ.update(LOOPBACK_ENV)


def connect(address: str | None = None, num_cpus: int | None = None) -> None:
    """Start a local loopback-only Ray (address None) or join the cluster at `address` (host:port or auto)."""
    import ray

    if ray.is_initialized():
        return
    if address is None:
        use_loopback()
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
        return
    try:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise ActorcastError(f"cannot reach the Ray cluster at {address} ({first_line}); "
                             "check the address or leave --address out to start a local one") from None
