"""Stages in worker processes: `ProcessStage` keeps `LocalStage`'s contract (a stage object's methods run in order,
one future each) with the object in a child process of its own (docs/ARCHITECTURE.md "Stages and executors").

A live server's stages are many small torch calls: in one process their Python holds one interpreter lock, beside
the event loop and the media tracks, so adding calls adds waiting rather than arithmetic. In a worker process each
stage has its own lock and the machine's cores share out the work. Requests and results cross a pipe, pickled
(a 256² frame is 192 KiB: well under a millisecond).

If a worker dies (killed, out of memory, a crash in native code), the calls in flight on it fail with
`StageProcessLost`, one line; the next call starts a new worker. What the dead worker held (its sessions' state)
is gone: a decoder shard gets the session's reference again (actors/failover.py `ShardSet`), while the audio and
motion stages' sessions end with that line.
"""

import concurrent.futures
import ctypes
import io
import logging
import multiprocessing
import pickle
import sys
import threading

from actorcast.models.errors import ActorcastError

log = logging.getLogger(__name__)

START_TIMEOUT_S = 120.0  # a worker's imports and its weights, at most
STOP_TIMEOUT_S = 5.0     # a worker told to stop is killed after this
PROCESS_PREFIX = "ac-"   # a worker's command name is this and its stage's name (ps, top, bench/live_capacity.py)


class StageProcessLost(ActorcastError):
    """A stage's worker process ended while it had calls to answer."""


class _ByValue(pickle.Pickler):
    """Pickles CPU tensors by value, as numpy arrays (protocol 5: one copy of the bytes).

    A multiprocessing pipe pickles with torch's reductions, which share each tensor through a file descriptor
    instead: every tensor in a message opened a connection to the sender's resource-sharer thread, with its
    authentication handshake, and a live call sends several a frame; profiled, that was a large part of the server
    process's CPU. The tensors here are small (a 256² frame is 192 KiB), so copying them is cheaper."""

    def reducer_override(self, obj):
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(obj, torch.Tensor) and type(obj) is torch.Tensor \
                and obj.device.type == "cpu" and obj.layout == torch.strided and not obj.requires_grad \
                and obj.dtype in _NUMPY_DTYPES:
            return torch.from_numpy, (obj.numpy(),)
        return NotImplemented


_NUMPY_DTYPES: set = set()  # torch dtypes numpy holds as they are (filled once torch is imported)


def _dumps(obj) -> bytes:
    if not _NUMPY_DTYPES and "torch" in sys.modules:
        torch = sys.modules["torch"]
        _NUMPY_DTYPES.update((torch.float32, torch.float64, torch.float16, torch.int64, torch.int32, torch.int16,
                              torch.int8, torch.uint8, torch.bool))
    buffer = io.BytesIO()
    _ByValue(buffer, protocol=5).dump(obj)
    return buffer.getvalue()


def _send(conn, obj) -> None:
    """Send `obj` over a pipe, its tensors by value (`_ByValue`)."""
    conn.send_bytes(_dumps(obj))


def _recv(conn):
    return pickle.loads(conn.recv_bytes())


def _portable(error: BaseException) -> BaseException:
    """`error`, or (it cannot be pickled) an ActorcastError with its one line, for the trip back over the pipe."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001 - any pickling failure: send its text instead
        return ActorcastError(f"{type(error).__name__}: {error}")


def name_process(name: str) -> None:
    """Set this process's command name (Linux, 15 bytes at most), so `ps` and `top` show which stage a worker runs
    and the live benchmark can tell the stages' CPU apart. Elsewhere, or where it fails, the name stays."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(15, name.encode()[:15], 0, 0, 0)  # 15: PR_SET_NAME
    except (OSError, AttributeError):
        pass


def _serve(conn, cls, args: tuple, kwargs: dict, threads: int, name: str = "stage") -> None:
    """The worker's loop: build the stage object, then answer (method, args, kwargs) requests in order until the
    pipe closes or None arrives. Each answer is (True, value) or (False, error)."""
    name_process(PROCESS_PREFIX + name)  # before torch starts its threads, which take the name with them
    import torch

    torch.set_num_threads(threads)
    try:
        obj = cls(*args, **kwargs)
    except BaseException as e:  # noqa: BLE001 - the constructor's error goes to the engine
        _send(conn, (False, _portable(e)))
        return
    _send(conn, (True, None))
    while True:
        try:
            request = _recv(conn)
        except (EOFError, OSError):  # the server is gone
            return
        if request is None:
            return
        method, a, kw = request
        try:
            answer = (True, getattr(obj, method)(*a, **kw))
        except BaseException as e:  # noqa: BLE001 - returned to the caller
            answer = (False, _portable(e))
        try:
            _send(conn, answer)
        except (EOFError, OSError):
            return
        except Exception as e:  # noqa: BLE001 - a value that cannot be pickled: say so instead
            _send(conn, (False, _portable(e)))


class ProcessStage:
    """Runs one stage object's methods, in order, in a worker process of its own."""

    retryable: tuple[type[BaseException], ...] = (StageProcessLost,)

    def __init__(self, cls, *args, name: str = "stage", threads: int | None = None, **kwargs):
        """threads: torch intra-op threads in the worker (None: 1). The worker starts at once; `wait_ready` (or
        the first call) waits for it and raises the stage constructor's error."""
        self.name = name
        self._spec = (cls, args, kwargs, threads or 1)
        self._proc: multiprocessing.process.BaseProcess | None = None
        self._conn = None
        self._closed = False
        self._losses = 0  # workers lost so far: a call sent to a worker that died before it ran fails with it
        # One link thread talks to the worker: calls stay in order and a restart never blocks the event loop.
        self._link = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"actorcast-{name}-link")
        self._started = self._link.submit(self._start)

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        cls, args, kwargs, threads = self._spec
        proc = ctx.Process(target=_serve, args=(child, cls, args, kwargs, threads, self.name),
                           name=f"actorcast-{self.name}", daemon=True)
        proc.start()
        child.close()
        if not parent.poll(START_TIMEOUT_S):
            proc.kill()
            raise StageProcessLost(f"the {self.name} stage's worker did not start within {START_TIMEOUT_S:.0f} s")
        try:
            ok, error = _recv(parent)
        except (EOFError, OSError):
            proc.join(STOP_TIMEOUT_S)
            raise StageProcessLost(f"the {self.name} stage's worker ended while starting (exit code "
                                   f"{proc.exitcode})") from None
        if not ok:
            proc.join(STOP_TIMEOUT_S)
            raise error
        self._proc, self._conn = proc, parent
        log.debug("%s stage: worker process %d", self.name, proc.pid)

    def _call(self, losses: int, method: str, args: tuple, kwargs: dict):
        if self._closed:
            raise ActorcastError(f"the {self.name} stage is shut down")
        if losses != self._losses:  # sent to the worker that died: its state (the call's session) went with it
            raise StageProcessLost(f"the {self.name} stage's worker process ended before this call ran; "
                                   "the calls it served are over, new ones get a new worker")
        if self._proc is None:
            self._start()
        try:
            _send(self._conn, (method, args, kwargs))
            ok, value = _recv(self._conn)
        except (EOFError, OSError):
            proc, self._proc = self._proc, None
            self._losses += 1
            self._conn.close()
            proc.join(STOP_TIMEOUT_S)
            log.warning("%s stage: worker process %d ended (exit code %s); a new one starts for the next call",
                        self.name, proc.pid, proc.exitcode)
            raise StageProcessLost(f"the {self.name} stage's worker process ended (exit code {proc.exitcode}); "
                                   "the calls it served are over, new ones get a new worker") from None
        if ok:
            return value
        raise value

    @property
    def pid(self) -> int | None:
        """The worker's process id, or None while none runs."""
        return self._proc.pid if self._proc is not None else None

    def submit(self, method: str, *args, **kwargs) -> concurrent.futures.Future:
        if self._closed:
            future: concurrent.futures.Future = concurrent.futures.Future()
            future.set_exception(ActorcastError(f"the {self.name} stage is shut down"))
            return future
        return self._link.submit(self._call, self._losses, method, args, kwargs)

    def wait_ready(self, timeout: float = 60.0, stop: threading.Event | None = None) -> None:
        """Wait for the worker to be up (started again if it died); raises the constructor's error or
        StageProcessLost. `stop` is not needed: a start is bounded by START_TIMEOUT_S."""
        self._started.result(timeout)
        self._link.submit(lambda: self._proc is None and self._start()).result(timeout)

    def shutdown(self) -> None:
        if self._closed:
            return
        self._link.submit(self._stop).result()
        self._link.shutdown(wait=True, cancel_futures=True)

    def _stop(self) -> None:
        self._closed = True
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            _send(self._conn, None)
        except OSError:
            pass
        proc.join(STOP_TIMEOUT_S)
        if proc.is_alive():
            proc.kill()
            proc.join(STOP_TIMEOUT_S)
        self._conn.close()
