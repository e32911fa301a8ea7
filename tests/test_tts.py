"""Real TTS speech (espeak-ng through its library, no mocks): audio, phoneme timing, the viseme timeline,
the held-out split of words and voices, errors, and `actorcast render --say`."""

import math
import re

import av
import numpy as np
import pytest
import torch

from actorcast.cluster.cli import main
from actorcast.models.data import tts
from actorcast.models.data.dataset import HELDOUT_START, make_clip
from actorcast.models.data.phonemes import INVENTORY, PAUSE
from actorcast.models.data.tts_words import ROLES, split_words
from actorcast.models.errors import ConfigError, InputError
from actorcast.models.timebase import SAMPLE_RATE, SAMPLES_PER_FRAME


def _spoken(utt: tts.Utterance) -> list[str]:
    return [s.symbol for s in utt.segments() if s.symbol != PAUSE]


def test_speak_gives_16k_audio_and_contiguous_phonemes_that_cover_it():
    utt = tts.speak("Hello, the map is big.", voice="en-us+m3", rate=180, pitch=40)
    assert utt.audio.dtype == torch.float32 and utt.audio.ndim == 1
    assert 0.8 < utt.seconds < 3.0 and 0.05 < float(utt.audio.abs().max()) <= 1.0
    starts = np.array([p[1] for p in utt.phonemes])
    ends = np.array([p[2] for p in utt.phonemes])
    assert starts[0] == 0.0 and ends[-1] == pytest.approx(len(utt.audio) / SAMPLE_RATE, abs=1e-9)
    assert np.all(ends > starts) and np.array_equal(starts[1:], ends[:-1])  # monotonic, no gaps
    assert PAUSE in [p[0] for p in utt.phonemes]  # the comma's pause
    segs = utt.segments(offset=2.0)
    assert segs[0].start == 2.0 and segs[-1].end == pytest.approx(2.0 + utt.seconds)
    assert all(a.end == b.start for a, b in zip(segs, segs[1:]))
    assert all(s.symbol in INVENTORY for s in segs)


def test_known_words_give_their_phonemes_and_a_silent_bilabial_closure():
    bob = tts.speak("bob")
    assert _spoken(bob) == ["b", "a", "b"]
    mapped = tts.speak("map")
    assert [p[0] for p in mapped.phonemes if p[0] != PAUSE] == ["m", "æ", "p"]
    assert _spoken(mapped) == ["m", "ae", "p"]
    # Timing is real: the closure of /p/ in "a map is" is (near) silent, the vowel before it is loud.
    utt = tts.speak("A map is here.")
    audio, segs = utt.audio.numpy(), utt.segments()
    i = next(i for i, s in enumerate(segs) if s.symbol == "p")
    vowel, closure = segs[i - 1], segs[i]
    assert vowel.symbol == "ae"

    def rms(t0, t1):
        return float(np.sqrt(np.mean(audio[int(t0 * SAMPLE_RATE):int(t1 * SAMPLE_RATE)] ** 2)))

    assert rms(closure.start, closure.start + 0.02) < 0.1 * rms(vowel.start, vowel.end)
    assert all(INVENTORY[s].jaw < 0.05 for s in ("m", "p", "b"))  # bilabials close the mouth


def test_ipa_map_covers_espeaks_english_and_falls_back_sensibly():
    assert tts.ipa_tokens("aɪ") == ["a", "I"] and tts.ipa_tokens("tʃ") == ["t", "sh"]
    assert tts.ipa_tokens("ˈɑːɹ") == ["a", "r"] and tts.ipa_tokens("n̩") == ["n"]
    assert tts.ipa_tokens("h") == [None] and tts.ipa_tokens("ʘ") == [tts.FALLBACK]
    he = tts.speak("he")  # /h/ takes the mouth of the vowel after it
    assert _spoken(he) == ["i", "i"]


def test_heldout_and_training_words_and_voices_never_overlap():
    train_words = {w.lower() for ws in split_words(False).values() for w in ws}
    held_words = {w.lower() for ws in split_words(True).values() for w in ws}
    assert not train_words & held_words and train_words | held_words == {w.lower() for ws in ROLES.values() for w in ws}
    assert all(split_words(True)[role] for role in ROLES)  # every role can still make held-out sentences
    train_voices, held_voices = set(tts.voices(False)), set(tts.voices(True))
    assert not train_voices & held_voices and len(train_voices) > 100 and len(held_voices) > 50
    for heldout, words, pool in ((False, train_words, train_voices), (True, held_words, held_voices)):
        rng = np.random.default_rng(3)
        for _ in range(200):
            sentence = tts.random_sentence(rng, heldout)
            assert set(re.findall(r"[a-z]+", sentence.lower())) <= words, sentence
            voice, rate, pitch = tts.random_voice(rng, heldout)
            assert voice in pool and tts.RATE_WPM[0] <= rate < tts.RATE_WPM[1] and tts.PITCH[0] <= pitch < tts.PITCH[1]
    for voice in ("en-029+m1", "en-us+f3", "en+klatt3"):
        assert tts.is_heldout_voice(voice)


def test_every_voice_base_and_variant_speaks():
    for base in tts.VOICE_BASES:
        assert tts.speak("yes", voice=f"{base}+{tts.VOICE_VARIANTS[0]}").seconds > 0.1
    for variant in tts.VOICE_VARIANTS:
        assert tts.speak("yes", voice=f"en-us+{variant}").seconds > 0.1


def test_tts_performance_moves_the_jaw_on_vowels_and_rests_it_in_pauses():
    perf = tts.tts_performance(5, 6.0, emotion="neutral")
    again = tts.tts_performance(5, 6.0, emotion="neutral")
    assert torch.equal(perf.audio, again.audio) and torch.equal(perf.params, again.params)  # by seed
    assert perf.params.shape == (150, 16) and perf.audio.shape == (150 * SAMPLES_PER_FRAME,)
    assert len(perf.accents) >= 2
    jaw = tts.openness(perf).numpy()
    lead_frames = perf.lead_ms / 1000.0 * 25
    vowel, pause = [], []
    for f in range(len(jaw)):
        t = f + 0.5 + lead_frames  # the mouth shows the phoneme `lead` ahead of the sound
        for sym, start, end in perf.phonemes:
            if start <= t < end:
                if INVENTORY[sym].kind == "vowel":
                    vowel.append(jaw[f])
                elif sym == PAUSE and start + 2 <= t < end - 2:  # 80 ms or more inside a pause
                    pause.append(jaw[f])
                break
    assert len(vowel) > 20 and len(pause) > 3
    assert np.mean(vowel) > 0.25 and np.mean(pause) < 0.05
    assert np.corrcoef(jaw, np.abs(perf.audio.numpy()).reshape(-1, SAMPLES_PER_FRAME).mean(1))[0, 1] > 0.2


def test_tts_clips_share_the_seed_splits():
    clip = make_clip(HELDOUT_START + 3, 2.0, size=None, source="tts")
    assert clip.audio.shape == (50 * SAMPLES_PER_FRAME,) and clip.params.shape == (50, 16)
    assert not torch.equal(clip.audio, make_clip(HELDOUT_START + 3, 2.0, size=None).audio)  # not the babble
    with pytest.raises(ConfigError):
        make_clip(3, 1.0, size=None, source="opera")


@pytest.mark.parametrize("text", ["", "   \n", "... , - ."])
def test_nothing_to_say_is_a_clear_error(text):
    with pytest.raises(InputError, match="nothing|empty"):
        tts.speak(text)


def test_bad_voice_and_bad_request_are_clear_errors():
    with pytest.raises(ConfigError, match="espeak-ng --voices"):
        tts.speak("hello", voice="xx-nowhere")
    with pytest.raises(ConfigError):
        tts.tts_performance(-1, 1.0)
    with pytest.raises(ConfigError):
        tts.tts_performance(1, 1.0, emotion="bored")


def test_render_say_writes_a_video_as_long_as_the_speech(tmp_path):
    text = "Hello bob, the map is big."
    out = tmp_path / "say.mp4"
    assert main(["render", "--say", text, "-o", str(out), "--in-process", "--size", "64"]) == 0
    speech = tts.speak(text).seconds
    with av.open(str(out)) as c:
        n_frames = sum(1 for _ in c.decode(video=0))
    assert n_frames == math.ceil(speech * SAMPLE_RATE / SAMPLES_PER_FRAME)
    assert abs(n_frames / 25 - speech) < 1 / 25
    assert [p.name for p in tmp_path.iterdir()] == ["say.mp4"]  # the spoken wav and the work folder are gone


def test_render_wants_audio_or_say_not_both(tmp_path, capsys):
    wav = tmp_path / "a.wav"
    wav.write_bytes(b"")
    for args in ([], [str(wav), "--say", "hi"]):
        assert main(["render", *args, "-o", str(tmp_path / "o.mp4"), "--in-process"]) == 2
        err = capsys.readouterr().err.strip()
        assert "--say" in err and len(err.splitlines()) == 1
