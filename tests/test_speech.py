"""Synthetic speech + performance: determinism, frame-exact length, audio/mouth alignment, blinks, emotion."""

import math

import numpy as np
import pytest
import torch

from actorcast.models.data.params import EMOTIONS, PARAM_INDEX, PARAM_RANGES
from actorcast.models.data.performance import FACE_OFFSETS, generate_performance, generate_speech
from actorcast.models.data.phonemes import INVENTORY, PAUSE, random_utterance
from actorcast.models.data.speech import resonator
from actorcast.models.errors import ConfigError
from actorcast.models.timebase import SAMPLE_RATE, SAMPLES_PER_FRAME

JAW, SMILE, BROW_RAISE, BROW_FURROW = (PARAM_INDEX[n] for n in
                                       ("jaw_open", "smile", "brow_raise", "brow_furrow"))


def frame_rms(audio: torch.Tensor) -> np.ndarray:
    """(T,) RMS of each 640-sample frame."""
    x = audio.numpy().reshape(-1, SAMPLES_PER_FRAME)
    return np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=1))


def estimate_f0(audio: torch.Tensor) -> float:
    """Median F0 (Hz) over voiced frames, by normalised autocorrelation in 60-400 Hz."""
    x = audio.numpy().astype(np.float64).reshape(-1, SAMPLES_PER_FRAME)
    rms = np.sqrt(np.mean(x ** 2, axis=1))
    f0s = []
    for frame in x[rms > 0.3 * rms.max()]:
        frame = frame - frame.mean()
        ac = np.correlate(frame, frame, mode="full")[len(frame) - 1:]
        lags = np.arange(SAMPLE_RATE // 400, SAMPLE_RATE // 60)
        best = lags[np.argmax(ac[lags])]
        if ac[best] > 0.4 * ac[0]:  # clearly periodic = voiced
            f0s.append(SAMPLE_RATE / best)
    assert len(f0s) > 20, "too few voiced frames to estimate F0"
    return float(np.median(f0s))


@pytest.fixture(scope="module")
def long_clips():
    """Three 30 s performances of different seeds (shared by the alignment tests)."""
    return [generate_performance(seed, 30.0) for seed in (0, 1, 2)]


def test_deterministic_by_seed_and_seeds_differ():
    a, b = generate_performance(7, 2.0), generate_performance(7, 2.0)
    assert torch.equal(a.audio, b.audio) and torch.equal(a.params, b.params)
    assert a.phonemes == b.phonemes and a.emotion == b.emotion and a.lead_ms == b.lead_ms
    c = generate_performance(8, 2.0)
    assert not torch.equal(a.audio, c.audio)
    assert not torch.equal(a.params, c.params)
    assert torch.equal(generate_speech(7, 2.0), a.audio)


@pytest.mark.parametrize("seconds", [0.04, 0.5, 1.37, 3.0])
def test_length_is_frame_exact(seconds):
    perf = generate_performance(3, seconds)
    n_frames = round(seconds * 25)
    assert perf.params.shape == (n_frames, 16) and perf.params.dtype == torch.float32
    assert perf.audio.shape == (n_frames * SAMPLES_PER_FRAME,) and perf.audio.dtype == torch.float32
    assert perf.phonemes[-1][2] == pytest.approx(n_frames)
    assert 40.0 <= perf.lead_ms <= 80.0


def test_audio_is_peak_normalised_speech_band():
    for emotion in EMOTIONS:
        audio = generate_performance(11, 3.0, emotion).audio
        assert torch.isfinite(audio).all()
        assert 0.5 - 1e-6 <= audio.abs().max().item() <= 0.9 + 1e-6


def test_mouth_closed_and_audio_silent_inside_pauses(long_clips):
    checked = 0
    for perf in long_clips:
        lead = perf.lead_ms / 40.0  # frames
        rms, jaw = frame_rms(perf.audio), perf.params[:, JAW].numpy()
        for sym, start, end in perf.phonemes:
            if sym != PAUSE:
                continue
            for f in range(math.ceil(start), math.floor(end)):
                centre = f + 0.5 + lead  # the mouth of frame f shows this instant
                if start + 1.5 <= centre <= end - 1.5 and f >= start + 2 and f + 2 <= end:
                    assert jaw[f] < 0.1, f"jaw {jaw[f]:.3f} open in pause {start:.1f}-{end:.1f}, frame {f}"
                    assert rms[f] < 1e-3, f"audio rms {rms[f]:.4f} in the pause, frame {f}"
                    checked += 1
    assert checked > 20


def test_jaw_follows_vowel_openness(long_clips):
    f1, jaws, by_vowel = [], [], {}
    for perf in long_clips:
        lead = perf.lead_ms / 40.0
        jaw = perf.params[:, JAW].numpy()
        for sym, start, end in perf.phonemes:
            ph = INVENTORY[sym]
            if ph.kind != "vowel":
                continue
            for f in range(len(jaw)):  # frames whose (lead-shifted) centre is in the middle of the vowel
                if start + 0.3 * (end - start) <= f + 0.5 + lead <= end - 0.3 * (end - start):
                    f1.append(ph.formants[0])
                    jaws.append(jaw[f])
                    by_vowel.setdefault(sym, []).append(jaw[f])
    assert np.corrcoef(f1, jaws)[0, 1] > 0.5
    mean = {v: float(np.mean(j)) for v, j in by_vowel.items()}
    assert mean["a"] > mean["i"] + 0.3 and mean["a"] > mean["u"] + 0.3


def test_audio_energy_tracks_jaw_and_mouth_leads(long_clips):
    for perf in long_clips:
        energy, jaw = frame_rms(perf.audio), perf.params[:, JAW].numpy()
        assert np.corrcoef(energy, jaw)[0, 1] > 0.3
        n = len(jaw)
        # corr(jaw[t], energy[t + k]): the mouth shows now what the voice does k frames later.
        cc = [np.corrcoef(jaw[max(0, -k):n - max(0, k)], energy[max(0, k):n - max(0, -k)])[0, 1]
              for k in range(-4, 5)]
        assert int(np.argmax(cc)) - 4 in (1, 2), f"cross-correlation peak {np.round(cc, 2)}"


def test_blinks_at_plausible_rate():
    counts = []
    for seed in (0, 1, 2):
        params = generate_performance(seed, 60.0).params.numpy()
        for eye in ("blink_l", "blink_r"):
            closed = params[:, PARAM_INDEX[eye]] > 0.5
            onsets = np.flatnonzero(closed[1:] & ~closed[:-1])
            if eye == "blink_l":
                counts.append(len(onsets))
            lengths = np.diff(np.flatnonzero(np.diff(np.concatenate([[0], closed, [0]]))))[::2]
            assert lengths.max() <= 7  # closures of a few frames, never a closed eye
    assert 10 <= np.mean(counts) <= 26, counts


def test_emotion_changes_pitch():
    f0 = {e: estimate_f0(generate_performance(21, 6.0, e).audio) for e in ("sad", "happy", "surprised")}
    assert f0["happy"] > 1.15 * f0["sad"], f0
    assert f0["surprised"] > 1.15 * f0["sad"], f0


def test_emotion_changes_face():
    mean = {e: generate_performance(5, 8.0, e).params.mean(0).numpy() for e in EMOTIONS}
    assert abs(mean["neutral"][SMILE]) < 0.05
    assert mean["happy"][SMILE] > mean["neutral"][SMILE] + 0.3
    assert mean["sad"][SMILE] < mean["neutral"][SMILE] - 0.2
    assert mean["angry"][SMILE] < mean["neutral"][SMILE] - 0.1
    assert mean["angry"][BROW_FURROW] > mean["neutral"][BROW_FURROW] + 0.3
    assert mean["surprised"][BROW_RAISE] > mean["neutral"][BROW_RAISE] + 0.3
    assert mean["sad"][BROW_RAISE] > mean["neutral"][BROW_RAISE]
    assert set(FACE_OFFSETS) == set(EMOTIONS)


def test_every_param_within_ranges():
    low = torch.tensor([r[0] for r in PARAM_RANGES])
    high = torch.tensor([r[1] for r in PARAM_RANGES])
    for seed in range(5):
        params = generate_performance(seed, 10.0).params
        assert torch.isfinite(params).all()
        assert (params >= low).all() and (params <= high).all()
        assert params.std(0)[[PARAM_INDEX[n] for n in ("head_yaw", "head_pitch", "gaze_x")]].min() > 0.005


@pytest.mark.parametrize("seconds", [0, -1.0, float("nan"), float("inf")])
def test_bad_seconds_raise_config_error(seconds):
    with pytest.raises(ConfigError, match="seconds"):
        generate_performance(0, seconds)


def test_bad_emotion_and_seed_raise_config_error():
    with pytest.raises(ConfigError, match="neutral, happy, sad, angry, surprised"):
        generate_performance(0, 1.0, "bored")
    with pytest.raises(ConfigError, match="seed"):
        generate_performance(-1, 1.0)


def test_resonator_matches_direct_recursion():
    rng = np.random.default_rng(0)
    x = rng.normal(size=3000)
    y = resonator(x, np.full(40, 700.0), np.full(40, 90.0))
    r, theta = math.exp(-math.pi * 90 / SAMPLE_RATE), 2 * math.pi * 700 / SAMPLE_RATE
    a1, a2 = 2 * r * math.cos(theta), -r * r
    direct, y1, y2 = np.zeros(len(x)), 0.0, 0.0
    for i, xi in enumerate(x):  # y[n] = x[n] + a1 y[n-1] + a2 y[n-2], unity DC gain, one sample later
        direct[i], y2, y1 = xi + a1 * y1 + a2 * y2, y1, xi + a1 * y1 + a2 * y2
    assert np.allclose(y[1:], (1 - a1 - a2) * direct[:-1], atol=1e-9)


def test_utterance_covers_clip_with_phrases_and_pauses():
    segs = random_utterance(np.random.default_rng(0), 20.0)
    assert segs[0].symbol == PAUSE and segs[0].start == 0.0 and segs[-1].end == 20.0
    assert all(a.end == pytest.approx(b.start) for a, b in zip(segs, segs[1:]))
    kinds = {s.phoneme.kind for s in segs}
    assert {"vowel", "plosive", "fricative", "nasal", "pause"} <= kinds
    assert any(s.accent > 0 for s in segs)


def test_bilabials_close_the_mouth(long_clips):
    closures = []
    for perf in long_clips:
        jaw, lead = perf.params[:, JAW].numpy(), perf.lead_ms / 40.0
        for sym, start, end in perf.phonemes:
            frame = round(0.5 * (start + end) - lead - 0.5)  # the frame showing the bilabial's middle
            if sym in ("p", "b", "m") and 0 <= frame < len(jaw):
                closures.append(jaw[frame])
    assert len(closures) > 20
    assert max(closures) < 0.12 and np.mean(closures) < 0.08


def test_nods_follow_accents_and_gaze_makes_saccades():
    perf = generate_performance(4, 60.0, "neutral")
    pitch = perf.params[:, PARAM_INDEX["head_pitch"]].numpy()
    frames = np.arange(len(pitch)) + 0.5
    centres = np.array(perf.accents)
    assert 20 <= len(centres) <= 200  # one or two per phrase
    near = np.abs(frames[:, None] - centres[None, :]).min(axis=1)  # frames to the closest accent
    assert pitch[near < 1.5].mean() > pitch[near > 12].mean() + 0.02  # heads nod down on accents
    gaze = perf.params[:, [PARAM_INDEX["gaze_x"], PARAM_INDEX["gaze_y"]]].numpy()
    jumps = np.sum(np.linalg.norm(np.diff(gaze, axis=0), axis=1) > 0.1)
    assert 10 <= jumps <= 60  # a saccade every one to six seconds
