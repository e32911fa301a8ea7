"""bench/portraits.py's pictures of one render: DIR/strip_<photo>.png (the face every 0.4 s), DIR/mouth_<photo>.png
(the mouth every 2nd frame of the first 4 s) and DIR/portraits_<photo>.png (the sheet: waveform, mouth opening
against the speech's openness, head pose with eye openness and gaze shifts, and the strips), all from the mp4."""

import math
import os
from pathlib import Path

import numpy as np

from bench.portraits_measures import BLINK_CLOSED, TARGETS, Speech
from bench.sheet import mouth_crops
from actorcast.models.timebase import FPS, SAMPLES_PER_FRAME


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
    from actorcast.models.photo.framing import resize

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

    from actorcast.models.photo.framing import resize

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
