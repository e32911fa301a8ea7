"""The motion measures of `actorcast eval`: spread per group, blink counting and silence, on known series."""

import numpy as np
import pytest
import torch

from actorcast.models.data.params import PARAM_INDEX, neutral_params
from actorcast.models.training.motion_measures import (
    MOTION_GROUPS,
    blink_rates,
    count_blinks,
    motion_scores,
    motion_spread,
    silent_frames,
)


def _moving_params(seed: int, n: int = 200) -> torch.Tensor:
    """(n, N_PARAMS) parameters that move in every group, well inside their ranges."""
    g = torch.Generator().manual_seed(seed)
    p = neutral_params(n) + 0.1 * torch.randn(n, neutral_params(1).shape[1], generator=g)
    p[:, PARAM_INDEX["head_scale"]] = 1.0 + 0.05 * torch.randn(n, generator=g)
    p[:, [PARAM_INDEX["jaw_open"], PARAM_INDEX["blink_l"], PARAM_INDEX["blink_r"]]] += 0.4
    return p


def test_spread_is_one_for_the_truth_and_scales_with_the_motion():
    truth = [_moving_params(0), _moving_params(1)]
    assert all(v == pytest.approx(1.0) for v in motion_spread(truth, truth).values())
    # Half the motion around each clip's own mean, plus a steady offset (not motion): spread 0.5 in every group.
    half = [t.mean(0) + 0.5 * (t - t.mean(0)) + 0.05 for t in truth]
    assert all(v == pytest.approx(0.5, abs=1e-6) for v in motion_spread(half, truth).values())
    # A still head and moving rest: only the head group falls to 0.
    still = [t.clone() for t in truth]
    for s in still:
        for name in MOTION_GROUPS["head"]:
            s[:, PARAM_INDEX[name]] = s[0, PARAM_INDEX[name]]
    spread = motion_spread(still, truth)
    assert spread["head"] == pytest.approx(0.0) and spread["jaw"] == pytest.approx(1.0)


def test_spread_on_masked_frames_reads_only_those():
    truth = [_moving_params(2)]
    generated = [truth[0].clone()]
    generated[0][100:] = truth[0][100:].mean(0)  # frozen in the second half
    first, second = np.arange(200) < 100, np.arange(200) >= 100
    assert motion_spread(generated, truth, [first])["gaze"] == pytest.approx(1.0)
    assert motion_spread(generated, truth, [second])["gaze"] == pytest.approx(0.0)


def _eyes(n: int, dips: list[int], width: int = 4) -> np.ndarray:
    eye = np.full(n, 0.45)
    for d in dips:
        eye[d:d + width] = 0.05
    return eye


def test_blinks_are_counted_from_eye_openness():
    assert count_blinks(_eyes(250, [20, 100, 180])) == 3
    flicker = _eyes(250, [50])
    flicker[52] = 0.3  # the reading flickers up for one frame at the bottom of one blink
    assert count_blinks(flicker) == 1
    shallow = np.full(250, 0.45)
    shallow[60:64] = 0.3  # a squint, not a blink (two thirds open)
    assert count_blinks(shallow) == 0
    missing = _eyes(250, [20, 100])
    missing[::9] = np.nan  # frames without a face are skipped, not read as closed
    assert count_blinks(missing) == 2
    # 3 blinks in 10 s is 18 a minute; only the two that start in the masked frames count there (per its minutes).
    mask = np.arange(250) >= 90
    assert blink_rates([_eyes(250, [20, 100, 180])]) == pytest.approx(18.0)
    assert blink_rates([_eyes(250, [20, 100, 180])], [mask]) == pytest.approx(2 * 60 * 25 / 160)


def test_silence_is_runs_of_at_least_0_4_s():
    rng = np.random.default_rng(0)
    audio = rng.standard_normal(16000 * 4).astype(np.float32) * 0.3
    audio[16000:32000] = 0  # 1 s of silence
    audio[48000:48000 + 3200] = 0  # 0.2 s: a gap inside speech, not silence
    mask = silent_frames(torch.from_numpy(audio), 100)
    assert mask[25:50].all() and mask.sum() == 25


def test_scores_have_every_key():
    truth = [_moving_params(3, 250)]
    audio = [torch.zeros(250 * 640)]
    audio[0][: 100 * 640] = 0.3
    scores = motion_scores(truth, truth, audio, [_eyes(250, [20, 150])], [_eyes(250, [20, 150, 200])])
    assert set(scores["motion_spread"]) == set(MOTION_GROUPS) == set(scores["motion_spread_idle"])
    assert scores["blinks_per_min"] == pytest.approx(12.0)
    assert scores["blinks_per_min_ground_truth"] == pytest.approx(18.0)
    assert scores["blinks_per_min_idle"] == pytest.approx(60 * 25 / 150)
    assert scores["idle_seconds"] == pytest.approx(6.0)


def test_spreads_pool_more_clips_than_the_meter_reads_and_lids_are_counted_too():
    """The motion measures pool every clip's parameters; the meter's blink counts only the clips it read; blinks
    by the lid parameters count every clip, generated and true."""
    from actorcast.models.data.params import PARAM_INDEX

    truth = [_moving_params(s, 250) for s in (3, 4)]
    still = [truth[0], truth[1] * 0 + truth[1].mean(0)]  # the second clip generated without motion
    audio = [torch.zeros(250 * 640), torch.zeros(250 * 640)]
    for clip, frames in zip(truth, ([20, 150], [40, 90, 140, 200])):  # whole closures on the lid parameters
        clip[:, [PARAM_INDEX["blink_l"], PARAM_INDEX["blink_r"]]] = 0.0
        for f in frames:
            clip[f:f + 4, [PARAM_INDEX["blink_l"], PARAM_INDEX["blink_r"]]] = 1.0
    eyes = [_eyes(250, [20, 150])]
    scores = motion_scores(still, truth, audio, eyes, eyes)
    assert scores["motion_clips"] == 2 and scores["idle_seconds"] == pytest.approx(20.0)
    assert scores["motion_spread"]["head"] < 0.9  # the still second clip counts
    assert scores["blinks_per_min"] == pytest.approx(12.0)  # the meter read one clip
    assert scores["blinks_per_min_params_ground_truth"] == pytest.approx(60 * 25 * 6 / 500)
    assert scores["blinks_per_min_params"] == pytest.approx(60 * 25 * 2 / 500)  # the still clip has no blinks
