"""Real TTS speech from espeak-ng (Debian `espeak-ng`), with the timing of every phoneme.

The second speech source of the built-in data set, beside the formant babble (models/data/speech.py).
libespeak-ng (models/data/espeak.py) reports the output sample where each phoneme starts; a phoneme
lasts until the next one, the last until the end of the audio. Two kinds of boundary that espeak reports
late are moved to where the sound changes (`_refine`). The IPA names are mapped onto the inventory of
models/data/phonemes.py, so the same viseme timeline (models/data/performance.py `animate`) turns real
speech into motion.

Phoneme map (IPA event names; stress, length and other diacritics are dropped first, then every
character maps on its own, so diphthongs, r-coloured vowels and affricates become two segments that
share the event's time, vowels weighing 1.5 against a consonant's 1):

    IPA                      -> inventory          IPA            -> inventory
    ɑ a                      -> a   (father)       p b m t d k f v s z l w -> the same
    æ                        -> ae  (cat)          ɡ g ŋ          -> g   (velar: the mouth of k/g)
    ʌ ə ɐ                    -> ah  (but)          ɾ              -> d   (flap)
    ɔ ɒ o ø                  -> o   (bought)       θ ð            -> th
    ɛ e                      -> e   (bed)          ʃ ʒ            -> sh  (so tʃ = t + sh, dʒ = d + sh)
    ɜ ɚ ɝ                    -> er  (bird)         ɹ r ɻ          -> r
    ɪ ᵻ ɨ                    -> I   (bit)          j              -> y
    i                        -> i   (beet)         ʍ              -> w
    ʊ                        -> U   (book)         ɫ ɬ            -> l
    u ʉ y                    -> u   (boot)         x              -> k
    h ɦ ʔ ç                  -> the mouth of the next phoneme (of the previous one before a pause)
    "" (espeak's pauses)     -> sil
    anything else            -> ah  (a neutral, half-open mouth, like schwa)

Voices, words and the held-out split: a voice is `base+variant` (`espeak-ng --voices=en`, `--voices=variant`).
Held-out voices are those with a held-out base (en-029) or a held-out variant (9 of 45, men and women);
held-out sentences use only held-out words (models/data/tts_words.py). Training draws never touch either.
"""

import functools
import logging
import unicodedata
from dataclasses import dataclass

import numpy as np
import torch
import torchaudio

from actorcast.models.data import espeak
from actorcast.models.data.params import PARAM_INDEX
from actorcast.models.data.performance import Performance, animate, check_request, n_frames_for, performance_streams
from actorcast.models.data.phonemes import INVENTORY, PAUSE, Segment
from actorcast.models.data.speech import EMOTION_VOICE
from actorcast.models.data.tts_words import split_words
from actorcast.models.errors import InputError
from actorcast.models.timebase import SAMPLE_RATE, SAMPLES_PER_FRAME

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------- phoneme map

def _table(**groups: str) -> dict[str, str | None]:
    return {ch: (None if sym == "next" else sym) for sym, chars in groups.items() for ch in chars.split()}


IPA_MAP: dict[str, str | None] = _table(
    a="ɑ a", ae="æ", ah="ʌ ə ɐ", o="ɔ ɒ o ø", e="ɛ e", er="ɜ ɚ ɝ", I="ɪ ᵻ ɨ", i="i", U="ʊ", u="u ʉ y",
    p="p", b="b", m="m", t="t", d="d ɾ", k="k x", g="ɡ g ŋ", n="n", f="f", v="v", th="θ ð", s="s", z="z",
    sh="ʃ ʒ", l="l ɫ ɬ", r="ɹ r ɻ", w="w ʍ", y="j", next="h ɦ ʔ ç")  # None = the next phoneme's mouth
FALLBACK = "ah"
_DROP = set("ˈˌːˑ:͡‿ʰʲʷ-")  # stress, length, ties, secondary articulations


def ipa_tokens(name: str) -> list[str | None]:
    """Inventory symbols of one espeak IPA phoneme name ([] for a pause; None = the neighbour's mouth)."""
    out: list[str | None] = []
    for ch in unicodedata.normalize("NFD", name):
        if ch in _DROP or unicodedata.combining(ch) or ch.isspace():
            continue
        if ch not in IPA_MAP:
            log.debug("espeak phoneme %r has no viseme class; using %s", ch, FALLBACK)
        out.append(IPA_MAP.get(ch, FALLBACK))
    return out


@dataclass(frozen=True)
class Utterance:
    """Spoken text: (N,) float32 audio at 16 kHz and its phonemes (IPA name or "sil", start s, end s).

    The phonemes are contiguous and monotonic, start at 0 and end at N / 16000 s."""

    text: str
    voice: str
    audio: torch.Tensor
    phonemes: tuple[tuple[str, float, float], ...]

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE

    def segments(self, offset: float = 0.0) -> list[Segment]:
        """The phonemes as inventory Segments starting at `offset` s (pauses merged; no accents, no phrases)."""
        pieces: list[tuple[str | None, float, float]] = []
        for name, start, end in self.phonemes:
            tokens = (ipa_tokens(name) if name != PAUSE else []) or [PAUSE]
            weights = np.array([1.5 if t and INVENTORY[t].kind == "vowel" else 1.0 for t in tokens])
            edges = start + (end - start) * np.concatenate([[0.0], np.cumsum(weights) / weights.sum()])
            pieces.extend((t, float(a), float(b)) for t, a, b in zip(tokens, edges[:-1], edges[1:]))
        symbols = [p[0] for p in pieces]
        following = PAUSE
        for i in range(len(symbols) - 1, -1, -1):  # h, ʔ: the mouth of the next phoneme ...
            symbols[i] = following if symbols[i] is None and following != PAUSE else symbols[i]
            following = symbols[i] or following
        for i, sym in enumerate(symbols):  # ... or, before a pause, of the previous one
            symbols[i] = sym or (symbols[i - 1] if i else PAUSE)
        segs: list[Segment] = []
        for sym, (_, a, b) in zip(symbols, pieces):
            if segs and sym == PAUSE and segs[-1].symbol == PAUSE:
                segs[-1] = Segment(PAUSE, segs[-1].start, offset + b)
            else:
                segs.append(Segment(sym, offset + a, offset + b))
        return segs


def speak(text: str, voice: str = "en-us", rate: int = 170, pitch: int = 50, pitch_range: int = 50) -> Utterance:
    """Speak `text` with espeak-ng: rate in words per minute (80-450), pitch and pitch_range 0-100."""
    if not isinstance(text, str) or not text.strip():
        raise InputError("nothing to say: the text is empty; give some words")
    engine = espeak.engine()
    pcm, events = engine.synth(text, voice, rate, pitch, pitch_range)
    if not any(name.strip() for _, name in events) or not pcm.size:
        raise InputError(f"espeak-ng found nothing to speak in {text[:40]!r}: give words, not just punctuation")
    marks = [(0, PAUSE)]  # (start sample, IPA name): silence until the first event
    for sample, name in events:
        if name.strip() and not ipa_tokens(name):  # a lone diacritic (ʲ): the phoneme before goes on
            continue
        marks.append((int(np.clip(sample, marks[-1][0], pcm.size)), name.strip() or PAUSE))
    marks = _refine(pcm, marks, engine.rate)
    audio = _resampler(engine.rate)(torch.from_numpy(pcm.astype(np.float32) / 32768.0)).contiguous()
    # Each mark lasts until the next; the last one until the end of the (resampled) audio.
    phonemes: list[tuple[str, float, float]] = []
    for (s0, name), (s1, _) in zip(marks, marks[1:] + [(pcm.size, PAUSE)]):
        start = phonemes[-1][2] if phonemes else 0.0
        stop = len(audio) / SAMPLE_RATE if s1 >= pcm.size else s1 / engine.rate
        if stop <= start:
            continue
        if phonemes and name == PAUSE == phonemes[-1][0]:
            phonemes[-1] = (PAUSE, phonemes[-1][1], stop)
        else:
            phonemes.append((name, start, stop))
    return Utterance(text=text, voice=voice, audio=audio, phonemes=tuple(phonemes))


@functools.lru_cache(maxsize=2)
def _resampler(rate: int) -> torchaudio.transforms.Resample:
    """torchaudio's sinc resampler to 16 kHz, its kernel built once (building it costs more than using it)."""
    return torchaudio.transforms.Resample(rate, SAMPLE_RATE)


_SILENCE = 0.02  # of the utterance's peak: espeak's closures and word gaps are (near) digital silence
_KEEP = 0.3  # a refined boundary leaves at least this share of the previous phoneme to it


def _first_kind(name: str) -> str:
    tokens = [t for t in ipa_tokens(name) if t] if name != PAUSE else []
    return INVENTORY[tokens[0]].kind if tokens else ""


def _refine(pcm: np.ndarray, marks: list[tuple[int, str]], rate: int) -> list[tuple[int, str]]:
    """Move two kinds of boundary that espeak-ng reports late to where the sound changes.

    1. espeak writes a phoneme's pre-pause (a stop's closure, a word gap) *before* its event: the silent
       run that ends a phoneme is given to the next one (bilabial closures start when the sound stops).
    2. After a nasal or liquid, a vowel's event comes after the vowel's first frames: its start moves
       back to where the loudness rises from the murmur to the vowel (the lips of /m/ open there).
    Both were 30-50 ms late at 170 wpm. Breathy variants (m2, f2-f5, Alicia) fill closures with aspiration
    noise above the silence threshold; there (1) does not fire and a closure stays with the phoneme before.
    """
    x = np.abs(pcm.astype(np.float64))
    ms = max(1, rate // 1000)
    energy = np.concatenate([[0.0], np.cumsum(x * x)])
    half = 6 * ms  # loudness over 12 ms, longer than a pitch period (f0 > 83 Hz)
    idx = np.arange(len(x))
    lo, hi = np.maximum(idx - half, 0), np.minimum(idx + half, len(x))
    env = np.sqrt((energy[hi] - energy[lo]) / (hi - lo))  # (N,) RMS around each sample
    quiet = _SILENCE * max(float(x.max()), 1.0)
    out = list(marks)
    for i in range(2, len(out)):
        (s_prev, prev), (s, name) = out[i - 1], out[i]
        if PAUSE in (prev, name) or s >= len(env):
            continue
        floor = s_prev + int(_KEEP * (s - s_prev))
        t = s
        while t - ms >= floor and x[t - ms:t].max() <= quiet:
            t -= ms
        if s - t >= 5 * ms:  # (1) a closure or gap of 5 ms or more
            out[i] = (t, name)
            continue
        if _first_kind(name) == "vowel" and _first_kind(prev) in ("nasal", "approximant") and floor > s_prev:
            murmur = float(np.median(env[s_prev:floor]))
            vowel = float(env[s:s + 30 * ms].max())
            if vowel > 2.0 * murmur:  # (2) a clear rise: the first point above the geometric mean
                threshold = np.sqrt(murmur * vowel)
                while t - ms >= floor and env[t - ms] >= threshold:
                    t -= ms
                out[i] = (t, name)
    return out


# ----------------------------------------------------------------------------------- voices and text

VOICE_BASES = ("en-us", "en", "en-us-nyc", "en-gb-x-rp", "en-gb-scotland", "en-gb-x-gbclan",
               "en-gb-x-gbcwmd", "en-029")
HELDOUT_BASES = ("en-029",)
VOICE_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2",
                  "klatt3", "klatt4", "adam", "Alex", "Andy", "aunty", "benjamin", "caleb", "david", "ed",
                  "edward", "grandpa", "john", "max", "michel", "norbert", "paul", "quincy", "robert", "travis",
                  "zac", "belinda", "linda", "steph", "grandma", "Annie", "Andrea", "Alicia", "rob", "victor")
HELDOUT_VARIANTS = ("m6", "f3", "klatt3", "david", "belinda", "grandma", "Annie", "rob", "victor")
RATE_WPM = (135, 205)  # espeak's default is 175 words per minute
PITCH = (25, 75)  # espeak's 0-100 scale, 50 = the voice's own
_ENDS = (".", ".", ".", ".", "!", "?")
_TEMPLATES = (
    "{det} {adj} {noun} {verb} {det} {noun}",
    "{subj} {verb} {det} {noun} {prep} {det} {adj} {noun}",
    "{det} {noun} {verb} {det} {adj} {noun} {adv}",
    "{subj} {verb} {det} {noun}, {conj} {subj} {verb} {det} {noun} {adv}",
    "{subj} {verb} {det} {adj} {noun} {adv}",
)


def is_heldout_voice(voice: str) -> bool:
    """Whether a `base+variant` voice is held out: its base or its variant is."""
    base, _, variant = voice.partition("+")
    return base in HELDOUT_BASES or variant in HELDOUT_VARIANTS


def voices(heldout: bool = False) -> tuple[str, ...]:
    """Every `base+variant` voice of one split."""
    return tuple(f"{b}+{v}" for b in VOICE_BASES for v in VOICE_VARIANTS if is_heldout_voice(f"{b}+{v}") == heldout)


def random_voice(rng: np.random.Generator, heldout: bool = False) -> tuple[str, int, int]:
    """(voice, rate in wpm, pitch 0-100) of one speaker of the split."""
    pool = voices(heldout)
    return pool[int(rng.integers(len(pool)))], int(rng.integers(*RATE_WPM)), int(rng.integers(*PITCH))


def random_sentence(rng: np.random.Generator, heldout: bool = False) -> str:
    """A grammatical sentence of 6-11 words, all from the split's vocabulary."""
    words = split_words(heldout)
    template = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))]
    parts = template.split(" ")
    out = []
    for part in parts:
        role, _, tail = part.strip("{").partition("}")
        pool = words[role]
        out.append(pool[int(rng.integers(len(pool)))] + tail)
    sentence = " ".join(out)
    return sentence[0].upper() + sentence[1:] + _ENDS[int(rng.integers(len(_ENDS)))]


# ----------------------------------------------------------------------------------------- performance

def tts_performance(seed: int, seconds: float, emotion: str | None = None, heldout: bool = False) -> Performance:
    """`seconds` of espeak-ng speech and the motion of its phonemes, deterministic by `seed`.

    One voice per clip (rate and pitch follow the emotion), sentences with 0.15-0.5 s pauses between
    them after a 0.1-0.35 s lead-in; the audio is cut (or padded with silence) to whole frames.
    `heldout` draws only held-out voices and words.
    """
    check_request(seed, seconds, emotion)
    emotion, streams = performance_streams(seed, emotion)
    rng_emotion, rng_voice, rng_text, rng_prosody, rng_mouth, rng_head, rng_eyes = streams
    n_samples = n_frames_for(seconds) * SAMPLES_PER_FRAME
    mood = EMOTION_VOICE[emotion]
    voice, rate, pitch = random_voice(rng_voice, heldout)
    rate, pitch = int(np.clip(rate * mood.rate, 80, 450)), int(np.clip(pitch * mood.pitch, 0, 100))
    pitch_range = int(np.clip(50 * mood.range, 0, 100))
    peak = float(np.clip(0.62 * mood.energy * rng_voice.uniform(0.92, 1.08), 0.5, 0.9))
    audio = np.zeros(n_samples, np.float32)
    at = int(rng_prosody.uniform(0.1, 0.35) * SAMPLE_RATE)  # sample where the next sentence starts
    segs = [Segment(PAUSE, 0.0, at / SAMPLE_RATE)]
    while at < n_samples:
        utt = speak(random_sentence(rng_text, heldout), voice, rate, pitch, pitch_range)
        piece = utt.audio.numpy()[:n_samples - at]
        audio[at:at + len(piece)] = piece
        segs += _phrases(utt.segments(at / SAMPLE_RATE), first_phrase=max(s.phrase for s in segs) + 1)
        at += len(utt.audio) + int(rng_prosody.uniform(0.15, 0.5) * SAMPLE_RATE)
        segs.append(Segment(PAUSE, segs[-1].end, at / SAMPLE_RATE))
    segs = _accented(_cut(segs, n_samples / SAMPLE_RATE), rng_prosody)
    top = float(np.max(np.abs(audio)))
    audio = audio * (peak / top) if top > 0 else audio
    log.debug("tts performance seed=%d voice=%s rate=%d pitch=%d emotion=%s", seed, voice, rate, pitch, emotion)
    return animate(segs, audio, emotion, rng_emotion, rng_mouth, rng_head, rng_eyes)


def _phrases(segs: list[Segment], first_phrase: int) -> list[Segment]:
    """Number the phrases (runs between pauses) from `first_phrase`; pauses get -1."""
    out, phrase = [], first_phrase
    for i, s in enumerate(segs):
        if s.symbol == PAUSE:
            out.append(Segment(PAUSE, s.start, s.end))
            if i > 0 and segs[i - 1].symbol != PAUSE:
                phrase += 1
        else:
            out.append(Segment(s.symbol, s.start, s.end, 0.0, phrase))
    return out


def _cut(segs: list[Segment], end: float) -> list[Segment]:
    """Merge touching pauses, drop what starts at or after `end` and end the last segment there."""
    merged: list[Segment] = []
    for s in segs:
        if s.end <= s.start:
            continue
        if merged and s.symbol == PAUSE == merged[-1].symbol:
            merged[-1] = Segment(PAUSE, merged[-1].start, s.end)
        else:
            merged.append(s)
    merged = [s for s in merged if s.start < end]
    last = merged[-1]
    merged[-1] = Segment(last.symbol, last.start, end, last.accent, last.phrase)
    return merged


def _accented(segs: list[Segment], rng: np.random.Generator) -> list[Segment]:
    """Pitch accents (for nods and wider jaws) on the 1-2 longest vowels of each phrase: espeak
    lengthens stressed vowels, so the longest ones carry the phrase's stress."""
    phrases: dict[int, list[int]] = {}
    for i, s in enumerate(segs):
        if s.phrase >= 0 and s.phoneme.kind == "vowel":
            phrases.setdefault(s.phrase, []).append(i)
    out = list(segs)
    for members in phrases.values():
        longest = sorted(members, key=lambda i: segs[i].start - segs[i].end)  # longest first
        for i in longest[:int(rng.integers(1, 3))]:
            s = segs[i]
            out[i] = Segment(s.symbol, s.start, s.end, float(rng.uniform(0.6, 1.0)), s.phrase)
    return out


def openness(performance: Performance) -> torch.Tensor:
    """(T,) mouth openness per frame derived from the phonemes: the timeline's jaw_open (with its lead)."""
    return performance.params[:, PARAM_INDEX["jaw_open"]].clone()


__all__ = ["Utterance", "speak", "random_sentence", "random_voice", "voices", "is_heldout_voice",
           "tts_performance", "openness", "IPA_MAP"]
