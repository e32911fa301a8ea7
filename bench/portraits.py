"""Real portraits: a photo's face animated by espeak-ng speech and pasted back, read by the meter.

    python bench/portraits.py --out DIR [--quick] [--weights DIR] [--all-faces]

Each test photo (tests/data/astronaut.jpg; insightface's t1.jpg, its largest face, or each of its six with
--all-faces; two of scikit-image's lfw_subset faces, as they come at 25 px and doubled to 50 px as
tests/test_framing.py does) goes through `render` (cluster/render.py) with --full-frame, speaking 20 s of
held-out espeak-ng speech (sentences with their pauses) and then 5 s of silence: the evaluation's 'tts' source
(models/data/tts.py), whose phoneme-derived openness (`openness`, the jaw_open of the viseme timeline; 0 in the
silent tail) is the truth lipsync_r_tts is scored against. A photo that framing refuses (no face, too small) is
recorded with its message instead of a render. With weights trained on the motion parameters (the shipped ones),
the photo is animated by its rig (models/photo_rig.py), as render does.

Measured per photo (DIR/portraits.json, under "photos"; each figure is {"value", "target", "met"}). "Spoken
part": the 20 s of speech with its pauses; "tail" (keys ending _silence): the 5 s of silence after it.

| key                               | what                                                              | target  |
|-----------------------------------|-------------------------------------------------------------------|---------|
| lipsync_r                         | Pearson r of the meter's mouth opening with the speech's openness | >= 0.65 |
|                                   | over the spoken part                                              |         |
| lip_lag_frames                    | cross-correlation peak, frames (positive: the video is late)      | none    |
| mouth_open_range_speech           | p95 - p5 of the meter's mouth opening in speech, face heights     | >= 0.04 |
| outside_mask_max_abs_diff_frames  | max abs difference to the photo where the mask weight is 0, on    | == 0    |
|                                   | the composited frames as they go to the encoder                   |         |
| outside_mask_max_abs_diff_mp4     | the same on the decoded mp4 (H.264 changes every pixel a little)  | none    |
| face_ssim_silent_frames           | SSIM to the photo inside the mask (weight > 0), mean over silent  | >= 0.8  |
|                                   | frames, composited frames                                         |         |
| face_ssim_silent_mp4              | the same on the decoded mp4                                       | >= 0.8  |
| meter_no_face_frames              | frames of the mp4 in which the meter found no face (NaN there,    | == 0    |
|                                   | left out of every measure, never dropped silently)                |         |
| head_yaw_std_deg,                 | standard deviation over the spoken part of the head's yaw (pitch) | >= 2    |
| head_pitch_std_deg                | in degrees: each frame's RIGID Face Mesh points (x, y and the     |         |
|                                   | mesh's depth z) fitted rigidly to the first frame's (Kabsch)      |         |
| blinks                            | blinks starting in the spoken part that close the eye (both eyes' | >= 3    |
|                                   | mean openness) below BLINK_CLOSED (35 %) of its open level, the   |         |
|                                   | video's median; dip_bottoms: each dip under half open, as a       |         |
|                                   | fraction of open (motion_measures.blinks)                         |         |
| blink_deepest_closure             | the lowest eye openness in the spoken part / the open level       | none    |
| gaze_shifts                       | saccades in the spoken part: the irises (468, 473) placed between | >= 2    |
|                                   | their eye corners, in eye widths, jump SACCADE_JUMP (or NOISE_JUMP|         |
|                                   | times the face's iris noise, if more) from one fixation           |         |
|                                   | (FIXATION_FRAMES within FIXATION_RADIUS) to the next              |         |
| identity_distance_mean, _max      | dlib face-recognition descriptor distance (face_id_worker.py) of  | <= 0.35 |
|                                   | every IDENTITY_STEP-th frame's face to the photo's own square;    | <= 0.45 |
|                                   | mean and max over the frames dlib finds a face in (0.6: another   |         |
|                                   | person, by dlib's own threshold)                                  |         |
| blinks_silence                    | blinks in the tail                                                | >= 1    |
| head_yaw_std_deg_silence,         | head yaw (pitch) standard deviation in the tail                   | >= 0.5  |
| head_pitch_std_deg_silence        |                                                                   |         |
| blink_deepest_closure_silence,    | as in speech, in the tail                                         | none    |
| gaze_shifts_silence               |                                                                   |         |

The meter (the worker of models/training/meter.py, tracking) reads the square around the animated face, cut from
the decoded mp4 at the framing's box as render cut the reference; its mouth opening is the inner-lip gap over the
face height. Speech frames: audio RMS >= bench/sheet.py's SILENCE_RMS; silent frames: below it in the frame and
the SILENT_MARGIN frames either side (the jaw leads and trails the sound). Gaze shifts are looked for only where
the eyes are at least half open (a closing lid moves the meter's iris). The r target is set for single-face
photos; a group photo's faces report it too.

Also written: DIR/portraits_<photo>.png (waveform, mouth opening against openness, head yaw and pitch with eye
openness and gaze shifts, the face and its mouth over time, from the mp4), DIR/strip_<photo>.png (the face every
0.4 s), DIR/mouth_<photo>.png (the mouth every 2nd frame of the first 4 s, at the photo's own resolution) and
DIR/portraits_<photo>.mp4 (the render). --quick: the astronaut only, 5 s of speech and the 5 s tail.
"""

import argparse
import importlib.util
import logging
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, write_json
from bench.sheet import SILENCE_RMS, mouth_crops
from actorcast.models.data.dataset import HELDOUT_START
from actorcast.models.timebase import FPS, SAMPLES_PER_FRAME

log = logging.getLogger("bench.portraits")

SPEECH_CLIP = HELDOUT_START  # the held-out clip whose voice and words are spoken (the evaluation's first)
SPEECH_S, QUICK_SPEECH_S = 20.0, 5.0   # seconds of speech (with its own pauses) spoken; --quick
TAIL_S = 5.0                 # seconds of silence appended after the speech
SILENT_MARGIN = 2            # frames either side of a silent frame that must be silent too
LFW_FACES = (0, 1)           # lfw_subset() indices tried

# Head pose: Face Mesh points that move with the skull, not with the jaw, lips, lids or brows (upper face oval,
# forehead, nose ridge, eye corners, cheekbones), fitted rigidly in 3-D (x, y and the mesh's depth z).
RIGID = (10, 338, 297, 332, 284, 251, 389, 356, 454, 234, 127, 162, 21, 54, 103, 67, 109,
         151, 9, 168, 6, 197, 195, 5, 4, 1,
         33, 133, 362, 263,
         116, 345, 123, 352, 50, 280)
BLINK_CLOSED = 0.35          # a blink counts when the eye closes below this fraction of its open level
# Gaze: per eye (image-left corner, image-right corner, iris centre); the iris is placed along and across the
# corner-to-corner line, in eye widths.
EYES = ((33, 133, 468), (362, 263, 473))
SACCADE_JUMP = 0.05          # eye widths between two fixations' medians: about 7 deg of eye rotation (an eyeball
                             # radius of 0.4 eye widths)
FIXATION_FRAMES = 5          # a fixation: this many frames (200 ms, a short human fixation) ...
FIXATION_RADIUS = 0.03       # ... within this many eye widths of their median. The meter's iris wanders by 0.01-0.02
                             # eye widths a frame on a face 100-130 px high whose eyes hold still; medians of 5
                             # frames keep that under SACCADE_JUMP, medians of 3 do not
SACCADE_FRAMES = 3           # frames the jump between two fixations may take
NOISE_JUMP = 4.0             # ... and the jump is at least this many times the face's own iris noise (`iris_noise`):
                             # a small face's iris reading wanders further
IDENTITY_STEP = 5            # every this many frames' faces are compared with the photo's
SAME_PERSON = 0.6            # dlib's descriptor distance under which two faces are one person

# key: (comparison, value); None: reported without a target. The lip-sync, motion, blink, gaze and identity
# targets are the project's for every test photo; meter_no_face_frames == 0 is this benchmark's own (the face
# never leaves). The r target is set for single-face photos; a group photo's faces report it too.
TARGETS = {
    "lipsync_r": (">=", 0.65),
    "lip_lag_frames": None,
    "mouth_open_range_speech": (">=", 0.04),
    "outside_mask_max_abs_diff_frames": ("==", 0),
    "outside_mask_max_abs_diff_mp4": None,
    "face_ssim_silent_frames": (">=", 0.8),
    "face_ssim_silent_mp4": (">=", 0.8),
    "meter_no_face_frames": ("==", 0),
    "head_yaw_std_deg": (">=", 2.0),
    "head_pitch_std_deg": (">=", 2.0),
    "blinks": (">=", 3),
    "blink_deepest_closure": None,
    "gaze_shifts": (">=", 2),
    "identity_distance_mean": ("<=", 0.35),
    "identity_distance_max": ("<=", 0.45),
    "blinks_silence": (">=", 1),
    "blink_deepest_closure_silence": None,
    "head_yaw_std_deg_silence": (">=", 0.5),
    "head_pitch_std_deg_silence": (">=", 0.5),
    "gaze_shifts_silence": None,
}


@dataclass(frozen=True)
class Photo:
    """One photo to render: `face` picks a face (1-based, left to right; None: the largest)."""

    name: str
    path: Path
    source: str                  # where the photo comes from, for the report
    face: int | None = None
    may_refuse: bool = False     # framing may refuse it (too small): recorded, not an error


@dataclass(frozen=True)
class Speech:
    """The spoken clip: (N,) float32 16 kHz audio and, per frame, the truth and the silence masks."""

    audio: np.ndarray
    openness: np.ndarray         # (T,) phoneme-derived mouth openness (models/data/tts.py `openness`)
    rms: np.ndarray              # (T,) audio RMS per frame
    tail: int = 0                # frames of silence appended at the end (openness 0 there)

    @property
    def speech(self) -> np.ndarray:
        return self.rms >= SILENCE_RMS

    @property
    def spoken(self) -> np.ndarray:
        """(T,) bool: the frames before the silent tail (the speech with its own pauses)."""
        return np.arange(len(self.rms)) < len(self.rms) - self.tail

    @property
    def in_tail(self) -> np.ndarray:
        """(T,) bool: the appended silent tail."""
        return ~self.spoken

    @property
    def silent(self) -> np.ndarray:
        """(T,) bool: silent, and so are the SILENT_MARGIN frames either side."""
        quiet = np.pad(~self.speech, SILENT_MARGIN, constant_values=True)
        return np.all([quiet[i:i + len(self.rms)] for i in range(2 * SILENT_MARGIN + 1)], axis=0)


# ------------------------------------------------------------------------------------------------ measures

def outside_max_abs_diff(frames: np.ndarray, picture: np.ndarray, outside: np.ndarray) -> int:
    """Largest |frame - picture| over the pixels where `outside` (H, W) is True, any channel; frames (N, H, W, 3)
    and picture (H, W, 3) uint8. 0 means pixel-identical there."""
    if not outside.any():
        return 0
    diff = np.abs(frames[:, outside].astype(np.int16) - picture[outside].astype(np.int16))  # (N, K, 3)
    return int(diff.max())


def masked_ssim(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Mean SSIM (Wang et al. 2004: Gaussian window, sigma 1.5, over RGB channels) of (h, w, 3) uint8 images
    `a` and `b`, over the pixels where `mask` (h, w) is True."""
    from skimage.metrics import structural_similarity

    _, ssim_map = structural_similarity(a, b, channel_axis=-1, data_range=255, gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False, full=True)  # (h, w, 3)
    return float(ssim_map.mean(-1)[mask].mean())


def figure(key: str, value, **extra) -> dict:
    """{"value", "target", "met"} of one measure, its target from TARGETS (None: no target set)."""
    target = TARGETS[key]
    met = None
    if target is not None and value is not None:
        compare = {">=": np.greater_equal, "<=": np.less_equal, "==": np.equal}[target[0]]
        met = bool(compare(value, target[1]))
    return {"value": value, "target": None if target is None else f"{target[0]} {target[1]}", "met": met, **extra}


def kabsch(reference: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(T, 3, 3) rotations R that best map the centred `reference` (K, 3) onto each frame's centred `points`
    (T, K, 3), least squares (Kabsch 1976; proper rotations, det +1): points - mean ~ R (reference - mean).
    NaN for a frame with any NaN point."""
    a = reference - reference.mean(0)                            # (K, 3)
    b = points - points.mean(1, keepdims=True)                   # (T, K, 3)
    ok = np.isfinite(b).all((1, 2))
    cov = np.einsum("ki,tkj->tij", a, np.where(ok[:, None, None], b, 0.0))  # (T, 3, 3): sum_k a_k b_k^T = U S V^T
    u, _, vt = np.linalg.svd(cov)
    fix = np.tile(np.eye(3), (len(points), 1, 1))
    fix[:, 2, 2] = np.where(np.linalg.det(vt) * np.linalg.det(u) < 0, -1.0, 1.0)  # no reflection
    rot = vt.transpose(0, 2, 1) @ fix @ u.transpose(0, 2, 1)   # V diag(1, 1, d) U^T
    rot[~ok] = np.nan
    return rot


def yaw_pitch(rot: np.ndarray) -> np.ndarray:
    """(T, 2) yaw and pitch in degrees of rotations (T, 3, 3) in image axes (x right, y down, z away from the
    camera), taken as R = Ry(yaw) Rx(pitch) Rz(roll): yaw turns about the image's vertical axis, pitch about its
    horizontal one."""
    yaw = np.arctan2(rot[:, 0, 2], rot[:, 2, 2])
    pitch = np.arcsin(np.clip(-rot[:, 1, 2], -1.0, 1.0))
    return np.degrees(np.stack([yaw, pitch], 1))


def head_pose(landmarks: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """(T, 2) yaw and pitch in degrees of each frame's head against the first frame's with a face: the RIGID points
    of Face Mesh's (T, 478, 2) pixels and (T, 478) depths (the meter worker's `landmarks`, `landmarks_z`) fitted
    rigidly in 3-D. NaN where no face was read."""
    points = np.concatenate([landmarks[:, RIGID], depth[:, RIGID, None]], axis=2).astype(np.float64)  # (T, K, 3)
    found = np.isfinite(points).all((1, 2))
    if not found.any():
        return np.full((len(points), 2), np.nan)
    return yaw_pitch(kabsch(points[np.argmax(found)], points))


def nan_std(values: np.ndarray) -> float | None:
    """Standard deviation over the finite values; None under 2 of them."""
    values = values[np.isfinite(values)]
    return float(np.std(values)) if len(values) >= 2 else None


def blink_figures(eye_open: np.ndarray, frames: np.ndarray, open_level: float) -> dict:
    """Blinks of an eye-openness series (T,) that start in `frames` (T,) bool, against `open_level`: `blinks`,
    those closing below BLINK_CLOSED of it; `deepest`, the lowest openness in `frames` over the open level;
    `bottoms`, the lowest openness of each dip below motion_measures' BLINK_DEPTH (half open), counted or not."""
    from actorcast.models.training.motion_measures import BLINK_DEPTH, blinks

    def starting_in(found):
        return [b for b in found if frames[b.start]]

    eye = np.asarray(eye_open, np.float64)
    inside = eye[frames & np.isfinite(eye)]
    return {"blinks": len(starting_in(blinks(eye, BLINK_CLOSED, open_level))),
            "deepest": float(inside.min() / open_level) if len(inside) else None,
            "bottoms": [round(b.bottom, 3) for b in starting_in(blinks(eye, BLINK_DEPTH, open_level))]}


def iris_positions(landmarks: np.ndarray) -> np.ndarray:
    """(T, 2) where the irises sit in their eyes, both eyes' mean, in eye widths: along the line from the eye's
    image-left corner to its image-right corner (0 at the left corner, 1 at the right) and across it (positive
    down), from Face Mesh's (T, 478, 2) pixels. NaN where no face was read."""
    along, across = [], []
    for left, right, iris in EYES:
        axis = landmarks[:, right] - landmarks[:, left]                  # (T, 2)
        rel = landmarks[:, iris] - landmarks[:, left]
        width2 = (axis ** 2).sum(1)
        along.append((rel * axis).sum(1) / width2)
        across.append((axis[:, 0] * rel[:, 1] - axis[:, 1] * rel[:, 0]) / width2)
    return np.stack([np.mean(along, 0), np.mean(across, 0)], 1).astype(np.float64)


def saccades(position: np.ndarray, valid: np.ndarray, jump: float = SACCADE_JUMP) -> np.ndarray:
    """Frame indices of gaze shifts in an iris track (T, 2) (`iris_positions`), where `valid` (T,) bool.

    A shift: FIXATION_FRAMES valid frames held within FIXATION_RADIUS of their median, then within SACCADE_FRAMES
    frames another such fixation whose median lies `jump` (eye widths; `gaze_jump`) or more away. Every pair of
    windows that sees the same jump is one shift, reported at its largest frame-to-frame step. Drift, noise and
    jumps out of or into an unsteady stretch (a blink: leave it out of `valid`) are not shifts."""
    n, f, gap = len(position), FIXATION_FRAMES, SACCADE_FRAMES
    valid = np.asarray(valid, bool) & np.isfinite(position).all(1)

    def held(a: int) -> np.ndarray | None:
        window = position[a:a + f]
        if a < 0 or a + f > n or not valid[a:a + f].all():
            return None
        centre = np.median(window, 0)
        return centre if np.linalg.norm(window - centre, axis=1).max() <= FIXATION_RADIUS else None

    hits = np.zeros(n, bool)                          # t: a fixation ends at t - 1, the next starts at t + gap
    for t in range(f, n - gap - f + 1):
        before, after = held(t - f), held(t + gap)
        if before is not None and after is not None and valid[t:t + gap].all() \
                and np.linalg.norm(after - before) >= jump:
            hits[t] = True
    step = np.r_[0.0, np.linalg.norm(np.diff(position, axis=0), axis=1)]   # step[i]: frame i - 1 to frame i
    step[~np.isfinite(step)] = 0.0
    edges = np.diff(np.r_[0, hits.astype(np.int8), 0])
    runs = zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1))  # [a, b) of every run of hits
    return np.asarray([a + int(np.argmax(step[a:b + gap])) for a, b in runs], int)


def iris_noise(position: np.ndarray, valid: np.ndarray) -> float | None:
    """The meter's frame-to-frame iris noise in an iris track (T, 2) (`iris_positions`), eye widths: the standard
    deviation of one reading along the corner line, estimated robustly from the steps between valid neighbouring
    frames (1.4826 MAD of the steps, over sqrt 2: a step holds two readings' noise); None under 10 steps."""
    ok = np.asarray(valid, bool) & np.isfinite(position).all(1)
    steps = np.diff(position[:, 0])[ok[1:] & ok[:-1]]
    if len(steps) < 10:
        return None
    return float(1.4826 * np.median(np.abs(steps - np.median(steps))) / np.sqrt(2))


def gaze_jump(noise: float | None) -> float:
    """The jump a gaze shift needs on a face whose iris reading has `noise` (`iris_noise`): SACCADE_JUMP, or
    NOISE_JUMP times the noise where that is more."""
    return max(SACCADE_JUMP, NOISE_JUMP * noise) if noise is not None else SACCADE_JUMP


def eyes_open(eye_open: np.ndarray, open_level: float) -> np.ndarray:
    """(T,) bool: the eye is at least half open (motion_measures' BLINK_DEPTH) there and in the frames either
    side, so the iris reading is not a lid's."""
    from actorcast.models.training.motion_measures import BLINK_DEPTH

    shut = ~(np.asarray(eye_open, np.float64) >= BLINK_DEPTH * open_level)      # NaN counts as shut
    shut = shut | np.r_[shut[1:], False] | np.r_[False, shut[:-1]]
    return ~shut


def identity_distances(reference: np.ndarray, descriptors: np.ndarray) -> np.ndarray:
    """(n,) Euclidean distances of dlib face descriptors (n, 128) to the `reference` (128,); NaN where a frame had
    no face (its descriptor NaN)."""
    return np.linalg.norm(np.asarray(descriptors, np.float64) - np.asarray(reference, np.float64), axis=1)


class FrameChecks:
    """Reads a photo's full-frame video as it streams by, frame index by frame index: the largest difference to
    the photo outside the mask, SSIM to it inside at silent frames, and (if `keep_squares`) the square around
    the face for the meter."""

    def __init__(self, picture: np.ndarray, weight: np.ndarray, box: tuple[int, int, int], silent: np.ndarray,
                 keep_squares: bool = False):
        self.picture, self.box, self.silent, self.keep_squares = picture, box, silent, keep_squares
        self.outside = weight == 0                                          # (H, W): copied from the photo
        rows, cols = np.nonzero(~self.outside)
        self.window = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))  # the mask's bbox
        self.inside = ~self.outside[self.window]
        self.n, self.max_diff, self.ssim, self.squares = 0, 0, [], []

    def add(self, frames: np.ndarray) -> None:
        """The next (n, H, W, 3) uint8 frames of the video."""
        from actorcast.actors.framing import Framing

        if frames.shape[1:] != self.picture.shape:
            raise ValueError(f"frames {frames.shape[1:]} are not the photo's {self.picture.shape}")
        self.max_diff = max(self.max_diff, outside_max_abs_diff(frames, self.picture, self.outside))
        for frame in frames:
            if self.n < len(self.silent) and self.silent[self.n]:
                self.ssim.append(masked_ssim(frame[self.window], self.picture[self.window], self.inside))
            if self.keep_squares:
                self.squares.append(Framing(frame, self.box, None).crop())
            self.n += 1

    @property
    def mean_ssim(self) -> float | None:
        return float(np.mean(self.ssim)) if self.ssim else None


def decoded(path: Path, chunk: int = 25):
    """The video frames of `path` as (n, H, W, 3) uint8 chunks of up to `chunk` frames."""
    import av

    with av.open(str(path)) as container:
        batch = []
        for frame in container.decode(video=0):
            batch.append(frame.to_ndarray(format="rgb24"))
            if len(batch) == chunk:
                yield np.stack(batch)
                batch = []
        if batch:
            yield np.stack(batch)


# ------------------------------------------------------------------------------------------------ readers

def read_meter(squares: np.ndarray, tmp: Path):
    """The meter's reading of (T, side, side, 3) uint8 frames as one tracked sequence, and the (T, 478) depths
    of its landmarks that MeterReading does not carry: (MeterReading, landmarks_z). The meter worker run as
    FaceMeter runs it (models/training/meter.py)."""
    from actorcast.models.training.meter import WORKER, MeterReading, run_in_meter_env

    frames, out = tmp / "meter_frames.npy", tmp / "meter_out.npz"
    np.save(frames, np.ascontiguousarray(squares))
    try:
        run_in_meter_env(WORKER, [str(out), str(frames)], "the lip-sync meter")
        with np.load(out) as d:
            left, right = d["eye_open_l"], d["eye_open_r"]
            reading = MeterReading(mouth_open=d["mouth_open"], eye_open=(left + right) / 2, eye_open_l=left,
                                   eye_open_r=right, found=d["found"], landmarks=d["landmarks"])
            return reading, d["landmarks_z"]
    finally:
        frames.unlink(missing_ok=True)
        out.unlink(missing_ok=True)


def read_identity(photo_square: np.ndarray, squares: np.ndarray, tmp: Path) -> tuple[np.ndarray, np.ndarray]:
    """dlib face descriptors (face_id_worker.py, in the meter's venv) of the photo's own square (side, side, 3)
    and of frames (n, side, side, 3): ((128,), (n, 128)); NaN rows where dlib found no face."""
    from actorcast.models.training.meter import WORKER, run_in_meter_env

    frames, out = tmp / "id_frames.npy", tmp / "id_out.npz"
    np.save(frames, np.ascontiguousarray(np.concatenate([photo_square[None], squares])))
    try:
        run_in_meter_env(WORKER.with_name("face_id_worker.py"), [str(out), str(frames)],
                         "the face identity worker (dlib)")
        with np.load(out) as d:
            return d["descriptors"][0], d["descriptors"][1:]
    finally:
        frames.unlink(missing_ok=True)
        out.unlink(missing_ok=True)


def motion_figures(reading, depth: np.ndarray, speech: Speech) -> tuple[dict, dict]:
    """The head, blink and gaze figures of a reading over the spoken part and over the silent tail, and the
    series they come from (for the sheet): ({key: figure}, {"pose", "eye", "open_level", "iris", "shifts"})."""
    n = len(reading)
    pose = head_pose(reading.landmarks, depth)                              # (T, 2) degrees
    eye = np.asarray(reading.eye_open, np.float64)
    level = float(np.nanmedian(eye)) if np.isfinite(eye).any() else float("nan")
    iris = iris_positions(reading.landmarks)
    steady = eyes_open(eye, level)
    noise = iris_noise(iris, steady)
    jump = gaze_jump(noise)
    shifts = saccades(iris, steady, jump)
    figures = {}
    for part, suffix in ((speech.spoken[:n], ""), (speech.in_tail[:n], "_silence")):
        frames = np.zeros(n, bool)
        frames[:len(part)] = part
        b = blink_figures(eye, frames, level)
        figures[f"head_yaw_std_deg{suffix}"] = figure(f"head_yaw_std_deg{suffix}", _round(nan_std(pose[frames, 0]), 2))
        figures[f"head_pitch_std_deg{suffix}"] = figure(f"head_pitch_std_deg{suffix}",
                                                        _round(nan_std(pose[frames, 1]), 2))
        figures[f"blinks{suffix}"] = figure(f"blinks{suffix}", b["blinks"], closing_below=BLINK_CLOSED,
                                            dip_bottoms=b["bottoms"])
        figures[f"blink_deepest_closure{suffix}"] = figure(f"blink_deepest_closure{suffix}", _round(b["deepest"], 3),
                                                           unit="fraction of the open level")
        figures[f"gaze_shifts{suffix}"] = figure(f"gaze_shifts{suffix}", int(frames[shifts].sum()),
                                                 seconds=round(frames.sum() / FPS, 1),
                                                 iris_noise_eye_widths=_round(noise, 4),
                                                 jump_eye_widths=round(jump, 4))
    return figures, {"pose": pose, "eye": eye, "open_level": level, "iris": iris, "shifts": shifts}


def identity_figures(photo_square: np.ndarray, squares: np.ndarray, tmp: Path) -> dict:
    """identity_distance_mean and _max: dlib descriptor distances of every IDENTITY_STEP-th frame's face to the
    photo's; frames where dlib found no face are counted, not averaged."""
    reference, descriptors = read_identity(photo_square, squares[::IDENTITY_STEP], tmp)
    extra = {"frames_sampled": len(descriptors), "every_nth_frame": IDENTITY_STEP, "same_person_below": SAME_PERSON}
    if not np.isfinite(reference).all():
        note = "dlib found no face in the photo's square"
        return {"identity_distance_mean": figure("identity_distance_mean", None, note=note, **extra),
                "identity_distance_max": figure("identity_distance_max", None, note=note, **extra)}
    dist = identity_distances(reference, descriptors)
    seen = dist[np.isfinite(dist)]
    extra["frames_without_face"] = int(len(dist) - len(seen))
    mean, top = (round(float(seen.mean()), 3), round(float(seen.max()), 3)) if len(seen) else (None, None)
    return {"identity_distance_mean": figure("identity_distance_mean", mean, **extra),
            "identity_distance_max": figure("identity_distance_max", top, **extra)}


# ------------------------------------------------------------------------------------------------ inputs

def make_speech(seconds: float, tail_s: float = TAIL_S) -> Speech:
    """`seconds` of the held-out clip's espeak-ng speech (neutral; sentences with pauses) and its phoneme-derived
    openness, then `tail_s` seconds of silence (openness 0)."""
    from actorcast.models.data.dataset import performance_seed
    from actorcast.models.data.tts import openness, tts_performance

    perf = tts_performance(performance_seed(SPEECH_CLIP), seconds, emotion="neutral", heldout=True)
    spoken, truth = perf.audio.numpy(), openness(perf).numpy()
    n = len(spoken) // SAMPLES_PER_FRAME
    spoken, truth = spoken[:n * SAMPLES_PER_FRAME], truth[:n]
    truth = np.pad(truth, (0, n - len(truth)))
    tail = round(tail_s * FPS)
    audio = np.concatenate([spoken, np.zeros(tail * SAMPLES_PER_FRAME, spoken.dtype)])
    rms = np.sqrt(np.mean(audio.reshape(-1, SAMPLES_PER_FRAME).astype(np.float64) ** 2, axis=1) + 1e-12)
    return Speech(audio=audio, openness=np.concatenate([truth, np.zeros(tail, truth.dtype)]), rms=rms, tail=tail)


def t1_path() -> Path:
    """insightface's sample group photo (the `dev` extra), found without importing insightface (onnxruntime)."""
    spec = importlib.util.find_spec("insightface")
    if spec is None:
        raise SystemExit("insightface (the dev extra) holds t1.jpg: pip install -e '.[dev]'")
    return Path(spec.submodule_search_locations[0]) / "data" / "images" / "t1.jpg"


def lfw_photos(tmp: Path) -> list[Photo]:
    """lfw_subset faces as PNGs: at their own 25 px and doubled (50 px), as tests/test_framing.py doubles them."""
    from PIL import Image
    from skimage import data

    faces = (data.lfw_subset()[list(LFW_FACES)] * 255).round().astype(np.uint8)  # (n, 25, 25) grey
    photos = []
    for i, face in zip(LFW_FACES, faces):
        for scale in (1, 2):
            big = face.repeat(scale, axis=0).repeat(scale, axis=1)
            path = tmp / f"lfw_{i}_{big.shape[0]}px.png"
            Image.fromarray(big).save(path)
            source = f"scikit-image lfw_subset()[{i}] at {big.shape[0]} px" + (" (doubled)" if scale > 1 else "")
            photos.append(Photo(path.stem, path, source, may_refuse=True))
    return photos


def test_photos(quick: bool, all_faces: bool, tmp: Path) -> list[Photo]:
    astronaut = Photo("astronaut", ROOT / "tests" / "data" / "astronaut.jpg",
                      "tests/data/astronaut.jpg (scikit-image data.astronaut())")
    if quick:
        return [astronaut]
    if all_faces:
        from actorcast.actors.framing import find_faces, fit_output
        from actorcast.actors.reference import load_image

        n = len(find_faces(fit_output(load_image(t1_path()))))
        group = [Photo(f"t1_face{i}", t1_path(), "insightface data/images/t1.jpg", face=i) for i in range(1, n + 1)]
    else:
        group = [Photo("t1_largest", t1_path(), "insightface data/images/t1.jpg")]
    return [astronaut, *group, *lfw_photos(tmp)]


# ------------------------------------------------------------------------------------------------ one photo

def render_photo(photo: Photo, speech: Speech, wav: Path, engine, weights: Path, out: Path, tmp: Path) -> dict:
    """Render `photo` speaking `wav` full-frame with `engine`; measure it (see the module docstring)."""
    from actorcast.cluster.render import RenderJob, check_job, paste_back_for, render
    from actorcast.models.errors import InputError
    from actorcast.actors.framing import Framing
    from actorcast.models.training.evaluate import lip_lag, pearson, span

    video = out / f"portraits_{photo.name}.mp4"
    job = RenderJob(str(wav), str(video), image=str(photo.path), weights=str(weights), face=photo.face,
                    full_frame=True)
    entry: dict = {"photo": photo.source, "face_asked": photo.face if photo.face else "the largest"}
    try:
        framing = check_job(job)  # the framing render does first: its box and mask are what is measured
    except InputError as e:
        if not photo.may_refuse:
            raise
        refusal = str(e).replace(str(photo.path), photo.source)  # the photo's temporary file is gone after
        log.info("%s: refused: %s", photo.name, refusal)
        return {**entry, "refused": refusal}
    log.info("%s: rendering %.0f s, face %d of %d", photo.name, len(speech.rms) / FPS, framing.index,
             framing.n_faces)
    weight = paste_back_for(job, framing).mask()  # (H, W) in [0, 1]; 0: the photo's own pixel
    h, w = framing.picture.shape[:2]
    entry.update({"picture_size_wh": [w, h], "face_index": framing.index, "faces_in_photo": framing.n_faces,
                  "face_height_px": round(framing.face.height, 1), "box_x0_y0_side": list(framing.box),
                  "mask_pixels": int((weight > 0).sum())})
    composited = FrameChecks(framing.picture, weight, framing.box, speech.silent)
    t0 = time.perf_counter()
    done = render(job, work_dir=tmp / f"work_{photo.name}", progress=False, engine=engine,
                  on_written=composited.add)
    entry["render_wall_s"] = round(time.perf_counter() - t0, 1)
    from_mp4 = FrameChecks(framing.picture, weight, framing.box, speech.silent, keep_squares=True)
    for chunk in decoded(video):
        from_mp4.add(chunk)
    if not done["frames"] == composited.n == from_mp4.n:
        raise RuntimeError(f"{photo.name}: render said {done['frames']} frames, {composited.n} were composited "
                           f"and the mp4 holds {from_mp4.n}")
    squares = np.stack(from_mp4.squares)                        # (T, side, side, 3) from the mp4
    reading, depth = read_meter(squares, tmp)
    n = min(len(squares), len(speech.openness))
    spoken = speech.spoken[:n]
    truth, mouth = speech.openness[:n], reading.mouth_open[:n]
    motion, series = motion_figures(reading, depth, speech)
    photo_square = Framing(framing.picture, framing.box, None).crop()
    entry.update({
        "frames": len(squares),
        "lipsync_r": figure("lipsync_r", round(pearson(truth[spoken], mouth[spoken]), 3),
                            single_face=framing.n_faces == 1, over="the spoken part, not the silent tail"),
        "lip_lag_frames": figure("lip_lag_frames", lip_lag(truth[spoken], mouth[spoken])),
        "mouth_open_range_speech": figure("mouth_open_range_speech", round(span(mouth[speech.speech[:n]]), 4),
                                          unit="face heights"),
        "mouth_open_range_silence": round(span(mouth[~speech.speech[:n]]), 4),
        "outside_mask_max_abs_diff_frames": figure("outside_mask_max_abs_diff_frames", composited.max_diff,
                                                   unit="8-bit levels"),
        "outside_mask_max_abs_diff_mp4": figure("outside_mask_max_abs_diff_mp4", from_mp4.max_diff,
                                                unit="8-bit levels"),
        "face_ssim_silent_frames": figure("face_ssim_silent_frames", _round(composited.mean_ssim, 3),
                                          silent_frames=len(composited.ssim)),
        "face_ssim_silent_mp4": figure("face_ssim_silent_mp4", _round(from_mp4.mean_ssim, 3),
                                       silent_frames=len(from_mp4.ssim)),
        "meter_no_face_frames": figure("meter_no_face_frames", reading.n_missing, of=len(reading)),
        **motion, **identity_figures(photo_square, squares, tmp),
        "sheet": f"portraits_{photo.name}.png", "video": video.name,
        "strip": f"strip_{photo.name}.png", "mouth_strip": f"mouth_{photo.name}.png"})
    draw_sheet(out / entry["sheet"], photo.name, entry, speech, reading, squares, series)
    write_strips(out, photo.name, squares, reading.landmarks, speech)
    return entry


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _strip(images: list[np.ndarray], per_row: int) -> np.ndarray:
    """Equal-sized (h, w, 3) images tiled left to right then down, black where a row runs short."""
    images = images + [np.zeros_like(images[0])] * (-len(images) % per_row)
    return np.concatenate([np.concatenate(images[i:i + per_row], axis=1) for i in range(0, len(images), per_row)])


STRIP_EVERY = 10               # frames between the strip's faces (0.4 s)
STRIP_FACE = 128               # px: the strip's faces are shrunk to this, never grown
STRIP_PER_ROW = 10             # faces a row (4 s)
MOUTH_SECONDS, MOUTH_EVERY, MOUTH_PER_ROW = 4.0, 2, 25   # the mouth strip: every 2nd frame of the first 4 s


def _write_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    tmp = path.with_name(f".{path.name}.part")
    Image.fromarray(image).save(tmp, format="png")
    os.replace(tmp, path)


def write_strips(out: Path, name: str, squares: np.ndarray, landmarks: np.ndarray, speech: Speech) -> None:
    """DIR/strip_<name>.png: the face (the framing's square of the decoded mp4) every STRIP_EVERY frames, left to
    right then down, STRIP_PER_ROW a row (the silent tail starts a row at the default lengths); DIR/mouth_<name>.png:
    the mouth every MOUTH_EVERY frames of the first MOUTH_SECONDS, cut from the same squares at the photo's own
    resolution (bench/sheet.py's `mouth_crops`, half a tenth of the square's side)."""
    from actorcast.actors.framing import resize

    side = squares.shape[1]
    faces = list(resize(squares[::STRIP_EVERY], min(side, STRIP_FACE), min(side, STRIP_FACE)))
    _write_png(out / f"strip_{name}.png", _strip(faces, min(STRIP_PER_ROW, len(faces))))
    shown = list(range(0, min(len(squares), round(MOUTH_SECONDS * FPS)), MOUTH_EVERY))
    mouths = mouth_crops(squares[shown], landmarks[shown], half=max(12, side // 10))
    _write_png(out / f"mouth_{name}.png", _strip(mouths, min(MOUTH_PER_ROW, len(mouths))))


def draw_sheet(path: Path, name: str, entry: dict, speech: Speech, reading, squares: np.ndarray,
               series: dict) -> None:
    """Waveform; the meter's mouth opening against the speech's openness; head yaw and pitch, eye openness and
    gaze shifts; the face every 0.4 s; the mouth every 2 frames over the first 4 s (as bench/sheet.py draws
    them), all from the decoded mp4."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from actorcast.actors.framing import resize

    n = len(squares)
    faces = list(resize(squares[::10], 96, 96))
    shown = list(range(0, min(n, 4 * FPS), 2))
    mouths = mouth_crops(squares[shown], reading.landmarks[shown], half=max(12, squares.shape[1] // 10))
    faces_per_row = min(13, len(faces))
    face_rows, mouth_rows = math.ceil(len(faces) / faces_per_row), math.ceil(len(mouths) / 25)
    fig = plt.figure(figsize=(14, 5.6 + 1.05 * face_rows + 0.55 * mouth_rows))
    grid = fig.add_gridspec(5, 1, height_ratios=[0.8, 1.2, 1.2, 1.05 * face_rows, 0.55 * mouth_rows], hspace=0.6)
    t = np.arange(n) / FPS
    ax = fig.add_subplot(grid[0])
    ax.plot(np.arange(len(speech.audio)) / (FPS * SAMPLES_PER_FRAME), speech.audio, lw=0.4, color="0.3")
    ax.set(xlim=(0, n / FPS), ylabel="audio")
    f = {k: entry[k]["value"] for k in TARGETS}
    ax.set_title(f"{name}: lip-sync r {f['lipsync_r']} (target >= 0.65), lag {f['lip_lag_frames']} frames, "
                 f"mouth range {f['mouth_open_range_speech']} (>= 0.04), silent SSIM {f['face_ssim_silent_mp4']} "
                 f"(>= 0.8), outside mask max diff {f['outside_mask_max_abs_diff_frames']} (== 0), "
                 f"no face {f['meter_no_face_frames']}/{n}\n"
                 f"speech: yaw/pitch std {f['head_yaw_std_deg']}/{f['head_pitch_std_deg']} deg (>= 2), "
                 f"blinks {f['blinks']} (>= 3), gaze shifts {f['gaze_shifts']} (>= 2); identity mean/max "
                 f"{f['identity_distance_mean']}/{f['identity_distance_max']} (<= 0.35/0.45); silence: blinks "
                 f"{f['blinks_silence']} (>= 1), yaw/pitch std {f['head_yaw_std_deg_silence']}/"
                 f"{f['head_pitch_std_deg_silence']} deg (>= 0.5)", fontsize=9)
    ax = fig.add_subplot(grid[1])
    mouth_line = ax.plot(t, reading.mouth_open[:n], color="tab:red", label="meter: mouth opening (face heights)")
    for i in np.flatnonzero(speech.silent[:n]):
        ax.axvspan(i / FPS, (i + 1) / FPS, color="0.9", lw=0)
    ax.set(xlim=(0, n / FPS), ylabel="mouth open")
    ax.set_title("seconds; grey: silent frames (SSIM is measured there)", fontsize=8, loc="right")
    twin = ax.twinx()
    truth_line = twin.plot(t, speech.openness[:n], color="tab:blue", lw=0.8, alpha=0.7,
                           label="speech: phoneme openness")
    twin.set_ylabel("openness")
    ax.legend(handles=mouth_line + truth_line, loc="upper left", fontsize=8, framealpha=0.8)
    ax = fig.add_subplot(grid[2])
    pose = series["pose"][:n]
    lines = ax.plot(t, pose[:, 0], color="tab:green", label="head yaw (deg)")
    lines += ax.plot(t, pose[:, 1], color="tab:purple", label="head pitch (deg)")
    for i in series["shifts"]:
        ax.axvline(i / FPS, color="tab:orange", lw=0.8)
    if speech.tail:
        ax.axvspan((len(speech.rms) - speech.tail) / FPS, n / FPS, color="0.9", lw=0)
    ax.set(xlim=(0, n / FPS), ylabel="degrees")
    ax.set_title("orange: gaze shifts; grey: the silent tail", fontsize=8, loc="right")
    twin = ax.twinx()
    lines += twin.plot(t, series["eye"][:n] / series["open_level"], color="tab:blue", lw=0.8,
                       label="eye openness / open level")
    twin.axhline(BLINK_CLOSED, color="tab:blue", lw=0.5, ls="--")
    twin.set(ylim=(0, 1.3), ylabel="eye open")
    ax.legend(handles=lines, loc="upper left", fontsize=8, framealpha=0.8)
    ax = fig.add_subplot(grid[3])
    ax.imshow(_strip(faces, faces_per_row))
    ax.set_title("the face every 0.4 s (decoded mp4, the framing's square)", fontsize=9)
    ax.set_axis_off()
    ax = fig.add_subplot(grid[4])
    ax.imshow(_strip(mouths, 25))
    ax.set_title("the mouth every 2 frames, first 4 s", fontsize=9)
    ax.set_axis_off()
    tmp = path.with_name(f".{path.name}.part")
    fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
    plt.close(fig)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------ main

def main() -> None:
    parser = argparse.ArgumentParser(prog="bench/portraits.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="directory for portraits.json, sheets and videos")
    parser.add_argument("--quick", action="store_true",
                        help=f"the astronaut only, {QUICK_SPEECH_S:.0f} s of speech (and the {TAIL_S:.0f} s tail)")
    parser.add_argument("--weights", type=Path, default=ROOT / "models" / "weights" / "tiny",
                        help="weights directory (default: the shipped models/weights/tiny)")
    parser.add_argument("--all-faces", action="store_true", help="render every face of t1.jpg, not just the largest")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import torch

    from actorcast.actors.engine import Engine
    from actorcast.models.data.media import write_wav

    t0 = time.perf_counter()
    seconds = QUICK_SPEECH_S if args.quick else SPEECH_S
    speech = make_speech(seconds)
    photos: dict = {}
    with tempfile.TemporaryDirectory(prefix="actorcast-portraits-") as tmp_name:
        tmp = Path(tmp_name)
        wav = tmp / "speech.wav"
        write_wav(wav, torch.from_numpy(speech.audio))
        with Engine(args.weights, size=256) as engine:
            for photo in test_photos(args.quick, args.all_faces, tmp):
                photos[photo.name] = render_photo(photo, speech, wav, engine, args.weights, args.out, tmp)
    result = {
        "weights": str(args.weights), "quick": args.quick,
        "speech": {"source": "tts: espeak-ng, held-out voice and words (models/data/tts.py), neutral",
                   "clip_seed": SPEECH_CLIP, "seconds": seconds, "silent_tail_seconds": TAIL_S,
                   "frames": len(speech.rms), "speech_frames": int(speech.speech.sum()),
                   "silent_frames": int(speech.silent.sum()),
                   "silence": f"frame RMS < {SILENCE_RMS}, and the {SILENT_MARGIN} frames either side"},
        "measures": {"head": f"yaw and pitch of a Kabsch fit of {len(RIGID)} rigid Face Mesh points (x, y, z) to "
                             "the first frame's; standard deviation over the spoken part and over the tail",
                     "blinks": f"eye openness below {BLINK_CLOSED} of its open level (the video's median)",
                     "gaze_shifts": f"iris jumps of >= {SACCADE_JUMP} eye widths (or {NOISE_JUMP}x the face's iris "
                                    f"noise, if more) between fixations held {FIXATION_FRAMES} frames within "
                                    f"{FIXATION_RADIUS}",
                     "identity": f"dlib descriptor distance of every {IDENTITY_STEP}th frame's face to the photo's "
                                 f"(same person below {SAME_PERSON})"},
        "targets": {k: None if v is None else f"{v[0]} {v[1]}" for k, v in TARGETS.items()},
        "photos": photos, "wall_s": round(time.perf_counter() - t0, 1)}
    path = write_json(args.out, "portraits", result)
    print(path.read_text())


if __name__ == "__main__":
    main()
