"""Audio encoder: streaming == offline, the lookahead bound, shapes, determinism, speed, bad input."""

import random

import pytest
import torch

from actorcast.models.audio import AUDIO_PRESETS, AudioConfig, AudioEncoder
from actorcast.models.errors import ConfigError, InputError
from actorcast.models.timebase import SAMPLE_RATE, SAMPLES_PER_FRAME

SMALL = AudioConfig(d_audio=16, channels_mel=16, channels_frame=24, n_blocks_mel=2, n_blocks_frame=2)


def make_encoder(config: AudioConfig = SMALL, seed: int = 0) -> AudioEncoder:
    torch.manual_seed(seed)
    return AudioEncoder(config).eval()


def speechy(n: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """Amplitude-modulated tones + noise: varies over time so that frames differ from each other."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / SAMPLE_RATE
    env = 0.5 + 0.5 * torch.sin(2 * torch.pi * 3.0 * t)
    tone = torch.sin(2 * torch.pi * 220.0 * t) + 0.5 * torch.sin(2 * torch.pi * 1375.0 * t)
    return 0.2 * env * tone + 0.05 * torch.randn(batch, n, generator=g)


def stream(enc: AudioEncoder, pcm: torch.Tensor, sizes) -> torch.Tensor:
    """Feed `pcm` (B, N) in chunks of the given sizes (cycled), flush, and concatenate what came out."""
    state = enc.init_state(pcm.shape[0])
    outs, i, k = [], 0, 0
    while i < pcm.shape[1]:
        n = sizes[k % len(sizes)]
        out, state = enc.step(pcm[:, i : i + n], state)
        outs.append(out)
        i, k = i + n, k + 1
    out, state = enc.flush(state)
    outs.append(out)
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_streaming_equals_offline_random_chunkings(seed):
    enc = make_encoder()
    rng = random.Random(seed)
    n = rng.randrange(40 * SAMPLES_PER_FRAME, 60 * SAMPLES_PER_FRAME)  # 1.6-2.4 s with a partial last frame
    pcm = speechy(n, batch=2, seed=seed)
    # chunk sizes from 1 sample to more than a second, including runs of 1-sample chunks across frame edges
    sizes = [rng.choice([1, 1, 1, 2, 17, 159, 160, 639, 640, 641, 2560, 17000, 20000]) for _ in range(200)]
    with torch.no_grad():
        offline = enc(pcm)
    streamed = stream(enc, pcm, sizes)
    assert offline.shape == (2, n // SAMPLES_PER_FRAME, 16)
    assert streamed.shape == offline.shape
    assert (streamed - offline).abs().max().item() <= 1e-5


def test_streaming_one_sample_chunks_and_one_big_chunk():
    enc = make_encoder()
    pcm = speechy(5 * SAMPLES_PER_FRAME + 300)
    with torch.no_grad():
        offline = enc(pcm)
    for sizes in ([1], [SAMPLE_RATE + 1]):  # every sample alone; one chunk longer than the whole clip
        streamed = stream(enc, pcm, sizes)
        assert streamed.shape == offline.shape == (1, 5, 16)
        assert (streamed - offline).abs().max().item() <= 1e-5


@pytest.mark.parametrize("lookahead", [0, 3])
def test_streaming_equals_offline_other_lookaheads(lookahead):
    enc = make_encoder(AudioConfig(d_audio=8, channels_mel=8, channels_frame=8, lookahead=lookahead))
    pcm = speechy(30 * SAMPLES_PER_FRAME + 5)
    with torch.no_grad():
        offline = enc(pcm)
    assert (stream(enc, pcm, [1000, 3, 640, 7777]) - offline).abs().max().item() <= 1e-5


def test_frames_are_emitted_as_soon_as_their_lookahead_is_complete():
    enc = make_encoder()  # lookahead 2
    state = enc.init_state()
    pcm = speechy(10 * SAMPLES_PER_FRAME)
    out, state = enc.step(pcm[:, : 3 * SAMPLES_PER_FRAME - 1], state)
    assert out.shape[1] == 0  # frame 0 needs audio to the end of frame 2
    out, state = enc.step(pcm[:, 3 * SAMPLES_PER_FRAME - 1 : 3 * SAMPLES_PER_FRAME], state)
    assert out.shape[1] == 1
    out, state = enc.step(pcm[:, 3 * SAMPLES_PER_FRAME : 10 * SAMPLES_PER_FRAME], state)
    assert out.shape[1] == 7  # frames 1..7 (8 and 9 still wait for their lookahead)
    out, state = enc.flush(state)
    assert out.shape[1] == 2


def test_lookahead_bound():
    enc = make_encoder()
    lookahead = enc.config.lookahead
    pcm = speechy(20 * SAMPLES_PER_FRAME)
    f = 8
    end = (f + lookahead + 1) * SAMPLES_PER_FRAME  # end of frame f + L
    with torch.no_grad():
        base = enc(pcm)
        after = pcm.clone()
        after[:, end:] += 0.3 * torch.randn(1, pcm.shape[1] - end)
        changed_after = enc(after)
        within = pcm.clone()
        within[:, end - 200 : end] += 0.3  # the last samples frame f may still see
        changed_within = enc(within)
    assert (changed_after[:, : f + 1] - base[:, : f + 1]).abs().max().item() <= 1e-6
    assert (changed_after[:, f + 1 :] - base[:, f + 1 :]).abs().max().item() > 1e-4
    assert (changed_within[:, f] - base[:, f]).abs().max().item() > 1e-4
    # the bound is tight: frame f - 1 ends its lookahead one frame earlier, so it must not see this change
    assert (changed_within[:, :f] - base[:, :f]).abs().max().item() <= 1e-6


def test_shapes_and_unbatched_input():
    enc = make_encoder()
    pcm = speechy(7 * SAMPLES_PER_FRAME + 639)
    with torch.no_grad():
        batched = enc(pcm)
        single = enc(pcm[0])
        short = enc(pcm[:, :100])
    assert batched.shape == (1, 7, 16) and single.shape == (7, 16)
    assert torch.allclose(batched[0], single)
    assert short.shape == (1, 0, 16)


def test_deterministic_under_fixed_seed():
    pcm = speechy(12 * SAMPLES_PER_FRAME)
    with torch.no_grad():
        a, b = make_encoder(seed=3)(pcm), make_encoder(seed=3)(pcm)
        c = make_encoder(seed=4)(pcm)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_tiny_forward_backward_reaches_every_parameter():
    enc = AudioEncoder(AUDIO_PRESETS["tiny"])
    pcm = speechy(SAMPLE_RATE * 2, batch=4)
    out = enc(pcm)  # (4, 50, d_audio)
    out.square().mean().backward()
    assert out.shape == (4, 50, AUDIO_PRESETS["tiny"].d_audio)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in enc.parameters())


def test_presets_build():
    for name, config in AUDIO_PRESETS.items():
        enc = AudioEncoder(config)
        with torch.no_grad():
            assert enc(torch.zeros(1, 3 * SAMPLES_PER_FRAME)).shape == (1, 3, config.d_audio), name


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.zeros(1, 2, 640), "shape"),
        (torch.zeros(640, dtype=torch.int16), "float"),
        (torch.full((1, 640), float("nan")), "NaN"),
        (torch.tensor([0.0, float("inf")] * 320), "NaN or inf"),
        (torch.zeros(1, 0), "empty"),
    ],
)
def test_bad_audio_raises_input_error(bad, match):
    with pytest.raises(InputError, match=match):
        make_encoder()(bad)


def test_bad_stream_use_raises_input_error():
    enc = make_encoder()
    with pytest.raises(InputError, match="16000 Hz"):
        enc(torch.zeros(1, 640), sample_rate=44100)
    state = enc.init_state(2)
    with pytest.raises(InputError, match="batch"):
        enc.step(torch.zeros(1, 640), state)
    with pytest.raises(InputError, match="NaN"):
        enc.step(torch.full((2, 10), float("nan")), state)
    _, state = enc.flush(state)
    with pytest.raises(InputError, match="flushed"):
        enc.step(torch.zeros(2, 640), state)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"lookahead": -1}, "lookahead"), ({"sample_rate": 44100}, "resample"), ({"d_audio": 0}, "d_audio"),
     ({"n_mels": 400}, "n_mels"), ({"norm_std": 0.0}, "norm_std")],
)
def test_bad_config_raises_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        AudioConfig(**kwargs)
