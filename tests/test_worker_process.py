"""Stages in worker processes (actors/worker_process.py, `Engine(processes=True)`): the same frames as the stages in
threads; a killed worker ends its calls with one line and the next call gets a new one; a lost decoder worker's
frames are decoded again; a stage that cannot start stops the engine with its own error."""

import asyncio
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from actorcast.actors.engine import Engine
from actorcast.actors.stages import DecoderShard
from actorcast.actors.worker_process import ProcessStage, StageProcessLost
from actorcast.models.errors import ActorcastError
from actorcast.models.timebase import SAMPLES_PER_FRAME
from tests.helpers import buzz_pcm, render_session

SIZE = 64


def test_stages_in_worker_processes_give_the_frames_of_stages_in_threads():
    pcm = buzz_pcm(2.5, seed=4)
    with Engine(size=SIZE, stage_threads=1) as threads, Engine(size=SIZE, stage_threads=1, processes=True) as procs:
        idx_t, frames_t, _ = asyncio.run(render_session(threads, pcm))
        idx_p, frames_p, _ = asyncio.run(render_session(procs, pcm, piece=1111))
        pids = {stage.pid for stage in (procs.audio, procs.motion, *procs.shards)}
        names = {Path(f"/proc/{pid}/comm").read_text().strip() for pid in pids}
    assert len(pids) == 3 and os.getpid() not in pids and None not in pids  # three workers of their own
    assert names == {"ac-audio", "ac-motion", "ac-decoder0"}  # named for ps, top and the live benchmark
    assert idx_p == idx_t == list(range(len(pcm) // SAMPLES_PER_FRAME))
    assert np.array_equal(frames_p, frames_t)


def test_a_killed_worker_ends_its_calls_with_one_line_and_the_next_call_starts_a_new_one():
    with Engine(size=SIZE, stage_threads=1, processes=True) as engine:
        pid = engine.motion.pid

        async def kill(session):
            os.kill(pid, signal.SIGKILL)

        with pytest.raises(ActorcastError) as failed:
            asyncio.run(render_session(engine, buzz_pcm(4.0), on_first=kill))
        idx, frames, _ = asyncio.run(render_session(engine, buzz_pcm(1.0)))  # a new session, on a new worker
        new_pid = engine.motion.pid
    assert isinstance(failed.value, StageProcessLost)
    assert str(failed.value).startswith("the motion stage's worker process ended (exit code -9)")
    assert "\n" not in str(failed.value)
    assert new_pid not in (None, pid)
    assert idx == list(range(25)) and frames.std() > 1  # real frames, not blanks


def test_a_killed_decoder_worker_is_started_again_and_the_frames_are_identical(caplog):
    pcm = buzz_pcm(3.0, seed=8)
    with Engine(size=SIZE, stage_threads=1, processes=True) as engine:
        clean_idx, clean, _ = asyncio.run(render_session(engine, pcm))
        pid = engine.shards[0].pid

        async def kill(session):
            os.kill(pid, signal.SIGKILL)

        idx, frames, _ = asyncio.run(render_session(engine, pcm, on_first=kill))
        new_pid = engine.shards[0].pid
    assert new_pid not in (None, pid)
    assert "decoder shard decoder0 is back" in caplog.text
    assert idx == clean_idx and np.array_equal(frames, clean)


class _Broken(DecoderShard):
    def __init__(self, *args, **kwargs):
        raise ActorcastError("the weights are broken: export them again")


def test_a_stage_that_cannot_start_raises_its_own_error_and_leaves_no_worker():
    stage = ProcessStage(_Broken, name="decoder0")
    with pytest.raises(ActorcastError, match="^the weights are broken: export them again$"):
        stage.wait_ready()
    assert stage.pid is None
    stage.shutdown()
    with pytest.raises(ActorcastError, match="shut down"):
        stage.submit("output_size").result()


class _Echo:
    def back(self, value):
        return value


def test_tensors_cross_the_pipe_by_value_not_through_shared_file_descriptors(monkeypatch):
    """Requests and answers carry their tensors as copies: torch's own pipe reduction shared each one through a file
    descriptor, which opened a connection to a resource-sharer thread with a handshake per tensor (profiled: a large
    part of the server process's CPU in a call)."""
    import multiprocessing.reduction

    import torch

    stage = ProcessStage(_Echo, name="echo")
    stage.wait_ready()  # (starting a worker hands it its pipe through a shared descriptor)
    shared = []
    monkeypatch.setattr(multiprocessing.reduction, "DupFd", lambda fd: shared.append(fd))  # torch's tensor sharing
    try:
        sent = {"f32": torch.randn(3, 4), "i64": torch.arange(6).reshape(2, 3)[:, 1:], "bool": torch.tensor([True]),
                "f16": torch.randn(5).half(), "np": np.arange(4, dtype=np.uint8), "text": "x"}
        got = stage.submit("back", sent).result()
    finally:
        stage.shutdown()
    for key in ("f32", "i64", "bool", "f16"):
        assert got[key].dtype == sent[key].dtype and torch.equal(got[key], sent[key]), key
    assert np.array_equal(got["np"], sent["np"]) and got["text"] == "x"
    assert shared == []  # no tensor went through a shared file descriptor
