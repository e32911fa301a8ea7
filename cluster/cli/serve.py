"""`actorcast serve`: the live-call server (browser client at /, WebRTC offers at /offer)."""

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from actorcast.cluster.cli.args import positive_int
from actorcast.models.errors import ActorcastError

log = logging.getLogger(__name__)

TOKEN_ENV = "ACTORCAST_TOKEN"
LOG_LEVELS = ("debug", "info", "warning", "error")


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve live avatar calls over WebRTC",
                       description="Serve live avatar calls: open http://HOST:PORT/ in a browser, or `actorcast call`.",
                       epilog=_limits_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; loopback = "
                   "loopback-only ICE candidates)")
    p.add_argument("--port", type=int, default=8080, help="TCP port (default 8080; 0 = any free port)")
    p.add_argument("--token", help="require 'Authorization: Bearer TOKEN' on /offer, /portrait and /calls/* "
                   f"(visible to `ps`: prefer --token-file or the {TOKEN_ENV} environment variable)")
    p.add_argument("--token-file", type=Path, metavar="PATH", help="read the token from this file (its first line)")
    p.add_argument("--max-sessions", type=positive_int, default=2,
                   help="concurrent calls; more get HTTP 503 (one machine; with --address see --sessions-per-node)")
    p.add_argument("--shards", type=positive_int, default=1, help="decoder shards, each a worker process of its own "
                   "(with --stages threads, more than 1 runs on Ray; with --address, each node runs this many in its "
                   "own engine); a photo call's rig runs in the shards")
    p.add_argument("--weights", type=Path, help="weights directory written by `actorcast train` (default: the shipped tiny weights)")
    p.add_argument("--latency", choices=("low", "balanced"), default="low",
                   help="low (default): the generator makes the smallest chunks its weights are trained for, so a "
                        "call waits less for audio before its frames; balanced: its own larger chunks, fewer stage "
                        "calls per frame")
    p.add_argument("--stages", choices=("processes", "threads"), default="processes",
                   help="where this machine's engine runs its stages: a worker process each (default; the calls "
                        "then use every core) or worker threads of the server's process (one interpreter lock: "
                        "fewer calls at once, less memory)")
    p.add_argument("--address", help="join this Ray cluster (host:port or auto) and serve calls on every node of "
                   "it: each call runs on one node, its media between the caller and that node")
    p.add_argument("--sessions-per-node", type=positive_int, metavar="N",
                   help="with --address: calls each node takes at once (default: the node's CPUs over the cores "
                        "one call takes, streaming/cluster_calls.py CORES_PER_CALL, at least 1)")
    p.add_argument("--stun", help="STUN server URL for ICE, e.g. stun:stun.example.org:3478 (default: none)")
    p.add_argument("--audio-prefetch", type=positive_int, default=None,
                   help="inbound 20 ms audio frames held against network jitter before use (default: 1 when "
                        "--host is loopback, else 4 as aiortc does; each frame held adds 20 ms of latency)")
    p.add_argument("--log-level", choices=LOG_LEVELS, default="info",
                   help="server log: info (default) has a line per request and per call admitted, refused, "
                        "connected and closed; warning leaves those out; debug adds aiortc's")
    p.set_defaults(run=run)


def _limits_help() -> str:
    from actorcast.streaming.limits import CONNECT_TIMEOUT_S, HEADER_TIMEOUT_S, MAX_BODY, MAX_QUEUED_SPEECH_S

    return ("limits:\n"
            f"  an answered offer whose connection is not up within {CONNECT_TIMEOUT_S:.0f} s is closed and its "
            "session slot freed\n"
            f"  a connection that has not sent a whole request within {HEADER_TIMEOUT_S:.0f} s is closed\n"
            f"  request bodies: at most {MAX_BODY // 2**20} MiB (HTTP 413)\n"
            f"  speech queued on a call (POST /calls/ID/speak): at most {MAX_QUEUED_SPEECH_S:.0f} s (HTTP 413)\n"
            "every refusal is a JSON {\"error\": ...} with a 4xx status")


def resolve_token(token: str | None, token_file: Path | None, environ=os.environ) -> str | None:
    """The bearer token from --token, --token-file or ACTORCAST_TOKEN (at most one of the first two)."""
    if token is not None and token_file is not None:
        raise ActorcastError("give the token once: --token or --token-file, not both")
    if token_file is not None:
        try:
            lines = token_file.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ActorcastError(f"cannot read --token-file {token_file} ({getattr(e, 'strerror', None) or e}); "
                                 "give a readable text file holding the token") from None
        token = lines[0].strip() if lines else ""
        if not token:
            raise ActorcastError(f"--token-file {token_file} is empty; put the token on its first line")
    elif token is None:
        token = environ.get(TOKEN_ENV) or None
    if token is not None and (not token.strip() or any(c.isspace() for c in token.strip())):
        raise ActorcastError("the token is empty or has spaces in it; give one word, e.g. from `openssl rand -hex 16`")
    return None if token is None else token.strip()


def open_server_warning(host: str, token: str | None) -> str | None:
    """A warning for a server anyone who reaches it can use: beyond loopback without a token."""
    from actorcast.streaming.ice import is_loopback

    if token or is_loopback(host):
        return None
    return (f"serving on {host} without a token: anyone who can reach it can start calls; give --token-file or "
            f"{TOKEN_ENV}")


async def serve(engine, config, ready=None, app=None) -> None:
    """Run the server until SIGINT/SIGTERM; closes every call before returning. `app`: another app than
    `create_app(engine, config)` (the cluster's, built on this loop)."""
    from aiohttp import web

    from actorcast.streaming.app import app_runner, create_app

    runner = app_runner(app if app is not None else create_app(engine, config), config, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    try:
        await site.start()
    except OSError as e:
        await runner.cleanup()
        raise ActorcastError(f"cannot listen on {config.host}:{config.port} ({e.strerror}); choose another "
                             "--port or --host") from None
    port = runner.addresses[0][1]
    print(f"actorcast: serving live calls on http://{config.host}:{port}/ (Ctrl-C to stop)", flush=True)
    if ready is not None:
        ready(port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await runner.cleanup()  # on_shutdown closes the calls, their sessions and actors


def set_log_level(level: str) -> None:
    """The server's own loggers (requests, calls) at `level`: their records reach the root logger's handler
    whatever its level. debug also lowers the root logger, for aiortc's and aiohttp's lines."""
    logging.getLogger("actorcast").setLevel(level.upper())
    if level == "debug":
        logging.getLogger().setLevel(logging.DEBUG)


def check_port(host: str, port: int) -> None:
    """Fail before start-up when `host:port` cannot be bound (in use, or not an address of this machine)."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp binds: only a listener blocks it
        try:
            probe.bind((host, port))
        except OSError as e:
            raise ActorcastError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port or "
                                 "--host") from None


def run(args: argparse.Namespace) -> int:
    from actorcast.actors.engine import Engine
    from actorcast.actors.loading import motion_config, resolve_weights
    from actorcast.cluster.ray_connect import check_address
    from actorcast.streaming.app import LIVE_STAGE_THREADS, ServerConfig

    if not 0 <= args.port <= 65535:
        raise ActorcastError(f"--port {args.port} is not a TCP port; give 0..65535")
    if args.weights is not None and not args.weights.is_dir():
        raise ActorcastError(f"--weights {args.weights} is not a directory; give the folder with the weights")
    weights = resolve_weights(args.weights)  # every file there, before a stage loads one
    check_port(args.host, args.port)
    if args.address:
        check_address(args.address)
    elif args.sessions_per_node is not None:
        raise ActorcastError("--sessions-per-node is for a cluster: give --address too, or --max-sessions for this "
                             "machine")
    token = resolve_token(args.token, args.token_file)
    set_log_level(args.log_level)
    warning = open_server_warning(args.host, token)
    if warning:
        log.warning(warning)
    config = ServerConfig(host=args.host, port=args.port, token=token, max_sessions=args.max_sessions,
                          stun=args.stun, audio_prefetch=args.audio_prefetch)
    chunk = motion_config(weights).trained_chunks[0] if args.latency == "low" else None
    if args.address:
        return _run_cluster(args, config, chunk)
    processes = args.stages == "processes"
    engine = Engine(weights=args.weights, shards=args.shards, use_ray=args.shards > 1 and not processes,
                    stage_threads=LIVE_STAGE_THREADS, processes=processes, chunk_frames=chunk)
    try:
        asyncio.run(serve(engine, config))
    finally:
        engine.close()
    sys.stderr.write("actorcast: server stopped\n")
    return 0


def _run_cluster(args: argparse.Namespace, config, chunk_frames: int | None) -> int:
    """Serve calls on every node of the Ray cluster at --address (streaming/cluster_calls.py): the page and the
    signalling here, each call on a node's own engine."""
    from actorcast.cluster.ray_connect import ensure_ray
    from actorcast.streaming.cluster_calls import create_cluster_app

    ensure_ray(args.address)

    async def main() -> None:
        app = create_cluster_app(config, args.weights, args.shards, args.sessions_per_node, chunk_frames)
        await serve(None, config, app=app)

    asyncio.run(main())
    sys.stderr.write("actorcast: server stopped\n")
    return 0
