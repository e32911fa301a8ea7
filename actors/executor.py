"""Where stages run: in this process (one worker thread per stage) or as Ray actors with declared resources.

Both give a handle with `submit(method, *args) -> concurrent.futures.Future`, so the session code is the same:
async code awaits `asyncio.wrap_future(...)`, the event loop never runs inference
(docs/ARCHITECTURE.md "Stages and executors").
"""

import concurrent.futures
import logging
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)


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


def project_error(error: BaseException) -> BaseException | None:
    """The project's own error (an ActorcastError) that `error` carries, or None.

    Ray wraps what a task, actor or Train worker raised: RayTaskError (`.cause`; its `as_instanceof_cause()`
    copy is also an instance of the cause's class, but prints the remote traceback), Ray Train's
    WorkerGroupError (`.worker_failures`), ControllerError (`.controller_failure`) and the user-exception
    wrapper (`._base_exc`). This looks through all of them (duck-typed: no Ray import) so that callers can show
    the error's own one line instead of a traceback.
    """
    from actorcast.models.errors import ActorcastError

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
    """A stage as a Ray actor; restarted by Ray if its process dies (the caller retries the lost call)."""

    def __init__(self, cls, *args, name: str = "stage", resources: Resources = Resources(1.0), max_restarts: int = 5,
                 scheduling_strategy=None, **kwargs):
        """scheduling_strategy: Ray's (e.g. "SPREAD", or a NodeAffinitySchedulingStrategy); None: Ray's default."""
        import ray
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

        self.name = name
        self.retryable = (RayActorError, ActorDiedError, ActorUnavailableError)
        remote = ray.remote(cls).options(num_cpus=resources.num_cpus, num_gpus=resources.num_gpus,
                                          max_restarts=max_restarts, max_task_retries=0,
                                          scheduling_strategy=scheduling_strategy)
        self.actor = remote.remote(*args, **kwargs)
        self.wait_ready()

    def node_id(self) -> str:
        """The Ray node the actor runs on now (hex id)."""
        import ray

        return ray.get(self.actor.__ray_call__.remote(lambda _: ray.get_runtime_context().get_node_id()))

    def submit(self, method: str, *args, **kwargs) -> concurrent.futures.Future:
        return getattr(self.actor, method).remote(*args, **kwargs).future()

    def wait_ready(self, timeout: float = 120.0, stop=None) -> None:
        """Block until the actor answers (after a start or a restart); ActorcastError after `timeout`, or as soon
        as `stop` (a threading.Event) is set. A restart waits until Ray finds room for the actor: a lost node's
        actors come back only where there are resources left for them."""
        import ray

        from actorcast.models.errors import ActorcastError

        deadline = time.monotonic() + timeout
        ready = self.actor.__ray_ready__.remote()
        while True:
            try:
                ray.get(ready, timeout=min(2.0, max(0.1, deadline - time.monotonic())))
                return
            except self.retryable + (ray.exceptions.GetTimeoutError,) as e:
                if not isinstance(e, ray.exceptions.GetTimeoutError):  # that call died with the old actor
                    ready = self.actor.__ray_ready__.remote()
                if stop is not None and stop.is_set():
                    raise ActorcastError(f"stopped waiting for Ray actor {self.name}") from None
                if time.monotonic() > deadline:
                    raise ActorcastError(f"Ray actor {self.name} did not come back ({e.__class__.__name__}); "
                                         "check the cluster's resources with `ray status`") from None
                time.sleep(0.2)

    def shutdown(self) -> None:
        import ray

        ray.kill(self.actor, no_restart=True)
