"""Video decoder: a cached identity feature pyramid, warped by a flow field that z predicts, decoded to RGB.

Per session the reference portrait is encoded once (`encode_reference`) into features at 1/2, 1/4, ... of the
resolution. Per frame, the motion latent z drives (1) a warp field predicted at the coarsest level: a global
affine part (the head's translation, scale and rotation) plus a dense local flow and an occlusion mask, from the
reference's coarse features and a z-driven spatial map, upsampled to every level, which warps the reference
features with `F.grid_sample`, and (2) FiLM scale/shift of every decoder conv. The output blends the portrait
itself, warped at full resolution (sharp detail), with generated pixels (an opening mouth, disocclusions) through
a predicted mask. Losses (L1 + multi-scale SSIM + a small latent regulariser; on synthetic data also the
new-pixel terms and the regression of the true motion) and the cross-identity training step live here too.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from actorcast.models.data.params import N_PARAMS, PARAM_RANGES
from actorcast.models.errors import ConfigError, InputError
from actorcast.models.motion_ae import MotionEncoder, check_frames

SSIM_WINDOW = 11  # Gaussian window of SSIM (Wang et al. 2004), sigma 1.5
SSIM_SIGMA = 1.5
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # per scale, finest first (Wang et al. 2003)
Z_MAP_CHANNELS = 8  # channels of the z-driven spatial map fed to the flow head


@dataclass(frozen=True)
class DecoderConfig:
    """Sizes of the video decoder and weights of its loss; `channels` are the pyramid widths, finest first."""

    resolution: int = 256
    d_motion: int = 32
    channels: tuple[int, ...] = (16, 32, 64, 96)  # at resolution / 2, / 4, / 8, / 16
    blocks_per_level: int = 1  # modulated 3x3 convs per pyramid level
    d_hidden: int = 256  # width of the z MLP
    flow_channels: int = 32
    l1_weight: float = 1.0
    ssim_weight: float = 1.0
    ssim_scales: int = 3
    z_reg_weight: float = 1e-3
    # Where the frame shows pixels the portrait does not have (the inside of an open mouth, teeth, closed
    # eyelids), whole-frame L1 + MS-SSIM gives almost no gradient: the mouth is under 1 % of the pixels. On
    # synthetic data the trainer knows those pixels (`new_pixels`), and two terms aim at them: a mean L1 inside
    # them (so the mouth weighs as much as the rest of the frame) and a BCE that opens the blend mask there.
    region_l1_weight: float = 1.0
    blend_weight: float = 0.2
    # The first `N_PARAMS` latent dimensions regress the true motion parameters (normalised to [-1, 1]) when they
    # are known (synthetic data), so z carries the motion from the first steps; the rest stay free.
    param_weight: float = 1.0

    def __post_init__(self) -> None:
        n = len(self.channels)
        if not 64 <= self.resolution <= 512:
            raise ConfigError(f"DecoderConfig.resolution={self.resolution} must be in 64..512 (default 256)")
        if not self.channels or min(self.channels) < 1:
            raise ConfigError(f"DecoderConfig.channels={self.channels} must be a non-empty tuple of positive ints")
        if self.resolution % (1 << n) or self.resolution >> n < 4:
            raise ConfigError(
                f"DecoderConfig.resolution={self.resolution} must be divisible by 2^{n} (one level per channel "
                f"entry) with a coarsest level of at least 4x4; use a multiple of {1 << n} or fewer levels"
            )
        for name in ("d_motion", "d_hidden", "flow_channels", "blocks_per_level"):
            if getattr(self, name) < 1:
                raise ConfigError(f"DecoderConfig.{name}={getattr(self, name)} must be >= 1")
        if not 1 <= self.ssim_scales <= len(MS_SSIM_WEIGHTS):
            raise ConfigError(f"DecoderConfig.ssim_scales={self.ssim_scales} must be in 1..{len(MS_SSIM_WEIGHTS)}")
        if self.resolution >> (self.ssim_scales - 1) < SSIM_WINDOW:
            raise ConfigError(
                f"DecoderConfig.ssim_scales={self.ssim_scales} shrinks {self.resolution}px below the "
                f"{SSIM_WINDOW}px SSIM window; use fewer scales"
            )
        if min(self.l1_weight, self.ssim_weight, self.z_reg_weight, self.region_l1_weight, self.blend_weight,
               self.param_weight) < 0:
            raise ConfigError("DecoderConfig loss weights must be >= 0")


# Per-frame cost of `tiny` at 256^2 (FlopCounterMode, 2 x MAC): level 16^2 (96 ch) 0.04 + flow head 0.02,
# 32^2 (64 ch) 0.09, 64^2 (32 ch) 0.09, 128^2 (16 ch) 0.09, to-RGB 0.06 ~= 0.39 GFLOP + grid_sample; measured
# ~10-15 ms per frame in batches of 4 on 2 CPU cores (bench/models.py). The reference encoder runs once a session.
DECODER_PRESETS: dict[str, DecoderConfig] = {
    "tiny": DecoderConfig(),
    "base": DecoderConfig(resolution=512, channels=(32, 64, 128, 256, 256), blocks_per_level=2, d_hidden=512,
                          flow_channels=64),
    "large": DecoderConfig(resolution=512, channels=(48, 96, 192, 384, 512), blocks_per_level=3, d_hidden=768,
                           flow_channels=128),
}


@dataclass(frozen=True)
class IdentityFeatures:
    """One identity's cached reference: the pyramid `levels[i]` (B, channels[i], res / 2^(i+1), same) and the
    portrait itself `image` (B, 3, res, res), which the decoder warps at full resolution for sharp detail."""

    levels: tuple[torch.Tensor, ...]
    resolution: int
    image: torch.Tensor

    @property
    def batch(self) -> int:
        return self.levels[0].shape[0]


def identity_grid(size: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Sampling grid (1, size, size, 2) of pixel centres in [-1, 1] (x, y): grid_sample with it is the identity."""
    coords = (torch.arange(size, device=device, dtype=dtype) * 2 + 1) / size - 1
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    return torch.stack([x, y], dim=-1)[None]


def warp(features: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Backward-warp (B, C, H, W) by flow (B, 2, H, W) in normalised units (2 = image width): out(p) = f(p + flow)."""
    grid = identity_grid(features.shape[-1], features.device, features.dtype) + flow.permute(0, 2, 3, 1)
    return F.grid_sample(features, grid, mode="bilinear", padding_mode="border", align_corners=False)


class ModulatedConv(nn.Module):
    """3x3 conv -> FiLM (scale, shift from the style vector; starts as the identity) -> LeakyReLU."""

    def __init__(self, c_in: int, c_out: int, d_style: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.film = nn.Linear(d_style, 2 * c_out)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W), style (B, d_style) -> (B, C_out, H, W)."""
        scale, shift = self.film(style)[:, :, None, None].chunk(2, dim=1)  # (B, C_out, 1, 1) each
        return F.leaky_relu(self.conv(x) * (1 + scale) + shift, 0.2)


class VideoDecoder(nn.Module):
    """(cached reference pyramid, z (B', d_motion)) -> frames (B', 3, H, W) in [0, 1]."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = c = config
        # What z is: "params" when trained on the true motion (`train --latent params`: its first N_PARAMS
        # dimensions are the normalised parameters, which the photo rig reads), else "encoder". Set on loading.
        self.latent = "encoder"
        ch = c.channels
        self.ref_encoder = nn.ModuleList()
        c_in = 3
        for c_out in ch:  # stride-2 conv + 3x3 conv per level, finest first
            self.ref_encoder.append(nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
                nn.Conv2d(c_out, c_out, 3, padding=1), nn.LeakyReLU(0.2),
            ))
            c_in = c_out
        self.coarse = c.resolution >> len(ch)  # side of the coarsest level
        self.style = nn.Sequential(
            nn.Linear(c.d_motion, c.d_hidden), nn.SiLU(), nn.Linear(c.d_hidden, c.d_hidden), nn.SiLU()
        )
        self.z_map = nn.Linear(c.d_hidden, Z_MAP_CHANNELS * self.coarse**2)  # where z acts, per coarse cell
        self.flow_in = ModulatedConv(ch[-1] + Z_MAP_CHANNELS, c.flow_channels, c.d_hidden)
        self.flow_out = nn.Conv2d(c.flow_channels, 3, 3, padding=1)  # 2 flow + 1 occlusion logit
        nn.init.zeros_(self.flow_out.weight)  # start from zero flow and an almost-open occlusion mask
        # A global affine warp (the head's translation, scale, rotation) under the local flow: its gradient
        # gathers over the whole image, where a dense flow only sees local edges, so large head motion is learnt.
        self.affine = nn.Linear(c.d_hidden, 6)
        nn.init.zeros_(self.affine.weight)
        with torch.no_grad():
            self.affine.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))
        with torch.no_grad():
            self.flow_out.bias.copy_(torch.tensor([0.0, 0.0, 3.0]))
        self.lift = nn.ModuleList([nn.Conv2d(ch[i + 1], ch[i], 1) for i in range(len(ch) - 1)])
        self.blocks = nn.ModuleList([
            nn.ModuleList([ModulatedConv(ch[i], ch[i], c.d_hidden) for _ in range(c.blocks_per_level)])
            for i in range(len(ch))
        ])
        # At resolution / 2, then pixel shuffle x2: 3 generated RGB channels + 1 logit of the mask that blends the
        # full-resolution warped portrait (sharp wherever warping explains the frame) with the generated pixels
        # (new content: the inside of an opening mouth, disoccluded background).
        self.to_rgb = nn.Conv2d(ch[0], 4 * 4, 3, padding=1)
        with torch.no_grad():
            self.to_rgb.bias.view(4, 4)[3].fill_(2.0)  # start mostly as the warped portrait

    def encode_reference(self, reference: torch.Tensor) -> IdentityFeatures:
        """(B, 3, H, W) in [0, 1], H = W = resolution -> the identity pyramid (compute once per session)."""
        check_frames(reference, "reference", self.config.resolution)
        h, levels = reference * 2 - 1, []
        for stage in self.ref_encoder:
            h = stage(h)
            levels.append(h)  # (B, channels[i], res / 2^(i+1), same)
        return IdentityFeatures(levels=tuple(levels), resolution=self.config.resolution, image=reference)

    def _check_inputs(self, identity: IdentityFeatures, z: torch.Tensor) -> None:
        if not isinstance(identity, IdentityFeatures) or identity.resolution != self.config.resolution:
            raise InputError("identity must come from this decoder's encode_reference() at its resolution")
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[1] != self.config.d_motion or len(z) == 0:
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise InputError(f"z must be (B, {self.config.d_motion}) motion latents, got {shape}")
        if identity.batch not in (1, z.shape[0]):
            raise InputError(f"identity batch {identity.batch} must be 1 (shared) or equal z's batch {z.shape[0]}")
        if not bool(torch.isfinite(z).all()):
            raise InputError("z contains NaN or inf values")

    def flow(self, identity: IdentityFeatures, style: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Style (B', d_hidden) -> flow (B', 2, r, r), normalised units, and occlusion (B', 1, r, r); r = coarsest."""
        b, r = style.shape[0], self.coarse
        ref = identity.levels[-1].expand(b, -1, -1, -1)  # (B', C, r, r)
        zmap = self.z_map(style).view(b, Z_MAP_CHANNELS, r, r)
        out = self.flow_out(self.flow_in(torch.cat([ref, zmap], dim=1), style))  # (B', 3, r, r)
        theta = self.affine(style).view(b, 2, 3)
        affine = F.affine_grid(theta, [b, 1, r, r], align_corners=False) - identity_grid(r, style.device, style.dtype)
        return out[:, :2] + affine.permute(0, 3, 1, 2), torch.sigmoid(out[:, 2:])

    def forward(self, identity: IdentityFeatures, z: torch.Tensor) -> torch.Tensor:
        """identity (1 or B' frames), z (B', d_motion) -> frames (B', 3, resolution, resolution) in [0, 1]."""
        return self.render(identity, z)[0]

    def render(self, identity: IdentityFeatures, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Like forward, plus the blend logit (B', 1, res, res), > 0 keeps the warped portrait and < 0 paints, and
        the painted pixels themselves (B', 3, res, res) in [0, 1]."""
        self._check_inputs(identity, z)
        style = self.style(z)  # (B', d_hidden)
        flow, occlusion = self.flow(identity, style)  # (B', 2, r, r), (B', 1, r, r)
        h = None
        for i in reversed(range(len(self.config.channels))):  # coarsest level first
            ref = identity.levels[i].expand(z.shape[0], -1, -1, -1)  # (B', C_i, S_i, S_i)
            size = ref.shape[-2:]
            flow_i = F.interpolate(flow, size=size, mode="bilinear", align_corners=False)
            occ_i = F.interpolate(occlusion, size=size, mode="bilinear", align_corners=False)
            w = warp(ref, flow_i) * occ_i
            if h is not None:
                # A 1x1 conv commutes with nearest upsampling: lifting first touches 4x fewer pixels, same values
                h = F.interpolate(self.lift[i](h), scale_factor=2, mode="nearest")  # (B', C_i, S_i, S_i)
                w = w + h
            h = w
            for block in self.blocks[i]:
                h = block(h, style)
        out = F.pixel_shuffle(self.to_rgb(h), 2)  # (B', 4, res, res)
        res = self.config.resolution
        flow_full = F.interpolate(flow, size=(res, res), mode="bilinear", align_corners=False)
        warped = warp(identity.image.expand(z.shape[0], -1, -1, -1), flow_full)  # (B', 3, res, res)
        mask, painted = torch.sigmoid(out[:, 3:]), torch.sigmoid(out[:, :3])
        return mask * warped + (1 - mask) * painted, out[:, 3:], painted  # frames (B', 3, res, res) in [0, 1]


# ---- losses ------------------------------------------------------------------------------------------------


def _gaussian_window(channels: int, device, dtype) -> torch.Tensor:
    """Normalised 2-D Gaussian (C, 1, 11, 11) for a depthwise conv."""
    x = torch.arange(SSIM_WINDOW, device=device, dtype=dtype) - (SSIM_WINDOW - 1) / 2
    g = torch.exp(-(x**2) / (2 * SSIM_SIGMA**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, -1, -1).contiguous()


def _ssim_parts(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean SSIM and mean contrast-structure term per image (B,), for images in [0, 1] (valid windows only)."""
    c1, c2 = 0.01**2, 0.03**2  # (K * data range)^2 with data range 1
    win = _gaussian_window(x.shape[1], x.device, x.dtype)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, win, groups=x.shape[1])

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    cs = (2 * cov + c2) / (var_x + var_y + c2)
    luminance = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    return (luminance * cs).flatten(1).mean(1), cs.flatten(1).mean(1)


def ms_ssim(x: torch.Tensor, y: torch.Tensor, scales: int = 3) -> torch.Tensor:
    """Multi-scale SSIM per image (B,) in [0, 1]: contrast-structure at each scale, full SSIM at the coarsest."""
    weights = torch.tensor(MS_SSIM_WEIGHTS[:scales], device=x.device, dtype=x.dtype)
    weights = weights / weights.sum()
    terms = []
    for s in range(scales):
        ssim, cs = _ssim_parts(x, y)
        terms.append(ssim if s == scales - 1 else cs)
        if s < scales - 1:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    # Clamp away from 0: fractional powers of negatives are undefined and of 0 have infinite gradients.
    values = torch.stack(terms, dim=1).clamp_min(1e-6)  # (B, scales)
    return torch.prod(values ** weights, dim=1)


def reconstruction_loss(
    pred: torch.Tensor, target: torch.Tensor, z: torch.Tensor, config: DecoderConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L1 + (1 - MS-SSIM) on frames (B, 3, H, W) + mean z^2; returns the loss and detached metrics."""
    if pred.shape != target.shape:
        raise InputError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
    l1 = (pred - target).abs().mean()
    ssim = ms_ssim(pred, target, config.ssim_scales).mean()
    z_reg = z.square().mean()
    loss = config.l1_weight * l1 + config.ssim_weight * (1 - ssim) + config.z_reg_weight * z_reg
    mse = (pred - target).square().mean().detach()
    metrics = {
        "loss": loss.detach(), "l1": l1.detach(), "ms_ssim": ssim.detach(), "z_reg": z_reg.detach(),
        "psnr_db": -10 * torch.log10(mse.clamp_min(1e-10)),
    }
    return loss, metrics


def new_pixel_loss(
    pred: torch.Tensor, blend_logit: torch.Tensor, painted: torch.Tensor, target: torch.Tensor,
    new_pixels: torch.Tensor, config: DecoderConfig,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean L1 inside the new pixels (B, 1, H, W) in {0, 1}, of the frame and of the painted branch on its own, plus
    a class-balanced BCE pulling the blend mask to 'paint' there and 'warp' elsewhere. Returns the weighted loss
    and detached metrics."""
    inside = (new_pixels.sum() * pred.shape[1]).clamp_min(1.0)
    region_l1 = ((pred - target).abs() * new_pixels).sum() / inside
    # The painted branch learns the inner mouth directly, not only through the mask: while the mask still warps
    # there, the frame's L1 gives it almost no gradient (seen: a blurry pink blob after 2,000 steps).
    paint_l1 = ((painted - target).abs() * new_pixels).sum() / inside
    # Class-balanced: the new pixels are ~0.5 % of the frame, so a plain mean BCE is all "warp" and never opens
    # the mask at the mouth (seen: after 1,500 steps the mask still kept the warped, closed mouth everywhere).
    bce = F.binary_cross_entropy_with_logits(blend_logit, 1 - new_pixels, reduction="none")
    outside = 1 - new_pixels
    blend = ((bce * new_pixels).sum() / new_pixels.sum().clamp_min(1.0)
             + (bce * outside).sum() / outside.sum().clamp_min(1.0)) / 2
    loss = config.region_l1_weight * (region_l1 + paint_l1) + config.blend_weight * blend
    return loss, {"region_l1": region_l1.detach(), "paint_l1": paint_l1.detach(), "blend_bce": blend.detach()}


def _param_span(like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(middle, half-width) of each parameter's range (PARAM_RANGES), (N_PARAMS,) each, on `like`'s device."""
    low = like.new_tensor([r[0] for r in PARAM_RANGES])
    high = like.new_tensor([r[1] for r in PARAM_RANGES])
    return (low + high) / 2, (high - low) / 2


def normalise_params(params: torch.Tensor) -> torch.Tensor:
    """(B, N_PARAMS) motion parameters -> [-1, 1] per column (PARAM_RANGES), the scale the latent regresses."""
    middle, half = _param_span(params)
    return (params - middle) / half


def denormalise_params(normalised: torch.Tensor) -> torch.Tensor:
    """The inverse of `normalise_params`: (B, N_PARAMS) in [-1, 1] -> motion parameters in their own units."""
    middle, half = _param_span(normalised)
    return normalised * half + middle


def param_latent(params: torch.Tensor, d_motion: int) -> torch.Tensor:
    """(B, N_PARAMS) true motion -> (B, d_motion) latent: the normalised parameters, then zeros (the free part).
    The latent of a decoder trained on the true motion (`train --latent params`)."""
    if d_motion < N_PARAMS:
        raise ConfigError(f"d_motion={d_motion} cannot hold the {N_PARAMS} motion parameters")
    return F.pad(normalise_params(params), (0, d_motion - N_PARAMS))


def frame_loss(
    decoder: "VideoDecoder", ref_b: torch.Tensor, target_b: torch.Tensor, z: torch.Tensor,
    new_pixels: torch.Tensor | None = None, z_reg: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Render z (B, d_motion) on the references ref_b and score the frames against target_b: reconstruction, plus the
    new-pixel terms where `new_pixels` is known. The latent regulariser reads `z_reg` if given, else z."""
    pred, blend_logit, painted = decoder.render(decoder.encode_reference(ref_b), z)  # (B, 3|1|3, res, res)
    loss, metrics = reconstruction_loss(pred, target_b, z if z_reg is None else z_reg, decoder.config)
    if new_pixels is not None:
        extra, parts = new_pixel_loss(pred, blend_logit, painted, target_b, new_pixels, decoder.config)
        loss, metrics = loss + extra, {**metrics, **parts}
    return loss, metrics


def decoder_loss(
    encoder: MotionEncoder, decoder: VideoDecoder, frame_a: torch.Tensor, ref_b: torch.Tensor, target_b: torch.Tensor,
    new_pixels: torch.Tensor | None = None, params: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross-identity step: z from identity A's frame (B, 3, H, W) must rebuild identity B's frame with the same
    motion from B's reference (B, 3, H, W). Where known (synthetic data), `new_pixels` (B, 1, H, W) marks what the
    reference lacks and `params` (B, N_PARAMS) is the true motion. Returns (loss, metrics)."""
    if frame_a.shape[0] != target_b.shape[0] or ref_b.shape[0] not in (1, target_b.shape[0]):
        raise InputError(
            f"batch sizes differ: frame_a {frame_a.shape[0]}, ref_b {ref_b.shape[0]}, target_b {target_b.shape[0]}"
        )
    check_frames(target_b, "target_b", decoder.config.resolution)
    z = encoder(frame_a)  # (B, d_motion)
    loss, metrics = frame_loss(decoder, ref_b, target_b, z, new_pixels)
    if params is not None and decoder.config.param_weight > 0:
        if z.shape[1] < N_PARAMS:
            raise ConfigError(f"d_motion={z.shape[1]} cannot hold the {N_PARAMS} supervised motion parameters")
        param_mse = (z[:, :N_PARAMS] - normalise_params(params)).square().mean()
        loss = loss + decoder.config.param_weight * param_mse
        metrics["param_mse"] = param_mse.detach()
    metrics["loss"] = loss.detach()
    return loss, metrics
