"""Which sockets of this process tree listen on an address that is not loopback."""

import ipaddress

import psutil


def _is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def non_loopback_listeners() -> list[tuple[str, int, str]]:
    """(ip, port, process name) of every listening TCP socket / bound UDP socket in our process tree off loopback."""
    me = psutil.Process()
    pids = {me.pid} | {p.pid for p in me.children(recursive=True)}
    bad = []
    for conn in psutil.net_connections(kind="inet"):
        if conn.pid not in pids or not conn.laddr:
            continue
        listening = conn.status == psutil.CONN_LISTEN or (conn.status == psutil.CONN_NONE and not conn.raddr)
        if listening and not _is_loopback(conn.laddr.ip):
            try:
                name = psutil.Process(conn.pid).name()
            except psutil.Error:
                name = "?"
            bad.append((conn.laddr.ip, conn.laddr.port, name))
    return bad
