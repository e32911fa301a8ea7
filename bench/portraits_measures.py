"""bench/portraits.py's measures: pixel identity outside the paste-back mask, SSIM inside it, head pose from a rigid
fit of Face Mesh's points, blinks, gaze shifts, and each figure against its target (TARGETS). The module docstring
of bench/portraits.py says what each figure is; this file is numpy on the meter's readings, with no workers."""

from dataclasses import dataclass

import numpy as np

from bench.sheet import SILENCE_RMS
from actorcast.models.timebase import FPS

SILENT_MARGIN = 2            # frames either side of a silent frame that must be silent too

# Head pose: Face Mesh points that move with the skull, not with the jaw, lips, lids or brows (upper face oval,
# forehead, nose ridge, eye corners, cheekbones), fitted rigidly in 3-D (x, y and the mesh's depth z).
RIGID = (10, 338, 297, 332, 284, 251, 389, 356, 454, 234, 127, 162, 21, 54, 103, 67, 109,
         151, 9, 168, 6, 197, 195, 5, 4, 1,
         33, 133, 362, 263,
         116, 345, 123, 352, 50, 280)
# The second reader, dlib's 68 landmarks (iBUG 300-W layout): the points that move with the skull (the jaw line's
# upper ends, the nose, the eye corners) for its head pose, and each eye's six points for its openness.
DLIB_RIGID = (0, 1, 2, 3, 4, 12, 13, 14, 15, 16, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 39, 42, 45)
DLIB_EYES = ((36, 37, 38, 39, 40, 41), (42, 43, 44, 45, 46, 47))
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
    # dlib's 68 points, a second reader (`dlib_figures`): reported beside the meter's, without targets
    **{f"{key}{part}_dlib": None for key in ("head_yaw_std_deg", "head_pitch_std_deg", "blinks")
       for part in ("", "_silence")},
}


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


def weak_perspective(model: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(T, 3, 3) rotations of a 3-D `model` (K, 3) seen in each frame as 2-D `points` (T, K, 2), image axes, under
    a scaled orthographic camera (weak perspective: a face far from the camera against its depth): the affine map
    of least squares from the centred model to the centred points, its 2 x 3 part made the nearest pair of
    orthonormal rows, the third row their cross product. NaN for a frame with any NaN point."""
    a = model - model.mean(0)                                    # (K, 3)
    b = points - points.mean(1, keepdims=True)                   # (T, K, 2)
    ok = np.isfinite(b).all((1, 2))
    m = np.einsum("ik,tkj->tji", np.linalg.pinv(a), np.where(ok[:, None, None], b, 0.0))  # (T, 2, 3): b ~ a M^T
    u, _, vt = np.linalg.svd(m, full_matrices=False)             # (T, 2, 2), (T, 2, 3)
    rows = u @ vt                                                # the nearest orthonormal rows
    rot = np.concatenate([rows, np.cross(rows[:, 0], rows[:, 1])[:, None]], axis=1)
    rot[~ok] = np.nan
    return rot


def dlib_head_pose(points: np.ndarray, mesh: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """(T, 2) yaw and pitch in degrees, against the first frame with a face, read off dlib's 68 points (T, 68, 2)
    alone: the face's 3-D shape is Face Mesh's on the first frame (`mesh` (478, 2) pixels, `depth` (478,)), each
    dlib point taking the depth of the mesh point nearest it there; every frame's DLIB_RIGID points are fitted to
    that shape (`weak_perspective`). Only the first frame's mesh is used: the motion is dlib's. NaN where dlib
    read no face."""
    found = np.isfinite(points).all((1, 2))
    if not found.any():
        return np.full((len(points), 2), np.nan)
    first = points[np.argmax(found)]                             # (68, 2)
    nearest = np.argmin(((mesh[None] - first[:, None]) ** 2).sum(-1), axis=1)
    model = np.concatenate([first, depth[nearest, None]], axis=1)[list(DLIB_RIGID)].astype(np.float64)
    rot = weak_perspective(model, points[:, list(DLIB_RIGID)].astype(np.float64))
    return yaw_pitch(rot @ rot[np.argmax(found)].T)


def eye_aspect(points: np.ndarray) -> np.ndarray:
    """(T,) the two eyes' mean openness from dlib's 68 points (T, 68, 2): per eye, its two lid gaps over twice its
    corner-to-corner width (the eye aspect ratio of Soukupova and Cech 2016: ~0.3 open, near 0 shut)."""
    values = []
    for c0, u1, u2, c1, l2, l1 in DLIB_EYES:
        p = points.astype(np.float64)
        gaps = np.linalg.norm(p[:, u1] - p[:, l1], axis=-1) + np.linalg.norm(p[:, u2] - p[:, l2], axis=-1)
        values.append(gaps / (2 * np.linalg.norm(p[:, c1] - p[:, c0], axis=-1)))
    return np.mean(values, axis=0)


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


def motion_figures(reading, depth: np.ndarray, speech: Speech,
                   points: np.ndarray | None = None) -> tuple[dict, dict]:
    """The head, blink and gaze figures of a reading over the spoken part and over the silent tail, and the
    series they come from (for the sheet): ({key: figure}, {"pose", "eye", "open_level", "iris", "shifts"}).
    With dlib's 68 points of the same frames (T, 68, 2), the head and blink figures by that second reader too
    (keys ending _dlib, without targets: `dlib_figures`)."""
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
    if points is not None:
        figures.update(dlib_figures(points, reading.landmarks[np.argmax(reading.found)],
                                    depth[np.argmax(reading.found)], speech))
    return figures, {"pose": pose, "eye": eye, "open_level": level, "iris": iris, "shifts": shifts}


def dlib_figures(points: np.ndarray, mesh: np.ndarray, depth: np.ndarray, speech: Speech) -> dict:
    """head_yaw_std_deg_dlib, head_pitch_std_deg_dlib and blinks_dlib (and _silence_dlib) from dlib's 68 points
    (T, 68, 2): the head by `dlib_head_pose` on the 3-D shape of Face Mesh's `mesh` (478, 2) and `depth` (478,) of
    one frame, the blinks by `eye_aspect` against its median, counted as `blink_figures` counts the meter's. A
    second reader beside the meter's figures, for faces the meter reads poorly (`meter_check`)."""
    n = len(points)
    pose = dlib_head_pose(points, mesh, depth)
    eye = eye_aspect(points)
    level = float(np.nanmedian(eye)) if np.isfinite(eye).any() else float("nan")
    figures = {}
    for part, suffix in ((speech.spoken[:n], "_dlib"), (speech.in_tail[:n], "_silence_dlib")):
        frames = np.zeros(n, bool)
        frames[:len(part)] = part
        b = blink_figures(eye, frames, level)
        figures[f"head_yaw_std_deg{suffix}"] = figure(f"head_yaw_std_deg{suffix}", _round(nan_std(pose[frames, 0]), 2))
        figures[f"head_pitch_std_deg{suffix}"] = figure(f"head_pitch_std_deg{suffix}",
                                                        _round(nan_std(pose[frames, 1]), 2))
        figures[f"blinks{suffix}"] = figure(f"blinks{suffix}", b["blinks"], closing_below=BLINK_CLOSED,
                                            deepest=_round(b["deepest"], 3),
                                            no_face_frames=int((frames & ~np.isfinite(eye)).sum()))
    return figures


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)

