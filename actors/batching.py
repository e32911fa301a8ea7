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

Keyed batches (one item per session) can fall out of step: each session has one item in flight, so once they
alternate (A alone, then B, C, D while A waits; then A alone again) they stay so, and a pass carries half the
sessions it could. `gather_s` puts them back in step: when the stage frees and a session of the batch just
served is missing from the queue, the queue waits up to `gather_s` for it, but only if that session is *hot*:
it came back within `gather_s` of its last result (its next item was ready; it is behind, or offline). A live
session paced by its audio comes back a chunk later, is never hot, and is never waited for.
"""

import concurrent.futures
import logging
import threading
import time

log = logging.getLogger(__name__)


class Batched:
    """A stage handle whose `batched` methods are gathered across callers and sent as `*_many` calls."""

    def __init__(self, stage, batched: dict[str, str], max_batch: int = 16, key=None, gather_s: float = 0.0):
        """batched: method -> the stage's list method (items in, [(ok, value or error)] out). key(args): items
        with the same key never share a batch (the later one waits for the next), e.g. one chunk per session
        for the motion generator, whose batch advances each session's stream. gather_s: how long a keyed
        batch may wait for a hot key of the last one (see the module docstring); 0 never waits."""
        self.stage, self.batched, self.max_batch, self.key = stage, dict(batched), max_batch, key
        self.gather_s = gather_s if key is not None else 0.0
        self._lock = threading.RLock()  # re-entered when a finished batch's callback runs in the sending thread
        self._queue: list[tuple[str, tuple, concurrent.futures.Future]] = []
        self._busy = False
        self._timer: threading.Timer | None = None  # set while the queue waits for a hot key
        self._last_keys: set = set()  # the keys of the last batch sent
        self._served: dict = {}  # key -> when its last result came back (monotonic s)
        self._hot: set = set()  # keys that came back within gather_s of their last result
        self.batches = self.items = 0  # how many `*_many` calls, carrying how many items (for stats)
        self.gathers = 0  # how many times the queue waited for a hot key (for stats)

    def __getattr__(self, name):  # name, retryable, wait_ready, shutdown, actor, ...: those of the stage
        return getattr(self.stage, name)

    def submit(self, method: str, *args) -> concurrent.futures.Future:
        if method not in self.batched:
            return self.stage.submit(method, *args)
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if self.gather_s > 0:
                key = self.key(args)
                served = self._served.pop(key, None)
                if served is not None and time.monotonic() - served <= self.gather_s:
                    self._hot.add(key)
                else:
                    self._hot.discard(key)
            self._queue.append((method, args, future))
            if not self._busy:
                self._kick()
        return future

    def mean_batch(self) -> float:
        """Items per batch so far (1.0 = no batching happened)."""
        return self.items / self.batches if self.batches else 0.0

    def _kick(self) -> None:
        """The stage is free and the queue not empty (lock held): send it, or wait a little for a hot key."""
        missing = self._missing_hot_keys()
        if missing and self._timer is None:
            timer = self._timer = threading.Timer(self.gather_s, lambda: self._gathered(timer))
            timer.daemon = True
            timer.start()
            self.gathers += 1
        elif not missing:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._dispatch()

    def _missing_hot_keys(self) -> set:
        """Hot keys of the last batch not queued yet, while the next batch has room for them."""
        if self.gather_s <= 0 or not self._last_keys & self._hot:
            return set()
        queued = {self.key(args) for _, args, _ in self._queue}
        if len(queued) >= self.max_batch:
            return set()
        return (self._last_keys & self._hot) - queued

    def _gathered(self, timer: threading.Timer) -> None:
        """gather_s is over: send what came; the keys that did not come are no longer hot."""
        with self._lock:
            if self._timer is not timer:  # the key came first, and that batch went out
                return
            self._timer = None
            self._hot -= self._missing_hot_keys()
            if not self._busy and self._queue:
                self._dispatch()

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
        if self.gather_s > 0:
            self._last_keys = {self.key(args) for _, args, _ in batch}
            self._hot &= self._last_keys | self._served.keys() | {self.key(args) for _, args, _ in rest}
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
        if self.gather_s > 0:
            with self._lock:
                now = time.monotonic()
                self._served.update((self.key(args), now) for _, args, _ in batch)
                if len(self._served) > 4 * self.max_batch:  # keys of sessions gone: keep the newest
                    self._served = dict(sorted(self._served.items(), key=lambda kv: kv[1])[-self.max_batch:])
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
                self._kick()
