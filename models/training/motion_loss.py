"""The motion generator's training loss: diffusion forcing on rectified flow (docs/ARCHITECTURE.md "Motion
generator"). Training code alone uses it; the model itself lives in models/motion.py."""

import torch

from actorcast.models.motion import NULL_EMOTION, MotionGenerator


def diffusion_forcing_loss(model: MotionGenerator, z, audio, z_ref, emotion=None,
                           generator: torch.Generator | None = None) -> torch.Tensor:
    """Rectified-flow loss with an independent noise level per frame (diffusion forcing).

    z (B, T, d_motion) clean latents, audio (B, T, d_audio), z_ref (B, d_motion), emotion (B,) or None.
    With p_noisy_context, a prefix of whole chunks gets k ~ U(0, k_context_max) and serves as context only
    (excluded from the loss: predicting the noise of an almost clean frame is ill-posed); audio and emotion
    are dropped per sequence for guidance. Random draws come from `generator` (CPU) for reproducibility.
    """
    c = model.config
    B, T, _ = z.shape

    def rand(*shape):
        return torch.rand(shape, generator=generator).to(z.device)

    chunks = c.trained_chunks  # one chunk size for the whole batch (the mask is shared)
    chunk = chunks[int(torch.randint(len(chunks), (1,), generator=generator))] if len(chunks) > 1 else c.chunk_frames
    k = rand(B, T)  # (B, T): every frame its own noise level
    n_chunks = -(-T // chunk)
    if c.p_chunk_level > 0:  # some sequences: one level per chunk, as the sampler denoises a chunk
        per_chunk = rand(B, n_chunks).repeat_interleave(chunk, dim=1)[:, :T]
        k = torch.where((rand(B) < c.p_chunk_level)[:, None], per_chunk, k)
    if n_chunks > 1:
        n_ctx = torch.randint(1, n_chunks, (B,), generator=generator).to(z.device) * chunk  # (B,)
        is_ctx = (rand(B) < c.p_noisy_context)[:, None] & (torch.arange(T, device=z.device)[None] < n_ctx[:, None])
        k = torch.where(is_ctx, k * c.k_context_max, k)
    else:
        is_ctx = torch.zeros(B, T, dtype=torch.bool, device=z.device)
    eps = torch.randn(z.shape, generator=generator).to(z.device, z.dtype)
    x = (1 - k[..., None]) * z + k[..., None] * eps  # rectified flow: k = 1 is pure noise
    audio_keep = rand(B) >= c.p_drop_audio
    if emotion is not None:
        emotion = torch.where(rand(B) < c.p_drop_emotion, torch.full_like(emotion, NULL_EMOTION), emotion)
    v = model(x, k.to(z.dtype), audio, z_ref, emotion, audio_keep, chunk_frames=chunk)
    err = (v - (eps - z)).pow(2)  # (B, T, d_motion)
    lo, hi = c.weighted_dims
    if hi > lo and c.dim_weight != 1.0:
        dims = torch.ones(c.d_motion, device=z.device, dtype=err.dtype)
        dims[lo:hi] = c.dim_weight
        err = err * (dims / dims.mean())  # the same total weight, moved toward the weighted dims
    err = err.mean(dim=-1)  # (B, T)
    weight = (~is_ctx).to(err.dtype)
    return (err * weight).sum() / weight.sum().clamp(min=1.0)
