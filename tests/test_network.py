"""Network hygiene: everything a test run starts listens on loopback only."""

import socket
import subprocess

from tests.netcheck import non_loopback_listeners


def test_ray_listens_on_loopback_only(ray_local):
    @ray_local.remote
    def ping() -> int:
        return 7

    assert ray_local.get(ping.remote()) == 7
    assert ray_local.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    assert non_loopback_listeners() == []


def test_checker_detects_a_wildcard_listener():
    """The check itself must be able to fail: a socket on 0.0.0.0 is reported."""
    sock = socket.socket()
    sock.bind(("0.0.0.0", 0))
    sock.listen()
    try:
        port = sock.getsockname()[1]
        assert ("0.0.0.0", port) in [(ip, p) for ip, p, _ in non_loopback_listeners()]
    finally:
        sock.close()


def test_ss_agrees_no_ray_port_off_loopback(ray_local):
    """Cross-check with `ss -tlnp`: no listening socket of a Ray process is on a non-loopback address."""
    out = subprocess.run(["ss", "-tlnpH"], capture_output=True, text=True, check=True).stdout
    ray_lines = [line for line in out.splitlines() if any(n in line for n in ("raylet", "gcs_server", "ray::"))]
    assert ray_lines, "expected Ray's listening sockets in ss output"
    for line in ray_lines:
        local = line.split()[3]
        host = local.rsplit(":", 1)[0].strip("[]")
        assert host.startswith("127.") or host in ("::ffff:127.0.0.1", "::1"), line


def test_a_local_start_binds_loopback_without_the_makefiles_environment():
    """`actorcast` run outside make has no RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER in its environment: the local Ray must
    still advertise 127.0.0.1 (Ray reads the switch once, at import, so it must be set before Ray is imported)."""
    import os
    import sys
    from pathlib import Path

    code = ("from cluster.ray_connect import ensure_ray; ensure_ray(num_cpus=1); import ray; "
            "from ray._private import ray_constants; "
            "print(ray.util.get_node_ip_address(), ray_constants.ENABLE_RAY_CLUSTER); ray.shutdown()")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    root = Path(__file__).resolve().parent.parent
    run = subprocess.run([sys.executable, "-c", code], cwd=root, env={**env, "PYTHONPATH": str(root)},
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["127.0.0.1", "False"]
