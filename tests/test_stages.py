"""Frames-in/frames-out tests of the pipeline stages as plain classes (no Ray, no event loop)."""


import av
import numpy as np
import pytest
import torch

from actorcast.actors.messages import AudioChunk, FeatureChunk
from actorcast.actors.stages import AudioEncoderStage, DecoderShard, MotionStage
from actorcast.models.errors import InputError
from actorcast.models.photo.reference import load_image, square_tensor, synthetic_portrait
from actorcast.models.timebase import SAMPLES_PER_FRAME
from tests.helpers import png_header_only

SIZE = 64


@pytest.fixture(scope="module")
def audio_stage():
    return AudioEncoderStage()


@pytest.fixture(scope="module")
def motion_stage():
    return MotionStage()


@pytest.fixture(scope="module")
def portrait():
    return synthetic_portrait(5, SIZE)


def _pcm(seconds: float, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32)


def _features(stage, sid, pcm, block=2560):
    stage.open(sid)
    out = [stage.process(AudioChunk(sid, i // 640, pcm[i:i + block], 0.0)) for i in range(0, len(pcm), block)]
    return out + [stage.end(sid)]


def test_audio_stage_frames_are_contiguous_and_match_offline(audio_stage):
    pcm = _pcm(1.3)
    chunks = _features(audio_stage, "a", pcm, block=1000)
    firsts = [c.first_frame for c in chunks]
    sizes = [c.feats.shape[0] for c in chunks]
    assert firsts == list(np.cumsum([0] + sizes[:-1]))  # no gap, no overlap
    assert sum(sizes) == len(pcm) // SAMPLES_PER_FRAME
    offline = audio_stage.encoder(torch.from_numpy(pcm))
    assert torch.allclose(torch.cat([c.feats for c in chunks]), offline, atol=1e-5)


def test_audio_reset_keeps_the_time_base_and_hears_silence(audio_stage):
    pcm = _pcm(1.0)
    audio_stage.open("r")
    n = audio_stage.process(AudioChunk("r", 0, pcm[:8000], 0.0)).feats.shape[0]
    audio_stage.reset("r")
    rest = audio_stage.process(AudioChunk("r", 0, np.zeros(8000, np.float32), 0.0))
    last = audio_stage.end("r")
    assert rest.first_frame == n
    assert n + rest.feats.shape[0] + last.feats.shape[0] == 16000 // SAMPLES_PER_FRAME
    silence = audio_stage.open("s")
    assert np.allclose(last.feats[-1].numpy(), silence, atol=1e-4)  # after reset only silence is heard


def test_motion_stage_chunks_snapshot_and_degrade(audio_stage, motion_stage, portrait):
    feats = torch.cat([c.feats for c in _features(audio_stage, "m", _pcm(2.0, 1))])  # (50, d_audio)
    motion_stage.open("m", portrait, seed=7)
    out = motion_stage.process(FeatureChunk("m", 0, feats[:20]))
    assert [c.first_frame for c in out] == list(range(0, 20, 4)) and all(c.z.shape == (4, 32) for c in out)
    snap = motion_stage.snapshot("m")
    rest = motion_stage.process(FeatureChunk("m", 20, feats[20:])) + motion_stage.end("m")
    assert sum(c.z.shape[0] for c in out + rest) == 50
    motion_stage.restore("m2", snap)  # a fresh session resumed from the snapshot continues identically
    again = motion_stage.process(FeatureChunk("m2", 20, feats[20:])) + motion_stage.end("m2")
    assert all(torch.equal(a.z, b.z) for a, b in zip(rest, again))
    with pytest.raises(InputError, match="after flush"):
        motion_stage.process(FeatureChunk("m", 50, feats[:4]))
    motion_stage.open("d", portrait, seed=7)
    d = motion_stage.process(FeatureChunk("d", 0, feats[:4]), steps=1)
    assert d[0].degraded and not torch.equal(d[0].z, out[0].z)
    with pytest.raises(InputError, match="frame"):
        motion_stage.process(FeatureChunk("d", 99, feats[:4]))


def test_decoder_shards_split_equals_whole(portrait):
    a, b = DecoderShard(size=SIZE), DecoderShard(size=SIZE)
    for shard in (a, b):
        shard.open("x", portrait)
    z = torch.randn(6, 32, generator=torch.Generator().manual_seed(0))
    decoded = a.decode("x", 10, z)
    whole = decoded.frames
    assert decoded.first_frame == 10 and whole.shape == (6, SIZE, SIZE, 3) and whole.dtype == np.uint8
    p1 = a.decode("x", 10, z[:3]).frames
    p2 = b.decode("x", 13, z[3:]).frames
    assert np.abs(np.concatenate([p1, p2]).astype(int) - whole).max() <= 1
    with pytest.raises(InputError, match="open it first"):
        a.decode("nope", 0, z)


def test_frames_are_resized_as_uint8_within_a_level_of_the_float_resize():
    """Shards resize the decoder's frames as uint8 pixels (to_uint8 with a size): within 1 level of resizing the
    floats and rounding after, up or down; no size, or the frames' own, leaves them as they are."""
    import torch.nn.functional as F

    from actorcast.models.photo.reference import to_uint8

    frames = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 1.2 - 0.1  # some out of [0, 1]
    plain = to_uint8(frames)
    assert plain.shape == (3, 32, 32, 3) and plain.dtype == np.uint8
    assert np.array_equal(to_uint8(frames, 32), plain)
    assert np.array_equal(plain, (frames.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    for size in (64, 20):
        resized = to_uint8(frames, size)
        floats = F.interpolate(frames.clamp(0, 1), size=(size, size), mode="bilinear", align_corners=False,
                               antialias=True)
        expected = (floats * 255).round().permute(0, 2, 3, 1).numpy()
        assert resized.shape == (3, size, size, 3) and resized.dtype == np.uint8
        assert np.abs(resized.astype(float) - expected).max() <= 1.0


def test_images_are_checked_cropped_and_bombs_rejected(tmp_path):
    img = np.zeros((90, 120, 3), np.uint8)
    img[:, 15:105] = 200  # the centre square is bright, the side bands dark
    path = tmp_path / "p.png"
    with av.open(str(path), "w", format="image2") as out:
        stream = out.add_stream("png")
        stream.width, stream.height, stream.pix_fmt = 120, 90, "rgb24"
        out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(stream.encode(None))
    loaded = load_image(path)
    assert loaded.shape == (90, 120, 3)
    sq = square_tensor(loaded, 64)
    assert sq.shape == (1, 3, 64, 64) and float(sq.min()) > 0.7  # the side bands were cropped away
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(8000, 8000))
    with pytest.raises(InputError, match="too large: the limit is 40 Mpx"):
        load_image(bomb)
    text = tmp_path / "notes.png"
    text.write_text("not an image at all\n" * 10)
    with pytest.raises(InputError):
        load_image(text)
