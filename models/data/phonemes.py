"""Phoneme inventory of the synthetic speaker and random, timed phoneme sequences (syllables, words, phrases).

Every phoneme carries what both sides of a performance need: acoustic targets for the formant synthesiser
(models/data/speech.py) and viseme targets for the face (models/data/performance.py). Formant values are
those of an adult male vocal tract (Peterson & Barney style); the speaker scales them. Vowel jaw opening
follows F1 (open vowels have a high F1), so the audio determines the mouth.
"""

from dataclasses import dataclass

import numpy as np

PAUSE = "sil"


@dataclass(frozen=True)
class Phoneme:
    """One phoneme: its class, acoustic targets (Hz, ms, linear amplitudes) and viseme targets."""

    symbol: str
    kind: str                            # vowel | approximant | nasal | fricative | plosive | pause
    voiced: bool
    formants: tuple[float, float, float]  # F1, F2, F3 targets in Hz (male vocal tract)
    jaw: float                           # viseme target jaw_open in [0, 1]
    spread: float                        # viseme target lip_spread in [-1, 1]
    round: float                         # viseme target lip_round in [0, 1]
    dominance: float                     # coarticulation strength: how firmly the mouth must reach the target
    duration_ms: float                   # mean duration at speaking rate 1
    noise_hz: float = 0.0                # centre of the frication / burst noise band (Hz); 0 = none
    noise_bw: float = 0.0                # bandwidth of that band (Hz)
    noise_amp: float = 0.0               # frication / burst amplitude relative to vowel voicing
    nasal_zero_hz: float = 0.0           # antiformant of the nasal murmur (Hz); 0 = not nasal


def _v(sym, f1, f2, f3, jaw, spread, rnd, dur):
    return Phoneme(sym, "vowel", True, (f1, f2, f3), jaw, spread, rnd, 1.0, dur)


VOWELS: tuple[Phoneme, ...] = (
    _v("a", 730, 1090, 2440, 0.85, 0.10, 0.00, 140),   # father
    _v("ae", 660, 1720, 2410, 0.75, 0.45, 0.00, 140),  # cat
    _v("ah", 640, 1190, 2390, 0.68, 0.05, 0.05, 110),  # but
    _v("o", 570, 840, 2410, 0.58, -0.45, 0.75, 140),   # bought
    _v("e", 530, 1840, 2480, 0.52, 0.45, 0.00, 120),   # bed
    _v("er", 490, 1350, 1690, 0.45, -0.10, 0.35, 130),  # bird
    _v("U", 440, 1020, 2240, 0.36, -0.45, 0.70, 100),  # book
    _v("I", 390, 1990, 2550, 0.30, 0.55, 0.00, 100),   # bit
    _v("u", 300, 870, 2240, 0.16, -0.75, 1.00, 130),   # boot
    _v("i", 270, 2290, 3010, 0.12, 0.85, 0.00, 130),   # beet
)

CONSONANTS: tuple[Phoneme, ...] = (
    # Bilabials close the lips: the jaw target is almost shut and they dominate their neighbours.
    Phoneme("p", "plosive", False, (300, 900, 2300), 0.03, 0.0, 0.1, 6.0, 90, 900, 1200, 0.6),
    Phoneme("b", "plosive", True, (300, 900, 2300), 0.03, 0.0, 0.1, 6.0, 75, 900, 1200, 0.4),
    Phoneme("m", "nasal", True, (280, 1000, 2300), 0.03, 0.0, 0.1, 6.0, 80, nasal_zero_hz=800),
    Phoneme("t", "plosive", False, (320, 1800, 2700), 0.18, 0.15, 0.0, 0.5, 85, 4200, 1500, 0.8),
    Phoneme("d", "plosive", True, (320, 1800, 2700), 0.18, 0.15, 0.0, 0.5, 70, 3800, 1500, 0.5),
    Phoneme("k", "plosive", False, (320, 2000, 2500), 0.25, 0.0, 0.0, 0.4, 90, 2000, 600, 0.8),
    Phoneme("g", "plosive", True, (320, 2000, 2500), 0.25, 0.0, 0.0, 0.4, 75, 1800, 600, 0.5),
    Phoneme("n", "nasal", True, (280, 1700, 2600), 0.16, 0.10, 0.0, 0.5, 70, nasal_zero_hz=1700),
    Phoneme("f", "fricative", False, (340, 1000, 2300), 0.08, 0.0, 0.0, 3.0, 100, 5500, 4000, 0.12),
    Phoneme("v", "fricative", True, (340, 1000, 2300), 0.08, 0.0, 0.0, 3.0, 75, 5500, 4000, 0.08),
    Phoneme("th", "fricative", False, (340, 1400, 2600), 0.15, 0.1, 0.0, 0.6, 100, 5000, 3500, 0.12),
    Phoneme("s", "fricative", False, (340, 1700, 2700), 0.10, 0.45, 0.0, 1.0, 110, 5800, 1600, 1.0),
    Phoneme("z", "fricative", True, (340, 1700, 2700), 0.10, 0.45, 0.0, 1.0, 85, 5800, 1600, 0.6),
    Phoneme("sh", "fricative", False, (340, 1800, 2400), 0.14, -0.35, 0.65, 1.0, 110, 2900, 1000, 2.2),
    Phoneme("l", "approximant", True, (360, 1100, 2700), 0.22, 0.05, 0.0, 0.3, 65),
    Phoneme("r", "approximant", True, (380, 1200, 1600), 0.20, -0.2, 0.45, 0.5, 65),
    Phoneme("w", "approximant", True, (300, 700, 2200), 0.10, -0.7, 0.95, 1.5, 60),
    Phoneme("y", "approximant", True, (280, 2200, 2900), 0.12, 0.6, 0.0, 0.5, 55),
)

PAUSE_PHONEME = Phoneme(PAUSE, "pause", False, (500, 1500, 2500), 0.0, 0.0, 0.0, 3.0, 400)

INVENTORY: dict[str, Phoneme] = {p.symbol: p for p in (*VOWELS, *CONSONANTS, PAUSE_PHONEME)}

# Onset / coda consonant pools and two-consonant clusters that English-like babble allows.
_ONSETS = ("p", "b", "m", "t", "d", "k", "g", "n", "f", "v", "th", "s", "z", "sh", "l", "r", "w", "y")
_CODAS = ("p", "b", "m", "t", "d", "k", "g", "n", "f", "v", "s", "z", "sh", "l", "r")
_CLUSTERS = (("s", "t"), ("s", "p"), ("s", "k"), ("p", "l"), ("b", "r"), ("t", "r"), ("k", "l"),
             ("g", "r"), ("f", "l"), ("s", "m"), ("s", "w"))


@dataclass(frozen=True)
class Segment:
    """One timed phoneme of an utterance. Times in seconds from the clip start."""

    symbol: str
    start: float
    end: float
    accent: float = 0.0   # pitch-accent strength of this vowel (0 = unaccented)
    phrase: int = -1      # index of the phrase it belongs to; -1 for pauses

    @property
    def phoneme(self) -> Phoneme:
        return INVENTORY[self.symbol]


def _syllable(rng: np.random.Generator) -> list[str]:
    """Onset (0-2 consonants) + vowel nucleus + coda (0-2 consonants)."""
    r = rng.random()
    if r < 0.2:
        onset = []
    elif r < 0.88:
        onset = [_ONSETS[rng.integers(len(_ONSETS))]]
    else:
        onset = list(_CLUSTERS[rng.integers(len(_CLUSTERS))])
    nucleus = [VOWELS[rng.integers(len(VOWELS))].symbol]
    r = rng.random()
    coda = [] if r < 0.55 else [_CODAS[rng.integers(len(_CODAS))]]
    if r > 0.95:
        coda.append(("s", "t", "d")[rng.integers(3)])
    return onset + nucleus + coda


def _phrase(rng: np.random.Generator) -> list[tuple[str, float]]:
    """A phrase of 2-6 words of 1-3 syllables, as (symbol, duration factor) pairs.

    The duration factor folds in lexical stress (x1.3 on the stressed syllable) and phrase-final
    lengthening (x1.35 on the last syllable); `random_utterance` picks the pitch accents.
    """
    out: list[tuple[str, float]] = []
    n_words = int(rng.integers(2, 7))
    for w in range(n_words):
        n_syll = int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15]))
        stressed = int(rng.integers(n_syll))
        for s in range(n_syll):
            final = w == n_words - 1 and s == n_syll - 1
            factor = (1.3 if s == stressed else 1.0) * (1.35 if final else 1.0)
            out.extend((sym, factor) for sym in _syllable(rng))
    return out


def random_utterance(rng: np.random.Generator, seconds: float, rate: float = 1.0) -> list[Segment]:
    """Timed phonemes filling [0, seconds): a lead-in pause, then phrases separated by pauses.

    `rate` scales speaking speed (2 = twice as fast). Each phrase gets 1-2 pitch accents on vowels.
    The last segment is cut at `seconds`, like a window into continuous speech.
    """
    segs: list[Segment] = []
    t = float(rng.uniform(0.1, 0.35))
    segs.append(Segment(PAUSE, 0.0, t))
    phrase = 0
    while t < seconds:
        items = _phrase(rng)
        vowel_idx = [i for i, (sym, _) in enumerate(items) if INVENTORY[sym].kind == "vowel"]
        n_acc = min(len(vowel_idx), int(rng.integers(1, 3)))
        accented = set(rng.choice(vowel_idx, size=n_acc, replace=False).tolist())
        for i, (sym, factor) in enumerate(items):
            ph = INVENTORY[sym]
            dur = ph.duration_ms / 1000.0 * factor * float(rng.uniform(0.8, 1.2)) / rate
            accent = float(rng.uniform(0.6, 1.0)) if i in accented else 0.0
            if accent:
                dur *= 1.15
            segs.append(Segment(sym, t, t + dur, accent, phrase))
            t += dur
        pause = float(rng.uniform(0.25, 0.7)) / rate
        segs.append(Segment(PAUSE, t, t + pause))
        t += pause
        phrase += 1
    # Cut at the clip end and drop what starts after it.
    segs = [s for s in segs if s.start < seconds]
    last = segs[-1]
    segs[-1] = Segment(last.symbol, last.start, seconds, last.accent, last.phrase)
    return segs
