"""The decoder-training levers that make the mouth and eyes render: each test fails without its lever."""

import numpy as np
import pytest
import torch

from actorcast.models.data.face import feature_points, render, sample_identities
from actorcast.models.data.params import PARAM_INDEX, neutral_params
from actorcast.models.decoder import DECODER_PRESETS, VideoDecoder, decoder_loss, new_pixel_loss, normalise_params
from actorcast.models.motion_ae import MOTION_AE_PRESETS, MotionEncoder
from actorcast.models.training.common import param_pool
from actorcast.models.training.decoder_stage import DecoderStage, new_pixels, shut_params

SIZE = 128
IDS = [3, 11, 42]


def frames_with(**values: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Renders of IDS with the given parameters set (else neutral), and their params (B, 16)."""
    params = neutral_params(len(IDS))
    for name, v in values.items():
        params[:, PARAM_INDEX[name]] = v
    return render(sample_identities(IDS), params, SIZE), params


def inside_box(mask: torch.Tensor, centres: torch.Tensor, half: float) -> torch.Tensor:
    """Fraction (B,) of each mask's pixels within a box of half-width `half` px around its centre (B, 2)."""
    ys, xs = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    box = ((xs[None] - centres[:, 0, None, None]).abs() <= half) & ((ys[None] - centres[:, 1, None, None]).abs()
                                                                   <= half)
    m = mask[:, 0] > 0
    return (m & box).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1)


def test_new_pixels_land_on_the_open_mouth_and_closed_eyes_only():
    open_mouth, params = frames_with(jaw_open=1.0)
    shut = render(sample_identities(IDS), shut_params(params), SIZE)
    mask = new_pixels(open_mouth, shut)
    points = feature_points(sample_identities(IDS), params, SIZE)
    assert (mask.flatten(1).sum(1) > 20).all()  # an open mouth is new content on every face
    # ... and most of it at the mouth (the rest is the dropped chin's outline)
    assert (inside_box(mask, points["mouth"], 0.16 * SIZE) > 0.8).all()
    closed_eyes, params = frames_with(blink_l=1.0, blink_r=1.0)
    mask = new_pixels(closed_eyes, render(sample_identities(IDS), shut_params(params), SIZE))
    points = feature_points(sample_identities(IDS), params, SIZE)
    near_eyes = inside_box(mask, points["eye_l"], 0.08 * SIZE) + inside_box(mask, points["eye_r"], 0.08 * SIZE)
    assert (mask.flatten(1).sum(1) > 10).all() and (near_eyes > 0.9).all()
    neutral, params = frames_with()
    assert new_pixels(neutral, render(sample_identities(IDS), shut_params(params), SIZE)).sum() == 0


def test_decoder_batches_carry_new_pixels_and_true_motion():
    batch = DecoderStage._pairs("train", param_pool("train", 0), np.random.default_rng(0), 6, 64)
    assert batch["new_b"].shape == (6, 1, 64, 64) and batch["params"].shape == (6, 16)
    jaw = batch["params"][:, PARAM_INDEX["jaw_open"]]
    area = batch["new_b"].flatten(1).sum(1)
    assert area[jaw.argmax()] > area[jaw.argmin()]  # wider jaw, more new pixels


def test_region_l1_weighs_the_mouth_like_the_whole_frame():
    target = torch.full((1, 3, 64, 64), 0.5)
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 40:44, 28:36] = 1  # 32 px: under 1 % of the frame, like a mouth
    pred = target.clone()
    pred[..., 40:44, 28:36] = 0.0  # wrong only inside the mouth
    logit = torch.zeros(1, 1, 64, 64)
    loss, parts = new_pixel_loss(pred, logit, pred, target, mask, DECODER_PRESETS["tiny"])
    whole_frame_l1 = float((pred - target).abs().mean())
    assert float(parts["region_l1"]) > 100 * whole_frame_l1 and abs(float(parts["region_l1"]) - 0.5) < 1e-6
    # The blend term prefers painting (logit < 0) inside the new pixels and warping (logit > 0) elsewhere.
    right = torch.where(mask > 0, -5.0, 5.0)
    assert float(new_pixel_loss(pred, right, pred, target, mask, DECODER_PRESETS["tiny"])[1]["blend_bce"]) < \
        0.05 * float(new_pixel_loss(pred, -right, pred, target, mask, DECODER_PRESETS["tiny"])[1]["blend_bce"])
    # Balanced between the classes: a mask that warps everywhere, never painting the 0.8 % of new pixels, costs
    # as much as half of a mask that is wrong everywhere (a plain mean would call it 99 % right).
    warp_everywhere = torch.full_like(logit, 5.0)
    bce = float(new_pixel_loss(pred, warp_everywhere, pred, target, mask, DECODER_PRESETS["tiny"])[1]["blend_bce"])
    assert bce > 0.45 * float(new_pixel_loss(pred, -right, pred, target, mask, DECODER_PRESETS["tiny"])[1]["blend_bce"])


def test_painted_branch_learns_the_mouth_even_where_the_mask_still_warps():
    torch.manual_seed(0)
    config = DECODER_PRESETS["tiny"].__class__(resolution=64)
    decoder = VideoDecoder(config)
    frames, _ = frames_with(jaw_open=1.0)
    frames = torch.nn.functional.interpolate(frames, size=64, mode="area")
    mask = torch.zeros(len(frames), 1, 64, 64)
    mask[..., 40:44, 28:36] = 1
    z = torch.zeros(len(frames), config.d_motion)

    def paint_gradient(loss_of) -> float:
        """|d loss / d weights| of the painted RGB channels of the last conv."""
        decoder.zero_grad()
        pred, logit, painted = decoder.render(decoder.encode_reference(frames), z)
        loss_of(pred, logit, painted).backward()
        return float(decoder.to_rgb.weight.grad.view(4, 4, *decoder.to_rgb.weight.shape[1:])[:3].abs().sum())

    _, logit, painted = decoder.render(decoder.encode_reference(frames), z)
    assert float(torch.sigmoid(logit.detach()).min()) > 0.8  # an untrained mask keeps the warped portrait everywhere
    assert float(new_pixel_loss(painted, logit, painted, frames, mask, config)[1]["paint_l1"].detach()) > 0.05
    with_paint = paint_gradient(lambda p, lg, q: new_pixel_loss(p, lg, q, frames, mask, config)[0])
    frame_only = paint_gradient(lambda p, lg, q: ((p - frames).abs() * mask).sum() / (3 * mask.sum())
                                + config.blend_weight * new_pixel_loss(p, lg, q, frames, mask, config)[1]["blend_bce"])
    assert with_paint > 3 * frame_only  # the painted pixels get their own gradient, not only what the mask lets by


def test_latent_regresses_the_true_motion_where_it_is_known():
    torch.manual_seed(0)
    decoder = VideoDecoder(DECODER_PRESETS["tiny"].__class__(resolution=64))
    encoder = MotionEncoder(MOTION_AE_PRESETS["tiny"])
    frames, params = frames_with(jaw_open=0.8)
    frames = torch.nn.functional.interpolate(frames, size=64, mode="area")
    _, without = decoder_loss(encoder, decoder, frames, frames, frames)
    loss, with_params = decoder_loss(encoder, decoder, frames, frames, frames, params=params)
    assert "param_mse" in with_params and "param_mse" not in without
    assert float(with_params["loss"]) > float(without["loss"])
    loss.backward()
    assert encoder.head.weight.grad[:16].abs().sum() > 0
    n = normalise_params(params)
    assert n.min() >= -1 and n.max() <= 1 and torch.allclose(n[:, PARAM_INDEX["jaw_open"]], torch.tensor(0.6))


def test_params_mode_drives_the_decoder_with_the_true_motion_and_trains_the_encoder_apart():
    """`--latent params`: the decoder renders from the normalised true parameters (free dims near zero), and the
    encoder's loss reaches only the encoder; the decoder's loss does not depend on the encoder at all."""
    from actorcast.models.training.decoder_stage import FREE_NOISE, DecoderTrainer, param_latent

    torch.manual_seed(0)
    trainer = DecoderTrainer("tiny", 64, latent="params")
    batch = DecoderStage._pairs("train", param_pool("train", 0), np.random.default_rng(5), 4, 64)
    batch["noise_seed"] = torch.tensor([3])
    seen = []
    render_fn = trainer.decoder.render
    trainer.decoder.render = lambda identity, z: seen.append(z) or render_fn(identity, z)
    loss, metrics = trainer(batch)
    z = seen[0]
    assert torch.equal(z[:, :16], normalise_params(batch["params"]))
    assert 0 < z[:, 16:].abs().max() < 6 * FREE_NOISE  # noise the decoder learns to ignore, no motion there
    assert torch.equal(param_latent(batch["params"], 32)[:, 16:], torch.zeros(4, 16))
    loss.backward()
    assert trainer.encoder.head.weight.grad.abs().sum() > 0 and "encoder_mse" in metrics
    # Perturbing the encoder changes nothing the decoder sees: its frames come from the true motion only.
    with torch.no_grad():
        trainer.encoder.head.bias.add_(5.0)
    seen.clear()
    trainer(batch)
    assert torch.equal(seen[0], z)


def test_params_mode_needs_synthetic_data(tmp_path):
    from actorcast.models.errors import ConfigError
    from actorcast.models.training.train import TrainConfig

    cfg = TrainConfig(stage="decoder", data=str(tmp_path), latent="params")
    with pytest.raises(ConfigError, match="--latent params needs the synthetic data set"):
        DecoderStage.check(cfg)
    assert TrainConfig(stage="decoder", data=str(tmp_path)).resolved_latent() == "encoder"
    assert TrainConfig(stage="decoder").resolved_latent() == "params"


def test_motion_stage_and_eval_use_the_true_motion_of_a_params_decoder(tmp_path):
    """A decoder trained on the true parameters is exported unfolded with meta latent=params; the motion stage then
    learns the clips' true motion (z_ref still from the encoder, as at inference), and eval's ceiling decodes it."""
    from actorcast.models.checkpoint import save_weights
    from actorcast.models.data.dataset import HELDOUT_START, make_clip
    from actorcast.models.training.decoder_stage import param_latent
    from actorcast.models.training.evaluate import Models, true_motion
    from actorcast.models.training.motion_stage import encode_clips, encoder_latent_kind, load_motion_encoder

    encoder = MotionEncoder(MOTION_AE_PRESETS["tiny"])
    save_weights(tmp_path, "motion_encoder", encoder, encoder.config, {"preset": "tiny", "latent": "params"})
    assert encoder_latent_kind(str(tmp_path)) == "params"
    loaded = load_motion_encoder(str(tmp_path))
    data = encode_clips(loaded, [HELDOUT_START + 3], 1.0, 64, ["babble"], "params")
    clip = make_clip(HELDOUT_START + 3, 1.0, size=64)
    assert torch.equal(data["z"][0], param_latent(clip.params, 32))
    with torch.no_grad():
        assert torch.allclose(data["z_ref"][0], loaded(clip.reference[None])[0], atol=1e-5)
    models = Models(None, None, loaded, VideoDecoder(DECODER_PRESETS["tiny"]), None, latent="params")
    assert torch.equal(true_motion(models, clip), param_latent(clip.params, 32))
    save_weights(tmp_path, "motion_encoder", encoder, encoder.config, {"preset": "tiny"})
    assert encoder_latent_kind(str(tmp_path)) == "encoder"  # exports from before the option
