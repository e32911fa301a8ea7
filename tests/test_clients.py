"""The typed stage clients (actors/clients.py): a batched and a solo client run the same stage code (a batch of one
is the one-item call), so one session alone gets identical frames through either; in a gathered batch, a bad
request fails alone."""

import threading

import numpy as np
import pytest
import torch

from actorcast.actors.clients import AudioClient, MotionClient, ShardClient
from actorcast.actors.executor import LocalStage
from actorcast.actors.messages import AudioChunk
from actorcast.actors.stages import AudioEncoderStage, DecoderShard, MotionStage
from actorcast.models.errors import InputError
from actorcast.models.photo.reference import synthetic_portrait
from actorcast.models.timebase import SAMPLES_PER_FRAME

SIZE = 64
FRAME_TOLERANCE = 2  # uint8 levels, batched with others against alone


class _HeldShard(DecoderShard):
    """A decoder shard that can be kept busy, so that requests gather behind it."""

    def hold(self, event: threading.Event) -> None:
        event.wait(60)


@pytest.fixture(scope="module")
def stages():
    made = [LocalStage(AudioEncoderStage, name="audio"), LocalStage(MotionStage, name="motion"),
            LocalStage(_HeldShard, name="decoder0", size=SIZE)]
    yield made
    for stage in made:
        stage.shutdown()


def _frames(audio: AudioClient, motion: MotionClient, shard: ShardClient, sid: str, pcm: np.ndarray) -> np.ndarray:
    """One session through the clients, one call at a time: its frames (n, SIZE, SIZE, 3)."""
    reference = synthetic_portrait(3, 256)
    audio.open(sid, 0).result()
    motion.open(sid, reference, seed=5).result()
    shard.open(sid, reference).result()
    block = 4 * SAMPLES_PER_FRAME
    feats = [audio.process(AudioChunk(sid, i // SAMPLES_PER_FRAME, pcm[i:i + block], None)).result()
             for i in range(0, len(pcm), block)] + [audio.end(sid).result()]
    chunks = [mc for fc in feats for mc in motion.process(fc).result()] + motion.end(sid).result()
    out = []
    for mc in chunks:
        decoded = shard.decode(sid, mc.first_frame, mc.z).result()
        assert decoded.first_frame == mc.first_frame
        out.append(decoded.frames)
    for client in (audio, motion, shard):
        client.close(sid).result()
    return np.concatenate(out)


def test_a_session_alone_gets_identical_frames_batched_or_solo(stages):
    audio_stage, motion_stage, shard_stage = stages
    audio = AudioClient(audio_stage)
    pcm = (0.3 * np.sin(np.arange(16000) * 2 * np.pi * 180 / 16000)).astype(np.float32)
    solo = _frames(audio, MotionClient.solo(motion_stage), ShardClient.solo(shard_stage), "solo", pcm)
    motion, shard = MotionClient.batched(motion_stage), ShardClient.batched(shard_stage)
    batched = _frames(audio, motion, shard, "batched", pcm)
    assert solo.shape == (25, SIZE, SIZE, 3)
    assert np.array_equal(batched, solo)
    # one request per batch: the session waited for each result before its next call
    assert motion.lane.items == motion.lane.batches > 0 and shard.lane.items == shard.lane.batches == 7


def test_a_bad_request_in_a_batch_fails_alone(stages):
    _, _, shard_stage = stages
    solo, batched = ShardClient.solo(shard_stage), ShardClient.batched(shard_stage)
    for sid in ("s0", "s1"):
        solo.open(sid, synthetic_portrait(int(sid[1]), 256)).result()
    d = shard_stage._obj.decoder.config.d_motion
    zs = [torch.randn(n, d, generator=torch.Generator().manual_seed(n)) * 0.5 for n in (2, 1, 3)]
    alone = [solo.decode(sid, 0, z).result().frames for sid, z in (("s0", zs[0]), ("s1", zs[2]), ("s0", zs[1]))]
    gate = threading.Event()
    busy = shard_stage.submit("hold", gate)  # the shard is busy: what the batched client is sent now gathers
    futures = [batched.decode("s0", 0, zs[0]), batched.decode("nobody", 0, zs[1]), batched.decode("s1", 0, zs[2]),
               batched.decode("s0", 0, zs[1])]
    gate.set()
    busy.result()
    with pytest.raises(InputError, match="nobody"):
        futures[1].result()
    assert np.array_equal(futures[0].result().frames, alone[0])  # went alone: the one-item path, identical
    for future, expected in zip(futures[2:], alone[1:]):
        assert np.abs(future.result().frames.astype(int) - expected).max() <= FRAME_TOLERANCE
    assert (batched.lane.batches, batched.lane.items) == (2, 4)  # the first alone, then the other three together
    for sid in ("s0", "s1"):
        solo.close(sid).result()
