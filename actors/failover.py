"""One session's decoder shards: whose turn it is, and carrying on while one is lost.

A shard that dies (its process, or its node with it) is set aside: its parts go to the shards that are up at
once, each part as the same request it would have been (so the frames are identical), while it restarts (Ray
restarts an actor where there is room; a stage's worker process is started again). Once it answers again it gets
the session's reference (if the restart lost it) and takes its turn again. If it does not come back within `return_s`, the session carries on with the others; with none
left, decoding fails with a line that says to check the cluster.
"""

import asyncio
import logging
import threading

import numpy as np
import torch

from actorcast.actors.clients import ShardClient
from actorcast.actors.messages import PhotoFace
from actorcast.actors.stages import DecodedFrames
from actorcast.models.errors import ActorcastError, InputError

log = logging.getLogger(__name__)


class ShardSet:
    """The shards one session decodes on, in turn, with each lost one set aside until it is back.

    Call from the event loop's thread; `stop()` before the session's state is freed."""

    def __init__(self, session_id: str, shards: list[ShardClient], reference: np.ndarray,
                 photo: PhotoFace | None, retries: int, return_s: float):
        """reference, photo: what a shard that comes back needs to open the session again (DecoderShard.open).
        retries: how many more times a part is sent after a shard is lost under it; return_s: how long a lost
        shard is waited for."""
        self.session_id, self.shards = session_id, list(shards)
        self._reference, self._photo = reference, photo
        self._retries, self._return_s = retries, return_s
        self._turn = 0
        self._down: dict[str, asyncio.Task] = {}  # lost shard's name -> the task that waits for it to come back
        self._losses: dict[str, int] = {}  # shard name -> how many times it was lost under this session
        self._stop = threading.Event()  # tells those waits (in threads) that the session is closing

    def __len__(self) -> int:
        return len(self.shards)

    def next_in_turn(self) -> ShardClient:
        """The next shard in turn (pieces of a chunk take turns on the shards)."""
        shard = self.shards[self._turn % len(self.shards)]
        self._turn += 1
        return shard

    async def decode(self, shard: ShardClient, first: int, z: torch.Tensor) -> DecodedFrames:
        """Frames first.. of one part, as one request, on `shard` or (it is down) on another that is up."""
        for _ in range(self._retries + 1):
            shard = await self._up_shard(shard)
            losses = self._losses.get(shard.name, 0)
            try:
                return await asyncio.wrap_future(shard.decode(self.session_id, first, z))
            except shard.retryable as e:
                if shard.name not in self._down:  # once per loss, not once per part that was in flight on it
                    log.warning("decoder shard %s lost on frames %d..%d (%s); the other shards take its frames "
                                "while it restarts", shard.name, first, first + len(z) - 1, e.__class__.__name__)
                    self._losses[shard.name] = self._losses.get(shard.name, 0) + 1
                    self._down[shard.name] = asyncio.create_task(self._bring_back(shard))
            except InputError:
                # A part sent as its shard was lost can reach the shard's new worker before the session is opened
                # there again ("no session"): send it again once the shard is back. Any other time it is an error.
                if self._losses.get(shard.name, 0) == losses:
                    raise
        raise ActorcastError(f"decoder shards failed {self._retries + 1} times on frame {first}: "
                             "check the cluster (`ray status`) and rerun")

    def stop(self) -> list[asyncio.Task]:
        """Stop waiting for lost shards; the waiting tasks, for the caller to cancel and await."""
        self._stop.set()
        return list(self._down.values())

    async def _bring_back(self, shard: ShardClient) -> bool:
        """Wait for Ray to restart a lost shard, then give it the session's reference: it is up again. False
        (it stays down for this session) if it does not answer within `return_s`."""
        try:
            await asyncio.to_thread(shard.wait_ready, self._return_s, self._stop)
            if not await asyncio.wrap_future(shard.has_session(self.session_id)):
                await asyncio.wrap_future(shard.open(self.session_id, self._reference, self._photo))
        except (ActorcastError, *shard.retryable) as e:
            log.warning("decoder shard %s did not come back (%s); carrying on without it", shard.name, e)
            return False
        log.warning("decoder shard %s is back", shard.name)
        del self._down[shard.name]
        return True

    async def _up_shard(self, shard: ShardClient) -> ShardClient:
        """`shard` if it is up, else the next shard that is (in turn); waits for one to come back if none is."""
        while shard.name in self._down:
            up = [s for s in self.shards if s.name not in self._down]
            if up:
                self._turn += 1
                return up[self._turn % len(up)]
            waiting = [t for t in self._down.values() if not t.done()]
            if not waiting:
                raise ActorcastError("every decoder shard was lost and none came back: check the cluster "
                                     "(`ray status`) and rerun")
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            shard = next((s for s in self.shards if s.name not in self._down), shard)
        return shard
