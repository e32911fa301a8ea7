"""bench/pipecat_latency.py: speech through the Pipecat video service in real time, its added latency measured."""

import json

import pytest

pytest.importorskip("pipecat", reason="the pipecat extra is not installed: pip install 'actorcast[pipecat]'")

from actorcast.actors.engine import Engine  # noqa: E402
from bench.pipecat_latency import measure  # noqa: E402
from tests.untrained import write_untrained_weights  # noqa: E402


@pytest.mark.asyncio
async def test_real_time_speech_gives_added_latency_and_25fps(tmp_path):
    """3 s of speech as 20 ms frames at 24 kHz: both percentiles, and 25 pictures a second of it."""
    weights = write_untrained_weights(tmp_path / "weights", resolution=64)
    with Engine(weights=weights, size=128, stage_threads=1) as engine:
        result = await measure(engine, seconds=3.0, warmup_s=0.5)
    json.dumps(result)  # JSON-able as it is
    p50, p95 = result["added_latency_ms_p50"], result["added_latency_ms_p95"]
    # a picture shows 40 ms of speech: its last sample comes at least one 20 ms TTS frame after its first
    assert p50 is not None and 20.0 <= p50 <= p95 <= result["added_latency_ms_max"]
    # 25 pictures a second of the speech as sent: 3 s, longer by 20 ms for each audio frame that came late
    assert result["expected_frames"] == 75 and result["expected_voice_frames"] == 150
    assert result["voice_frames_out"] >= 150 and abs(result["frames_out"] - result["voice_frames_out"] / 2) <= 2
    assert 0 <= result["repeated_frames"] <= result["degraded_frames"] <= result["frames_out"]
    assert result["latency_pictures"] >= 25  # (on a busy machine a late frame's slot repeats the last picture)
