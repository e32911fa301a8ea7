"""Continuous batching across sessions: batched results equal solo ones, errors stay with their session, late
joiners and leavers disturb nobody, and under overload the newest session degrades first."""

import asyncio
import copy
import time

import numpy as np
import pytest
import torch

import actorcast.models.sampling as sampling
from actorcast.actors.batching import Batched, Outcome
from actorcast.actors.engine import Engine
from actorcast.actors.executor import LocalStage
from actorcast.actors.loading import load_model, resolve_weights
from actorcast.actors.messages import FeatureChunk
from actorcast.actors.session_config import Seniority
from actorcast.actors.stages import DecodeRequest, DecoderShard, MotionRequest, MotionStage
from actorcast.models.errors import InputError
from actorcast.models.kv_cache import CacheConfig
from actorcast.models.photo.reference import synthetic_portrait
from actorcast.models.sampling import MotionStream, SamplerConfig, push_many

SIZE = 64
Z_TOLERANCE = 1e-4  # motion latents, batched against alone: float rounding of the batched products only
FRAME_TOLERANCE = 2  # uint8 levels, batched against alone


@pytest.fixture(scope="module")
def generator():
    return load_model("motion_generator", resolve_weights(None, "tiny"), "tiny", "cpu")


def _stream(model, seed: int, policy: str, steps: int = 4) -> MotionStream:
    z_ref = torch.randn(1, model.config.d_motion, generator=torch.Generator().manual_seed(100 + seed))
    cache = CacheConfig(policy, budget_frames=16, sink_frames=None if policy in ("full", "window") else 4,
                        compress_tokens=4, query_tokens=4)
    return MotionStream(model, z_ref, "happy" if seed % 2 else None, cache, SamplerConfig(steps, seed=seed))


@pytest.mark.parametrize("policy", ["deep_sink_pc", "full"])
def test_push_many_equals_each_stream_alone(generator, policy, monkeypatch):
    """Three streams of different lengths (so different cache fills and positions, evicting at different times),
    one of them degraded to 1 step: pushed together they give what each gives alone, and they were batched."""
    d = generator.config.d_audio
    streams = [_stream(generator, i, policy, steps=1 if i == 2 else 4) for i in range(4)]
    alone = copy.deepcopy(streams)
    for s in alone:
        s.model = generator
    batch_sizes = []
    real = sampling.generate_chunks
    monkeypatch.setattr(sampling, "generate_chunks",
                        lambda model, ss, n: batch_sizes.append(len(ss)) or real(model, ss, n))
    feats = [torch.randn(1, 112, d, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    starts = [0, 9, 17, 30]  # stream i joins at frame starts[i]
    out_many, out_alone = [[] for _ in streams], [[] for _ in streams]
    for t in range(7, 113, 7):
        pieces = [feats[i][:, max(starts[i], t - 7):t] if t > starts[i] else feats[i][:, :0] for i in range(4)]
        for z, acc in zip(push_many(streams, pieces), out_many):
            acc.append(z)
        for s, piece, acc in zip(alone, pieces, out_alone):
            acc.append(s.push(piece))
    for i in range(4):
        many, one = torch.cat(out_many[i], 1), torch.cat(out_alone[i], 1)
        assert many.shape == one.shape and many.shape[1] >= 72
        assert (many - one).abs().max() <= Z_TOLERANCE, f"stream {i}"
    assert max(batch_sizes) == 3  # the three 4-step streams ran as one batch; the 1-step one on its own


def test_push_many_refuses_the_same_stream_twice(generator):
    s = _stream(generator, 0, "deep_sink_pc")
    with pytest.raises(InputError, match="same stream twice"):
        push_many([s, s], [torch.zeros(1, 4, generator.config.d_audio)] * 2)


@pytest.fixture(scope="module")
def shard():
    return DecoderShard(size=SIZE)


def test_decode_many_equals_decode_and_keeps_errors_apart(shard):
    d = shard.decoder.config.d_motion
    for i in range(3):
        shard.open(f"s{i}", synthetic_portrait(i, 256))
    zs = [torch.randn(n, d, generator=torch.Generator().manual_seed(n)) * 0.5 for n in (1, 3, 2)]
    requests = [DecodeRequest("s0", 10, zs[0]), DecodeRequest("nobody", 0, zs[0]), DecodeRequest("s1", 4, zs[1]),
                DecodeRequest("s2", 7, zs[2])]
    results = shard.decode_many(requests)
    assert [r.error is None for r in results] == [True, False, True, True]
    assert isinstance(results[1].error, InputError) and "nobody" in str(results[1].error)
    for request, result in zip(requests, results):
        if result.error is not None:
            continue
        alone = shard.decode(request.session_id, request.first_frame, request.z)
        assert result.value.first_frame == request.first_frame == alone.first_frame
        assert result.value.frames.shape == (len(request.z), SIZE, SIZE, 3)
        assert np.abs(result.value.frames.astype(int) - alone.frames).max() <= FRAME_TOLERANCE
    # each frame was drawn with its own session's reference: s0's latent through s1's portrait looks different
    other = shard.decode("s1", 0, zs[0]).frames
    assert np.abs(results[0].value.frames.astype(int) - other).mean() > 5


def test_process_many_keeps_a_bad_chunk_to_its_session():
    stage = MotionStage()
    d = stage.generator.config.d_audio
    for sid in ("a", "b"):
        stage.open(sid, synthetic_portrait(0, 256))
    feats = torch.randn(6, d)
    results = stage.process_many([MotionRequest(FeatureChunk("a", 0, feats, None)),
                                  MotionRequest(FeatureChunk("b", 3, feats, None)),  # b expects frame 0: reordered
                                  MotionRequest(FeatureChunk("ghost", 0, feats, None))])
    assert results[0].error is None and [mc.first_frame for mc in results[0].value] == [0]
    assert "expects 0" in str(results[1].error)
    assert "ghost" in str(results[2].error)
    with pytest.raises(InputError, match="expects 0"):  # the one-item call is the same code, its error raised
        stage.process(FeatureChunk("b", 3, feats, None))


class _Slow:
    """A stage whose list method takes a while, so calls pile up behind it."""

    def __init__(self):
        self.calls = []

    def twice_many(self, items):
        self.calls.append(len(items))
        time.sleep(0.05)
        return [Outcome(2 * x) if x >= 0 else Outcome(error=ValueError(f"negative {x}")) for x in items]


def test_batched_gathers_calls_while_the_stage_is_busy():
    stage = LocalStage(_Slow, name="slow")
    batched = Batched(lambda items: stage.submit("twice_many", items), max_batch=4)
    futures = [batched.submit(x) for x in [1, 2, -3, 4, 5, 6, 7]]
    assert [f.exception() is None and f.result() for f in futures[:2]] == [2, 4]
    assert "negative -3" in str(futures[2].exception())
    assert [f.result() for f in futures[3:]] == [8, 10, 12, 14]
    calls = stage._obj.calls
    assert calls[0] == 1 and sum(calls) == 7 and max(calls) == 4  # the first ran alone, the rest gathered
    stage.shutdown()


def test_seniority_newest_degrades_first():
    order = Seniority()
    for sid in "abc":
        order.join(sid)
    assert [order.slack(s) for s in "abc"] == [3, 2, 1]
    order.leave("b")
    assert [order.slack(s) for s in "ac"] == [2, 1] and order.slack("b") == 1


def _pcm(seconds: float, seed: int) -> np.ndarray:
    t = np.arange(int(16000 * seconds)) / 16000
    noise = np.random.default_rng(seed).standard_normal(t.size) * 0.05
    return (0.3 * np.sin(2 * np.pi * (150 + 40 * seed) * t) * (np.sin(2 * np.pi * 3 * t) > 0) + noise
            ).astype(np.float32)


async def _run(engine, pcm, identity, started=None, wait_for=None, hold=None, opened=None):
    """An offline session that shares the batches (batched=True): returns its frames.

    started: set once 12 frames came out; wait_for: opened only once it is set; opened: set once it is open;
    hold (samples, event): the audio after that many samples is fed only once the event is set."""
    if wait_for is not None:
        await wait_for.wait()
    session = await engine.open_session(identity_seed=identity, seed=identity, live=False, batched=True)
    if opened is not None:
        opened.set()

    async def produce():
        for i in range(0, len(pcm), 1280):
            if hold is not None and i == hold[0]:
                await hold[1].wait()
            await session.put(pcm[i:i + 1280])
            await asyncio.sleep(0)
        session.end()

    session.produce(produce())
    frames = []
    async for vf in session.frames():
        frames.append(vf.frames)
        if started is not None and sum(map(len, frames)) >= 12:
            started.set()
    await session.close()
    return np.concatenate(frames)


def test_sessions_batched_equal_alone_and_a_late_joiner_changes_nothing():
    pcm_a, pcm_b = _pcm(3.0, 1), _pcm(2.0, 2)
    with Engine(size=SIZE, shards=1) as engine:
        alone = asyncio.run(_run(engine, pcm_a, 1))

        # Whether two sessions' chunks meet in the generator's queue is a matter of timing (each session has one
        # chunk in flight, so once out of step they alternate). Make one meeting certain: once b is about to
        # open, the first batch that would go out with one session's chunk only waits for the other's next.
        batcher = engine.batched.motion.lane
        real_dispatch, waited = batcher._dispatch, []

        def dispatch_once_paired():
            if not waited and len({queued.request.chunk.session_id for queued in batcher._queue}) < 2:
                waited.append(True)
                return  # stays queued, not busy: the other session's next submit dispatches both
            real_dispatch()

        async def both():
            # b joins once a has sent 12 frames; a's last 1.8 s wait until b is open, so a still has chunks to
            # send when b sends its first (offline, a alone could be done before b opens)
            started, b_open = asyncio.Event(), asyncio.Event()

            async def arm():
                await started.wait()
                batcher._dispatch = dispatch_once_paired

            return (await asyncio.wait_for(asyncio.gather(
                _run(engine, pcm_a, 1, started=started, hold=(15 * 1280, b_open)),
                _run(engine, pcm_b, 2, wait_for=started, opened=b_open), arm()), timeout=120))[:2]

        batches_before = batcher.batches, batcher.items
        with_b, b = asyncio.run(both())
        batches = batcher.batches - batches_before[0], batcher.items - batches_before[1]
    assert waited  # the pairing was armed and used
    assert with_b.shape == alone.shape == (75, SIZE, SIZE, 3) and b.shape[0] == 50
    assert np.abs(with_b.astype(int) - alone).max() <= FRAME_TOLERANCE
    assert batches[1] > batches[0]  # some generator passes carried both sessions


def test_a_session_that_leaves_mid_chunk_frees_its_state_and_others_go_on():
    pcm = _pcm(2.0, 3)
    with Engine(size=SIZE, shards=2) as engine:
        async def go():
            leaver = await engine.open_session(identity_seed=4, live=False, batched=True)
            leaver.feed(pcm[:1000])  # less than one block: mid-chunk
            stayer = asyncio.create_task(_run(engine, pcm, 5))
            await asyncio.sleep(0.3)
            sid = leaver.session_id
            await leaver.close()
            return sid, await stayer

        sid, frames = asyncio.run(go())
        motion = engine.motion._obj
        assert sid not in motion.sessions.items
        assert not any(shard.submit("has_session", sid).result() for shard in engine.shards)
        assert frames.shape[0] == 50
        assert not motion.sessions.items  # the stayer closed too: nothing is left behind
