"""Step distillation of the motion generator: a student that samples in fewer Euler steps what its teacher samples
in more (docs/ARCHITECTURE.md "Sampler").

Progressive distillation (Salimans & Ho, 2022), in the rectified-flow form of the generator: at each of the
student's noise levels k_j, the noised chunk x_j = (1 - k_j) z + k_j eps is carried by the frozen teacher through
its own, finer Euler steps down to the student's next level k_{j+1}; the student learns the one velocity that lands
there in a single step, v* = (x_j - x_teacher) / (k_j - k_{j+1}). With one student step, x_1 is pure noise and the
target is the teacher's whole sample. The chunk attends to a clean past of the same clip, as a live stream's chunk
attends to its cache (or to the reference alone, as a stream's first chunk), with the chunk sizes the generator
is trained for.
"""

import torch

from actorcast.models.errors import ConfigError
from actorcast.models.motion import NULL_EMOTION, MotionGenerator


def student_levels(steps: int) -> list[float]:
    """The noise levels the sampler visits with `steps` Euler steps, from 1 (noise) to 0 (clean)."""
    return torch.linspace(1.0, 0.0, steps + 1).tolist()


def step_distillation_loss(student: MotionGenerator, teacher: MotionGenerator, z, audio, z_ref, emotion=None,
                           generator: torch.Generator | None = None) -> torch.Tensor:
    """Mean squared error between the student's velocity and the one that lands on the teacher's sample.

    z (B, T, d_motion) clean latents, audio (B, T, d_audio), z_ref (B, d_motion), emotion (B,) or None; the
    student's steps are student.config.sampler_steps, the teacher's teacher.config.sampler_steps (a multiple of
    them). One chunk size and one context length are drawn per batch; the chunk's frames are the only ones scored.
    """
    s_steps, t_steps = student.config.sampler_steps, teacher.config.sampler_steps
    if t_steps % s_steps or t_steps <= s_steps:
        raise ConfigError(f"the teacher's {t_steps} steps must be a multiple of the student's {s_steps} (and more)")
    B, T, _ = z.shape
    chunks = [c for c in student.config.trained_chunks if c <= T]
    if not chunks:
        raise ConfigError(f"training windows of {T} frames are shorter than the smallest chunk")
    chunk = chunks[int(torch.randint(len(chunks), (1,), generator=generator))]
    n_ctx = chunk * int(torch.randint(0, (T - chunk) // chunk + 1, (1,), generator=generator))  # 0: a stream's start
    n = n_ctx + chunk
    z, audio = z[:, :n], audio[:, :n]
    if emotion is not None:  # as at inference, with and without an emotion
        drop = torch.rand(B, generator=generator).to(z.device) < student.config.p_drop_emotion
        emotion = torch.where(drop, torch.full_like(emotion, NULL_EMOTION), emotion)
    levels = student_levels(s_steps)
    ratio = t_steps // s_steps
    # every student step at once: B rows per level
    S = s_steps
    eps = torch.randn((B, chunk, z.shape[-1]), generator=generator).to(z.device, z.dtype).repeat(S, 1, 1)
    truth = z[:, n_ctx:].repeat(S, 1, 1)
    k_row = torch.tensor(levels[:-1], device=z.device, dtype=z.dtype).repeat_interleave(B)  # (S*B,)
    x = (1 - k_row[:, None, None]) * truth + k_row[:, None, None] * eps  # the chunk at the student's levels
    past = z.repeat(S, 1, 1)[:, :n_ctx]
    audio, z_ref = audio.repeat(S, 1, 1), z_ref.repeat(S, 1)
    emotion = None if emotion is None else emotion.repeat(S)

    def velocity(model, chunk_x, k):  # (S*B, chunk, d) at levels k (S*B,), over the clean past
        frames = torch.cat((past, chunk_x), dim=1)
        k_frames = torch.cat((torch.zeros(len(k), n_ctx, device=z.device, dtype=z.dtype),
                              k[:, None].expand(-1, chunk)), dim=1)
        return model(frames, k_frames, audio, z_ref, emotion, chunk_frames=chunk)[:, n_ctx:]

    with torch.no_grad():
        dk = (levels[0] - levels[1]) / ratio
        x_t, k_t = x, k_row
        for _ in range(ratio):
            x_t = x_t - dk * velocity(teacher, x_t, k_t)
            k_t = k_t - dk
        target = (x - x_t) / (levels[0] - levels[1])
    return (velocity(student, x, k_row) - target).pow(2).mean()
