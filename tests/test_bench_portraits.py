"""bench/portraits.py's measures on synthetic arrays: pixel identity outside the mask, SSIM inside it, silence."""

import numpy as np
import pytest

from bench.portraits import (
    SILENT_MARGIN,
    Speech,
    figure,
    masked_ssim,
    outside_max_abs_diff,
)


@pytest.fixture
def picture():
    return np.random.default_rng(0).integers(0, 200, (32, 40, 3), dtype=np.uint8)


def test_outside_max_abs_diff_sees_only_outside_the_mask(picture):
    outside = np.ones((32, 40), bool)
    outside[8:24, 10:30] = False                        # the face
    frames = np.repeat(picture[None], 3, axis=0)
    frames[1, 12:20, 15:25] = 255                       # inside: not counted
    assert outside_max_abs_diff(frames, picture, outside) == 0
    frames[2, 2, 3, 1] = picture[2, 3, 1] + 9           # one channel of one pixel outside
    assert outside_max_abs_diff(frames, picture, outside) == 9
    assert outside_max_abs_diff(frames, picture, np.zeros_like(outside)) == 0   # no outside at all


def test_masked_ssim_is_one_for_the_same_face_and_falls_with_noise(picture):
    everywhere = np.ones((32, 40), bool)
    assert masked_ssim(picture, picture, everywhere) == pytest.approx(1.0)
    noise = np.random.default_rng(1).normal(0, 1, picture.shape)
    ssim = [masked_ssim(np.clip(picture + sigma * noise, 0, 255).astype(np.uint8), picture, everywhere)
            for sigma in (10, 40)]
    assert 1.0 > ssim[0] > ssim[1]                       # more noise, less alike
    changed = picture.copy()
    changed[:, :10] = 255 - changed[:, :10]               # the left quarter inverted
    right = np.zeros((32, 40), bool)
    right[:, 25:] = True                                 # beyond the 11-px Gaussian window of the change
    assert masked_ssim(changed, picture, right) == pytest.approx(1.0)
    assert masked_ssim(changed, picture, ~right) < 0.5


def test_silent_frames_keep_a_margin_from_speech():
    loud = np.full(20, 0.1)
    loud[5:14] = 0.0                                     # 9 quiet frames
    speech = Speech(audio=np.zeros(20 * 640, np.float32), openness=np.zeros(20), rms=loud)
    assert speech.speech.sum() == 11
    assert np.flatnonzero(speech.silent).tolist() == list(range(5 + SILENT_MARGIN, 14 - SILENT_MARGIN))


def test_figure_states_its_target():
    assert figure("lipsync_r", 0.6) == {"value": 0.6, "target": ">= 0.5", "met": True}
    assert figure("outside_mask_max_abs_diff_frames", 3)["met"] is False
    assert figure("lip_lag_frames", -1) == {"value": -1, "target": None, "met": None}
    assert figure("face_ssim_silent_mp4", None, silent_frames=0)["met"] is None
