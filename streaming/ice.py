"""ICE set-up for actorcast calls: no STUN unless asked, and loopback-only candidates on loopback.

aioice (aiortc's ICE agent) leaves 127.0.0.1 out of its host candidates, so two peers on a loopback-only
network never connect. A server bound to a loopback address (or a client calling one) therefore gathers
its candidates on 127.0.0.1 only; any other address gathers on the machine's interfaces as usual. The
choice is scoped to one `setLocalDescription` call through a context variable, so calls of one process
can differ (a loopback test client next to a server that binds a public address).
"""

import contextlib
import contextvars
import ipaddress
import logging
import socket
from typing import Iterator

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = ["127.0.0.1"]
_candidate_hosts: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("candidate_hosts", default=None)
_original_get_host_addresses = aioice.ice.get_host_addresses


def _get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    """aioice's host-address lookup, unless the current call restricted its candidates."""
    hosts = _candidate_hosts.get()
    if hosts is None:
        return _original_get_host_addresses(use_ipv4, use_ipv6)
    return [h for h in hosts if (":" in h and use_ipv6) or (":" not in h and use_ipv4)]


# aioice looks the function up in its module at gathering time; ours defers to the original unless a call
# has entered `candidate_hosts`, so connections outside it behave exactly as before.
aioice.ice.get_host_addresses = _get_host_addresses


@contextlib.contextmanager
def candidate_hosts(hosts: list[str] | None) -> Iterator[None]:
    """Within this block, ICE gathers host candidates on `hosts` only (None = all interfaces)."""
    token = _candidate_hosts.set(list(hosts) if hosts is not None else None)
    try:
        yield
    finally:
        _candidate_hosts.reset(token)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and names (like localhost) that resolve only to loopback addresses."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def hosts_for(address: str) -> list[str] | None:
    """Candidate hosts for a peer bound to / calling `address`: loopback only when it is loopback."""
    return LOOPBACK_HOSTS if is_loopback(address) else None


def rtc_configuration(stun: str | None = None) -> RTCConfiguration:
    """No ICE servers at all unless one is given (aiortc's default contacts a public STUN server)."""
    return RTCConfiguration(iceServers=[RTCIceServer(urls=[stun])] if stun else [])


async def set_local_description(pc: RTCPeerConnection, description: RTCSessionDescription,
                                hosts: list[str] | None) -> None:
    """setLocalDescription (which gathers the candidates) with candidates restricted to `hosts`."""
    with candidate_hosts(hosts):
        await pc.setLocalDescription(description)
