"""Step distillation: a student learns to sample in one step what its teacher samples in four, and the sampler runs
a generator at the steps its weights declare."""

import dataclasses

import pytest
import torch

from actorcast.models.errors import ConfigError
from actorcast.models.kv_cache import CacheConfig
from actorcast.models.motion import MotionConfig, MotionGenerator
from actorcast.models.sampling import SamplerConfig, generate
from actorcast.models.training.distill import step_distillation_loss, student_levels

SMALL = MotionConfig(d_motion=4, d_audio=5, d_model=32, n_layers=2, n_heads=2, audio_past=2, chunk_frames=2,
                     chunk_choices=(1,))


def _teacher():
    """A teacher whose 4-step sample differs clearly from its 1-step one (sharp, curved velocity field)."""
    torch.manual_seed(0)
    model = MotionGenerator(SMALL).eval()
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.qkv.weight.mul_(4.0)
        model.head.weight.mul_(3.0)
    return model.requires_grad_(False)


def _data(B=8, T=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, T, SMALL.d_motion, generator=g), torch.randn(B, T + 2, SMALL.d_audio, generator=g)[:, :T],
            torch.randn(B, SMALL.d_motion, generator=g), torch.arange(B) % 6)


def _gap(student, teacher, audio, z_ref, emotion) -> float:
    """Mean squared gap between the student's and the teacher's first chunk of a stream, from the same noise."""
    feats = audio[:, :SMALL.chunk_frames]
    with torch.no_grad():
        a = generate(student, feats, z_ref, emotion, CacheConfig(), SamplerConfig(seed=5))
        b = generate(teacher, feats, z_ref, emotion, CacheConfig(), SamplerConfig(seed=5))
    return float((a - b).pow(2).mean())


def test_a_distilled_student_samples_in_one_step_what_the_teacher_samples_in_four():
    teacher = _teacher()
    student = MotionGenerator(dataclasses.replace(SMALL, sampler_steps=1))
    student.load_state_dict(teacher.state_dict())
    student.requires_grad_(True)
    z, audio, z_ref, emotion = _data(B=32)
    _, audio_new, z_ref_new, emotion_new = _data(seed=7)  # measured on other clips than it learns from
    before = _gap(student, teacher, audio_new, z_ref_new, emotion_new)
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(2)
    for _ in range(200):
        loss = step_distillation_loss(student.train(), teacher, z, audio, z_ref, emotion, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = _gap(student.eval(), teacher, audio_new, z_ref_new, emotion_new)
    assert before > 1e-3, before  # the teacher's curved field: one naive step misses its sample
    assert after < 0.3 * before, (before, after)


def test_the_sampler_runs_the_steps_the_weights_declare():
    teacher = _teacher()
    one = MotionGenerator(dataclasses.replace(SMALL, sampler_steps=1)).eval()
    one.load_state_dict(teacher.state_dict())
    _, audio, z_ref, _ = _data()
    feats = torch.cat((audio, torch.zeros_like(audio[:, :2])), dim=1)[:2]
    with torch.no_grad():
        declared = generate(one, feats, z_ref[:2], None, CacheConfig(), SamplerConfig(seed=3))
        explicit = generate(teacher, feats, z_ref[:2], None, CacheConfig(), SamplerConfig(1, seed=3))
        four = generate(teacher, feats, z_ref[:2], None, CacheConfig(), SamplerConfig(seed=3))
    assert torch.allclose(declared, explicit, atol=1e-6)
    assert not torch.allclose(declared, four, atol=1e-3)
    assert student_levels(2) == [1.0, 0.5, 0.0]


def test_distillation_needs_a_teacher_with_a_multiple_of_the_students_steps():
    teacher = _teacher()
    student = MotionGenerator(dataclasses.replace(SMALL, sampler_steps=3))
    with pytest.raises(ConfigError, match="multiple"):
        step_distillation_loss(student, teacher, *_data())
    with pytest.raises(ConfigError, match="sampler_steps=0"):
        MotionConfig(sampler_steps=0)
