"""Continuous batching across sessions: one stage serves every live session, one batch per tick.

`Batched(stage, {"process": "process_many"})` wraps a stage handle (actors/executor.py) and keeps its
`submit(method, *args) -> Future` interface, so sessions do not change. A call of a batched method does not
go to the stage at once: it waits in a queue, and whenever the stage is free, everything queued goes to it
as one `*_many` call (the motion generator runs the chunks of all ready sessions as one batch, each with its
own KV cache; a decoder shard decodes all waiting frames as one batch, each with its own reference). While
that batch runs, the next one gathers, so the batch grows with the load and nobody waits for a timer: with
one session it is the old call, with four the stage does one pass where it did four.

A session joins or leaves between ticks: opening one is an ordinary call, queued behind the batch in flight;
a session that leaves simply stops sending (its queued item fails alone, for a caller no longer waiting).
Each item's result or error comes back to its own caller: one session's bad input never fails the others.
Calls of other methods pass straight through to the stage.
"""

import concurrent.futures
import logging
import threading

log = logging.getLogger(__name__)


class Batched:
    """A stage handle whose `batched` methods are gathered across callers and sent as `*_many` calls."""

    def __init__(self, stage, batched: dict[str, str], max_batch: int = 16, key=None):
        """batched: method -> the stage's list method (items in, [(ok, value or error)] out). key(args): items
        with the same key never share a batch (the later one waits for the next), e.g. one chunk per session
        for the motion generator, whose batch advances each session's stream."""
        self.stage, self.batched, self.max_batch, self.key = stage, dict(batched), max_batch, key
        self._lock = threading.RLock()  # re-entered when a finished batch's callback runs in the sending thread
        self._queue: list[tuple[str, tuple, concurrent.futures.Future]] = []
        self._busy = False
        self.batches = self.items = 0  # how many `*_many` calls, carrying how many items (for stats)

    def __getattr__(self, name):  # name, retryable, wait_ready, shutdown, actor, ...: those of the stage
        return getattr(self.stage, name)

    def submit(self, method: str, *args) -> concurrent.futures.Future:
        if method not in self.batched:
            return self.stage.submit(method, *args)
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            self._queue.append((method, args, future))
            if not self._busy:
                self._dispatch()
        return future

    def _dispatch(self) -> None:
        """Send what is queued as one batch (called with the lock held, only when no batch is in flight)."""
        method = self._queue[0][0]
        batch, rest, keys = [], [], set()
        for item in self._queue:
            key = self.key(item[1]) if self.key else None
            if item[0] != method or len(batch) >= self.max_batch or (key is not None and key in keys):
                rest.append(item)
                continue
            keys.add(key)
            batch.append(item)
        self._queue = rest
        self._busy = True
        self.batches += 1
        self.items += len(batch)
        try:
            inner = self.stage.submit(self.batched[method], [args for _, args, _ in batch])
        except BaseException as e:  # the stage is gone: fail this batch, keep serving the queue
            self._finish(batch, None, e)
            return
        inner.add_done_callback(lambda f: self._done(batch, f))

    def _done(self, batch, inner: concurrent.futures.Future) -> None:
        try:
            results = inner.result()
        except BaseException as e:  # the stage or its actor failed: every item of the batch gets its error
            self._finish(batch, None, e)
        else:
            self._finish(batch, results, None)

    def _finish(self, batch, results, error) -> None:
        for i, (_, _, future) in enumerate(batch):
            ok, value = (False, error) if error is not None else results[i]
            try:
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)
            except concurrent.futures.InvalidStateError:  # its caller cancelled it (the session closed)
                pass
        with self._lock:
            self._busy = False
            if self._queue:
                self._dispatch()
