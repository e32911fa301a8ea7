"""The free motion: brows, blinks, gaze and head, the parameters that the audio does not determine, sampled frame by
frame from their own history (docs/ARCHITECTURE.md "Free motion").

The motion generator's few-step sampler regresses these to their mean: blinks are rare, short events and nods,
turns and gaze saccades are not fixed by the audio, so a flow sampler of 4 steps averages them away and the face
freezes. This model draws them instead: a GRU reads, per frame, the previous frame's free parameters, the frame's
audio feature and the emotion, and gives a mixture of Gaussians over the next frame's parameters (a mixture
density network). Sampling it frame by frame keeps the data's rates and spreads: a blink starts when the
mixture's "closing" component is drawn, and the recurrent state carries it through and spaces the next one;
the head follows the speech (nods on accents in the data) because the audio feature is an input.

The generator still makes the mouth (jaw, lips) and the smile: the free model replaces only `FREE_PARAMS` in the
latents that leave the sampler, after the generator's cache has been written with its own output, so lip-sync is
the generator's alone. Values live in the latent's normalised parameter scale ([-1, 1] per parameter,
models/decoder.py `normalise_params`).
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from actorcast.models.checkpoint import load_weights, read_header
from actorcast.models.data.params import EMOTIONS, PARAM_INDEX, neutral_params
from actorcast.models.decoder import normalise_params
from actorcast.models.errors import ConfigError, InputError
from actorcast.models.motion import NULL_EMOTION

FREE_PARAMS: tuple[str, ...] = ("brow_raise", "brow_furrow", "blink_l", "blink_r", "gaze_x", "gaze_y",
                                "head_yaw", "head_pitch", "head_roll", "head_x", "head_y", "head_scale")
FREE_START = PARAM_INDEX[FREE_PARAMS[0]]
FREE_SLICE = slice(FREE_START, FREE_START + len(FREE_PARAMS))  # contiguous in PARAM_NAMES
N_FREE = len(FREE_PARAMS)
FREE_GROUPS = ("brows", "blinks", "gaze", "head")  # of models/training/motion_measures.py MOTION_GROUPS
GROUP_DIMS = ([0, 1], [2, 3], [4, 5], [6, 7, 8, 9, 10, 11])  # each group's indices in FREE_PARAMS
BOUND_EDGE = 1e-4  # a normalised value this close to -1 or 1 is at the bound (censored in the likelihood)
GROUP_SIZES = torch.tensor([len(dims) for dims in GROUP_DIMS])
LIDS = slice(GROUP_DIMS[1][0], GROUP_DIMS[1][-1] + 1)  # blink_l, blink_r in FREE_PARAMS
BLINK_ONSET = 0.5  # a blink starts where the lids' mean closure first reaches this (the measures' BLINK_DEPTH)
WARM_FRAMES = 125  # frames of the data's own motion a new stream's state is warmed on (`FreeMotion.start_motion`)
QUIET_FRAMES = 2.0  # time constant, in frames, of a stream's running estimate of silence (`FreeMotionStream.quiet`)


@dataclass(frozen=True)
class FreeMotionConfig:
    """Sizes of the free-motion model and its training window."""

    d_audio: int = 64       # the audio encoder's feature per frame
    d_hidden: int = 128     # GRU state
    n_layers: int = 2
    n_mix: int = 8          # mixture components per frame
    d_emotion: int = 16
    min_std: float = 0.004  # floor of a component's standard deviation (normalised units): keeps the likelihood
                            # finite where the data holds a value exactly (open eyes, blink = 0)
    burn_in: int = 16       # training: frames at a window's start that warm the state up and are not scored
    input_drift: float = 0.0  # training: scale of the slow random walk added to the previous-frame inputs (brows,
                              # gaze and head, in units of each parameter's spread in the training clips;
                              # `drift_walk` in models/training/free_stage.py); 0: teacher forcing on clean inputs

    def __post_init__(self) -> None:
        for name in ("d_audio", "d_hidden", "n_layers", "n_mix", "d_emotion"):
            if getattr(self, name) < 1:
                raise ConfigError(f"FreeMotionConfig.{name}={getattr(self, name)} must be >= 1")
        if not 0.0 < self.min_std < 1.0 or self.burn_in < 0 or self.input_drift < 0.0:
            raise ConfigError(f"min_std={self.min_std} must be in (0, 1), burn_in={self.burn_in} >= 0 and "
                              f"input_drift={self.input_drift} >= 0")


def audio_encoder_digest(weights: str | Path) -> str:
    """A short hash of DIR/audio_encoder.safetensors: the features a free-motion model was trained on (its export
    records it; loading checks it)."""
    return hashlib.sha256((Path(weights) / "audio_encoder.safetensors").read_bytes()).hexdigest()[:16]


def neutral_free() -> torch.Tensor:
    """(N_FREE,) the neutral pose's free parameters, normalised: where a stream starts."""
    return normalise_params(neutral_params(1))[0, FREE_SLICE]


class FreeMotion(nn.Module):
    """Autoregressive mixture-density GRU over the free parameters: p(x_t | x_<t, audio_<=t, emotion)."""

    def __init__(self, config: FreeMotionConfig = FreeMotionConfig()):
        super().__init__()
        self.config = c = config
        self.emotion_emb = nn.Embedding(len(EMOTIONS) + 1, c.d_emotion)  # last index: no emotion given
        self.audio_norm = nn.LayerNorm(c.d_audio)
        self.gru = nn.GRU(N_FREE + c.d_audio + c.d_emotion, c.d_hidden, c.n_layers, batch_first=True)
        self.head = nn.Linear(c.d_hidden, c.n_mix * (len(GROUP_DIMS) + 2 * N_FREE))
        # Per group, the factor on a drawn component's spread (`fit_temperature` in models/training/free_drawing.py,
        # kept in the export's meta): 1 draws the model as trained.
        self.temperature: tuple[float, ...] = (1.0,) * len(GROUP_DIMS)
        # Per group, the factor on each drawn step (from the previous frame to the draw) in silence (`fit_idle_step`
        # in models/training/free_drawing.py, kept in the export's meta; the lids' is 1), or None: drawn as in speech.
        # Which frames are quiet the stream reads off the audio feature through `voice_probe` (`quietness`), a small
        # network fitted at export (`fit_voice_probe`); None: no silence is told apart.
        self.idle_step: tuple[float, ...] | None = None
        self.voice_probe: dict[str, torch.Tensor] | None = None
        # The data's mean blink from its onset, (frames, 2) lid closures in [0, 1] (`blink_profile` in
        # models/training/free_drawing.py, kept in the export's meta); empty: blinks are drawn frame by frame.
        self.blink_profile: torch.Tensor = torch.zeros(0, 2)
        # Per emotion (EMOTIONS, then "no emotion"), the pose a stream starts from, (len(EMOTIONS) + 1, N_FREE)
        # normalised (`start_poses` in models/training/free_drawing.py, kept in the export's meta): the data's clips
        # start with the emotion already on the face (a sad face's brows raised and knit); empty: the neutral pose.
        self.start_pose: torch.Tensor = torch.zeros(0, N_FREE)
        # Per emotion (as start_pose), the first WARM_FRAMES frames of one training clip of that emotion, normalised,
        # and the mean audio feature of the training clips' quiet frames (`start_motions`, `rest_audio` in
        # models/training/free_drawing.py, fitted at export; zeros: not fitted). A new stream warms its state on them
        # (`FreeMotionStream.sample`) and starts from the motion's last frame.
        self.register_buffer("start_motion", torch.zeros(len(EMOTIONS) + 1, WARM_FRAMES, N_FREE))
        self.register_buffer("rest_audio", torch.zeros(c.d_audio))
        self._register_load_state_dict_pre_hook(self._unfitted_start)

    def _unfitted_start(self, state_dict: dict, prefix: str, *_) -> None:
        """Loading an export made before the start motion existed: it stays unfitted (zeros)."""
        for name in ("start_motion", "rest_audio"):
            state_dict.setdefault(prefix + name, getattr(self, name).clone())

    def forward(self, prev: torch.Tensor, audio: torch.Tensor, emotion: torch.Tensor,
                state: torch.Tensor | None = None) -> tuple[list, torch.Tensor]:
        """prev (B, T, N_FREE): the frame before each frame; audio (B, T, d_audio); emotion (B,) indices.
        Returns one mixture per group of GROUP_DIMS, (logits (B, T, M), means (B, T, M, n), log standard deviations
        (B, T, M, n)), and the GRU state (n_layers, B, d_hidden). A mixture per group: a blink's component must not
        also pick the head's (whose spread would then cover every blink state). Means are offsets from the
        previous frame: most motion is slow."""
        c = self.config
        B, T, _ = prev.shape
        emo = self.emotion_emb(emotion)[:, None].expand(B, T, c.d_emotion)
        h, state = self.gru(torch.cat((prev, self.audio_norm(audio), emo), dim=-1), state)  # (B, T, H)
        out = self.head(h)                                                   # (B, T, M * (G + 2 N_FREE))
        logits = out[..., :c.n_mix * len(GROUP_DIMS)].reshape(B, T, len(GROUP_DIMS), c.n_mix)
        mu, log_std = out[..., c.n_mix * len(GROUP_DIMS):].reshape(B, T, c.n_mix, 2, N_FREE).unbind(3)
        mu = prev[:, :, None] + mu                                           # (B, T, M, N_FREE)
        log_std = torch.log(c.min_std + F.softplus(log_std))
        return [(logits[:, :, g], mu[..., dims], log_std[..., dims]) for g, dims in enumerate(GROUP_DIMS)], state

    def nll(self, x: torch.Tensor, audio: torch.Tensor, emotion: torch.Tensor,
            drift: torch.Tensor | None = None) -> torch.Tensor:
        """Mean negative log-likelihood per frame and parameter of windows x (B, T, N_FREE) (true values,
        normalised), teacher-forced, past the burn-in. The first frame's previous frame is itself.

        `drift` (B, T, N_FREE), if given, is added to the previous frames the model reads (clamped to the range),
        while the targets stay the truth: the model learns to bring a draw that has wandered off back to where the
        data lives. Trained on clean inputs alone, it learnt "stay where you are", and drawn for minutes its brows
        walked to a bound the data never reaches and stayed there (docs/ARCHITECTURE.md "Free motion")."""
        prev = torch.cat((x[:, :1], x[:, :-1]), dim=1)
        if drift is not None:
            prev = (prev + drift).clamp(-1.0, 1.0)
        mixtures, _ = self(prev, audio, emotion)
        total = 0.0
        for (logits, mu, log_std), dims in zip(mixtures, GROUP_DIMS):
            log_comp = censored_log_prob(x[:, :, None, dims], mu, log_std)  # (B, T, M)
            log_p = torch.logsumexp(F.log_softmax(logits, -1) + log_comp, dim=-1)  # (B, T)
            total = total - log_p[:, self.config.burn_in:].mean()
        return total / N_FREE


def censored_log_prob(x: torch.Tensor, mu: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log p(x) of each component (..., M), summed over the group's parameters, of a Gaussian censored at the
    parameter range [-1, 1]: a value at a bound has the probability of every draw beyond it (which the clamp puts
    there), a value inside has the density. Open eyes and resting brows sit exactly at a bound; scored by
    density alone, the model would put its mean there and a draw would wander up from it (a squint), where
    censored it puts its mean beyond the bound and the clamp holds the eye open."""
    std = log_std.exp()
    inside = -0.5 * ((x - mu) / std).square() - log_std - 0.9189385332  # log N(x; mu, std)
    below = torch.special.log_ndtr((-1.0 - mu) / std)                    # log P(draw <= -1)
    above = torch.special.log_ndtr((mu - 1.0) / std)                     # log P(draw >= 1)
    log_p = torch.where(x <= -1.0 + BOUND_EDGE, below, torch.where(x >= 1.0 - BOUND_EDGE, above, inside))
    return log_p.sum(-1)


def quietness(probe: dict[str, torch.Tensor], audio: torch.Tensor) -> torch.Tensor:
    """(...) how surely each frame of the audio features (..., d_audio) is quiet, 0..1: `FreeMotion.voice_probe`, a
    layer norm, a tanh layer ("w1" (H, d_audio), "b1" (H,)) and a logistic read-out ("w2" (H,), "b2" ())."""
    x = F.layer_norm(audio.float(), (audio.shape[-1],))
    return torch.sigmoid(torch.tanh(x @ probe["w1"].T + probe["b1"]) @ probe["w2"] + probe["b2"])


def draw(mixtures: list, generator: torch.Generator, temperature: tuple[float, ...]) -> torch.Tensor:
    """One frame (B, N_FREE) from the per-group mixtures of `FreeMotion.forward` for a single frame: per group, a
    component by its weight, then a Gaussian draw from it, at the group's temperature: the weights' logits divided by
    it, the spread times it."""
    groups = []
    for (logits, mu, log_std), temp in zip(mixtures, temperature, strict=True):
        B, n = mu.shape[0], mu.shape[-1]
        k = torch.multinomial(torch.softmax(logits[:, 0].detach().float().cpu() / temp, -1), 1, generator=generator)
        k = k[:, 0].to(mu.device)
        rows = torch.arange(B, device=mu.device)
        eps = torch.randn((B, n), generator=generator).to(mu)
        groups.append(mu[rows, 0, k] + temp * log_std[rows, 0, k].exp() * eps)
    return torch.cat(groups, dim=-1)  # GROUP_DIMS are consecutive and in order


class FreeMotionStream:
    """One stream's free-motion state: GRU state, the last frame and its own seeded noise."""

    def __init__(self, model: FreeMotion, batch: int, seed: int):
        p = next(model.parameters())
        self.model = model
        self.last = neutral_free().to(p.device, p.dtype).expand(batch, N_FREE).clone()  # (B, N_FREE)
        self.state: torch.Tensor | None = None
        self.blink_at = torch.full((batch,), -1, dtype=torch.long)  # frame of the blink profile each row is at
        self.quiet = torch.zeros(batch)  # running estimate per row that the stream is in a silence, 0..1
        # its own generator: the generator's noise stream, and so its mouth, is the same with or without this model
        self.generator = torch.Generator().manual_seed(seed + 0x5EED)

    def export(self) -> dict:
        """The stream's state as tensors (a render's snapshot), without the model."""
        return {"state": self.state, "last": self.last, "generator": self.generator.get_state(),
                "blink_at": self.blink_at, "quiet": self.quiet}

    @classmethod
    def restore(cls, model: FreeMotion, saved: dict) -> "FreeMotionStream":
        """The stream that `export` saved, on `model`."""
        stream = cls.__new__(cls)
        stream.model, stream.state, stream.last = model, saved["state"], saved["last"]
        stream.generator = torch.Generator().set_state(saved["generator"])
        stream.blink_at = saved.get("blink_at", torch.full((stream.last.shape[0],), -1, dtype=torch.long))
        stream.quiet = saved.get("quiet", torch.zeros(stream.last.shape[0]))
        return stream

    @torch.no_grad()
    def sample(self, audio: torch.Tensor, emotion: torch.Tensor | None = None) -> torch.Tensor:
        """audio (B, T, d_audio), emotion (B,) indices or None -> the next T frames' free parameters
        (B, T, N_FREE), normalised, in [-1, 1]. A new stream first warms its state on 5 s of the data's own motion
        for its emotion (`FreeMotion.start_motion`, read with the quiet frames' audio feature) and starts from its
        last frame, eyes open: warmed on a face held still instead, a stream moved 0.83-0.87 as much as the data
        for its first seconds (the state took them to learn that the face moves), and every render and call starts
        fresh. Without a fitted start motion: `burn_in` frames of its start pose (the emotion's,
        `FreeMotion.start_pose`, else the neutral pose) with the first frame's audio (training scores no window's
        first frames from a cold state, and drawn from one the head jumped to a tilt of 14 degrees in the first
        second)."""
        B, T, d = audio.shape
        emotion = torch.full((B,), NULL_EMOTION, dtype=torch.long) if emotion is None else emotion
        emotion = emotion.to(self.last.device)
        if B != self.last.shape[0] or d != self.model.config.d_audio:
            raise InputError(f"free motion got audio features {tuple(audio.shape)}; expected "
                             f"({self.last.shape[0]}, T, {self.model.config.d_audio})")
        if self.state is None and T:  # 1. the state warmed
            self._warm(audio[:, :1].to(self.last), emotion)
            self.quiet = self._quietness(audio[:, 0])  # a stream that starts in silence is in it at once
        out = []
        for t in range(T):  # 2. one frame at a time: each frame's draw is the next frame's input
            mixtures, self.state = self.model(self.last[:, None], audio[:, t:t + 1].to(self.last), emotion,
                                              self.state)
            drawn = draw(mixtures, self.generator, self.model.temperature)
            step = self._step(audio[:, t])
            if step is not None:  # (where the factor is 1, the draw as it is, bit for bit)
                drawn = torch.where(step == 1.0, drawn, self.last + step.to(drawn) * (drawn - self.last))
            drawn = drawn.clamp(-1.0, 1.0)
            self.last = self._complete_blinks(drawn, self.last)
            out.append(self.last)
        return torch.stack(out, dim=1)

    def _warm(self, first: torch.Tensor, emotion: torch.Tensor) -> None:
        """The state and last frame of a new stream (`sample`), for emotion (B,) and the first frame's audio (B, 1,
        d_audio)."""
        model, B = self.model, self.last.shape[0]
        if bool(model.start_motion.any()):  # on the data's own motion for the emotion
            motion = model.start_motion[emotion.clamp(max=len(model.start_motion) - 1)].to(self.last)  # (B, W, F)
            prev = torch.cat((motion[:, :1], motion[:, :-1]), dim=1)
            rest = model.rest_audio.to(self.last).expand(B, prev.shape[1], -1)
            _, self.state = model(prev, rest, emotion)
            self.last = motion[:, -1].clone()
            self.last[:, LIDS] = -1.0  # open
            return
        if len(model.start_pose):  # at the emotion's own pose, where the data's clips start
            self.last = model.start_pose.to(self.last)[emotion.clamp(max=len(model.start_pose) - 1)]
        warm = self.last[:, None].expand(B, model.config.burn_in + 1, N_FREE)
        _, self.state = model(warm, first.expand(B, warm.shape[1], -1), emotion)

    def _quietness(self, audio: torch.Tensor) -> torch.Tensor:
        """(B,) how surely each row's frame (audio (B, d_audio)) is quiet, 0..1, by `FreeMotion.voice_probe` (zeros
        without one)."""
        if self.model.voice_probe is None:
            return torch.zeros(audio.shape[0])
        return quietness(self.model.voice_probe, audio.cpu())

    def _step(self, audio: torch.Tensor) -> torch.Tensor | None:
        """(B, N_FREE) the factor on each row's drawn step for the frame of `audio` (B, d_audio): 1, moved towards
        the silence one (`FreeMotion.idle_step`) as far as the row's running quietness, which follows each frame's
        `_quietness` with a time constant of QUIET_FRAMES (the data's pauses last 0.4-0.6 s); None without a
        silence step. The data's brows and head move on the speech's accents and hardly at all in its pauses; drawn
        as in speech, the pauses moved 1.2-1.9 times as much as the data's (docs/ARCHITECTURE.md "Free motion")."""
        if self.model.idle_step is None or self.model.voice_probe is None:
            return None
        self.quiet = self.quiet + (self._quietness(audio) - self.quiet) / QUIET_FRAMES
        if getattr(self, "_idle", (None,))[0] != self.model.idle_step:  # per parameter, made once per stream
            self._idle = (self.model.idle_step, torch.tensor(self.model.idle_step).repeat_interleave(GROUP_SIZES))
        return 1.0 + self.quiet[:, None] * (self._idle[1] - 1.0)

    def _complete_blinks(self, drawn: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        """`drawn` (B, N_FREE) with each blink that starts or goes on in it following the data's mean blink
        (`FreeMotion.blink_profile`) to its end. The mixture decides when a blink starts (the lids cross
        BLINK_ONSET from open); drawn one frame at a time, what follows was a one-frame flicker that closed the
        eye two-thirds of the way, where the data's blinks close it fully for two or three frames and open more
        slowly than they shut. The completed blink is the next frame's input, so the state sees a whole blink
        and spaces the next one.

        Between blinks the eyes are open, as the data's are (95 % of its frames at exactly open, the rest on a
        blink's way down or up): a draw that closes the lids part of the way but not to BLINK_ONSET is a
        half-blink the data never shows, which the meter read off the frames as a blink (twice the data's rate
        of dips under 80 % open)."""
        profile = self.model.blink_profile
        if not len(profile):
            return drawn
        closure = (drawn[:, LIDS] + 1.0) / 2.0                                  # [0, 1] per lid
        was_open = (prev[:, LIDS] + 1.0).mean(-1) / 2.0 < BLINK_ONSET
        going_on = torch.where(self.blink_at >= 0, self.blink_at + 1, -1)
        going_on = torch.where(going_on >= len(profile), -1, going_on)       # a blink whose profile ended
        start = (going_on < 0) & was_open & (closure.mean(-1) >= BLINK_ONSET)
        self.blink_at = torch.where(start, 0, going_on)
        blinking = self.blink_at >= 0
        lids = profile.to(drawn)[self.blink_at.clamp(min=0)] * 2.0 - 1.0       # (B, 2) normalised
        out = drawn.clone()
        out[:, LIDS] = torch.where(blinking[:, None], lids, torch.full_like(lids, -1.0))  # -1: open
        return out

    def apply(self, z: torch.Tensor, audio: torch.Tensor, emotion: torch.Tensor | None = None) -> torch.Tensor:
        """z (B, T, d_motion) from the generator with the free parameters replaced by draws for `audio`."""
        z = z.clone()
        z[:, :, FREE_SLICE] = self.sample(audio, emotion).to(z)
        return z


def load_free_motion(directory: Path, device: str = "cpu") -> FreeMotion | None:
    """The free-motion model exported in `directory` (models/free_motion.py), or None if it holds none. InputError
    when it was trained on another audio encoder than the directory's: its inputs would mean something else."""
    if not (directory / "free_motion.safetensors").is_file():
        return None
    trained_on = read_header(directory, "free_motion").get("meta", {}).get("audio_encoder")
    if trained_on != audio_encoder_digest(directory):
        raise InputError(f"{directory}/free_motion was trained beside another audio encoder than the one in this "
                         "directory: retrain it (`actorcast train --stage free --weights DIR`) or remove "
                         "free_motion.json and free_motion.safetensors")
    module, _ = load_weights(directory, "free_motion", FreeMotionConfig, FreeMotion)
    meta = read_header(directory, "free_motion")["meta"]
    module.temperature = tuple(float(t) for t in meta.get("temperature", module.temperature))
    if meta.get("idle_step") is not None and meta.get("voice_probe"):
        module.idle_step = tuple(float(t) for t in meta["idle_step"])
        module.voice_probe = {k: torch.tensor(v, dtype=torch.float32) for k, v in meta["voice_probe"].items()}
    module.blink_profile = torch.tensor(meta.get("blink_profile", []), dtype=torch.float32).reshape(-1, 2)
    module.start_pose = torch.tensor(meta.get("start_pose", []), dtype=torch.float32).reshape(-1, N_FREE)
    return module.to(device).eval().requires_grad_(False)
