"""How a session's calls reach a stage's list method: alone (`Solo`) or batched across sessions (`Batched`).

A stage's batchable work has one method that takes a list of requests and answers with one `Outcome` per
request (`MotionStage.process_many`, `DecoderShard.decode_many`): its one-item call is the case n = 1 of that
method. A lane turns one request into one future of its result:

- `Solo` sends each request at once, as a list of one. Offline sessions use it, so that a render's frames never
  depend on what else ran beside it (batches round floats differently; resumed renders must match bit for bit).
- `Batched` is continuous batching: a request waits in a queue, and whenever the stage is free, everything
  queued goes to it as one call (the motion generator runs the chunks of all ready sessions as one batch, each
  with its own KV cache; a decoder shard decodes all waiting frames as one batch, each with its own reference).
  While that batch runs the next one gathers, so the batch grows with the load and nobody waits for a timer:
  with one session it is a batch of one, with four the stage does one pass where it did four.

A session joins or leaves between ticks: opening one is an ordinary call (actors/clients.py), queued behind the
batch in flight; a session that leaves simply stops sending (its queued request fails alone, for a caller no
longer waiting). Each request's result or error comes back to its own caller: one session's bad input never
fails the others.
"""

import concurrent.futures
import logging
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

Request = TypeVar("Request")
Result = TypeVar("Result")


@dataclass(frozen=True)
class Outcome(Generic[Result]):
    """One request's answer from a stage's list method: its value, or the error that request alone raised."""

    value: Result | None = None
    error: BaseException | None = None

    def unwrap(self) -> Result:
        """The value, or the request's error raised."""
        if self.error is not None:
            raise self.error
        return self.value


# A stage's list method as a call: requests in, a future of one Outcome per request out (actors/clients.py).
SendMany = Callable[[list[Request]], "concurrent.futures.Future[list[Outcome[Result]]]"]


def _settle(futures: list[concurrent.futures.Future], inner: concurrent.futures.Future | None,
            error: BaseException | None = None) -> None:
    """Give each request's future its own Outcome from `inner`, or every one the error of the call itself."""
    outcomes = None
    if error is None and inner is not None and inner.cancelled():
        for future in futures:
            future.cancel()
        return
    if error is None:
        try:
            outcomes = inner.result()
        except BaseException as e:  # the stage or its actor failed: every request of the call gets its error
            error = e
    for i, future in enumerate(futures):
        outcome = Outcome(error=error) if outcomes is None else outcomes[i]
        try:
            if outcome.error is not None:
                future.set_exception(outcome.error)
            else:
                future.set_result(outcome.value)
        except concurrent.futures.InvalidStateError:  # its caller cancelled it (the session closed)
            pass


class Solo(Generic[Request, Result]):
    """Each request goes to the stage at once, alone: a list of one."""

    def __init__(self, send_many: SendMany):
        self._send_many = send_many

    def submit(self, request: Request) -> "concurrent.futures.Future[Result]":
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            inner = self._send_many([request])
        except BaseException as e:  # the stage is gone
            _settle([future], None, e)
            return future
        # A caller that gives up (the session closed) cancels the call too, if it has not started.
        future.add_done_callback(lambda f: inner.cancel() if f.cancelled() else None)
        inner.add_done_callback(lambda f: _settle([future], f))
        return future


@dataclass
class _Queued(Generic[Request]):
    request: Request
    future: concurrent.futures.Future


class Batched(Generic[Request, Result]):
    """Requests gathered across callers while the stage is busy, sent as one list when it is free."""

    def __init__(self, send_many: SendMany, max_batch: int = 16,
                 key: Callable[[Request], Hashable] | None = None):
        """key(request): requests with the same key never share a batch (the later one waits for the next), e.g.
        one chunk per session for the motion generator, whose batch advances each session's stream."""
        self._send_many, self.max_batch, self.key = send_many, max_batch, key
        self._lock = threading.RLock()  # re-entered when a finished batch's callback runs in the sending thread
        self._queue: list[_Queued] = []
        self._busy = False
        self.batches = self.items = 0  # how many calls, carrying how many requests (for stats)

    def submit(self, request: Request) -> "concurrent.futures.Future[Result]":
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            self._queue.append(_Queued(request, future))
            if not self._busy:
                self._dispatch()
        return future

    def _dispatch(self) -> None:
        """Send what is queued as one batch (called with the lock held, only when no batch is in flight)."""
        batch, rest, keys = [], [], set()
        for item in self._queue:
            key = self.key(item.request) if self.key else None
            if len(batch) >= self.max_batch or (key is not None and key in keys):
                rest.append(item)
                continue
            keys.add(key)
            batch.append(item)
        self._queue = rest
        self._busy = True
        self.batches += 1
        self.items += len(batch)
        futures = [item.future for item in batch]
        try:
            inner = self._send_many([item.request for item in batch])
        except BaseException as e:  # the stage is gone: fail this batch, keep serving the queue
            self._done(futures, None, e)
            return
        inner.add_done_callback(lambda f: self._done(futures, f))

    def _done(self, futures: list[concurrent.futures.Future], inner: concurrent.futures.Future | None,
              error: BaseException | None = None) -> None:
        _settle(futures, inner, error)
        with self._lock:
            self._busy = False
            if self._queue:
                self._dispatch()
