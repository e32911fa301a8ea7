"""`actorcast eval`: the measures themselves, and a full report on (untrained) weights with every field."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from actorcast.models.training.evaluate import lip_lag, pearson
from tests.untrained import write_untrained_weights

ROOT = Path(__file__).resolve().parent.parent


def test_pearson_and_lip_lag_find_a_known_shift():
    rng = np.random.default_rng(0)
    truth = np.convolve(rng.standard_normal(400), np.ones(5) / 5, mode="same")
    late = np.concatenate([np.zeros(2), truth[:-2]])  # the video shows each frame 2 frames late
    assert lip_lag(truth, late) == 2
    assert lip_lag(truth, truth) == 0
    assert pearson(truth, truth) == pytest.approx(1.0)
    assert pearson(truth, -truth) == pytest.approx(-1.0)
    assert pearson(truth, np.ones_like(truth)) == 0.0
    # Frames where the meter found no face (NaN) are left out, never filled in; the lag is still found.
    gaps = late.copy()
    gaps[::7] = np.nan
    assert lip_lag(truth, gaps) == 2
    assert pearson(truth, np.where(np.arange(400) % 5 == 0, np.nan, truth)) == pytest.approx(1.0)


@pytest.fixture(scope="module")
def untrained_weights(tmp_path_factory) -> Path:
    """Every model the evaluation loads, untrained, at 128² (the structure of a real export)."""
    return write_untrained_weights(tmp_path_factory.mktemp("weights"), resolution=128, probe=True)


@pytest.mark.slow
def test_eval_quick_writes_every_field(untrained_weights, tmp_path):
    out = tmp_path / "eval.json"
    result = subprocess.run([sys.executable, "-m", "actorcast.cluster.cli", "eval", "--weights", str(untrained_weights),
                             "--quick", "--clip-seconds", "4", "--long-seconds", "9", "--blink-clips", "3", "--json", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    keys = ("lipsync_r", "lipsync_r_ceiling", "lipsync_r_floor", "lip_lag_frames", "lipsync_r_tts",
            "blink_r_ceiling", "meter_r_ground_truth", "meter_r_ground_truth_tts", "probe_lipsync_r", "psnr_db",
            "dynamics_ratio", "drift")
    for key in keys:
        assert isinstance(report[key], (int, float)) and math.isfinite(report[key]), key
    for key in keys[:3] + keys[4:8]:
        assert -1.0 <= report[key] <= 1.0, key
    assert abs(report["lip_lag_frames"]) <= 5 and report["psnr_db"] > 0
    # The instrument itself, on ground-truth renders of held-out clips: the meter reads the true mouth.
    assert report["meter_r_ground_truth"] > 0.6 and report["meter_r_ground_truth_tts"] > 0.6
    assert report["blink_r_ground_truth"] > 0.3
    # Every frame is counted: those without a face are reported, not dropped.
    assert report["meter_frames"] == 2 * 4 * 25
    # How much of the data's motion the generator reproduces, in speech and in silence, for both speech sources;
    # the meter counts blinks on a third clip of each, decoded for it alone (its frames are not in meter_frames).
    for suffix in ("", "_tts"):
        assert report["blink_clips" + suffix] == 3 and report["motion_clips" + suffix] >= 3
        for key in ("motion_spread", "motion_spread_idle"):
            assert set(report[key + suffix]) == {"jaw", "lips", "brows", "blinks", "gaze", "head"}, key
        assert all(math.isfinite(v) and v >= 0 for v in report["motion_spread" + suffix].values())
        for key in ("blinks_per_min", "blinks_per_min_ground_truth", "blinks_per_min_idle",
                    "blinks_per_min_idle_ground_truth", "idle_seconds"):
            assert isinstance(report[key + suffix], float), key + suffix
    assert set(report["meter_missing"]) == {"ground_truth", "ceiling", "model", "floor"}
    assert all(0 <= n <= report["meter_frames"] for n in report["meter_missing"].values())
    assert report["meter_missing"]["ground_truth"] == 0
    assert set(report["policies"]) == {"full", "window", "sink", "deep_sink", "deep_sink_pc"}
    for scores in report["policies"].values():
        assert {"lipsync_r", "dynamics_ratio", "drift"} <= set(scores)
    # What ran, when and where, for bench/results.py to print beside the figures.
    assert report["run"]["command"].startswith("actorcast eval --weights ") and report["run"]["bench"] == "eval"
    assert report["run"]["date"].endswith("UTC") and report["run"]["machine"]["cores"] >= 1


def test_eval_without_weights_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "actorcast.cluster.cli", "eval", "--weights", str(tmp_path / "none")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "does not exist" in result.stderr
