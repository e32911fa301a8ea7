"""One synthetic performance: speech audio and the (T, 16) motion parameters that go with it, frame-exact.

The mouth is *determined* by the phonemes (viseme targets blended by a Cohen-Massaro dominance model of
coarticulation, evaluated `lead_ms` ahead of the sound, so the mouth moves before the voice); the head
nods on pitch accents and drifts (Ornstein-Uhlenbeck); blinks are Poisson; gaze makes saccades; the
emotion offsets the face and changes the voice. Frame f covers audio samples [640 f, 640 (f + 1)).
"""

import logging
import math
import numbers
from dataclasses import dataclass

import numpy as np
import torch

from actorcast.models.data.params import EMOTIONS, PARAM_INDEX, clamp_params, emotion_index, neutral_params
from actorcast.models.data.phonemes import Segment, random_utterance
from actorcast.models.data.seeds import check_seed
from actorcast.models.data.speech import EMOTION_VOICE, linear_recurrence, sample_speaker, smooth_noise, synthesize
from actorcast.models.errors import ConfigError
from actorcast.models.timebase import FPS, SAMPLES_PER_FRAME

log = logging.getLogger(__name__)

LEAD_MS_RANGE = (40.0, 80.0)  # anticipatory lead of the mouth over the sound, drawn per clip
_COART_TAU_S = 0.03  # decay of a phoneme's dominance outside its interval (seconds)
_NEIGHBOURS = 4  # segments on each side that can influence the mouth at a given time

# Face offsets of each emotion at full intensity (parameter name -> offset).
FACE_OFFSETS: dict[str, dict[str, float]] = {
    "neutral": {},
    "happy": {"smile": 0.6, "brow_raise": 0.1, "lip_spread": 0.15},
    "sad": {"smile": -0.45, "brow_raise": 0.2, "brow_furrow": 0.15, "head_pitch": 0.06},
    "angry": {"brow_furrow": 0.7, "smile": -0.3, "head_pitch": 0.03},
    "surprised": {"brow_raise": 0.7, "smile": 0.05, "head_pitch": -0.04},
}
_HEAD_GAIN = {"neutral": 1.0, "happy": 1.2, "sad": 0.6, "angry": 1.3, "surprised": 1.1}
# Ornstein-Uhlenbeck head drift: (parameter, stationary std, time constant in seconds).
_DRIFT = (("head_yaw", 0.08, 2.5), ("head_pitch", 0.04, 2.0), ("head_roll", 0.035, 3.0),
          ("head_x", 0.03, 3.0), ("head_y", 0.02, 3.0), ("head_scale", 0.025, 4.0))


@dataclass(frozen=True)
class Performance:
    """A clip's speech and motion. audio: (N,) float32 at 16 kHz; params: (T, 16) float32; N == 640 T."""

    audio: torch.Tensor
    params: torch.Tensor
    emotion: str
    phonemes: tuple[tuple[str, float, float], ...]  # (symbol, start, end) in (fractional) frames
    lead_ms: float  # how far the mouth runs ahead of the sound
    accents: tuple[float, ...] = ()  # centres of the pitch-accented vowels, in (fractional) frames


def n_frames_for(seconds: float) -> int:
    """Frames of a clip of `seconds` (at least one)."""
    return max(1, round(seconds * FPS))


def performance_streams(seed: int, emotion: str | None) -> tuple[str, list[np.random.Generator]]:
    """The emotion (given, or drawn from `seed`) and the seven random streams of a performance:
    emotion, voice, text, audio, mouth, head, eyes (one per part, so a part's draws never shift another's)."""
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(7)]
    drawn = EMOTIONS[int(streams[0].integers(len(EMOTIONS)))]
    return emotion or drawn, streams


def generate_performance(seed: int, seconds: float, emotion: str | None = None) -> Performance:
    """Synthesise `seconds` of speech and motion, deterministic by `seed`; emotion None = drawn from it."""
    check_request(seed, seconds, emotion)
    emotion, streams = performance_streams(seed, emotion)
    rng_emotion, rng_voice, rng_text, rng_audio, rng_mouth, rng_head, rng_eyes = streams
    n_frames = n_frames_for(seconds)
    duration = n_frames / FPS
    speaker = sample_speaker(rng_voice)
    voice = EMOTION_VOICE[emotion]
    peak = float(np.clip(0.62 * voice.energy * rng_voice.uniform(0.92, 1.08), 0.5, 0.9))
    segs = random_utterance(rng_text, duration, rate=speaker.rate * voice.rate)
    audio = synthesize(segs, n_frames * SAMPLES_PER_FRAME, speaker, voice, rng_audio, peak=peak)
    log.debug("performance seed=%d emotion=%s frames=%d", seed, emotion, n_frames)
    return animate(segs, audio, emotion, rng_emotion, rng_mouth, rng_head, rng_eyes)


def animate(segs: list[Segment], audio: np.ndarray, emotion: str, rng_emotion: np.random.Generator,
            rng_mouth: np.random.Generator, rng_head: np.random.Generator,
            rng_eyes: np.random.Generator) -> Performance:
    """The motion of timed phonemes `segs` (covering the clip from 0 s) over `audio` ((640 T,) float32 at 16 kHz).

    The timeline every speech source shares: viseme targets with coarticulation and lead, nods on the
    accents, blinks, gaze and the emotion's face offsets.
    """
    n_frames = len(audio) // SAMPLES_PER_FRAME
    lead_ms = float(rng_mouth.uniform(*LEAD_MS_RANGE))
    times = (np.arange(n_frames) + 0.5) / FPS  # (T,) frame centres in seconds
    params = neutral_params(n_frames).numpy().astype(np.float64)  # (T, 16)
    mouth = mouth_track(segs, times + lead_ms / 1000.0, rng_mouth)
    for name, track in zip(("jaw_open", "lip_spread", "lip_round"), mouth.T):
        params[:, PARAM_INDEX[name]] = track
    _add_head(params, segs, times, rng_head, emotion)
    _add_eyes(params, times, rng_eyes)
    _add_emotion(params, rng_emotion, emotion)
    phonemes = tuple((s.symbol, s.start * FPS, s.end * FPS) for s in segs)
    accents = tuple(0.5 * (s.start + s.end) * FPS for s in segs if s.accent > 0)
    return Performance(audio=torch.from_numpy(audio), params=clamp_params(torch.from_numpy(params).float()),
                       emotion=emotion, phonemes=phonemes, lead_ms=lead_ms, accents=accents)


def generate_speech(seed: int, seconds: float, emotion: str | None = None) -> torch.Tensor:
    """Just the (N,) float32 16 kHz audio of `generate_performance(seed, seconds, emotion)`."""
    return generate_performance(seed, seconds, emotion).audio


def check_request(seed: int, seconds: float, emotion: str | None) -> None:
    """Raise ConfigError for a seed outside 0..MAX_SEED, non-positive or non-finite seconds, or an unknown emotion."""
    check_seed(seed, f"seed {seed!r}")
    if not isinstance(seconds, numbers.Real) or not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"seconds must be a finite number > 0, got {seconds!r}")
    if emotion is not None:
        emotion_index(emotion)


def mouth_track(segs: list[Segment], times: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(T, 3) jaw_open, lip_spread, lip_round at `times` (s) by dominance-weighted viseme targets.

    Each segment pulls the mouth towards its target with weight dominance * exp(-distance / tau), where
    distance is the time outside the segment (0 inside): long segments hold their target, strong ones
    (bilabials, pauses) override their neighbours, short weak ones are coarticulated away.
    """
    ph = [s.phoneme for s in segs]
    starts = np.array([s.start for s in segs])
    ends = np.array([s.end for s in segs])
    # Instance variation of the jaw (+-10 %), accented vowels open wider.
    jaw = np.array([p.jaw for p in ph]) * rng.uniform(0.9, 1.1, len(segs))
    jaw *= 1.0 + 0.1 * np.array([s.accent for s in segs])
    targets = np.stack([jaw, [p.spread for p in ph], [p.round for p in ph]], axis=1)  # (S, 3)
    dom_jaw = np.array([p.dominance for p in ph])
    dom_lips = np.where(np.array([p.kind == "vowel" for p in ph]), 1.0, np.minimum(dom_jaw, 1.5))
    current = np.clip(np.searchsorted(starts, times, side="right") - 1, 0, len(segs) - 1)
    near = np.clip(current[:, None] + np.arange(-_NEIGHBOURS, _NEIGHBOURS + 1), 0, len(segs) - 1)  # (T, K)
    near_unique = np.concatenate([np.ones((len(times), 1), bool), np.diff(near, axis=1) > 0], axis=1)
    outside = np.maximum(starts[near] - times[:, None], 0.0) + np.maximum(times[:, None] - ends[near], 0.0)
    decay = np.exp(-outside / _COART_TAU_S) * near_unique  # (T, K); clipped duplicates count once
    out = np.empty((len(times), 3))
    for j, dom in ((0, dom_jaw), (1, dom_lips), (2, dom_lips)):
        w = dom[near] * decay
        out[:, j] = np.sum(w * targets[near, j], axis=1) / np.maximum(np.sum(w, axis=1), 1e-12)
    return out


def _raised_cosine(times: np.ndarray, centre: float, width: float) -> np.ndarray:
    """(T,) bump of height 1 at `centre`, zero beyond +-width/2 (seconds)."""
    x = np.clip((times - centre) / (0.5 * width), -1.0, 1.0)
    return 0.5 * (1.0 + np.cos(np.pi * x))


def _add_head(params: np.ndarray, segs: list[Segment], times: np.ndarray, rng: np.random.Generator,
              emotion: str) -> None:
    """Nods (pitch), small yaw/roll turns and brow flashes on accents, plus bounded OU drift."""
    gain = _HEAD_GAIN[emotion]
    dt = 1.0 / FPS
    for name, std, tau in _DRIFT:
        a = math.exp(-dt / tau)
        kicks = std * math.sqrt(1.0 - a * a) * rng.normal(0.0, 1.0, len(times))
        kicks[0] = std * rng.normal()  # start from the stationary distribution
        drift = linear_recurrence(np.full(len(times), a), kicks)
        bound = 2.5 * std * gain
        params[:, PARAM_INDEX[name]] += bound * np.tanh(gain * drift / bound)
    for s in segs:
        if s.accent <= 0:
            continue
        centre = 0.5 * (s.start + s.end) + 0.03
        bump = _raised_cosine(times, centre, float(rng.uniform(0.35, 0.6)))
        params[:, PARAM_INDEX["head_pitch"]] += gain * s.accent * rng.uniform(0.04, 0.09) * bump
        params[:, PARAM_INDEX["head_yaw"]] += gain * rng.uniform(-0.04, 0.04) * bump
        params[:, PARAM_INDEX["head_roll"]] += gain * rng.uniform(-0.03, 0.03) * bump
        if rng.random() < 0.4:
            params[:, PARAM_INDEX["brow_raise"]] += rng.uniform(0.1, 0.25) * bump


def _poisson_times(rng: np.random.Generator, rate: float, duration: float, refractory: float) -> np.ndarray:
    """Event times in [0, duration) of a Poisson process of `rate` per second with a dead time."""
    n = int(duration * rate * 2 + 10)
    gaps = refractory + rng.exponential(1.0 / rate - refractory, n)  # mean gap 1 / rate
    times = np.cumsum(gaps) - refractory
    return times[times < duration]


def _add_eyes(params: np.ndarray, times: np.ndarray, rng: np.random.Generator) -> None:
    """Poisson blinks (15-20 / min, 150-250 ms, mostly both eyes) and gaze saccades with fixation drift."""
    duration = times[-1] + 0.5 / FPS
    rate = rng.uniform(15.0, 20.0) / 60.0
    for t0 in _poisson_times(rng, rate, duration, 0.3):
        length = rng.uniform(0.15, 0.25)
        u = (times - t0) / length  # 0..1 over the blink: close 35 %, hold 20 %, open 45 %
        closed = np.clip(np.minimum(u / 0.35, (1.0 - u) / 0.45), 0.0, 1.0)
        closed = closed * closed * (3.0 - 2.0 * closed)  # smoothstep
        left, right = 1.0, 1.0
        if rng.random() < 0.1:  # now and then one eye closes only partly
            left, right = rng.permutation([1.0, rng.uniform(0.3, 0.7)])
        params[:, PARAM_INDEX["blink_l"]] = np.maximum(params[:, PARAM_INDEX["blink_l"]], left * closed)
        params[:, PARAM_INDEX["blink_r"]] = np.maximum(params[:, PARAM_INDEX["blink_r"]], right * closed)
    saccades = np.concatenate([[-1.0], _poisson_times(rng, 0.5, duration, 0.2)])
    fixations = np.clip(rng.normal(0.0, 0.25, (len(saccades), 2)), -0.6, 0.6)
    fixations[0] *= 0.5
    which = np.searchsorted(saccades, times, side="right") - 1  # (T,) current fixation
    for j, name in enumerate(("gaze_x", "gaze_y")):
        params[:, PARAM_INDEX[name]] = fixations[which, j] + 0.02 * smooth_noise(rng, len(times), 3.0)


def _add_emotion(params: np.ndarray, rng: np.random.Generator, emotion: str) -> None:
    """Face offsets of the emotion at a per-clip intensity that wavers slowly (+-10 %)."""
    intensity = rng.uniform(0.6, 1.0) * (1.0 + 0.1 * smooth_noise(rng, len(params), 25.0))  # (T,)
    for name, offset in FACE_OFFSETS[emotion].items():
        params[:, PARAM_INDEX[name]] += offset * intensity
