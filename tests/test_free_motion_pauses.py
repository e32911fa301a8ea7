"""The free motion's start and its pauses (models/free_motion.py): a stream warmed on the data's own motion, and
smaller steps where a probe on the audio feature hears silence; fitted at export (models/training/free_drawing.py)."""

import pytest
import torch

from actorcast.models.free_motion import N_FREE, FreeMotionStream, neutral_free
from tests.test_free_motion import TINY, _models


def _silence_model():
    """A model whose voice probe reads audio feature 0 (after the layer norm) as quiet, and whose draws are a
    random walk of steps of 0.02 (no offsets)."""
    _, free = _models(4)
    with torch.no_grad():
        free.head.weight.zero_()
        free.head.bias.zero_()
        free.head.bias[TINY.n_mix * 4:].view(TINY.n_mix, 2, N_FREE)[:, 1] = -4.0  # softplus: 0.018
    w1 = torch.zeros(4, TINY.d_audio)
    w1[0, 0] = 4.0
    free.voice_probe = {"w1": w1, "b1": torch.zeros(4), "w2": torch.tensor([40.0, 0.0, 0.0, 0.0]),
                        "b2": torch.tensor(-30.0)}
    return free


def _speech_then_silence(n=4, T=120):
    """Features of T frames: speech, then from T / 2 a silence that feature 0 shows."""
    audio = torch.randn(n, T, TINY.d_audio, generator=torch.Generator().manual_seed(n))
    audio[:, :, 0] = -6.0
    audio[:, T // 2:, 0] = 6.0
    return audio


def test_in_silence_the_draws_take_smaller_steps():
    """With a silence step, frames the voice probe reads as quiet are drawn with each group's step from the last
    frame scaled by it (reached with the running quietness's time constant); speech frames are drawn as before,
    bit for bit; a snapshot carries the quietness (the lever: drawn as in speech, the data's pauses moved
    1.2-1.9x the data's, and a lower temperature left the brows' motion there, which is in the mixture's means)."""
    from actorcast.models.free_motion import quietness

    free = _silence_model()
    audio, emotion = _speech_then_silence(), torch.zeros(4, dtype=torch.long)
    assert float(quietness(free.voice_probe, audio[:, :60]).max()) < 1e-6
    assert float(quietness(free.voice_probe, audio[:, 60:]).min()) > 0.99
    free.idle_step = None
    plain = FreeMotionStream(free, 4, seed=2).sample(audio, emotion)
    free.idle_step = (1.0, 1.0, 0.2, 0.2)  # gaze and head still in silence
    quiet = FreeMotionStream(free, 4, seed=2).sample(audio, emotion)
    assert torch.equal(plain[:, :60], quiet[:, :60])

    def steps(x, group):
        return float(x[:, 70:, group].diff(dim=1).std())  # well into the silence

    for group in (slice(4, 6), slice(6, 12)):
        assert 0.15 * steps(plain, group) < steps(quiet, group) < 0.25 * steps(plain, group)
    assert steps(quiet, slice(0, 2)) == pytest.approx(steps(plain, slice(0, 2)), rel=0.02)  # brows keep theirs
    stream = FreeMotionStream(free, 4, seed=2)
    first = stream.sample(audio[:, :70], emotion)
    assert 0.99 < float(stream.quiet.min())  # 10 frames into the silence
    resumed = FreeMotionStream.restore(free, stream.export())
    assert torch.equal(torch.cat((first, resumed.sample(audio[:, 70:], emotion)), 1), quiet)


def test_the_voice_probe_tells_quiet_frames_from_the_audio_feature():
    """fit_voice_probe: a small network that reads from the audio feature whether a frame is quiet (under 3 % of
    the clip's loud level, the measures' silence level); clips with no quiet frames give no probe."""
    from actorcast.models.free_motion import quietness
    from actorcast.models.training.free_drawing import fit_voice_probe

    gen = torch.Generator().manual_seed(0)
    N, T = 6, 100
    loud = torch.ones(N, T)
    for i in range(N):
        loud[i, 20 + 10 * i:45 + 10 * i] = 0.0  # a pause of a second
        loud[i, 5 + i] = 0.0                      # and a word's gap
    pcm = (torch.randn(N, T, 640, generator=gen) * (0.5 * loud[..., None] + 0.001)).reshape(N, -1)
    audio = 0.5 * torch.randn(N, T, 8, generator=gen)
    audio[:, :, 2] += 3.0 * loud  # one feature follows the loudness
    probe = fit_voice_probe({"audio": audio, "pcm": pcm})
    read = quietness(probe, audio)
    assert float(read[loud == 0].mean()) > 0.8 and float(read[loud > 0].mean()) < 0.1
    assert fit_voice_probe({"audio": audio, "pcm": torch.randn(N, T * 640, generator=gen)}) is None


def test_the_silence_step_is_fitted_on_the_silent_frames():
    """fit_idle_step: data whose head moves in speech and holds still in its pause get a smaller step for the
    head in silence; the lids keep theirs (1); without a voice probe there is none. The model is left as it was."""
    from actorcast.models.training.free_drawing import fit_idle_step

    free = _silence_model()
    n, T = 6, 160
    audio = _speech_then_silence(n, T)
    pcm = torch.randn(n, T, 640, generator=torch.Generator().manual_seed(1)) * 0.1
    pcm[:, T // 2:] *= 1e-4
    x = neutral_free().expand(n, T, N_FREE).clone()
    x[:, :T // 2, 6:] += 0.02 * torch.randn(n, T // 2, 6).cumsum(1)  # the head moves while it speaks
    x[:, T // 2:, 6:] = x[:, T // 2 - 1:T // 2, 6:] + 0.001 * torch.randn(n, T // 2, 6)  # and rests in the pause
    data = {"x": x, "audio": audio, "pcm": pcm.reshape(n, -1), "emotion": torch.zeros(n, dtype=torch.long)}
    step = fit_idle_step(free, data, stream_clips=2, settle_clips=0)
    assert step is not None and step[3] < 0.5 and step[1] == 1.0
    assert free.idle_step is None  # the model is left as it was
    free.voice_probe = None
    assert fit_idle_step(free, data, stream_clips=2, settle_clips=0) is None


def test_a_stream_warms_on_the_datas_own_motion_and_starts_where_it_ends():
    """With a fitted start motion (per emotion, the first frames of the training clip nearest the emotion's start
    pose), a new stream's state is warmed on it and the stream starts from its last frame, eyes open (the lever:
    warmed on a face held still, a stream moved 0.83-0.87 as much as the data in its first seconds)."""
    from actorcast.models.data.params import EMOTIONS
    from actorcast.models.free_motion import LIDS, WARM_FRAMES
    from actorcast.models.training.free_drawing import start_motions, start_poses

    T = 40
    x = neutral_free().expand(4, T, N_FREE).clone()
    emotion = torch.tensor([2, 2, 2, 0])
    x[0, :, 6] = torch.linspace(0.0, 0.5, T)  # sad, first frame at the sad median: the head turns
    x[1, :, 6], x[2, :, 6] = 0.9, -0.9
    x[0, -1, LIDS] = 1.0                        # and ends mid-blink
    motions = start_motions(x, emotion, start_poses(x, emotion))
    assert motions.shape == (len(EMOTIONS) + 1, WARM_FRAMES, N_FREE)
    assert torch.equal(motions[2, -T:], x[0]) and torch.equal(motions[2, 0], x[0, 0])  # led in by its first frame
    assert torch.equal(motions[-1], motions[0]) and not motions[1].any()  # none: neutral's; happy: no clips

    _, free = _models()
    with torch.no_grad():  # a model that holds its input: zero offsets at the floor spread
        free.head.weight.zero_()
        free.head.bias.zero_()
        free.head.bias[free.config.n_mix * 4:].view(free.config.n_mix, 2, N_FREE)[:, 1] = -30.0
    free.start_motion.copy_(motions)
    free.rest_audio.copy_(torch.randn(8))
    out = FreeMotionStream(free, 1, seed=0).sample(torch.randn(1, 3, 8), torch.tensor([2]))[0]
    assert (out[:, 6] - 0.5).abs().max() < 0.05 and out[:, LIDS].max() < -0.95  # open, not the clip's blink
