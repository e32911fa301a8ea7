"""Where stages run: in this process (one worker thread per stage) or as Ray actors with declared resources.

Both give a `StageHandle`: `submit(method, *args) -> concurrent.futures.Future` runs one of the stage object's
methods. Only the typed clients of actors/clients.py call `submit`; sessions and the engine call the clients, and
async code awaits `asyncio.wrap_future(...)`, so the event loop never runs inference
(docs/ARCHITECTURE.md "Stages and executors").
"""

import concurrent.futures
import logging
import math
import threading
import time
from dataclasses import dataclass, replace
from typing import Protocol

from actorcast.models.errors import ActorcastError, ConfigError

log = logging.getLogger(__name__)

# Below this a decoder shard's CPU share stops meaning anything: the shards are too many for the cluster.
MIN_SHARD_CPUS = 0.05
# An actor that Ray has kept waiting for a node this long is placed again even where the nodes seem to have room
# for it (what Ray reports of free resources may lag behind a lost node).
STRANDED_AFTER_S = 60.0


@dataclass(frozen=True)
class Resources:
    """What one stage copy asks the scheduler for."""

    num_cpus: float
    num_gpus: float = 0.0


def default_resources(stage: str, shards: int, device: str = "cpu") -> Resources:
    """CPU shares that let the whole pipeline (audio + motion + N shards) fit on a 2-core machine; one GPU per
    decoder shard (and the generator) when running on CUDA."""
    gpu = device.startswith("cuda")
    if stage == "audio":
        return Resources(0.1)
    if stage == "motion":
        return Resources(0.2, 1.0 if gpu else 0.0)
    if stage == "decoder":
        return Resources(max(0.1, round(1.5 / shards, 3)), 1.0 if gpu else 0.0)
    raise ValueError(f"unknown stage {stage!r}")


# ---- fitting the stages to the Ray nodes ------------------------------------------------------------------------

@dataclass(frozen=True)
class NodeRoom:
    """What one alive Ray node has free now: CPUs and GPUs (logical, as Ray counts them)."""

    node_id: str
    cpus: float
    gpus: float = 0.0


@dataclass(frozen=True)
class Placement:
    """What each stage kind asks the scheduler for, fitted to the nodes, and the node of the audio and motion
    stages (`home`, asked for softly)."""

    resources: dict[str, Resources]
    home: str


def _floor4(x: float) -> float:
    """Down to Ray's resource granularity (1e-4), so that a share that fits on paper fits in Ray's books too."""
    return math.floor(max(x, 0.0) * 1e4 + 1e-6) / 1e4


def _shards_fitting(share: float, free: list[float]) -> int:
    """How many shards of `share` CPUs fit, each whole on one node, in the nodes' free CPUs."""
    return sum(math.floor(f / share + 1e-9) for f in free if f > 0) if share > 0 else 0


def fit_resources(wanted: dict[str, Resources], shards: int, rooms: list[NodeRoom], driver_node: str) -> Placement:
    """Shrink what the stages ask for until every one fits on some node, before anything is placed; or raise an
    ActorcastError (ConfigError for --shards) whose one line says what is missing and what to pass.

    wanted: {"audio", "motion", "decoder"} -> Resources (default_resources, or the caller's). A stage asking for
    more CPUs than any node has free would wait for ever (Ray queues it as infeasible and says so only in its
    logs), so:
    1. Audio and motion (fed from the driver, holding every session's state) go to the driver's node if it has
       room for both, else to the node with the most room; scaled down if even that has less.
    2. The decoder shards share what is left: the largest share, at most the wanted one, such that `shards`
       copies fit, each whole on one node (so a small node simply takes fewer shards). Ray's SPREAD strategy then
       places them: any node with room for a share takes one, so they all find a place.
    3. GPUs are whole: one per stage that wants one, or a refusal.
    CPU shares are the scheduler's bookkeeping, not a limit on the processes: a smaller share only lets more
    stages share a node's cores.
    """
    audio, motion, decoder = wanted["audio"], wanted["motion"], wanted["decoder"]
    free = ", ".join(f"{r.cpus:g}" for r in rooms) or "none"
    if not rooms or max(r.cpus for r in rooms) <= 0:
        raise ActorcastError(f"the Ray cluster has no free CPU for the pipeline (free CPUs per node: {free}): "
                             "add a node with CPUs, wait for other jobs to finish, or leave --address out to run here")
    # 1. audio + motion on one node
    front = audio.num_cpus + motion.num_cpus
    home = next((r for r in rooms if r.node_id == driver_node and r.cpus >= front), None)
    home = home or max(rooms, key=lambda r: r.cpus)
    scale = min(1.0, home.cpus / front) if front > 0 else 1.0
    audio, motion = (replace(s, num_cpus=_floor4(s.num_cpus * scale)) for s in (audio, motion))
    left = [r.cpus - (audio.num_cpus + motion.num_cpus if r is home else 0.0) for r in rooms]
    # 2. the shards' share: the wanted one, else the largest of (a node's free CPUs / k) that fits them all
    candidates = {decoder.num_cpus} | {f / k for f in left if f > 0 for k in range(1, shards + 1)}
    share = next((c for c in sorted((_floor4(c) for c in candidates if c <= decoder.num_cpus), reverse=True)
                  if _shards_fitting(c, left) >= shards), 0.0)
    if share < MIN_SHARD_CPUS:
        most = _shards_fitting(MIN_SHARD_CPUS, left)
        raise ConfigError(f"--shards {shards} does not fit the Ray cluster: a decoder shard needs at least "
                          f"{MIN_SHARD_CPUS:g} CPU on one node, and the nodes have {free} CPUs free (audio and "
                          f"motion take {audio.num_cpus + motion.num_cpus:g}); pass --shards {max(most, 1)} or "
                          "fewer, or add nodes")
    # 3. whole GPUs
    gpus_needed = shards * decoder.num_gpus + motion.num_gpus + audio.num_gpus
    gpus_free = sum(math.floor(r.gpus + 1e-9) for r in rooms)
    if gpus_needed > gpus_free:
        per_shard = max(decoder.num_gpus, 1e-9)
        fits = int((gpus_free - motion.num_gpus - audio.num_gpus) // per_shard)
        raise ConfigError(f"--shards {shards} on the GPU needs {gpus_needed:g} GPUs (one per decoder shard and "
                          f"one for the motion generator) and the Ray cluster has {gpus_free} free: "
                          + (f"pass --shards {fits} or fewer" if fits >= 1 else "add GPU nodes or run on the CPU"))
    fitted = {"audio": audio, "motion": motion, "decoder": replace(decoder, num_cpus=share)}
    if fitted != wanted:
        log.info("stage resources fitted to the nodes (free CPUs %s): %s", free, fitted)
    return Placement(fitted, home.node_id)


def node_rooms() -> list[NodeRoom]:
    """What every alive node of the joined Ray cluster has free now (its totals where Ray does not say)."""
    import ray

    try:  # a developer API: per-node free resources (ray.available_resources() only sums them)
        from ray._private.state import available_resources_per_node

        free = available_resources_per_node()
    except (ImportError, AttributeError, RuntimeError):
        free = {}
    rooms = []
    for node in ray.nodes():
        if node.get("Alive"):
            have = free.get(node["NodeID"], node.get("Resources", {}))
            rooms.append(NodeRoom(node["NodeID"], float(have.get("CPU", 0.0)), float(have.get("GPU", 0.0))))
    return rooms


def project_error(error: BaseException) -> BaseException | None:
    """The project's own error (an ActorcastError) that `error` carries, or None.

    Ray wraps what a task, actor or Train worker raised: RayTaskError (`.cause`; its `as_instanceof_cause()`
    copy is also an instance of the cause's class, but prints the remote traceback), Ray Train's
    WorkerGroupError (`.worker_failures`), ControllerError (`.controller_failure`) and the user-exception
    wrapper (`._base_exc`). This looks through all of them (duck-typed: no Ray import) so that callers can show
    the error's own one line instead of a traceback.
    """
    stack, seen = [error], set()
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        inner = [getattr(e, "cause", None), getattr(e, "_base_exc", None), getattr(e, "controller_failure", None),
                 *getattr(e, "worker_failures", {}).values(), e.__cause__, e.__context__]
        wrapper = type(e).__module__.startswith("ray.") or type(e).__name__.startswith("RayTaskError(")
        if isinstance(e, ActorcastError) and not wrapper:
            return e
        stack.extend(reversed([x for x in inner if isinstance(x, BaseException)]))
    return None


class StageHandle(Protocol):
    """Where one stage object runs (LocalStage, RayStage): its methods called by name, in order."""

    name: str
    retryable: tuple[type[BaseException], ...]  # errors after which the stage may come back (a restarted actor)

    def submit(self, method: str, *args) -> concurrent.futures.Future: ...

    def wait_ready(self, timeout: float = 60.0, stop: threading.Event | None = None) -> None: ...

    def shutdown(self) -> None: ...


def _bind_torch_threads(n: int) -> None:
    """Give the calling thread n torch threads for good. torch sets a thread's count from a process-wide value
    the first time the thread asks for it, so it is asked at once, before another thread changes that value."""
    import torch

    torch.set_num_threads(n)
    if torch.get_num_threads() != n:
        log.warning("torch kept %d threads for this stage instead of %d", torch.get_num_threads(), n)


class LocalStage:
    """Runs one stage object's methods, in order, on a dedicated worker thread."""

    retryable: tuple[type[BaseException], ...] = ()

    def __init__(self, cls, *args, name: str = "stage", threads: int | None = None, **kwargs):
        """threads: torch intra-op threads of this stage's worker thread (None: as many as the creating thread
        has). Always set explicitly: a thread that sets its own count changes the default of threads started
        after it, so one live engine would otherwise slow every later engine in the process."""
        import torch

        self.name = name
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"actorcast-{name}",
                                                           initializer=_bind_torch_threads,
                                                           initargs=(threads or torch.get_num_threads(),))
        # Built on the worker thread too: loading weights must not block an event loop either.
        self._obj = self._pool.submit(cls, *args, **kwargs).result()

    def submit(self, method: str, *args, **kwargs) -> concurrent.futures.Future:
        return self._pool.submit(getattr(self._obj, method), *args, **kwargs)

    def wait_ready(self, timeout: float = 60.0, stop=None) -> None:
        """In-process stages never die; nothing to wait for."""

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class RayStage:
    """A stage as a Ray actor; restarted by Ray if its process dies (the caller retries the lost call).

    A restart needs room for the actor's resources on a node that is still up. When its node is lost and no
    surviving node has that room, Ray would keep it waiting for ever: `wait_ready` then places a new copy on the
    node with the most room left, asking for no more than that node has free (the caller opens its sessions in
    it again, as after any restart)."""

    def __init__(self, cls, *args, name: str = "stage", resources: Resources = Resources(1.0), max_restarts: int = 5,
                 scheduling_strategy=None, **kwargs):
        """scheduling_strategy: Ray's (e.g. "SPREAD", or a NodeAffinitySchedulingStrategy); None: Ray's default."""
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

        self.name = name
        self.retryable = (RayActorError, ActorDiedError, ActorUnavailableError)
        self.resources = resources
        self._make = (cls, args, kwargs, max_restarts)
        self._lock = threading.Lock()  # one replacement at a time, however many sessions wait for the actor
        self._closed = False
        self.actor = self._start(resources, scheduling_strategy)
        self.wait_ready()

    def _start(self, resources: Resources, scheduling_strategy):
        import ray

        cls, args, kwargs, max_restarts = self._make
        remote = ray.remote(cls).options(num_cpus=resources.num_cpus, num_gpus=resources.num_gpus,
                                          max_restarts=max_restarts, max_task_retries=0,
                                          scheduling_strategy=scheduling_strategy)
        return remote.remote(*args, **kwargs)

    def node_id(self) -> str:
        """The Ray node the actor runs on now (hex id)."""
        import ray

        return ray.get(self.actor.__ray_call__.remote(lambda _: ray.get_runtime_context().get_node_id()))

    def submit(self, method: str, *args, **kwargs) -> concurrent.futures.Future:
        return getattr(self.actor, method).remote(*args, **kwargs).future()

    def wait_ready(self, timeout: float = 120.0, stop=None) -> None:
        """Block until the actor answers (after a start or a restart); ActorcastError after `timeout`, or as soon
        as `stop` (a threading.Event) is set. An actor that waits for room no node has is placed again where
        there is some (`_replace_if_stranded`), so this does not wait for a lost node to come back."""
        import ray

        start = time.monotonic()
        deadline = start + timeout
        actor = self.actor
        ready = actor.__ray_ready__.remote()
        while True:
            try:
                ray.get(ready, timeout=min(2.0, max(0.1, deadline - time.monotonic())))
                return
            except self.retryable + (ray.exceptions.GetTimeoutError,) as e:
                # A new copy (made here, or by another caller waiting for it too): wait for that one.
                if self._replace_if_stranded(actor, time.monotonic() - start):
                    actor, start = self.actor, time.monotonic()
                    ready = actor.__ray_ready__.remote()
                elif not isinstance(e, ray.exceptions.GetTimeoutError):  # that call died with the old actor
                    ready = actor.__ray_ready__.remote()
                if stop is not None and stop.is_set():
                    raise ActorcastError(f"stopped waiting for Ray actor {self.name}") from None
                if time.monotonic() > deadline:
                    raise ActorcastError(f"Ray actor {self.name} did not come back ({e.__class__.__name__}); "
                                         "check the cluster's resources with `ray status`") from None
                time.sleep(0.2)

    def _replace_if_stranded(self, actor, waited_s: float) -> bool:
        """Whether `actor` has been replaced by a new copy: by another caller already, or here, now, because Ray
        has it waiting for a node (created or restarting, no worker yet) and no alive node has room for what it
        asks (or `waited_s` passed STRANDED_AFTER_S). The new copy asks for at most the CPUs free on the node
        with the most, and is placed there."""
        with self._lock:
            if self.actor is not actor:
                return True
            if self._closed:
                return False
            rooms = node_rooms()
            if not _waits_for_a_node(actor, {r.node_id for r in rooms}):
                return False
            want = self.resources
            room = any(r.cpus >= want.num_cpus and r.gpus >= want.num_gpus for r in rooms)
            log.debug("Ray actor %s waits for a node with %g CPU; free CPUs per node: %s", self.name, want.num_cpus,
                      [r.cpus for r in rooms])
            if room and waited_s < STRANDED_AFTER_S:
                return False  # Ray places it
            best = max((r for r in rooms if r.gpus >= want.num_gpus), key=lambda r: r.cpus, default=None)
            if best is None:  # no node has the GPU it needs: only a returning node can help
                return False
            import ray
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            fitted = replace(want, num_cpus=min(want.num_cpus, _floor4(best.cpus)))
            try:
                ray.kill(actor, no_restart=True)
            except Exception as e:  # noqa: BLE001 (already gone: nothing to stop)
                log.debug("killing stranded %s: %s", self.name, e)
            self.actor = self._start(fitted, NodeAffinitySchedulingStrategy(best.node_id, soft=True))
            self.resources = fitted
            log.info("Ray actor %s waited %.0f s for a node with %g CPU free: a new copy asks for %g CPU on node %s",
                     self.name, waited_s, want.num_cpus, fitted.num_cpus, best.node_id[:12])
            return True

    def shutdown(self) -> None:
        import ray

        with self._lock:
            self._closed = True
            ray.kill(self.actor, no_restart=True)


def _waits_for_a_node(actor, alive: set[str]) -> bool:
    """Whether Ray has `actor` waiting to be placed: being created or restarting, with no worker leased for it
    yet, or held on a node that is no longer up (`alive`: the ids of those that are; a restart that races with
    its node's death can be left there). A worker starting up on a node that is up holds that node's resources
    and is not waiting. False where Ray does
    not say (its actor table is a developer API)."""
    try:
        from ray._private.state import actors

        info = actors(actor._actor_id.hex())
    except Exception as e:  # noqa: BLE001 (another Ray version or a client connection: keep waiting as before)
        log.debug("actor table unavailable: %s", e)
        return False
    address = info.get("Address", {})
    log.debug("Ray actor %s: %s, worker at %r on node %s", info.get("ActorID", "?")[:12], info.get("State"),
              address.get("IPAddress"), str(address.get("NodeID"))[:12])
    state = info.get("State")
    if state in ("PENDING_CREATION", "RESTARTING") and not address.get("IPAddress"):
        return True
    return state in ("PENDING_CREATION", "RESTARTING", "ALIVE") and address.get("NodeID") not in alive
