"""ctypes binding to libespeak-ng (Debian `espeak-ng`): text -> int16 audio + timed phoneme events.

Synchronous mode: one `espeak_Synth` call runs the synth callback with blocks of int16 audio at the
library's rate (22,050 Hz) and lists of events; a phoneme event (espeakEVENT_PHONEME = 7) holds the IPA
name of a phoneme and the output sample where it starts. Only the runtime library is needed; the struct
layout below follows speak_lib.h of espeak-ng 1.51.

Why a helper process: libespeak-ng 1.51 keeps synthesis state (glottal phase, pitch flutter, noise) from
one call to the next, so the same text comes out a few samples different on every call, and
re-initialising does not reset it (after `espeak_Terminate` it even hangs). A data set must be
deterministic by seed, so a small helper process initialises the library once and never synthesises
itself; every request is served by a fork of it, which starts from that freshly initialised state,
answers and exits. The helper runs only the standard library and this file's ctypes code; it ends when
the pipe from its parent closes. A forked parent (a DataLoader worker) starts its own helper.
"""

import atexit
import ctypes
import ctypes.util
import os
import pickle
import subprocess
import sys
import threading

import numpy as np

from actorcast.models.errors import ActorcastError, ConfigError, InputError

INSTALL = "apt-get install espeak-ng"
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INIT_PHONEME_EVENTS, _INIT_PHONEME_IPA, _INIT_DONT_EXIT = 0x0001, 0x0002, 0x8000
_EVENT_LIST_TERMINATED, _EVENT_PHONEME = 0, 7
_CHARS_UTF8, _POS_CHARACTER = 1, 1
_RATE, _PITCH, _RANGE = 1, 3, 4  # espeak_PARAMETER
_EE_OK = 0


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    """espeak_EVENT (40 bytes on x86-64)."""

    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int),  # ms
                ("sample", ctypes.c_int),  # output sample the event happens at
                ("user_data", ctypes.c_void_p), ("id", _EventId)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


# ----------------------------------------------------------------------- inside the helper process

def _initialise() -> tuple[ctypes.CDLL, int]:
    """Load and initialise libespeak-ng: (library, sample rate). Raises RuntimeError('missing'|'init')."""
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1")
    except OSError:
        raise RuntimeError("missing") from None
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                 ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    # DONT_EXIT: without it, missing data files make the library call exit().
    rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None,
                                 _INIT_PHONEME_EVENTS | _INIT_PHONEME_IPA | _INIT_DONT_EXIT)
    if rate <= 0:
        raise RuntimeError("init")
    return lib, rate


def _synth(lib: ctypes.CDLL, text: str, voice: str, rate: int, pitch: int, pitch_range: int) -> tuple:
    """One synthesis: ("ok", int16 audio bytes, [(start sample, IPA name), ...]) or ("voice" | "synth", code)."""
    audio: list[bytes] = []
    events: list[tuple[int, str]] = []

    def collect(wav, n, evs):
        if wav and n > 0:
            audio.append(ctypes.string_at(wav, 2 * n))
        i = 0
        while evs[i].type != _EVENT_LIST_TERMINATED:
            if evs[i].type == _EVENT_PHONEME:  # name: up to 8 UTF-8 bytes, NUL-terminated when shorter
                events.append((evs[i].sample, evs[i].id.string.decode("utf-8", "ignore")))
            i += 1
        return 0  # continue synthesis

    callback = _CALLBACK(collect)  # referenced until the synthesis is over
    lib.espeak_SetSynthCallback(callback)
    if lib.espeak_SetVoiceByName(voice.encode("utf-8")) != _EE_OK:
        return ("voice", 0)
    for param, value in ((_RATE, rate), (_PITCH, pitch), (_RANGE, pitch_range)):
        lib.espeak_SetParameter(param, int(value), 0)
    data = text.encode("utf-8")
    err = lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
    lib.espeak_Synchronize()
    return ("ok", b"".join(audio), events) if err == _EE_OK else ("synth", err)


def serve() -> None:
    """The helper's loop: a pickled request in, a pickled answer out, each answered by a fresh fork."""
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    try:
        lib, rate = _initialise()
        pickle.dump(("ok", rate), out)
    except RuntimeError as e:
        pickle.dump((str(e), 0), out)
        return
    finally:
        out.flush()
    while True:
        try:
            request = pickle.load(inp)
        except EOFError:  # the parent is gone
            return
        pid = os.fork()
        if pid == 0:
            pickle.dump(_synth(lib, *request), out)
            out.flush()
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        if status != 0:  # the fork died before answering
            pickle.dump(("synth", f"status {status}"), out)
            out.flush()


# ----------------------------------------------------------------------------- in the user's process

class Espeak:
    """A handle on the helper process; `synth` is safe to call from several threads (one at a time)."""

    def __init__(self):
        code = "from actorcast.models.data.espeak import serve; serve()"
        self._proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.lock = threading.Lock()
        status, self.rate = self._receive()
        if status != "ok":
            self.close()
            why = "is not installed" if status == "missing" else "could not start (are its data files missing?)"
            raise ActorcastError(f"the espeak-ng library {why}: {INSTALL}")
        atexit.register(self.close)

    def _receive(self) -> tuple:
        try:
            return pickle.load(self._proc.stdout)
        except (EOFError, pickle.UnpicklingError):
            raise ActorcastError(f"the espeak-ng helper process stopped (exit {self._proc.poll()}); "
                                 f"check that `espeak-ng --version` runs, else {INSTALL}") from None

    def synth(self, text: str, voice: str, rate: int, pitch: int, pitch_range: int) -> tuple[np.ndarray, list]:
        """(N,) int16 audio at `self.rate` and [(start sample, IPA name or "" for a pause), ...] of `text`."""
        with self.lock:
            try:
                pickle.dump((text, voice, int(rate), int(pitch), int(pitch_range)), self._proc.stdin)
                self._proc.stdin.flush()
            except BrokenPipeError:
                raise ActorcastError(f"the espeak-ng helper process stopped; {INSTALL}") from None
            answer = self._receive()
        if answer[0] == "voice":
            raise ConfigError(f"unknown espeak-ng voice {voice!r}: see `espeak-ng --voices=en` and "
                              "`espeak-ng --voices=variant` (a voice and a variant: en-us+m3)")
        if answer[0] != "ok":
            raise InputError(f"espeak-ng failed on {text[:40]!r} ({answer[1]}): give shorter, plain text")
        return np.frombuffer(answer[1], dtype=np.int16).copy(), answer[2]

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.stdin.close()  # the helper's loop ends at EOF
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._proc.stdout.close()


_ENGINE: Espeak | None = None  # this process's helper
_ENGINE_LOCK = threading.Lock()


def engine() -> Espeak:
    """This process's espeak-ng helper, started on first use; ActorcastError naming the package if missing."""
    global _ENGINE
    with _ENGINE_LOCK:
        if _ENGINE is None:
            _ENGINE = Espeak()
        return _ENGINE


def _forget_parents_helper() -> None:
    """In a forked child the parent's pipes and lock are not ours: start afresh."""
    global _ENGINE, _ENGINE_LOCK
    _ENGINE, _ENGINE_LOCK = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_parents_helper)
