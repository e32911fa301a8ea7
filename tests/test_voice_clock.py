"""VoiceClock, frames in and slots out (no network, no Pipecat): speech is sent whole and in order, pictures
follow it, and the clock only moves over silence."""

import numpy as np

from actorcast.streaming.tracks import VOICE_BLOCK, VOICE_PER_FRAME, ContentAudio
from actorcast.streaming.voice_clock import VoiceClock

FRAME = VOICE_PER_FRAME  # 1920 samples of 48 kHz per frame


def content_of(*parts: tuple[str, float]) -> ContentAudio:
    """Fed audio made of ("silence" | "speech", seconds) parts."""
    content = ContentAudio()
    for kind, seconds in parts:
        n = int(seconds * 48_000)
        content.append(np.zeros(n, np.int16) if kind == "silence" else np.full(n, 1000, np.int16))
    return content


def frames(first: int, count: int) -> np.ndarray:
    """(count, 4, 4, 3) pictures whose pixels hold their frame index (mod 256)."""
    return np.stack([np.full((4, 4, 3), (first + k) % 256, np.uint8) for k in range(count)])


def anywhere(lo: int, hi: int) -> bool:
    return True


def test_speech_goes_out_whole_and_pictures_follow_it():
    content = content_of(("speech", 2.0))
    clock = VoiceClock(content, arrival=lambda n: None)
    clock.put(0, frames(0, 20), degraded=False)
    clock.put(30, frames(30, 10), degraded=False)  # 20..29 not generated in time
    slots = [clock.next_slot(anywhere) for _ in range(40)]
    starts = [pos for slot in slots for pos in slot.voice]
    assert starts[0] is None and starts[1:] == list(range(0, 79 * VOICE_BLOCK, VOICE_BLOCK))  # no skip, no repeat
    assert [s.index for s in slots[:20]] == list(range(20)) and not any(s.degraded for s in slots[:20])
    assert [s.index for s in slots[20:30]] == [None] * 10  # the last picture again, marked degraded
    assert all(s.degraded and s.image[0, 0, 0] == 19 for s in slots[20:30])
    assert [s.index for s in slots[30:]] == list(range(30, 40)) and slots[35].image[0, 0, 0] == 35


def test_a_late_picture_is_shown_in_the_next_slot_and_a_later_one_replaces_it():
    content = content_of(("speech", 1.0))
    clock = VoiceClock(content, arrival=lambda n: None)
    clock.put(0, frames(0, 3), degraded=False)
    assert [clock.next_slot(anywhere).index for _ in range(4)] == [0, 1, 2, None]
    clock.put(3, frames(3, 3), degraded=False)  # 3 came one slot late; 4 is due now
    slot = clock.next_slot(anywhere)
    assert slot.index == 4 and not slot.degraded and 3 not in clock.frames
    clock.put(1, frames(1, 2), degraded=False)  # frames already passed are dropped
    assert 1 not in clock.frames and 2 not in clock.frames


def test_the_clock_moves_only_over_silence():
    latency = 0.5
    content = content_of(("silence", 1.0), ("speech", 1.0), ("silence", 1.0))
    clock = VoiceClock(content, arrival=lambda n: None)
    clock.latencies.extend([latency] * 10)  # playout delay target: 0.5 s + the margin
    target = clock.delay_target_s()
    assert abs(target - (latency + clock.margin_s)) < 1e-9 and 0 < clock.margin_s < 0.04
    clock.put(0, frames(0, 75), degraded=False)
    first = clock.next_slot(anywhere)
    assert first.index == 0
    slot = clock.next_slot(anywhere)  # 3 s fed, at the start: far behind, over silence -> skip ahead to speech
    assert slot.index is not None and slot.index > 1 and clock.skips == slot.index - 1
    assert slot.voice[0] + 2 * VOICE_BLOCK <= 48_000  # not past the start of speech
    while clock.n * FRAME < 48_000 + FRAME:  # into the speech: one frame per slot, nothing skipped
        n = clock.n
        assert clock.next_slot(anywhere).index in (n + 1, None) and clock.n == n + 1
    skips = clock.skips
    while clock.n * FRAME < 2 * 48_000:
        clock.next_slot(anywhere)
    assert clock.skips == skips  # speech is never skipped, however far behind


def test_the_clock_holds_when_too_close_and_markers_pin_it():
    content = content_of(("silence", 0.2))
    clock = VoiceClock(content, arrival=lambda n: None)
    clock.latencies.extend([0.5] * 10)
    clock.put(0, frames(0, 20), degraded=False)
    assert clock.next_slot(anywhere).index == 0
    held = clock.next_slot(anywhere)  # only 0.2 s fed: closer than the 0.58 s target -> hold
    assert held.index is None and held.voice == (None, None) and held.image[0, 0, 0] == 0 and clock.n == 0
    pinned = clock.next_slot(lambda lo, hi: False)  # a TTS bracket waits here: do not hold over it
    assert pinned.index == 1 and clock.holds == 1


def test_after_an_interrupt_the_voice_jumps_to_the_first_idle_frame():
    content = content_of(("speech", 0.4), ("silence", 1.0))
    clock = VoiceClock(content, arrival=lambda n: None)
    clock.put(0, frames(0, 12), degraded=False)
    for _ in range(5):
        clock.next_slot(anywhere)
    content.silence_from(clock.position())  # what the service does on an InterruptionFrame
    clock.skip_until(16)
    assert 5 not in clock.frames and clock.next_slot(anywhere).index is None  # frames of the speech: dropped
    clock.put(16, frames(16, 4), degraded=False)
    slot = clock.next_slot(anywhere)
    assert slot.index == 16 and slot.voice[0] == 16 * FRAME - VOICE_BLOCK and clock.resume_at is None


def test_the_voice_lags_its_picture_by_lag_samples():
    content = content_of(("speech", 1.0))
    clock = VoiceClock(content, arrival=lambda n: None, lag=1440)  # 30 ms, as the Pipecat service sets it
    clock.put(0, frames(0, 10), degraded=False)
    slots = [clock.next_slot(anywhere) for _ in range(10)]
    starts = [pos for slot in slots for pos in slot.voice]
    assert starts[:2] == [None, None]  # before the first sample
    assert starts[2:] == list(range(480, 480 + 18 * VOICE_BLOCK, VOICE_BLOCK))  # then contiguous
    assert all(s.index == k and s.voice[0] == k * FRAME - 1440 for k, s in enumerate(slots[1:], 1))


def _paced(clock, content, fed_at, ticks: int, start: float):
    """Slots as paced_slots runs them, on a fake wall clock: [(send time, slot)]. Silence is fed as time passes
    (48 kHz from fed_at(0)); frame n is generated 0.1 s after its sound was fed."""
    made = [0]

    def catch_up(now):
        end = int((now - fed_at(0)) * 48_000)
        if end > content.end:
            content.append(np.zeros(end - content.end, np.int16))
        while fed_at(made[0]) + 0.1 <= now:
            clock.put(made[0], frames(made[0], 1), degraded=False, now=fed_at(made[0]) + 0.1)
            made[0] += 1

    t0, sent, now = start, [], start
    for k in range(ticks):
        now = max(now, t0 + k * 0.04)
        catch_up(now)
        wait = clock.wait_s(anywhere, now)
        now += max(wait, 0.0)
        t0 += wait
        catch_up(now)
        sent.append((now, clock.next_slot(anywhere)))
    return sent

def test_over_silence_the_slots_move_into_the_phase_where_frames_are_due():
    rng = np.random.default_rng(0)
    jitter = rng.uniform(0.0, 0.004, 1000)  # the feed's sound arrives up to 4 ms late
    fed_at = lambda n: 100.0 + 0.04 * n + jitter[n]  # noqa: E731
    content = ContentAudio()
    clock = VoiceClock(content, arrival=fed_at, lag=0)
    clock.latencies.extend([0.1] * 10)  # generation p95 0.1 s: frames are due 0.1 s + the margin after their sound
    sent = _paced(clock, content, fed_at, 150, start=100.13)  # the first tick 20-30 ms past a frame's due time
    due = clock.delay_target_s()
    late = [t - fed_at(s.index) - due for t, s in sent[50:] if s.index is not None]
    assert len(late) > 90 and all(s.index is not None for _, s in sent[50:])  # no holds, no repeats
    # every picture within a few ms of its due time, never before it (the whole-frame clock: up to 40 ms after)
    assert -0.0005 < min(late) and max(late) < 0.008 and np.mean(late) < 0.004, (min(late), max(late))
    assert all(not s.degraded for _, s in sent[50:])
