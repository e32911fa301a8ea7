"""A session: audio in (`feed`), video frames out (`async for vf in frames()`), stages pipelined with bounded queues.

Four asyncio tasks move messages between the stages through their typed clients (actors/clients.py); each
awaits its stage's future, so inference runs in the stage's worker thread or Ray actor, never on the event loop:

    feed -> inbox -> [audio task] -q_feat-> [motion task] -q_motion-> [decode task] -q_pending-> [emit task] -> out

Audio enters the encoder in fixed blocks of `block_frames` frames, so the stages see the same calls however the
caller slices its audio (streaming results are then bit-identical, which resuming relies on). The decode task
splits each chunk's frames across the N decoder shards and reassembles them in order; a lost shard's parts go
to the others while it is away (actors/failover.py `ShardSet`).
"""

import asyncio
import collections
import logging
import time
from dataclasses import dataclass

import numpy as np

from actorcast.actors.clients import ShardClient, StageClients
from actorcast.actors.executor import project_error
from actorcast.actors.failover import ShardSet
from actorcast.actors.messages import AudioChunk, FeatureChunk, MotionChunk, PhotoFace, VideoFrames
from actorcast.actors.session_config import Seniority, SessionCheckpoint, SessionConfig
from actorcast.models.errors import ActorcastError, InputError
from actorcast.models.timebase import FPS, SAMPLES_PER_FRAME

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Marker:
    samples: int
    audio_state: bytes = b""
    motion_state: bytes = b""
    next_frame: int = 0


@dataclass(frozen=True)
class _Audio:
    """Samples in the inbox, with the time the first of them was fed (time.monotonic())."""

    pcm: np.ndarray
    t_wall: float


@dataclass(frozen=True)
class _Generated:
    """A motion chunk on its way to the decoders; `repeat`: show the last frame again instead (live, behind)."""

    chunk: MotionChunk
    repeat: bool = False


@dataclass(frozen=True)
class _Decoding:
    """A chunk or piece on its way out, with the job decoding it (None: it repeats the last frame)."""

    chunk: MotionChunk
    job: asyncio.Future | None


@dataclass(frozen=True)
class _Piece:
    """Frames of a chunk decoded as one job, split over `shards`."""

    chunk: MotionChunk
    shards: list[ShardClient]


_END = object()


class Session:
    """One avatar stream through the engine's stages. Create it with `await Engine.open_session(...)`.

    `feed`, `end`, `set_emotion`, `interrupt` are non-blocking and must be called from the event loop's thread.
    """

    def __init__(self, session_id: str, stages: StageClients, reference: np.ndarray, size: int, config: SessionConfig,
                 silence: np.ndarray, lookahead: int, first_frame: int = 0, samples: int = 0, chunk_frames: int = 4,
                 seniority: Seniority | None = None, photo: PhotoFace | None = None):
        self.session_id, self.size, self.config = session_id, size, config
        self._seniority = seniority if config.live else None
        if self._seniority is not None:
            self._seniority.join(session_id)
        self._audio, self._motion = stages.audio, stages.motion
        # photo: a photo's rig inputs (DecoderShard.open), else None
        self._shards = ShardSet(session_id, stages.shards, reference, photo, config.shard_retries,
                                config.shard_return_s)
        self._silence = silence
        self.chunk_frames, self.lookahead = chunk_frames, lookahead
        self._feat_frontier = first_frame  # features of frames before this have reached the motion stage
        self._block = config.block_frames * SAMPLES_PER_FRAME
        self._inbox: collections.deque[_Audio | _Marker] = collections.deque()
        self._inbox_samples, self._samples_in = 0, samples
        self._wake, self._space = asyncio.Event(), asyncio.Event()
        self._ended = False
        self._interrupts = 0
        q = config.queue_chunks
        self._q_feat, self._q_motion = asyncio.Queue(q), asyncio.Queue(q)
        pieces = -(-chunk_frames // config.decode_piece_frames) if config.decode_piece_frames > 0 else 1
        self._q_pending, self._out = asyncio.Queue(config.decode_window * pieces), asyncio.Queue(4 * q * pieces)
        self._last_frame: np.ndarray | None = None
        self._next_out = first_frame
        self._frames_out = self._degraded = 0
        self._latency: collections.deque = collections.deque(maxlen=2000)
        self._tasks = [asyncio.create_task(coro) for coro in
                       (self._audio_task(), self._motion_task(), self._decode_task(), self._emit_task())]
        self._producers: list[asyncio.Task] = []  # tasks that feed this session (see `produce`)
        self._jobs: set[asyncio.Future] = set()  # decode jobs not finished yet
        self._closed = False

    # ---- input -----------------------------------------------------------------------------------------------

    def feed(self, pcm: np.ndarray) -> None:
        """Queue (n,) float32 16 kHz mono samples, any n; returns at once."""
        if self._ended:
            raise InputError("feed after end(): open a new session")
        pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
        if not np.isfinite(pcm).all():
            raise InputError("audio contains NaN or inf samples; clean or re-decode the input")
        if pcm.size:
            self._inbox.append(_Audio(pcm, time.monotonic()))
            self._inbox_samples += pcm.size
            self._wake.set()

    async def put(self, pcm: np.ndarray) -> None:
        """Like `feed`, but first waits while more than `inbox_seconds` of audio is queued (offline producers)."""
        limit = self.config.inbox_seconds * FPS * SAMPLES_PER_FRAME
        while self._inbox_samples > limit and not self._failed():
            self._space.clear()
            await self._space.wait()
        self.feed(pcm)

    def checkpoint(self) -> None:
        """Ask for a SessionCheckpoint in `events()` once all audio fed so far has become frames (offline only)."""
        total = self._samples_in + self._inbox_samples
        if self.config.live or total % self._block:
            raise InputError(f"checkpoints need an offline session fed whole blocks of {self._block} samples")
        self._inbox.append(_Marker(total))
        self._wake.set()

    def end(self) -> None:
        """No more audio: the remaining frames come out, then the frame iterator stops."""
        self._ended = True
        self._wake.set()

    def produce(self, coro) -> asyncio.Task:
        """Run `coro`, a coroutine that feeds this session (`put`, `checkpoint`, `end`), as part of the session.

        Should it raise, `events()` ends with its error at once, as for a failing stage: otherwise a feeder that
        fails before `end()` leaves the consumer waiting for frames that never come. `close()` cancels it."""
        task = asyncio.create_task(self._run(lambda: coro, what="reading the input"))
        self._producers.append(task)
        return task

    def set_emotion(self, emotion: str) -> None:
        """Switch emotion from the next generated chunk on (a control call: it jumps the queues)."""
        self._motion.set_emotion(self.session_id, emotion)

    def interrupt(self) -> int:
        """Blank the queued speech (replaced by silence of the same length, so frame indices stay whole) and
        the encoder's buffers; the avatar returns to idle within the chunks already being decoded.

        Returns the first frame made only from silence: the start of the first chunk none of whose features
        had reached the motion stage (frames before it may still show the interrupted speech)."""
        self._interrupts += 1
        idle_from = -(-self._feat_frontier // self.chunk_frames) * self.chunk_frames
        self._inbox = collections.deque(
            item if isinstance(item, _Marker) else _Audio(np.zeros_like(item.pcm), item.t_wall) for item in self._inbox)
        self._audio.reset(self.session_id)
        blanked = collections.deque()
        while not self._q_feat.empty():
            blanked.append(self._blank(self._q_feat.get_nowait()))
        for item in blanked:
            self._q_feat.put_nowait(item)
        return idle_from

    # ---- output ----------------------------------------------------------------------------------------------

    async def events(self):
        """VideoFrames in frame order, and a SessionCheckpoint wherever `checkpoint()` asked for one."""
        while True:
            item = await self._out.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    async def frames(self):
        """VideoFrames in frame order with contiguous indices, until the session ends."""
        async for item in self.events():
            if isinstance(item, VideoFrames):
                yield item

    def stats(self) -> dict:
        lat = sorted(self._latency)
        pct = (lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 1)) if lat else (lambda q: None)
        return {"frames_out": self._frames_out, "degraded_frames": self._degraded,
                "latency_ms": {"p50": pct(0.5), "p95": pct(0.95)},
                "queues": {"inbox_samples": self._inbox_samples, "features": self._q_feat.qsize(),
                           "motion": self._q_motion.qsize(), "decoding": self._q_pending.qsize(),
                           "frames": self._out.qsize()}}

    async def close(self) -> None:
        """Stop the pipeline and free this session's state in every stage."""
        if self._closed:
            return
        self._closed = True
        if self._seniority is not None:
            self._seniority.leave(self.session_id)
        tasks = self._tasks + self._producers + self._shards.stop() + list(self._jobs)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for client in (self._audio, self._motion, *self._shards.shards):
            try:
                await asyncio.wrap_future(client.close(self.session_id))
            except Exception as e:  # a dead actor has nothing left to free
                log.debug("closing %s on %s: %s", self.session_id, client.name, e)

    # ---- pipeline tasks --------------------------------------------------------------------------------------

    def _failed(self) -> bool:
        return any(t.done() for t in self._tasks)

    def _take(self, n: int) -> _Audio:
        """Pop exactly n queued samples (n <= queued, no marker in between), with the feed time of the first."""
        parts, t_first = [], self._inbox[0].t_wall
        while n:
            item = self._inbox.popleft()
            pcm = item.pcm
            if pcm.size > n:
                self._inbox.appendleft(_Audio(pcm[n:], item.t_wall))
                pcm = pcm[:n]
            parts.append(pcm)
            n -= pcm.size
        pcm = np.concatenate(parts)
        self._inbox_samples -= pcm.size
        self._samples_in += pcm.size
        self._space.set()
        return _Audio(pcm, t_first)

    def _ready(self) -> int:
        """Samples queued before the first marker."""
        n = 0
        for item in self._inbox:
            if isinstance(item, _Marker):
                break
            n += item.pcm.size
        return n

    async def _run(self, body, what: str = "the pipeline"):
        """Run a pipeline or producer task; its failure stops every task and ends `events()` with the error."""
        try:
            await body()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.debug("session %s failed (%s): %r", self.session_id, what, e, exc_info=True)
            for task in self._tasks + self._producers:
                if task is not asyncio.current_task():
                    task.cancel()
            while not self._out.empty():
                self._out.get_nowait()
            err = project_error(e) or ActorcastError(
                f"{what} failed ({e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                "rerun with -v for details")
            self._out.put_nowait(err)

    async def _audio_task(self):
        await self._run(self._audio_body)

    async def _audio_body(self):
        while True:
            ready = self._ready()
            if self._inbox and isinstance(self._inbox[0], _Marker):
                marker = self._inbox.popleft()
                state = await asyncio.wrap_future(self._audio.snapshot(self.session_id))
                await self._q_feat.put(_Marker(marker.samples, audio_state=state))
            elif ready >= self._block or (ready and self._ended):  # a whole block, or the last partial one
                first = self._samples_in // SAMPLES_PER_FRAME
                block = self._take(min(self._block, ready))
                seen = self._interrupts
                chunk = AudioChunk(self.session_id, first, block.pcm, block.t_wall)
                fc = await asyncio.wrap_future(self._audio.process(chunk))
                await self._q_feat.put(self._blank(fc) if seen != self._interrupts else fc)
            elif self._ended and not self._inbox:
                await self._q_feat.put(await asyncio.wrap_future(self._audio.end(self.session_id)))
                await self._q_feat.put(_END)
                return
            else:
                self._wake.clear()
                await self._wake.wait()

    def _blank(self, item):
        if not isinstance(item, FeatureChunk):
            return item
        feats = item.feats.new_tensor(self._silence).expand_as(item.feats).contiguous()
        return FeatureChunk(item.session_id, item.first_frame, feats, item.t_wall)

    async def _motion_task(self):
        await self._run(self._motion_body)

    def _slack(self) -> int:
        """How many times the lag thresholds this session tolerates (Seniority: the newest degrades first)."""
        return self._seniority.slack(self.session_id) if self._seniority is not None else 1

    def _lag(self, t_wall: float | None) -> float:
        """Live: seconds this audio is behind real time, beyond its own block and lookahead (0 offline)."""
        if not self.config.live or t_wall is None:
            return 0.0
        return time.monotonic() - t_wall - (self.config.block_frames + self.lookahead) / FPS

    async def _motion_body(self):
        while True:
            item = await self._q_feat.get()
            if item is _END:
                for mc in await asyncio.wrap_future(self._motion.end(self.session_id)):
                    await self._q_motion.put(_Generated(mc))
                await self._q_motion.put(_END)
                return
            if isinstance(item, _Marker):
                state = await asyncio.wrap_future(self._motion.snapshot(self.session_id))
                await self._q_motion.put(_Marker(item.samples, item.audio_state, state))
                continue
            self._feat_frontier = item.first_frame + item.feats.shape[0]
            lag = self._lag(item.t_wall) / self._slack()
            steps = self.config.degraded_steps if lag > self.config.degrade_after_s else None
            repeat = lag > self.config.repeat_after_s
            for mc in await asyncio.wrap_future(self._motion.process(item, steps)):
                await self._q_motion.put(_Generated(mc, repeat))

    async def _decode_task(self):
        await self._run(self._decode_body)

    async def _decode_body(self):
        inflight: collections.deque = collections.deque()  # live: decode jobs not finished yet
        while True:
            item = await self._q_motion.get()
            if item is _END or isinstance(item, _Marker):
                await self._q_pending.put(item)
                if item is _END:
                    return
                continue
            for piece in self._pieces(item.chunk):
                if self.config.live:
                    await self._one_waiting_per_shard(inflight)
                # behind by now (the decoders are the bottleneck): repeat rather than queue more latency
                late = item.repeat or self._lag(piece.chunk.t_wall) / self._slack() > self.config.repeat_after_s
                job = None if late else self._start_decode(piece.chunk, piece.shards)
                if job is not None and self.config.live:
                    inflight.append(job)
                await self._q_pending.put(_Decoding(piece.chunk, job))

    def _start_decode(self, piece: MotionChunk, shards: list[ShardClient]) -> asyncio.Future:
        """A decode job, kept until done so that `close` can cancel it: with batching, a job may still wait in a
        shard's queue when the session closes, and its shard no longer knows the session."""
        job = asyncio.ensure_future(self._decode(piece, shards))
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)
        return job

    async def _one_waiting_per_shard(self, inflight: collections.deque) -> None:
        """Live: hold the next piece until at most one waits per shard, so its lateness is judged near its decode."""
        while inflight and inflight[0].done():
            inflight.popleft()
        if len(inflight) > len(self._shards):
            await asyncio.wait([inflight.popleft()])

    def _pieces(self, mc: MotionChunk) -> list[_Piece]:
        """The chunk as one job over all shards, or in `decode_piece_frames` pieces that take turns on them."""
        n, k = mc.z.shape[0], self.config.decode_piece_frames
        if k <= 0 or k >= n:
            return [_Piece(mc, self._shards.shards)]
        return [_Piece(MotionChunk(mc.session_id, mc.first_frame + a, mc.z[a:a + k], mc.degraded, mc.t_wall),
                       [self._shards.next_in_turn()])
                for a in range(0, n, k)]

    async def _decode(self, mc: MotionChunk, shards: list[ShardClient]) -> np.ndarray:
        """The chunk's frames, split in contiguous parts over `shards` and put back in order."""
        n = mc.z.shape[0]
        bounds = np.linspace(0, n, min(len(shards), n) + 1).round().astype(int)
        parts = await asyncio.gather(*(self._shards.decode(shard, mc.first_frame + a, mc.z[a:b])
                                       for shard, a, b in zip(shards, bounds[:-1], bounds[1:])))
        firsts = [p.first_frame for p in parts]
        assert firsts == sorted(firsts) and firsts[0] == mc.first_frame, "shard results out of order"
        return np.concatenate([p.frames for p in parts])

    async def _emit_task(self):
        await self._run(self._emit_body)

    async def _emit_body(self):
        while True:
            item = await self._q_pending.get()
            if item is _END:
                await self._out.put(_END)
                return
            if isinstance(item, _Marker):
                await self._out.put(SessionCheckpoint(self.session_id, item.samples, self._next_out,
                                                      item.audio_state, item.motion_state))
                continue
            mc = item.chunk
            if item.job is None:
                frames = self._repeat(mc.z.shape[0])
            else:
                frames = await item.job
            degraded = mc.degraded or item.job is None
            assert mc.first_frame == self._next_out, f"frame {mc.first_frame} after {self._next_out - 1}"
            self._last_frame = frames[-1]
            self._next_out += len(frames)
            self._frames_out += len(frames)
            self._degraded += len(frames) * degraded
            if mc.t_wall is not None:
                self._latency.append(time.monotonic() - mc.t_wall)
            await self._out.put(VideoFrames(self.session_id, mc.first_frame, frames, degraded, mc.t_wall))

    def _repeat(self, n: int) -> np.ndarray:
        last = self._last_frame
        if last is None:
            last = np.full((self.size, self.size, 3), 128, np.uint8)
        return np.repeat(last[None], n, axis=0)
