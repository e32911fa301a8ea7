"""Motion encoder + video decoder: shapes, range, cached identity, flow warp, losses, training signal, bad input."""


import pytest
import torch

from actorcast.models.decoder import (
    DECODER_PRESETS, DecoderConfig, ModulatedConv, VideoDecoder, decoder_loss, identity_grid, ms_ssim,
    reconstruction_loss, warp,
)
from actorcast.models.errors import ConfigError, InputError
from actorcast.models.motion_ae import MOTION_AE_PRESETS, MotionAEConfig, MotionEncoder

SMALL_DEC = DecoderConfig(resolution=64, channels=(8, 16, 24), d_hidden=64, flow_channels=16)
SMALL_ENC = MotionAEConfig(input_size=64, channels=(8, 16, 32))


def build(seed: int = 0) -> tuple[MotionEncoder, VideoDecoder]:
    torch.manual_seed(seed)
    return MotionEncoder(SMALL_ENC), VideoDecoder(SMALL_DEC)


def render(centres: torch.Tensor, colour: tuple[float, float, float], background: float, size: int = 64):
    """A disk (the 'head', radius size/5) of `colour` at each (x, y) in [0, 1] of `centres` (B, 2) on a grey field."""
    coords = (torch.arange(size) + 0.5) / size
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    d2 = (x[None] - centres[:, 0, None, None]) ** 2 + (y[None] - centres[:, 1, None, None]) ** 2
    disk = torch.sigmoid((0.2**2 - d2) * 400)[:, None]  # (B, 1, H, W), soft edge
    col = torch.tensor(colour)[None, :, None, None]
    return disk * col + (1 - disk) * background  # (B, 3, H, W)


def test_shapes_range_and_broadcast_identity():
    enc, dec = build()
    frames = torch.rand(5, 3, 64, 64)
    with torch.no_grad():
        z = enc(frames)
        ident = dec.encode_reference(torch.rand(1, 3, 64, 64))
        out = dec(ident, z * 100)  # extreme latents must still give valid pixels
    assert z.shape == (5, 32)
    assert out.shape == (5, 3, 64, 64)
    assert out.min().item() >= 0.0 and out.max().item() <= 1.0
    assert torch.isfinite(out).all()


def test_motion_encoder_accepts_any_frame_size():
    enc, _ = build()
    with torch.no_grad():
        assert enc(torch.rand(2, 3, 256, 256)).shape == (2, 32)
        assert enc(torch.rand(2, 3, 48, 80)).shape == (2, 32)


def test_identity_features_are_computed_once_and_reused():
    _, dec = build()
    calls = []
    dec.ref_encoder[0].register_forward_hook(lambda *args: calls.append(1))
    ref = torch.rand(1, 3, 64, 64)
    z = torch.randn(6, 32)
    with torch.no_grad():
        ident = dec.encode_reference(ref)
        batched = dec(ident, z)  # six frames share one identity
        again = torch.cat([dec(ident, z[i : i + 1]) for i in range(6)])
        assert len(calls) == 1  # decoding never re-encodes the reference
        direct = dec(dec.encode_reference(ref.expand(6, -1, -1, -1)), z)
    assert (batched - again).abs().max().item() < 1e-5
    assert (batched - direct).abs().max().item() < 1e-5


def test_zero_flow_is_identity_and_shift_flow_shifts():
    feats = torch.randn(2, 4, 16, 16)
    zero = torch.zeros(2, 2, 16, 16)
    assert (warp(feats, zero) - feats).abs().max().item() < 1e-5
    shift = torch.zeros(2, 2, 16, 16)
    shift[:, 0] = 2 * 3 / 16  # +3 pixels in x, in normalised units (2 = width)
    shift[:, 1] = -2 * 2 / 16  # -2 pixels in y
    out = warp(feats, shift)  # out(y, x) = feats(y - 2, x + 3)
    assert (out[:, :, 2:, :13] - feats[:, :, :14, 3:]).abs().max().item() < 1e-5
    grid = identity_grid(4)
    assert torch.allclose(grid[0, 0, :, 0], torch.tensor([-0.75, -0.25, 0.25, 0.75]))


def test_untrained_decoder_starts_from_zero_flow_and_identity_modulation():
    _, dec = build()
    with torch.no_grad():
        ident = dec.encode_reference(torch.rand(1, 3, 64, 64))
        flow, occlusion = dec.flow(ident, dec.style(torch.randn(3, 32)))
        conv = ModulatedConv(4, 4, 8)
        x = torch.randn(2, 4, 8, 8)
        plain = torch.nn.functional.leaky_relu(conv.conv(x), 0.2)
        modulated = conv(x, torch.randn(2, 8))
    assert flow.abs().max().item() < 1e-6  # the identity affine warp, up to float rounding
    assert occlusion.min().item() > 0.9
    assert torch.allclose(modulated, plain)


def test_untrained_decoder_starts_close_to_the_warped_portrait():
    """The full-resolution skip: before training, the output is mostly the (unwarped) reference portrait."""
    _, dec = build()
    ref = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        out = dec(dec.encode_reference(ref), torch.randn(2, 32))
    mask = torch.sigmoid(torch.tensor(2.0))  # the initial blend weight of the warped portrait
    assert ((out - ref).abs().mean(dim=(1, 2, 3)) < (1 - mask) * 0.6).all()


def test_ms_ssim_values():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64)
    assert torch.allclose(ms_ssim(x, x), torch.ones(2), atol=1e-5)
    slight = ms_ssim(x, (x + 0.02 * torch.randn_like(x)).clamp(0, 1))
    heavy = ms_ssim(x, (x + 0.3 * torch.randn_like(x)).clamp(0, 1))
    unrelated = ms_ssim(x, torch.rand(2, 3, 64, 64))
    assert (slight > 0.99).all() and (heavy < 0.8).all() and (unrelated < 0.1).all()
    assert (slight > heavy).all() and (heavy > unrelated).all()


def test_reconstruction_loss_is_zero_only_for_a_perfect_match():
    x = torch.rand(2, 3, 64, 64)
    z = torch.zeros(2, 32)
    perfect, metrics = reconstruction_loss(x, x, z, SMALL_DEC)
    worse, _ = reconstruction_loss(x.flip(-1), x, z, SMALL_DEC)
    assert perfect.item() < 1e-4 and metrics["psnr_db"].item() > 60
    assert worse.item() > 0.1


def test_cross_identity_loss_decreases():
    enc, dec = build(seed=1)
    g = torch.Generator().manual_seed(0)
    centres = 0.35 + 0.3 * torch.rand(4, 2, generator=g)  # the shared "motion": where the head is
    frame_a = render(centres, (0.9, 0.2, 0.2), 0.3)  # identity A: red head, dark background
    target_b = render(centres, (0.2, 0.3, 0.9), 0.7)  # identity B: blue head, light background, same motion
    ref_b = render(torch.tensor([[0.5, 0.5]]), (0.2, 0.3, 0.9), 0.7)
    opt = torch.optim.Adam(list(enc.parameters()) + list(dec.parameters()), lr=3e-3)
    losses = []
    for _ in range(25):
        loss, metrics = decoder_loss(enc, dec, frame_a, ref_b, target_b)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert set(metrics) >= {"loss", "l1", "ms_ssim", "z_reg", "psnr_db"}
    assert min(losses[-5:]) < 0.7 * losses[0]


def test_deterministic_under_fixed_seed():
    frames = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    outs = []
    for seed in (5, 5, 6):
        enc, dec = build(seed)
        with torch.no_grad():
            outs.append(dec(dec.encode_reference(frames[:1]), enc(frames)))
    assert torch.equal(outs[0], outs[1])
    assert not torch.allclose(outs[0], outs[2])


def test_tiny_presets_forward_backward_reaches_every_parameter():
    torch.manual_seed(0)
    enc, dec = MotionEncoder(MOTION_AE_PRESETS["tiny"]), VideoDecoder(DECODER_PRESETS["tiny"])
    frames = torch.rand(2, 3, 256, 256)
    loss, _ = decoder_loss(enc, dec, frames, frames[:1], frames.flip(0))
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in list(enc.parameters()) + list(dec.parameters()))


@pytest.mark.parametrize("name", ["base", "large"])
def test_large_presets_are_consistent(name):
    enc_cfg, dec_cfg = MOTION_AE_PRESETS[name], DECODER_PRESETS[name]
    assert dec_cfg.resolution == 512 and enc_cfg.d_motion == dec_cfg.d_motion
    assert sum(dec_cfg.channels) > sum(DECODER_PRESETS["tiny"].channels)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"resolution": 32}, "64..512"), ({"resolution": 1024}, "64..512"), ({"resolution": 100}, "divisible"),
     ({"channels": ()}, "channels"), ({"d_motion": 0}, "d_motion"), ({"ssim_scales": 5, "resolution": 64}, "scales")],
)
def test_bad_decoder_config(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DecoderConfig(**kwargs)


def test_bad_motion_ae_config():
    with pytest.raises(ConfigError, match="input_size"):
        MotionAEConfig(input_size=16)
    with pytest.raises(ConfigError, match="divisible"):
        MotionAEConfig(input_size=100)


def test_bad_inputs_raise_input_error():
    enc, dec = build()
    ident = dec.encode_reference(torch.rand(1, 3, 64, 64))
    cases = [
        (lambda: dec.encode_reference(torch.rand(1, 3, 128, 128)), "64x64"),
        (lambda: dec.encode_reference(torch.rand(3, 64, 64)), "shape"),
        (lambda: dec.encode_reference(torch.rand(1, 3, 64, 64) * 255), r"\[0, 1\]"),
        (lambda: enc(torch.randint(0, 255, (1, 3, 64, 64))), "float"),
        (lambda: enc(torch.full((1, 3, 64, 64), float("nan"))), "NaN"),
        (lambda: dec(ident, torch.randn(2, 16)), "z must be"),
        (lambda: dec(ident, torch.full((2, 32), float("inf"))), "NaN or inf"),
        (lambda: dec(dec.encode_reference(torch.rand(2, 3, 64, 64)), torch.randn(3, 32)), "identity batch"),
        (lambda: dec(ident.levels, torch.randn(1, 32)), "encode_reference"),
        (lambda: decoder_loss(enc, dec, torch.rand(2, 3, 64, 64), torch.rand(1, 3, 64, 64),
                              torch.rand(3, 3, 64, 64)), "batch sizes"),
    ]
    for call, match in cases:
        with pytest.raises(InputError, match=match):
            call()


def test_lifting_before_the_upsampling_gives_the_frames_of_lifting_after():
    """The decoder lifts each coarser level with its 1x1 conv before the nearest upsampling (4x fewer pixels); a
    1x1 conv commutes with nearest upsampling, so the frames are those of the upsample-then-lift order."""
    import torch.nn.functional as F

    _, dec = build(3)
    with torch.no_grad():
        for lift in dec.lift:  # trained lifts are not the identity-like initial ones
            lift.weight.normal_(0, 0.5)
            lift.bias.normal_(0, 0.5)
        ident = dec.encode_reference(torch.rand(1, 3, 64, 64))
        z = torch.randn(3, 32)
        sides = []
        hooks = [lift.register_forward_pre_hook(lambda m, args: sides.append(args[0].shape[-1])) for lift in dec.lift]
        frames = dec(ident, z)
        for h in hooks:
            h.remove()
        calls = []

        def upsample_first(module, args):  # the other order: the lift sees the upsampled input
            calls.append(1)
            return (F.interpolate(args[0], scale_factor=2, mode="nearest"),)

        def downsample_after(module, args, out):
            return out[..., ::2, ::2]  # undo the decoder's own upsampling of the lift's output (nearest: exact)

        hooks = [h for lift in dec.lift for h in (lift.register_forward_pre_hook(upsample_first),
                                                  lift.register_forward_hook(downsample_after))]
        try:
            other = dec(ident, z)
        finally:
            for h in hooks:
                h.remove()
    # the lifts run at the coarser level's side (coarsest first: 8 -> 16 at 64², then 16 -> 32), not after upsampling
    assert sides == [level.shape[-1] for level in ident.levels[1:]][::-1], sides
    assert len(calls) == len(dec.lift)
    assert torch.allclose(frames, other, atol=1e-6), (frames - other).abs().max()
