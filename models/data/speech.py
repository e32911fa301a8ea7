"""Source-filter formant synthesiser: timed phonemes + prosody -> 16 kHz speech-like babble.

Klatt-style: a Rosenberg glottal pulse train (with jitter and shimmer) plus pitch-synchronous aspiration
noise runs through a cascade of formant resonators (with a nasal pole/zero pair for nasal murmur); a
parallel noise branch makes fricatives and plosive bursts. All parameters are tracks at a 5 ms control
rate, smoothed (formant transitions), then interpolated per sample. The 2-pole resonators have
per-sample time-varying coefficients and run vectorised: each one is the imaginary part of a complex
one-pole recursion u[n] = p[n] u[n-1] + x[n], solved blockwise with cumulative products (see `_scan`).
"""

from dataclasses import dataclass

import numpy as np

from actorcast.models.data.phonemes import Segment
from actorcast.models.timebase import SAMPLE_RATE

HOP = 80  # control-rate hop in samples (5 ms); divides SAMPLES_PER_FRAME (640)
_SCAN_BLOCK = 128  # samples per block of the scan; 1/P grows to exp(pi B 128 / fs): finite for B < 28 kHz
_ASPIRATION_GAIN = 0.1  # aspiration noise level relative to the normalised glottal excitation
_NOISE_GAIN = 0.35  # frication branch level, set so /s/ is about 10 dB below an open vowel


@dataclass(frozen=True)
class Speaker:
    """The voice of one clip, drawn from the seed: pitch, vocal tract size and voice quality."""

    f0_hz: float           # mean pitch of neutral speech
    formant_scale: float   # 1 = adult male vocal tract; shorter tracts (higher voices) scale formants up
    range_st: float        # pitch-accent height in semitones
    breath: float          # aspiration noise relative to voicing
    open_quotient: float   # fraction of the glottal period the glottis is open (lower = tenser)
    jitter: float          # relative random F0 perturbation
    shimmer: float         # relative random per-period amplitude perturbation
    rate: float            # speaking-rate multiplier


@dataclass(frozen=True)
class EmotionVoice:
    """How an emotion changes the voice: multipliers on pitch, pitch range, energy and rate."""

    pitch: float
    range: float
    energy: float
    rate: float
    breath: float      # multiplier on aspiration
    tension: float     # multiplier on the open quotient (< 1 = pressed, brighter voice)


EMOTION_VOICE: dict[str, EmotionVoice] = {
    "neutral": EmotionVoice(1.00, 1.00, 1.00, 1.00, 1.0, 1.00),
    "happy": EmotionVoice(1.20, 1.40, 1.15, 1.08, 1.0, 0.95),
    "sad": EmotionVoice(0.86, 0.55, 0.75, 0.82, 1.8, 1.12),
    "angry": EmotionVoice(1.10, 1.25, 1.35, 1.12, 0.8, 0.80),
    "surprised": EmotionVoice(1.30, 1.70, 1.20, 1.00, 1.1, 0.95),
}


def sample_speaker(rng: np.random.Generator) -> Speaker:
    """Draw a speaker: low (male-like) to high (female/child-like) voices with matching formants."""
    f0 = float(np.exp(rng.uniform(np.log(90.0), np.log(230.0))))
    scale = 1.0 + 0.2 * (f0 - 90.0) / 140.0 + float(rng.normal(0.0, 0.02))
    return Speaker(f0_hz=f0, formant_scale=scale, range_st=float(rng.uniform(2.5, 5.0)),
                   breath=float(rng.uniform(0.03, 0.1)), open_quotient=float(rng.uniform(0.5, 0.65)),
                   jitter=float(rng.uniform(0.004, 0.012)), shimmer=float(rng.uniform(0.03, 0.08)),
                   rate=float(rng.uniform(0.9, 1.1)))


# ---------------------------------------------------------------------------------------- filters

def linear_recurrence(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """y[i] = a[i] y[i-1] + b[i], y[-1] = 0, by a log-depth parallel (Hillis-Steele) scan."""
    a, y = a.copy(), b.copy()
    shift = 1
    while shift < len(y):
        y[shift:] = y[shift:] + a[shift:] * y[:-shift]  # right side reads the old values
        a[shift:] = a[shift:] * a[:-shift]
        shift *= 2
    return y


def _scan(logp: np.ndarray, x: np.ndarray) -> np.ndarray:
    """u[n] = exp(logp[n]) u[n-1] + x[n] (complex, time-varying), vectorised. (N,) -> (N,) complex.

    Inside a block, u[n] = P[n] * cumsum(x / P)[n] with P the running product of poles; blocks are then
    chained by a short recursion over their end states. |1/P| <= exp(pi * B_max * block / fs) stays finite.
    """
    n = len(x)
    nb = -(-n // _SCAN_BLOCK)
    pad = nb * _SCAN_BLOCK - n
    cum = np.cumsum(np.pad(logp, (0, pad)).reshape(nb, _SCAN_BLOCK), axis=1)  # log P, (nb, block)
    p_run = np.exp(cum)
    local = p_run * np.cumsum(np.pad(x, (0, pad)).reshape(nb, _SCAN_BLOCK) / p_run, axis=1)
    carry = linear_recurrence(p_run[:, -1], local[:, -1])  # state at each block's end
    local[1:] += p_run[1:] * carry[:-1, None]
    return local.reshape(-1)[:n]


def upsample(track: np.ndarray, n: int) -> np.ndarray:
    """Linearly interpolate a control-rate track (one value per HOP samples, from sample 0) to n samples."""
    w = np.arange(HOP) / HOP  # (HOP,)
    fine = track[:-1, None] * (1.0 - w) + track[1:, None] * w  # (n_ctrl - 1, HOP)
    return fine.reshape(-1)[:n]


def resonator(x: np.ndarray, freq: np.ndarray, bw: np.ndarray, unit_peak: bool = False) -> np.ndarray:
    """2-pole resonator, x: (N,); freq, bw: control-rate tracks in Hz.

    Unity gain at DC (Klatt's cascade convention), or at the centre frequency with `unit_peak`.
    """
    theta = 2.0 * np.pi * freq / SAMPLE_RATE
    log_r = -np.pi * bw / SAMPLE_RATE
    r = np.exp(log_r)
    # Im(u) has transfer r sin(theta) z^-1 / ((1 - p z^-1)(1 - p* z^-1)): all-pole.
    if unit_peak:
        gain = (1.0 - r) * np.abs(1.0 - r * np.exp(-2j * theta)) / (r * np.sin(theta))
    else:
        gain = (1.0 - 2.0 * r * np.cos(theta) + r * r) / (r * np.sin(theta))
    n = len(x)
    u = _scan(upsample(log_r + 1j * theta, n), x)
    return upsample(gain, n) * u.imag


def antiresonator(x: np.ndarray, freq: np.ndarray, bw: np.ndarray) -> np.ndarray:
    """2-zero antiresonator (nasal antiformant), unity DC gain; cancels a resonator of equal freq and bw."""
    r = np.exp(-np.pi * bw / SAMPLE_RATE)
    c1 = -2.0 * r * np.cos(2.0 * np.pi * freq / SAMPLE_RATE)
    c2 = r * r
    norm = 1.0 + c1 + c2
    c0, c1, c2 = (upsample(c / norm, len(x)) for c in (np.ones_like(c1), c1, c2))
    y = c0 * x
    y[1:] += c1[1:] * x[:-1]
    y[2:] += c2[2:] * x[:-2]
    return y


def smooth_noise(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    """(n,) Gaussian-smoothed white noise with unit standard deviation; `sigma` in steps."""
    half = int(np.ceil(3 * sigma))
    white = rng.normal(0.0, 1.0, n + 2 * half)
    if half == 0:
        return white
    k = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
    return np.convolve(white, k / np.sqrt(np.sum(k * k)), mode="valid")


def _smooth(track: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of a control-rate track; `sigma` in control steps, edges held."""
    half = int(np.ceil(3 * sigma))
    if half == 0:
        return track
    k = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
    padded = np.pad(track, (half, half), mode="edge")
    return np.convolve(padded, k / k.sum(), mode="valid")


# ------------------------------------------------------------------------------------- parameters

def _segment_tracks(segs: list[Segment], times: np.ndarray, speaker: Speaker) -> dict[str, np.ndarray]:
    """Control-rate synthesis tracks (Hz or linear amplitude) from the segment under each control time."""
    starts = np.array([s.start for s in segs])
    durs = np.array([s.end - s.start for s in segs])
    idx = np.clip(np.searchsorted(starts, times, side="right") - 1, 0, len(segs) - 1)
    phase = np.clip((times - starts[idx]) / np.maximum(durs[idx], 1e-6), 0.0, 1.0)  # position in segment
    ph = [s.phoneme for s in segs]

    def per_seg(f):
        return np.array([f(p) for p in ph], dtype=np.float64)[idx]

    kind = np.array([p.kind for p in ph])[idx]
    voiced = per_seg(lambda p: p.voiced) > 0
    plosive = kind == "plosive"
    # Plosive = closure, burst, then aspiration (voiceless) or voicing onset (voiced).
    burst_at = np.where(voiced, 0.7, 0.5)
    closure = plosive & (phase < burst_at)
    burst = plosive & (phase >= burst_at) & (phase < burst_at + 0.12)
    release = plosive & (phase >= burst_at + 0.12)
    av_by_kind = {"vowel": 1.0, "approximant": 0.7, "nasal": 0.55, "fricative": 0.5}
    av = np.array([av_by_kind.get(p.kind, 0.0) * p.voiced for p in ph])[idx]
    av = np.where(closure & voiced, 0.08, np.where(burst, 0.0, np.where(release & voiced, 0.6, av)))
    noise_amp = per_seg(lambda p: p.noise_amp)
    af = np.where(kind == "fricative", noise_amp, np.where(burst, 1.5 * noise_amp, 0.0))
    ah = np.where(release & ~voiced, 0.35, 0.0)
    nasal = kind == "nasal"
    scale = speaker.formant_scale
    tracks = {f"F{i + 1}": per_seg(lambda p, i=i: p.formants[i]) * scale for i in range(3)}
    tracks.update(
        B1=np.where(nasal, 160.0, 80.0), B2=np.where(nasal, 300.0, 100.0), B3=np.where(nasal, 350.0, 150.0),
        FN=np.minimum(per_seg(lambda p: p.noise_hz or 3000.0) * np.sqrt(scale), 7000.0),
        BN=per_seg(lambda p: p.noise_bw or 2000.0),
        FNZ=per_seg(lambda p: p.nasal_zero_hz or 270.0),
        AV=av, AF=af, AH=ah, energy=_energy(segs, idx),
    )
    for name, sigma in (("F1", 3), ("F2", 3), ("F3", 3), ("B1", 2), ("B2", 2), ("B3", 2), ("FN", 1),
                        ("BN", 1), ("FNZ", 2), ("AV", 1), ("AF", 0.6), ("AH", 1), ("energy", 4)):
        tracks[name] = _smooth(tracks[name], sigma)
    return tracks


def _energy(segs: list[Segment], idx: np.ndarray) -> np.ndarray:
    """Per-control-point loudness: +accent boost, -3 dB declination over each phrase."""
    phrase_pos = np.zeros(len(segs))
    bounds: dict[int, tuple[float, float]] = {}
    for s in segs:
        if s.phrase >= 0:
            lo, hi = bounds.get(s.phrase, (s.start, s.end))
            bounds[s.phrase] = (min(lo, s.start), max(hi, s.end))
    for i, s in enumerate(segs):
        if s.phrase >= 0:
            lo, hi = bounds[s.phrase]
            phrase_pos[i] = (0.5 * (s.start + s.end) - lo) / max(hi - lo, 1e-6)
    gain = 10.0 ** (-3.0 / 20.0 * phrase_pos) * (1.0 + 0.5 * np.array([s.accent for s in segs]))
    return gain[idx]


def pitch_track(segs: list[Segment], times: np.ndarray, speaker: Speaker, voice: EmotionVoice,
                rng: np.random.Generator) -> np.ndarray:
    """F0 in Hz at the control times: phrase declination + accent peaks + slow wander + jitter."""
    semis = np.full(len(times), np.nan)
    phrases: dict[int, list[Segment]] = {}
    for s in segs:
        if s.phrase >= 0:
            phrases.setdefault(s.phrase, []).append(s)
    decl = 3.0 * np.sqrt(voice.range)  # semitones of fall over a phrase
    for members in phrases.values():
        lo, hi = members[0].start, members[-1].end
        inside = (times >= lo) & (times < hi)
        semis[inside] = decl * (0.5 - (times[inside] - lo) / max(hi - lo, 1e-6))
    valid = ~np.isnan(semis)
    semis = np.interp(times, times[valid], semis[valid]) if valid.any() else np.zeros(len(times))
    dt = times[1] - times[0] if len(times) > 1 else HOP / SAMPLE_RATE
    for s in segs:
        if s.accent > 0:
            centre, width = 0.5 * (s.start + s.end), 0.07
            lo, hi = np.searchsorted(times, [centre - 4 * width, centre + 4 * width])
            bump = np.exp(-0.5 * ((times[lo:hi] - centre) / width) ** 2)
            semis[lo:hi] += s.accent * speaker.range_st * voice.range * bump
    semis += 0.5 * smooth_noise(rng, len(times), 0.1 / dt)  # slow wander, 0.5 st std
    f0 = speaker.f0_hz * voice.pitch * 2.0 ** (semis / 12.0)
    return f0 * (1.0 + speaker.jitter * rng.normal(0.0, 1.0, len(times)))


# -------------------------------------------------------------------------------------- synthesis

def _glottal_source(f0: np.ndarray, av: np.ndarray, speaker: Speaker, voice: EmotionVoice,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Rosenberg flow-derivative excitation (N,) and the normalised flow (N,) for noise modulation."""
    phase = np.cumsum(f0 / SAMPLE_RATE)  # periods elapsed, (N,)
    period = np.floor(phase).astype(np.int64)
    frac = phase - period
    oq = float(np.clip(speaker.open_quotient * voice.tension, 0.35, 0.85))
    t_open, t_close = 0.65 * oq, 0.35 * oq  # opening and closing phases, fractions of the period
    flow = np.where(frac < t_open, 0.5 * (1.0 - np.cos(np.pi * frac / t_open)),
                    np.where(frac < oq, np.cos(0.5 * np.pi * (frac - t_open) / t_close), 0.0))
    shimmer = 1.0 + speaker.shimmer * rng.normal(0.0, 1.0, int(period[-1]) + 1)
    pulses = flow * shimmer[period] * av
    # Differentiating the flow adds lip radiation (+6 dB/oct); dividing by the steepest slope of one
    # pulse keeps the level independent of F0.
    steepest = 0.5 * np.pi / t_close * f0 / SAMPLE_RATE
    excitation = np.diff(pulses, prepend=0.0) / steepest
    return excitation, flow


def synthesize(segs: list[Segment], n_samples: int, speaker: Speaker, voice: EmotionVoice,
               rng: np.random.Generator, peak: float = 0.7) -> np.ndarray:
    """Speak timed phonemes: (n_samples,) float32 at 16 kHz with max |x| = `peak` (0 if all silence)."""
    n_ctrl = -(-n_samples // HOP) + 1
    times = np.arange(n_ctrl) * (HOP / SAMPLE_RATE)  # (n_ctrl,) seconds
    tr = _segment_tracks(segs, times, speaker)
    f0 = upsample(pitch_track(segs, times, speaker, voice, rng), n_samples)
    loud = tr["energy"]
    av = upsample(tr["AV"] * loud, n_samples)
    excitation, flow = _glottal_source(f0, av, speaker, voice, rng)
    # Aspiration: noise, louder while the glottis is open, plus breathiness that follows voicing.
    breath = upsample(tr["AH"] * loud + speaker.breath * voice.breath * tr["AV"] * loud, n_samples)
    excitation += _ASPIRATION_GAIN * breath * (0.4 + 0.6 * flow) * rng.normal(0.0, 1.0, n_samples)
    # Cascade: nasal pole/zero pair (cancels outside nasals), then five formants.
    const = np.ones(n_ctrl)
    x = resonator(excitation, 270.0 * const, 100.0 * const)
    x = antiresonator(x, tr["FNZ"], 100.0 * const)
    for name in ("1", "2", "3"):
        x = resonator(x, tr["F" + name], tr["B" + name])
    x = resonator(x, 3300.0 * speaker.formant_scale * const, 250.0 * const)
    x = resonator(x, min(3850.0 * speaker.formant_scale, 7000.0) * const, 300.0 * const)
    # Parallel noise branch: fricatives and plosive bursts.
    noise = np.diff(rng.normal(0.0, 1.0, n_samples + 1)) * upsample(tr["AF"] * loud, n_samples)
    x = x + _NOISE_GAIN * resonator(noise, tr["FN"], tr["BN"], unit_peak=True)
    top = np.max(np.abs(x)) if n_samples else 0.0
    return (x * (peak / top) if top > 0 else x).astype(np.float32)
