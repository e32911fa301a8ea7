"""Motion generator: chunked-with-cache == full pass, recompute over kept tokens, speed, determinism, loss."""


import pytest
import torch

from actorcast.models.errors import ConfigError, InputError
from actorcast.models.kv_cache import POLICY_NAMES, CacheConfig
from actorcast.models.motion import MOTION_PRESETS, MotionConfig, MotionGenerator, pad_audio
from actorcast.models.training.motion_loss import diffusion_forcing_loss
from actorcast.models.sampling import MotionStream, SamplerConfig, generate

SMALL = MotionConfig(d_motion=6, d_audio=5, d_model=32, n_layers=2, n_heads=2, audio_past=2, audio_future=1)


def model_of(config, seed=0):
    """A model with sharpened attention: at the default init, attention is almost uniform and blind to
    positions, so position bugs would hide below the tolerance."""
    torch.manual_seed(seed)
    model = MotionGenerator(config).eval()
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.qkv.weight.mul_(15.0)
    return model


def inputs(config, B=2, T=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, T, config.d_motion, generator=g)
    k = torch.rand(B, T, generator=g)
    audio = torch.randn(B, T, config.d_audio, generator=g)
    z_ref = torch.randn(B, config.d_motion, generator=g)
    return z, k, audio, z_ref, torch.arange(1, B + 1) % 6  # B=2: happy and sad


def run_chunks(model, cache, z, k, audio, z_ref, emotion, chunk_starts):
    """forward_chunk over each chunk (inputs as given), appending each chunk's keys/values like the sampler."""
    c = model.config
    ap = pad_audio(audio, c)
    cache.reset(*model.prefix_kv(z_ref, emotion))
    outs = []
    for t0, t1 in zip(chunk_starts[:-1], chunk_starts[1:]):
        past = model.read_cache(cache, t1 - t0)
        out = model.forward_chunk(z[:, t0:t1], k[:, t0:t1], ap[:, t0: t1 + c.audio_past + c.audio_future], past,
                                  emotion, need_attn=cache.needs_attention)
        if out.attn is not None:
            cache.observe(out.attn)
        cache.append(out.k, out.v, torch.arange(t0 + 1, t1 + 1).repeat_interleave(c.tokens_per_frame))
        outs.append(out.velocity)
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("tpf", [1, 2])
@pytest.mark.parametrize("policy", POLICY_NAMES)
@torch.no_grad()
def test_chunked_with_cache_equals_full_block_causal_pass(policy, tpf):
    config = MotionConfig(**{**SMALL.__dict__, "tokens_per_frame": tpf})
    model = model_of(config)
    z, k, audio, z_ref, emotion = inputs(config, T=18)  # 4 chunks of 4 and a last one of 2
    full = model(z, k, audio, z_ref, emotion)
    cache = model.new_cache(CacheConfig(policy, budget_frames=24, compress_tokens=2), batch=2)
    chunked = run_chunks(model, cache, z, k, audio, z_ref, emotion, [0, 4, 8, 12, 16, 18])
    assert full.shape == chunked.shape == (2, 18, config.d_motion)
    assert (full - chunked).abs().max() <= 1e-4
    assert full.abs().mean() > 1e-2  # a trivially small output would make the comparison vacuous


@pytest.mark.parametrize("policy", ["window", "sink", "deep_sink", "deep_sink_pc"])
@torch.no_grad()
def test_bounded_policy_equals_recompute_over_kept_tokens(policy):
    # One layer and a one-frame audio window: a cached token's keys/values depend only on its own frame,
    # so attending to the cache == a full pass over exactly the kept frames at the policy's positions.
    config = MotionConfig(**{**SMALL.__dict__, "n_layers": 1, "audio_past": 0, "audio_future": 0})
    model = model_of(config)
    z, k, audio, z_ref, emotion = inputs(config, T=44)
    cache = model.new_cache(CacheConfig(policy, budget_frames=12, sink_frames=4 if policy == "sink" else None,
                                        compress_tokens=2), batch=2)
    starts = list(range(0, 41, 4))
    run_chunks(model, cache, z, k, audio, z_ref, emotion, starts)  # 40 frames: the budget overflowed
    _, _, rope = cache.view()
    kept = cache.abs_positions()[cache.P:]  # absolute positions = frame index + 1
    order = torch.argsort(kept)
    frames = kept[order] - 1
    assert len(frames) == 12 and len(set(frames.tolist())) == 12 and frames.max() < 40
    positions = torch.cat((rope[cache.P:][order], cache.query_positions(4)))
    seq = torch.cat((frames, torch.arange(40, 44)))
    recompute = model(z[:, seq], k[:, seq], audio[:, seq], z_ref, emotion, frame_positions=positions)[:, -4:]
    streamed = run_chunks(model, cache, z, k, audio, z_ref, emotion, starts + [44])[:, -4:]
    assert (recompute - streamed).abs().max() <= 1e-4


def test_tiny_forward_backward_on_cpu():
    config = MOTION_PRESETS["tiny"]
    model = model_of(config).train()
    z, _, audio, z_ref, emotion = inputs(config, B=4, T=64)
    loss = diffusion_forcing_loss(model, z, audio, z_ref, emotion, torch.Generator().manual_seed(0))
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_output_shapes_and_determinism_under_a_fixed_seed():
    z, k, audio, z_ref, emotion = inputs(SMALL, T=10)
    v1 = model_of(SMALL, seed=3)(z, k, audio, z_ref, emotion)
    v2 = model_of(SMALL, seed=3)(z, k, audio, z_ref, emotion)
    assert v1.shape == (2, 10, SMALL.d_motion) and torch.equal(v1, v2)
    model = model_of(SMALL)
    a = generate(model, audio, z_ref, emotion, "deep_sink_pc", SamplerConfig(seed=7, cfg_scale=2.0))
    b = generate(model, audio, z_ref, emotion, "deep_sink_pc", SamplerConfig(seed=7, cfg_scale=2.0))
    c = generate(model, audio, z_ref, emotion, "deep_sink_pc", SamplerConfig(seed=8, cfg_scale=2.0))
    assert a.shape == (2, 10, SMALL.d_motion) and torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3  # the seed matters


def test_streaming_state_equals_one_shot_generate_for_any_chunking():
    model = model_of(SMALL)
    _, _, audio, z_ref, _ = inputs(SMALL, B=1, T=23)
    offline = generate(model, audio, z_ref, "happy", CacheConfig("deep_sink", budget_frames=8))
    stream = MotionStream(model, z_ref, "happy", CacheConfig("deep_sink", budget_frames=8))
    parts, t = [], 0
    for n in [1, 0, 6, 3, 9, 4]:
        parts.append(stream.push(audio[:, t: t + n]))
        assert parts[-1].shape[1] % SMALL.chunk_frames == 0
        t += n
    parts.append(stream.flush())
    assert torch.equal(torch.cat(parts, dim=1), offline) and offline.shape[1] == 23
    with pytest.raises(InputError, match="ended"):
        stream.push(audio)


def test_audio_guidance_and_emotion_change_the_output():
    model = model_of(SMALL)
    _, _, audio, z_ref, _ = inputs(SMALL, B=1, T=8)
    base = generate(model, audio, z_ref, "happy")
    assert (generate(model, audio, z_ref, "happy", sampler=SamplerConfig(cfg_scale=3.0)) - base).abs().max() > 1e-4
    assert (generate(model, audio, z_ref, "sad") - base).abs().max() > 1e-4


def test_diffusion_forcing_loss_is_finite_and_decreases():
    model = model_of(SMALL).train()
    z, _, audio, z_ref, emotion = inputs(SMALL, B=2, T=16)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = diffusion_forcing_loss(model, z, audio, z_ref, emotion, torch.Generator().manual_seed(0))
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_bad_config_and_inputs_raise_project_errors():
    with pytest.raises(ConfigError, match="n_heads=3"):
        MotionConfig(d_model=32, n_heads=3)
    with pytest.raises(ConfigError, match="p_drop_audio=1.5"):
        MotionConfig(p_drop_audio=1.5)
    with pytest.raises(ConfigError, match="steps=0"):
        SamplerConfig(steps=0)
    with pytest.raises(ConfigError, match="'bored'"):
        MotionStream(model_of(SMALL), torch.zeros(1, SMALL.d_motion), "bored")
    with pytest.raises(ConfigError, match="chunk_frames=4"):
        model_of(SMALL).new_cache(CacheConfig("window", budget_frames=3))
    z, k, audio, z_ref, emotion = inputs(SMALL, T=8)
    with pytest.raises(InputError, match="audio covers 7 frames"):
        model_of(SMALL)(z, k, audio[:, :7], z_ref, emotion)
    with pytest.raises(InputError, match="z_ref"):
        model_of(SMALL)(z, k, audio, z_ref[:, :3], emotion)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("policy", POLICY_NAMES)
@torch.no_grad()
def test_on_gpu_chunked_equals_full_pass_and_sampling_is_deterministic(policy):
    model = model_of(SMALL).cuda()
    z, k, audio, z_ref, emotion = (t.cuda() for t in inputs(SMALL, T=18))
    full = model(z, k, audio, z_ref, emotion)
    cache = model.new_cache(CacheConfig(policy, budget_frames=24, compress_tokens=2), batch=2)
    chunked = run_chunks(model, cache, z, k, audio, z_ref, emotion, [0, 4, 8, 12, 16, 18])
    assert (full - chunked).abs().max() <= 1e-4
    bounded = CacheConfig(policy, budget_frames=8, compress_tokens=2)
    a = generate(model, audio.repeat(1, 5, 1), z_ref, emotion, bounded)
    b = generate(model, audio.repeat(1, 5, 1), z_ref, emotion, bounded)
    assert a.shape == (2, 90, SMALL.d_motion) and torch.equal(a, b)


def _loss_inputs(config, captured):
    """A model whose forward records the noise levels it is given, and inputs for the loss."""
    model = model_of(config)
    forward = model.forward

    def spy(x, k, *args, **kwargs):
        captured.append(k.clone())
        return forward(x, k, *args, **kwargs)

    model.forward = spy
    z, _, audio, z_ref, emotion = inputs(config, B=8, T=16)
    return model, z, audio, z_ref, emotion


def test_chunk_level_training_shares_one_noise_level_per_chunk():
    """p_chunk_level = 1 trains every sequence as the sampler runs it: one level for a chunk's frames."""
    for p, shared in ((1.0, True), (0.0, False)):
        config = MotionConfig(**{**SMALL.__dict__, "p_chunk_level": p, "p_noisy_context": 0.0})
        captured = []
        model, z, audio, z_ref, emotion = _loss_inputs(config, captured)
        diffusion_forcing_loss(model, z, audio, z_ref, emotion, generator=torch.Generator().manual_seed(0))
        k = captured[0].reshape(8, 4, config.chunk_frames)  # (B, chunks, frames of a chunk)
        within = (k - k[..., :1]).abs().amax()
        assert (within == 0) == shared, (p, float(within))
        assert k[:, 0, 0].std() > 0.1  # the levels still vary between sequences and chunks


def test_weighted_dims_move_the_loss_toward_them():
    """The loss weighs the dimensions in weighted_dims dim_weight times the others, at the same total weight."""
    base = MotionConfig(**{**SMALL.__dict__, "p_noisy_context": 0.0})
    weighted = MotionConfig(**{**base.__dict__, "weighted_dims": (2, 5), "dim_weight": 4.0})
    model, z, audio, z_ref, emotion = _loss_inputs(base, [])
    model.forward = lambda x, *args, **kwargs: torch.zeros_like(x)  # v = 0: each dimension's error stands alone
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731  (the same noise for every loss)
    plain = diffusion_forcing_loss(model, z, audio, z_ref, emotion, generator=g())
    # Only the weighted dimensions wrong: the same target error counts 4 / mean(weights) times as much.
    z_far = z.clone()
    z_far[..., 2:5] += 1.0
    model.config = base
    plain_far = diffusion_forcing_loss(model, z_far, audio, z_ref, emotion, generator=g())
    model.config = weighted
    same = diffusion_forcing_loss(model, z, audio, z_ref, emotion, generator=g())
    weighted_far = diffusion_forcing_loss(model, z_far, audio, z_ref, emotion, generator=g())
    mean_weight = (3 * 4.0 + 3 * 1.0) / 6
    assert float(weighted_far - same) == pytest.approx(float(plain_far - plain) * 4.0 / mean_weight, rel=1e-4)
    with pytest.raises(ConfigError, match="weighted_dims"):
        MotionConfig(**{**base.__dict__, "weighted_dims": (2, 9)})


# ---- chunk sizes: trained for several, a stream runs one of them ------------------------------------------------

TWO_SIZES = MotionConfig(**{**SMALL.__dict__, "chunk_choices": (2,)})


def test_a_config_names_its_trained_chunks_and_refuses_others_with_one_line():
    assert SMALL.trained_chunks == (4,) and TWO_SIZES.trained_chunks == (2, 4)
    assert TWO_SIZES.with_chunk(2).chunk_frames == 2 and TWO_SIZES.with_chunk(2).trained_chunks == (2, 4)
    with pytest.raises(ConfigError) as refused:
        SMALL.with_chunk(2)
    assert str(refused.value).startswith("chunks of 2 frames: these weights were trained for chunks of 4 frames")
    assert "\n" not in str(refused.value)
    with pytest.raises(ConfigError, match="chunk_choices"):
        MotionConfig(chunk_choices=(0,))


def test_training_draws_each_trained_chunk_size_for_a_whole_batch(monkeypatch):
    """Each loss call masks every sequence of its batch at one chunk size drawn from the trained ones; a
    generator trained for one size draws nothing (its noise stream is the same as before)."""
    z, _, audio, z_ref, emotion = inputs(SMALL, B=2, T=16)
    for config, expected in ((TWO_SIZES, {2, 4}), (SMALL, {4})):
        model = model_of(config)
        masks = []
        real = MotionGenerator.forward

        def spy(self, *args, chunk_frames=None, **kwargs):
            masks.append(chunk_frames)
            return real(self, *args, chunk_frames=chunk_frames, **kwargs)

        monkeypatch.setattr(MotionGenerator, "forward", spy)
        for seed in range(12):
            diffusion_forcing_loss(model, z, audio, z_ref, emotion, torch.Generator().manual_seed(seed))
        monkeypatch.setattr(MotionGenerator, "forward", real)
        assert set(masks) == expected, masks


@pytest.mark.parametrize("policy", ["full", "deep_sink_pc"])
@torch.no_grad()
def test_two_frame_chunks_with_cache_equal_the_full_pass_and_the_one_shot_generate(policy):
    model = model_of(TWO_SIZES)
    model.config = TWO_SIZES.with_chunk(2)
    z, k, audio, z_ref, emotion = inputs(TWO_SIZES, T=10)
    full = model(z, k, audio, z_ref, emotion)
    assert (full - model(z, k, audio, z_ref, emotion, chunk_frames=4)).abs().max() > 1e-3  # the mask matters
    cache = model.new_cache(CacheConfig(policy, budget_frames=24, compress_tokens=2), batch=2)
    chunked = run_chunks(model, cache, z, k, audio, z_ref, emotion, [0, 2, 4, 6, 8, 10])
    assert (full - chunked).abs().max() <= 1e-4
    _, _, audio1, z_ref1, _ = inputs(TWO_SIZES, B=1, T=13)
    small_cache = CacheConfig(policy, budget_frames=8, compress_tokens=2)
    offline = generate(model, audio1, z_ref1, "happy", small_cache)
    stream = MotionStream(model, z_ref1, "happy", small_cache)
    parts = [stream.push(audio1[:, t:t + n]) for t, n in ((0, 3), (3, 1), (4, 5), (9, 4))] + [stream.flush()]
    assert all(p.shape[1] % 2 == 0 for p in parts[:-1]) and any(p.shape[1] == 2 for p in parts)
    assert torch.equal(torch.cat(parts, dim=1), offline) and offline.shape[1] == 13
