"""Shared test set-up: loopback-only Ray, one thread per op, and a check that nothing listened off loopback."""

import os
import sys
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
torch.set_num_threads(min(2, os.cpu_count() or 1))

from tests.netcheck import non_loopback_listeners  # noqa: E402


def pytest_sessionfinish(session, exitstatus):
    """Fail the run if any process of the test run still listens on a non-loopback address."""
    bad = non_loopback_listeners()
    if bad:
        sys.stderr.write(f"\nnon-loopback listening sockets in the test run: {bad}\n")
        session.exitstatus = 1


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray instance bound to 127.0.0.1, shared by the tests of one session."""
    import ray

    from actorcast.cluster.ray_connect import ensure_ray

    ensure_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture
def artifacts_dir() -> Path:
    """Where tests leave files worth looking at (screenshots, sample mp4s)."""
    path = ROOT / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path
