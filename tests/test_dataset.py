"""The synthetic data set: determinism, the held-out split, alignment, and the video-folder reader."""

import av
import numpy as np
import pytest
import torch

from actorcast.models.data.dataset import HELDOUT_START, SPLITS, SyntheticClips, identity_seed, make_clip, split_of
from actorcast.models.data.face import render, sample_identities
from actorcast.models.data.params import PARAM_INDEX
from actorcast.models.data.video_folder import VideoFolderClips, read_video
from actorcast.models.errors import ConfigError, InputError
from actorcast.models.media import Mp4Writer
from actorcast.models.timebase import SAMPLES_PER_FRAME

JAW = PARAM_INDEX["jaw_open"]


def test_clip_is_deterministic_by_seed_and_seeds_differ():
    a, b, c = make_clip(11, 1.0, size=64), make_clip(11, 1.0, size=64), make_clip(12, 1.0, size=64)
    assert torch.equal(a.audio, b.audio) and torch.equal(a.frames, b.frames) and torch.equal(a.params, b.params)
    assert not torch.equal(a.frames, c.frames)
    assert not torch.equal(a.audio, c.audio)


def test_clip_shapes_and_alignment():
    clip = make_clip(3, 2.0, size=64, cross_identity=True)
    t = clip.params.shape[0]
    assert t == 50 and clip.audio.shape == (t * SAMPLES_PER_FRAME,)
    assert clip.frames.shape == clip.frames_alt.shape == (t, 3, 64, 64)
    assert clip.reference.shape == (3, 64, 64)
    # Same motion, two identities: the images differ, the parameters are shared by construction.
    assert (clip.frames - clip.frames_alt).abs().mean() > 0.02


def test_training_draws_never_touch_heldout_seeds():
    train = SyntheticClips("train", seconds=0.2, size=None, length=2000, base_seed=5)
    seeds = list(train.clip_seeds(worker=0)) + list(train.clip_seeds(worker=1))
    assert all(s < HELDOUT_START for s in seeds)
    assert len(set(seeds)) > 1990  # draws spread over the split, workers differ
    heldout = SyntheticClips("heldout", seconds=0.2, size=None, length=200)
    assert all(s in SPLITS["heldout"] for s in heldout.clip_seeds())
    with pytest.raises(ConfigError, match="heldout"):
        train.clip(HELDOUT_START + 3)


def test_split_of_rejects_out_of_range_seeds():
    assert split_of(0) == "train" and split_of(HELDOUT_START) == "heldout"
    with pytest.raises(ConfigError):
        split_of(-1)


def test_iterable_yields_clips():
    clips = list(SyntheticClips("train", seconds=0.4, size=64, length=2, base_seed=1))
    assert len(clips) == 2 and clips[0].frames.shape == (10, 3, 64, 64)


def test_rendered_clip_frames_follow_the_jaw_parameter():
    """Against the same clip re-rendered with the jaw held shut, the pixel change per frame tracks jaw_open."""
    clip = make_clip(21, 4.0, size=128)
    shut = clip.params.clone()
    shut[:, JAW] = 0
    closed = render(sample_identities([identity_seed(21)]), shut, 128)
    change = (clip.frames - closed).abs().mean((1, 2, 3))  # (T,)
    r = np.corrcoef(clip.params[:, JAW].numpy(), change.numpy())[0, 1]
    assert r > 0.8, f"pixel change vs jaw_open correlation {r:.2f}"
    assert change[clip.params[:, JAW] < 0.02].max() < 1e-3  # closed jaw: identical frames


def _write_clip_mp4(path, clip):
    with Mp4Writer(path, clip.frames.shape[-1]) as writer:
        writer.write(clip.frames, clip.audio)


def test_video_folder_round_trips_a_generated_mp4(tmp_path):
    clip = make_clip(7, 2.0, size=64)
    _write_clip_mp4(tmp_path / "a.mp4", clip)
    frames, audio = read_video(tmp_path / "a.mp4", size=64)
    assert frames.shape[0] == clip.frames.shape[0]
    assert abs(audio.shape[0] - clip.audio.shape[0]) <= SAMPLES_PER_FRAME
    assert (frames - clip.frames).abs().mean() < 0.03  # H.264 at crf 20 is close to the source
    clips = list(VideoFolderClips(tmp_path, seconds=1.0, size=64))
    assert len(clips) == 2 and clips[0].frames.shape == (25, 3, 64, 64)
    assert clips[0].audio.shape == (25 * SAMPLES_PER_FRAME,)


def test_video_folder_resizes_and_resamples(tmp_path):
    """A 30 fps, 96x80, 44.1 kHz stereo file comes out at 25 fps, 64², 16 kHz mono."""
    path = tmp_path / "odd.mp4"
    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=30)
        v.width, v.height, v.pix_fmt = 96, 80, "yuv420p"
        a = out.add_stream("aac", rate=44100, layout="stereo")
        for i in range(60):
            img = np.full((80, 96, 3), i * 4, np.uint8)
            out.mux(v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        tone = (0.3 * np.sin(np.arange(88200) / 44100 * 2 * np.pi * 300)).astype(np.float32)
        for s in range(0, 88200, 1024):
            f = av.AudioFrame.from_ndarray(np.stack([tone[s:s + 1024]] * 2), format="fltp", layout="stereo")
            f.sample_rate = 44100
            out.mux(a.encode(f))
        out.mux(v.encode(None))
        out.mux(a.encode(None))
    frames, audio = read_video(path, size=64)
    assert frames.shape[1:] == (3, 64, 64)
    assert abs(frames.shape[0] - 50) <= 1
    assert audio.shape[0] == frames.shape[0] * SAMPLES_PER_FRAME
    assert 0.15 < audio.abs().max() < 0.45


def test_video_folder_bad_input(tmp_path):
    with pytest.raises(InputError, match="no video files"):
        VideoFolderClips(tmp_path)
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all" * 10)
    with pytest.raises(InputError, match="cannot be read|corrupt"):
        read_video(tmp_path / "broken.mp4", 64)
    with pytest.raises(InputError, match="no usable clips"):
        list(VideoFolderClips(tmp_path, size=64))
    silent = tmp_path / "silent.mp4"
    with Mp4Writer(silent, 64, with_audio=False) as writer:
        writer.write(torch.rand(5, 3, 64, 64))
    with pytest.raises(InputError, match="no audio stream"):
        read_video(silent, 64)
