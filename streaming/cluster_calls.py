"""Live calls on every node of a Ray cluster: `actorcast serve --address ADDR` (docs/ARCHITECTURE.md "Calls on a
cluster").

The head's server keeps the routes, checks and framing of streaming/app.py `LiveServer` and changes only where a
call lives: each node runs a `NodeCalls` actor (streaming/node_calls.py) pinned to it, with its own engine, and
an offer goes to the node with the fewest calls that has room. The answer, with its ICE candidates, is the
node's, so the media flows between the caller and that node. The head keeps which call is on which node, and a
watcher, about once a second, asks Ray which nodes are alive and each node which of its calls ended:

- a node that joined gets its actor and takes calls once its engine is up, without a restart;
- a node that left (dead in `ray.nodes()`, or its actor dead) takes its calls with it: they are ended with the
  reason "server lost", which `GET /calls/ID` answers (410) to the page and to `actorcast call`; the other
  nodes' calls go on untouched.
"""

import asyncio
import collections
import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass, field

from aiohttp import web
from aiortc import RTCSessionDescription

from actorcast.models.errors import ActorcastError, InputError
from actorcast.streaming.app import LiveServer, ServerConfig
from actorcast.streaming.peer import CallOptions

log = logging.getLogger(__name__)

# CPU cores a live call is given on a node when --sessions-per-node is not: a stated constant, one core a call. The
# live benchmark measures what a call takes (bench/live.py `core_seconds_per_call_second`), but no measured figure
# ships with the package for a node to read; where one is known, pass --sessions-per-node from it.
CORES_PER_CALL = 1.0
WATCH_S = 1.0            # how often the head looks at the cluster's nodes and their calls
ASK_TIMEOUT_S = 10.0     # a node's answer to a control request or a look, at most
START_TIMEOUT_S = 300.0  # the first nodes' engines, before `serve` says it is serving
ENDED_KEPT = 1024        # calls ended by a lost server, remembered for GET /calls/ID
SERVER_LOST = "server lost"
NODE_ACTOR_CPUS = 0.01   # what a node's call actor asks Ray for: it fits any node; its calls use the node's cores


def sessions_for_cpus(cpus: float) -> int:
    """The calls a node of `cpus` cores takes by default: CORES_PER_CALL each, at least one."""
    return max(1, math.floor(cpus / CORES_PER_CALL + 1e-9))


@dataclass
class Node:
    """One node of the cluster, as the head sees it."""

    node_id: str
    address: str
    capacity: int
    actor: object
    ready: bool = False
    calls: set = field(default_factory=set)
    admitting: int = 0
    frames_sent: int = 0  # by the node's calls since its engine started (its latest answer)

    def load(self) -> int:
        return len(self.calls) + self.admitting

    def view(self) -> dict:
        return {"node_id": self.node_id, "address": self.address, "state": "ready" if self.ready else "starting",
                "calls": len(self.calls), "capacity": self.capacity}


def pick_node(nodes, home: str | None = None) -> "Node | None":
    """The ready node with room and the fewest calls, or None when all are full. Among equals the node `home` (the
    one the signalling runs on, which has that work too) comes last, the others in the order they joined."""
    free = [n for n in nodes if n.ready and n.load() < n.capacity]
    return min(free, key=lambda n: (n.load(), n.node_id == home)) if free else None


class RemoteCall:
    """A call on a node, with LiveCall's control methods (async: each is a request to the node's actor)."""

    def __init__(self, call_id: str, node: Node, options: CallOptions):
        self.call_id, self.node, self.options = call_id, node, options

    async def stats(self) -> dict:
        return {**await _ask(self.node.actor.stats.remote(self.call_id)), "server_node": self.node.node_id}

    async def set_emotion(self, emotion: str) -> None:
        await _ask(self.node.actor.set_emotion.remote(self.call_id, emotion))

    async def interrupt(self) -> None:
        await _ask(self.node.actor.interrupt.remote(self.call_id))

    def check_agent(self) -> None:
        if self.options.source != "agent":
            raise InputError("this call drives the avatar from the caller's microphone; start it with "
                             '"source": "agent" to speak audio')

    async def speech_room_s(self) -> float:
        return await _ask(self.node.actor.speech_room_s.remote(self.call_id))

    async def speak(self, pcm48) -> float:
        return await _ask(self.node.actor.speak.remote(self.call_id, pcm48))

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await _ask(self.node.actor.close_call.remote(self.call_id))


async def _ask(ref, timeout: float = ASK_TIMEOUT_S):
    """A node actor's answer; the project's own error it raised comes out as itself (a 4xx for the caller)."""
    from actorcast.actors.executor import project_error

    import ray

    try:
        return await asyncio.wait_for(ref, timeout)
    except asyncio.TimeoutError:
        raise _unavailable(f"the call's server did not answer within {timeout:.0f} s; retry") from None
    except ray.exceptions.RayActorError:  # its node lost, or unreachable for now: the watcher decides which
        raise _unavailable("the call's server is not answering: its node may be lost (GET /calls/ID says so "
                           "within seconds)") from None
    except Exception as e:
        own = project_error(e)
        if own is not None:
            raise own from None
        raise


def _unavailable(message: str) -> web.HTTPServiceUnavailable:
    """A 503 with the JSON error every refusal of the server has (streaming/guard.py)."""
    return web.HTTPServiceUnavailable(text=json.dumps({"error": message}), content_type="application/json")


def node_metrics(nodes) -> str:
    """Prometheus text of the nodes' figures, one sample per node, labelled with its id and address."""
    families = (("actorcast_node_sessions_active", "gauge", "Calls in progress on the node.", lambda n: len(n.calls)),
                ("actorcast_node_sessions_capacity", "gauge", "Calls the node takes at once.", lambda n: n.capacity),
                ("actorcast_node_frames_sent_total", "counter", "Video frames the node's calls sent.",
                 lambda n: n.frames_sent))
    lines = []
    for name, kind, meaning, value in families:
        lines += [f"# HELP {name} {meaning}", f"# TYPE {name} {kind}"]
        lines += [f'{name}{{node="{n.node_id}",address="{n.address}"}} {float(value(n))}' for n in nodes]
    return "\n".join(lines) + "\n"


class ClusterServer(LiveServer):
    """The head's server: the routes of LiveServer, each call placed on a node's `NodeCalls` actor."""

    def __init__(self, config: ServerConfig, weights=None, shards: int = 1, sessions_per_node: int | None = None,
                 chunk_frames: int | None = None):
        super().__init__(None, config)
        self.weights, self.shards, self.sessions_per_node = weights, shards, sessions_per_node
        self.chunk_frames = chunk_frames  # the generator's chunk size on every node (None: its own)
        self.nodes: dict[str, Node] = {}
        self.lost: collections.OrderedDict[str, str] = collections.OrderedDict()  # call id -> the 410's message
        self.watcher: asyncio.Task | None = None
        self.start_error: str | None = None  # why the latest node actor failed to start, for the start-up's error
        self.home: str | None = None  # the node this server runs on
        self.broken: set[str] = set()  # nodes whose call actor failed in its constructor: not started again
        self._weights_ref = None

    # ---- capacity and placement -----------------------------------------------------------------------------

    def capacity(self) -> int:
        return sum(n.capacity for n in self.nodes.values() if n.ready)

    def refusal(self) -> str | None:
        if pick_node(self.nodes.values(), self.home) is not None:
            return None
        ready = [n for n in self.nodes.values() if n.ready]
        return (f"server full: {self.capacity()} of {self.capacity()} sessions in use on {len(ready)} node(s); retry "
                "when a call ends, add a node to the cluster, or start serve with a larger --sessions-per-node")

    async def _admit(self, offer: RTCSessionDescription, options: CallOptions) -> dict:
        node = pick_node(self.nodes.values(), self.home)
        if node is None:  # filled while this offer's face was framed
            raise _unavailable("server full: retry when a call ends")
        node.admitting += 1
        try:
            answer = await _ask(node.actor.offer.remote(offer.sdp, options), START_TIMEOUT_S)
        except (InputError, web.HTTPException):
            raise
        except Exception as e:
            log.warning("node %s failed to take a call (%s: %s)", node.address, e.__class__.__name__, e)
            raise _unavailable("the node given the call failed to take it; retry") from None
        finally:
            node.admitting -= 1
        call_id = answer["session_id"]
        if node.node_id not in self.nodes:  # lost while it answered
            raise _unavailable("the node given the call was lost; retry")
        self.calls[call_id] = RemoteCall(call_id, node, options)
        node.calls.add(call_id)
        self.metrics.session_admitted()
        self.metrics.set_active(len(self.calls))
        log.info("call %s admitted on node %s %s (%d/%d)", call_id, node.address, node.node_id[:8], len(self.calls),
                 self.capacity())
        return {**answer, "server_node": node.node_id}

    def _call(self, request: web.Request):
        message = self.lost.get(request.match_info["call_id"])
        if message is not None:
            raise web.HTTPGone(text=json.dumps({"error": message}), content_type="application/json")
        return super()._call(request)

    async def call_stats(self, request: web.Request) -> web.Response:
        """The call's stats from its node; 410 with {"ended": "server lost"} when its node was lost."""
        message = self.lost.get(request.match_info["call_id"])
        if message is not None:
            return web.json_response({"error": message, "ended": SERVER_LOST}, status=410)
        return await super().call_stats(request)

    def health_body(self) -> dict:
        return {**super().health_body(), "nodes": [n.view() for n in self.nodes.values()]}

    async def metrics_text(self, request: web.Request) -> web.Response:
        """The head's metrics (offers admitted and refused, calls in progress), then each node's calls, capacity
        and frames sent, labelled by node."""
        response = await super().metrics_text(request)
        return web.Response(body=response.body + node_metrics(self.nodes.values()).encode(),
                            headers={"Content-Type": response.headers["Content-Type"]})

    # ---- the nodes ----------------------------------------------------------------------------------------

    async def start(self, app: web.Application | None = None) -> None:
        """Start a node actor on every alive node and wait (up to START_TIMEOUT_S) until their engines are up;
        then watch the cluster in the background."""
        import ray

        from actorcast.actors.loading import UNTRAINED, WeightsBundle, resolve_weights

        self.home = ray.get_runtime_context().get_node_id()
        weights = resolve_weights(self.weights)
        if self.weights is not None and weights != UNTRAINED:  # nodes need not see the head's disk
            self._weights_ref = ray.put(WeightsBundle.read(weights))
        await self._look()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and not (self.nodes and all(n.ready for n in self.nodes.values())):
            if self.start_error is not None and not any(n.ready for n in self.nodes.values()):
                break
            await asyncio.sleep(0.2)
            await self._look()
        if not any(n.ready for n in self.nodes.values()):
            raise ActorcastError(f"the cluster's nodes cannot start their engines: {self.start_error}"
                                 if self.start_error else f"no node of the cluster started its engine in "
                                 f"{START_TIMEOUT_S:.0f} s; see Ray's logs of the nodes")
        self.watcher = asyncio.create_task(self._watch(), name="cluster-watch")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_S)
            try:
                await self._look()
            except Exception:
                log.exception("looking at the cluster's nodes failed")

    async def _look(self) -> None:
        """One look: nodes joined and left, then each node's calls."""
        import ray

        alive = {n["NodeID"]: n for n in await asyncio.to_thread(ray.nodes) if n.get("Alive")}
        for node_id in [i for i in self.nodes if i not in alive]:
            self._lose(self.nodes[node_id], "its node left the cluster")
        for node_id, info in alive.items():
            if node_id not in self.nodes and node_id not in self.broken:
                self.nodes[node_id] = self._start_node(info)
        await asyncio.gather(*(self._poll(node) for node in list(self.nodes.values())))

    def _start_node(self, info: dict) -> Node:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from actorcast.streaming.node_calls import NodeCalls

        address = info.get("NodeManagerAddress", "?")
        capacity = self.sessions_per_node or sessions_for_cpus(info.get("Resources", {}).get("CPU", 1.0))
        actor = ray.remote(NodeCalls).options(
            num_cpus=NODE_ACTOR_CPUS, max_restarts=0, max_concurrency=1000,
            scheduling_strategy=NodeAffinitySchedulingStrategy(info["NodeID"], soft=False),
        ).remote(address, self.config, self._weights_ref if self._weights_ref is not None else self.weights,
                 self.shards, chunk_frames=self.chunk_frames)
        log.info("node %s %s joined: starting its engine for %d call(s)", address, info["NodeID"][:8], capacity)
        return Node(info["NodeID"], address, capacity, actor)

    async def _poll(self, node: Node) -> None:
        """Ask a node which of its calls ended; a node whose actor is dead is lost."""
        import ray

        try:
            health = await asyncio.wait_for(node.actor.health.remote(), WATCH_S if node.ready else 0.5)
        except asyncio.TimeoutError:  # busy, or its engine still loading: asked again next time
            return
        except ray.exceptions.RayActorError as e:
            if isinstance(e, ray.exceptions.ActorUnavailableError):
                return  # unreachable for now; Ray says soon whether the node is gone
            if getattr(e, "actor_init_failed", False):
                from actorcast.actors.executor import project_error

                own = project_error(e)  # else Ray's text, whose last line is "module.Class: message"
                last = str(e).strip().splitlines()[-1]
                self.start_error = str(own) if own is not None else last.split(": ", 1)[-1]
                self.broken.add(node.node_id)
                log.warning("node %s %s cannot serve calls: %s", node.address, node.node_id[:8], self.start_error)
            self._lose(node, f"lost its call server ({e.__class__.__name__})")
            return
        if not node.ready:
            node.ready = True
            log.info("node %s %s is taking calls (%d)", node.address, node.node_id[:8], node.capacity)
        node.frames_sent = health["frames_sent"]
        for call_id in set(health["ended"]) & node.calls:
            node.calls.discard(call_id)
            self.calls.pop(call_id, None)
        self.metrics.set_active(len(self.calls))

    def _lose(self, node: Node, why: str) -> None:
        """A node gone: its calls end with SERVER_LOST, the other nodes' go on."""
        import ray

        if self.nodes.pop(node.node_id, None) is None:
            return
        log.warning("node %s %s lost (%s): %d call(s) ended", node.address, node.node_id[:8], why, len(node.calls))
        for call_id in node.calls:
            self.calls.pop(call_id, None)
            self.lost[call_id] = (f"the call ended because its server was lost: node {node.address} "
                                  f"{node.node_id[:8]} {why}; start a new call")
            while len(self.lost) > ENDED_KEPT:
                self.lost.popitem(last=False)
        self.metrics.set_active(len(self.calls))
        with contextlib.suppress(Exception):
            ray.kill(node.actor)

    async def shutdown(self, app: web.Application | None = None) -> None:
        """Stop watching, end every call and stop the nodes' engines."""
        import ray

        if self.watcher is not None:
            self.watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.watcher
        nodes = list(self.nodes.values())
        await asyncio.gather(*(_ask(n.actor.shutdown.remote(), 30.0) for n in nodes), return_exceptions=True)
        for node in nodes:
            with contextlib.suppress(Exception):
                ray.kill(node.actor)
        self.calls.clear()


def create_cluster_app(config: ServerConfig, weights=None, shards: int = 1,
                       sessions_per_node: int | None = None, chunk_frames: int | None = None) -> web.Application:
    """The live server's app over the nodes of the Ray cluster this process has joined."""
    from actorcast.streaming.app import create_app

    server = ClusterServer(config, weights, shards, sessions_per_node, chunk_frames)
    app = create_app(None, config, server)
    app.on_startup.append(server.start)
    return app
