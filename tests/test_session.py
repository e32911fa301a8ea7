"""Sessions end to end: in-process and on Ray, sharded decoding in order, a killed shard, live degradation."""

import asyncio
import concurrent.futures
import dataclasses
import logging
import os
import signal
import time

import numpy as np
import pytest

from actorcast.actors.clients import ShardClient
from actorcast.actors.engine import Engine
from actorcast.actors.loading import UNTRAINED
from actorcast.actors.session_config import SessionConfig
from actorcast.models.errors import ConfigError
from actorcast.models.timebase import FPS, SAMPLES_PER_FRAME
from tests.helpers import buzz_pcm, render_session

SIZE = 64


def test_in_process_sharded_frames_in_order_and_deterministic():
    pcm = buzz_pcm(2.5)
    with Engine(size=SIZE, shards=2) as two, Engine(size=SIZE, shards=1) as one:
        idx, frames, stats = asyncio.run(render_session(two, pcm))
        idx1, frames1, _ = asyncio.run(render_session(one, pcm, piece=777))
        _, again, _ = asyncio.run(render_session(two, pcm, piece=640 * 9))
    n = len(pcm) // SAMPLES_PER_FRAME
    assert idx == list(range(n)) and idx1 == idx  # contiguous, nothing lost or duplicated
    assert frames.shape == (n, SIZE, SIZE, 3) and frames.dtype == np.uint8
    assert np.array_equal(frames, again)  # same seed, different slicing of the input: same frames
    assert np.abs(frames.astype(int) - frames1).max() <= 1  # 2 shards == 1 shard (up to batch round-off)
    assert stats["frames_out"] == n and stats["degraded_frames"] == 0


def test_live_session_degrades_when_behind_and_interrupt_keeps_time_base():
    pcm = buzz_pcm(6.0, seed=1)
    config = SessionConfig(live=True, degrade_after_s=0.0, repeat_after_s=0.3, inbox_seconds=60)
    with Engine(size=SIZE, shards=1) as engine:
        async def run():
            session = await engine.open_session(identity_seed=1, config=config)
            session.feed(pcm)  # six seconds at once: the session is behind real time at once
            session.set_emotion("happy")
            session.end()
            out = [vf async for vf in session.frames()]
            stats = session.stats()
            await session.close()

            quiet = await engine.open_session(identity_seed=1, live=True)
            quiet.feed(pcm[:32000])
            quiet.interrupt()  # the queued speech becomes silence; no frame index is lost
            quiet.end()
            idx = [i for vf in [v async for v in quiet.frames()] for i in range(vf.first_frame, vf.first_frame + vf.n_frames)]
            await quiet.close()
            return out, stats, idx
        out, stats, idx = asyncio.run(run())
    n = len(pcm) // SAMPLES_PER_FRAME
    assert [vf.first_frame for vf in out] == list(range(0, n, 4))
    assert stats["frames_out"] == n and stats["degraded_frames"] > 0
    assert stats["degraded_frames"] == sum(vf.n_frames for vf in out if vf.degraded)
    # Six seconds fed at once: the later chunks are seconds behind real time, so they degrade. Whether the first
    # chunk is already behind depends on how fast this machine served it, so it is not asserted.
    assert any(vf.degraded for vf in out[len(out) // 2:])
    assert stats["latency_ms"]["p95"] >= stats["latency_ms"]["p50"] > 0
    assert idx == list(range(50))


class _LosesTwoParts:
    """A shard whose process dies with two parts of the session in flight on it: both fail, once both have
    arrived; after that (Ray has restarted it, with the session still open) it decodes as `stage` does."""

    retryable = (ConnectionError,)

    def __init__(self, stage):
        self.stage, self.name, self.held = stage, "lossy", []

    def submit(self, method: str, *args) -> concurrent.futures.Future:
        if method != "decode_many" or self.held is None:
            return self.stage.submit(method, *args)
        future = concurrent.futures.Future()
        self.held.append(future)
        if len(self.held) == 2:
            for held in self.held:
                held.set_exception(ConnectionError("the shard's process died"))
            self.held = None
        return future

    def wait_ready(self, timeout: float = 60.0, stop=None) -> None:
        """Restarted at once."""


def test_a_lost_shard_is_logged_once_and_its_parts_go_to_the_others(caplog):
    """Two parts fail on the lost shard: one warning, the frames of a clean render."""
    pcm = buzz_pcm(2.5, seed=6)
    caplog.set_level(logging.WARNING, logger="actorcast.actors.failover")
    with Engine(size=SIZE, shards=2) as engine:
        clean_idx, clean, _ = asyncio.run(render_session(engine, pcm))
        lossy = _LosesTwoParts(engine.shards[0])
        engine.solo.shards[0] = ShardClient.solo(lossy)  # offline sessions decode through the solo clients
        idx, frames, _ = asyncio.run(render_session(engine, pcm))
    assert lossy.held is None                                               # two parts were lost
    lost = [r.getMessage() for r in caplog.records if "lost on frames" in r.getMessage()]
    assert len(lost) == 1 and lost[0].startswith("decoder shard lossy lost on frames "), lost
    assert "decoder shard lossy is back" in caplog.text
    assert idx == clean_idx and np.array_equal(frames, clean)


@pytest.mark.slow
def test_ray_shard_killed_mid_render_is_retried_frame_identical(ray_local, caplog):
    pcm = buzz_pcm(5.0, seed=3)
    with Engine(size=SIZE, shards=2, use_ray=True) as engine:
        clean_idx, clean, _ = asyncio.run(render_session(engine, pcm))
        pid = engine.shards[0].submit("pid").result()
        killed = []

        async def kill(session):
            os.kill(pid, signal.SIGKILL)  # the shard's process dies in the middle of the render
            killed.append(pid)

        idx, frames, _ = asyncio.run(render_session(engine, pcm, on_first=kill))
        engine.shards[0].wait_ready()  # the render did not need it back: on a loaded machine it may still restart
        new_pid = engine.shards[0].submit("pid").result()
    n = len(pcm) // SAMPLES_PER_FRAME
    assert killed and new_pid != pid  # the actor really died and Ray restarted it
    assert "the other shards take its frames" in caplog.text  # a chunk was lost and decoded again
    assert clean_idx == idx == list(range(n))
    assert np.array_equal(frames, clean)  # no frame lost, none duplicated, identical pixels


async def _live_frames(engine, pcm, config):
    """The VideoFrames of one live session (identity 2, seed 5, `config`) fed all of `pcm` at once."""
    session = await engine.open_session(identity_seed=2, seed=5, config=config)
    session.feed(pcm)
    session.end()
    out = [vf async for vf in session.frames()]
    await session.close()
    return out


def test_live_config_pieces_and_interrupt_boundary():
    """Live sessions: 2-frame audio blocks and 1-frame decode pieces give the offline frames, in order; an
    interrupt names a chunk-aligned first idle frame that no emitted frame has passed."""
    pcm = buzz_pcm(3.0, seed=4)
    with Engine(size=SIZE, shards=2) as engine:
        live = engine.live_config()
        assert (live.block_frames, live.decode_piece_frames) == (2, 1)
        never_behind = dataclasses.replace(live, degrade_after_s=1e9, repeat_after_s=1e9, inbox_seconds=60)

        async def interrupted():
            session = await engine.open_session(identity_seed=2, seed=5, config=never_behind)
            session.feed(pcm[:16000])
            seen = 0
            async for vf in session.frames():
                seen = vf.first_frame + vf.n_frames
                if seen >= 8:
                    break
            idle_from = session.interrupt()
            await session.close()
            return seen, idle_from

        out = asyncio.run(_live_frames(engine, pcm, never_behind))
        _, offline, _ = asyncio.run(render_session(engine, pcm))
        seen, idle_from = asyncio.run(interrupted())
    n = len(pcm) // SAMPLES_PER_FRAME
    assert [vf.first_frame for vf in out] == list(range(n)) and {vf.n_frames for vf in out} == {1}
    frames = np.concatenate([vf.frames for vf in out])
    assert np.abs(frames.astype(int) - offline).max() <= 1  # same frames (up to batch round-off)
    assert idle_from % 4 == 0 and idle_from >= seen


def test_live_session_repeats_frames_when_the_decoder_is_too_slow():
    """A decoder 1.5x slower than real time (60 ms a frame) on a 6 s call: the live session repeats frames instead
    of queueing them. Queueing would decode all 150 frames and fall ever further behind; repeating, the decoder
    only gets the frames whose audio is still within `repeat_after_s` (plus a block and the lookahead) of real
    time: at most what 60 ms a frame fits into the call plus that allowance (a busy machine decodes fewer,
    never more). How fast the live path is: bench/live.py."""
    pcm = buzz_pcm(6.0, seed=6)
    with Engine(size=SIZE, shards=1) as engine:
        shard = engine.shards[0]._obj
        decode_many = shard.decode_many  # a live session's frames go through the batched call
        frame_s = 0.06

        def slow_decode_many(requests):
            time.sleep(frame_s * sum(len(r.z) for r in requests))
            return decode_many(requests)

        shard.decode_many = slow_decode_many

        async def run():
            session = await engine.open_session(identity_seed=1, live=True)

            async def feed():  # real time, in 20 ms packets
                t0 = time.monotonic()
                for k, i in enumerate(range(0, len(pcm), 320)):
                    await asyncio.sleep(max(0.0, t0 + 0.02 * k - time.monotonic()))
                    session.feed(pcm[i:i + 320])
                session.end()

            feeder = asyncio.create_task(feed())
            frames = [(i, vf.degraded) async for vf in session.frames()
                      for i in range(vf.first_frame, vf.first_frame + vf.n_frames)]
            await feeder
            stats = session.stats()
            # a frame is decoded only if its decode starts within this long of its audio being fed
            allowed_s = session.config.repeat_after_s + (session.config.block_frames + session.lookahead) / FPS
            await session.close()
            return frames, stats, allowed_s

        frames, stats, allowed_s = asyncio.run(run())
    n = len(pcm) // SAMPLES_PER_FRAME
    assert [i for i, _ in frames] == list(range(n))  # every frame index still comes out, in order
    decoded = [i for i, degraded in frames if not degraded]
    assert stats["degraded_frames"] == n - len(decoded) > 0
    most = (len(pcm) / 16000 + allowed_s) / frame_s + 2  # (+ the frames already decoding when the call ends)
    assert len(decoded) <= most < n, (len(decoded), most, stats)
    assert min(decoded) < n // 2 <= max(decoded)  # it kept decoding through the call, between the repeats


def test_stage_threads_are_per_engine():
    """A live engine's 1-thread stages do not change the thread count of engines made after it."""
    import torch

    from actorcast.actors.executor import LocalStage

    class Threads:
        def count(self):
            return torch.get_num_threads()

    one = LocalStage(Threads, threads=1)
    later = LocalStage(Threads)
    try:
        assert one.submit("count").result() == 1
        assert later.submit("count").result() == torch.get_num_threads()
    finally:
        one.shutdown()
        later.shutdown()


def test_two_frame_chunks_live_give_the_offline_frames_and_an_untrained_size_is_refused():
    """An engine running the generator's 2-frame chunks (it is trained for 1, 2 and 4): a live session, fed
    2-frame audio blocks, gives the frames of the same model run offline on the same audio."""
    pcm = buzz_pcm(2.0, seed=9)
    with Engine(weights=UNTRAINED, size=SIZE, chunk_frames=2) as engine:
        live = engine.live_config()
        assert engine.chunk_frames == 2 and engine.trained_chunks == (1, 2, 4) and live.block_frames == 2
        never_behind = dataclasses.replace(live, degrade_after_s=1e9, repeat_after_s=1e9, inbox_seconds=60)
        out = asyncio.run(_live_frames(engine, pcm, never_behind))
        idx, offline, _ = asyncio.run(render_session(engine, pcm))
        assert engine.motion._obj.generator.config.chunk_frames == 2  # the streams really run 2-frame chunks
    n = len(pcm) // SAMPLES_PER_FRAME
    assert [vf.first_frame for vf in out] == idx == list(range(n))
    frames = np.concatenate([vf.frames for vf in out])
    assert np.abs(frames.astype(int) - offline).max() <= 1  # same frames (up to batch round-off)
    with pytest.raises(ConfigError) as refused:
        Engine(weights=UNTRAINED, size=SIZE, chunk_frames=3)
    assert str(refused.value).startswith("chunks of 3 frames: these weights were trained for chunks of 1, 2 or 4 "
                                         "frames") and "\n" not in str(refused.value)


def test_the_engine_takes_the_lookahead_of_its_weights(tmp_path):
    """Weights whose audio encoder hears one frame ahead (not the preset's two): the engine waits for one frame,
    feeds 1-frame audio blocks to 1-frame chunks, and a live session gives the frames of the same model run
    offline on the same audio."""
    from tests.untrained import write_untrained_weights

    weights = write_untrained_weights(tmp_path / "weights", resolution=SIZE, lookahead=1)
    pcm = buzz_pcm(1.6, seed=3)
    with Engine(weights=str(weights), size=SIZE, chunk_frames=1) as engine:
        live = engine.live_config()
        assert (engine.lookahead, engine.chunk_frames, live.block_frames) == (1, 1, 1)
        never_behind = dataclasses.replace(live, degrade_after_s=1e9, repeat_after_s=1e9, inbox_seconds=60)
        out = asyncio.run(_live_frames(engine, pcm, never_behind))
        idx, offline, _ = asyncio.run(render_session(engine, pcm))
        assert engine.audio._obj.encoder.config.lookahead == 1
    n = len(pcm) // SAMPLES_PER_FRAME
    assert [vf.first_frame for vf in out] == idx == list(range(n))
    frames = np.concatenate([vf.frames for vf in out])
    assert np.abs(frames.astype(int) - offline).max() <= 1  # same frames (up to batch round-off)
