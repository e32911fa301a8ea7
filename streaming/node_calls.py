"""One node's live calls, when `actorcast serve --address` serves calls on every node of a Ray cluster.

`NodeCalls` runs on each node as an async Ray actor pinned to it (streaming/cluster_calls.py starts them). It owns
the node's own in-process Engine and a LiveServer without HTTP (streaming/app.py), so a call placed here runs as
it does on one machine: its session on this node's stages, its peer connection here, its ICE candidates this
node's addresses, so the media flows between the caller and this node and never through the head. The head
sends each offer here and asks for the call's stats and control by call id; this class knows nothing of Ray
beyond what it is given, so it runs in one process too.
"""

import collections
import dataclasses
import logging

from aiortc import RTCSessionDescription

from actorcast.streaming.app import LIVE_STAGE_THREADS, LiveServer, ServerConfig
from actorcast.streaming.peer import CallOptions

log = logging.getLogger(__name__)

ENDED_KEPT = 256  # ids of calls ended here, kept for the head's next look (it asks about once a second)


class _NodeServer(LiveServer):
    """A LiveServer that remembers the ids of the calls that ended, for the head."""

    def __init__(self, engine, config: ServerConfig):
        super().__init__(engine, config)
        self.ended: collections.deque[str] = collections.deque(maxlen=ENDED_KEPT)

    def _closed(self, call) -> None:
        super()._closed(call)
        self.ended.append(call.call_id)


class NodeCalls:
    """The calls of one node: answers offers, ends calls, and reports which ended (`health`)."""

    def __init__(self, host: str, config: ServerConfig, weights=None, shards: int = 1, engine=None,
                 chunk_frames: int | None = None):
        """host: this node's address (its ICE candidates: loopback only on loopback); weights: a directory, a
        WeightsBundle shipped by the head, or None for the shipped weights; engine: one already built (tests)."""
        if engine is None:
            from actorcast.actors.engine import Engine
            from actorcast.actors.loading import local_weights

            with local_weights(weights) as folder:  # a shipped bundle is written to a folder while it loads
                engine = Engine(weights=folder, shards=shards, stage_threads=LIVE_STAGE_THREADS,
                                chunk_frames=chunk_frames)
        self.engine, self.host = engine, host
        # the calls' ICE candidates are this node's addresses (the config's host is where the head listens)
        self.server = _NodeServer(engine, dataclasses.replace(config, host=host))

    async def offer(self, sdp: str, options: CallOptions) -> dict:
        """Answer an offer with a new call on this node: {"sdp", "type", "session_id"}."""
        return await self.server._admit(RTCSessionDescription(sdp=sdp, type="offer"), options)

    async def health(self) -> dict:
        """The calls in progress here and the ids of those that ended (the latest ENDED_KEPT)."""
        return {"calls": list(self.server.calls), "ended": list(self.server.ended),
                "frames_sent": self.server.metrics.frames_sent}

    def _call(self, call_id: str):
        from actorcast.models.errors import InputError

        call = self.server.calls.get(call_id)
        if call is None:
            raise InputError("no such call: it ended or the id is wrong")
        return call

    async def stats(self, call_id: str) -> dict:
        return self._call(call_id).stats()

    async def set_emotion(self, call_id: str, emotion: str) -> None:
        self._call(call_id).set_emotion(emotion)

    async def interrupt(self, call_id: str) -> None:
        self._call(call_id).interrupt()

    async def speech_room_s(self, call_id: str) -> float:
        return self._call(call_id).speech_room_s()

    async def speak(self, call_id: str, pcm48) -> float:
        return self._call(call_id).speak(pcm48)

    async def close_call(self, call_id: str) -> None:
        call = self.server.calls.get(call_id)
        if call is not None:
            await call.close()

    async def metrics_text(self) -> bytes:
        self.server.metrics.set_active(len(self.server.calls))
        return self.server.metrics.render()

    async def shutdown(self) -> None:
        """Close every call here and stop the node's stages."""
        await self.server.shutdown()
        self.engine.close()

