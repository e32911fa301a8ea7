"""Real portraits: a photo's face animated by espeak-ng speech and pasted back, read by the meter.

    python bench/portraits.py --out DIR [--quick] [--weights DIR] [--all-faces]

Each test photo (tests/data/astronaut.jpg; insightface's t1.jpg, its largest face, or each of its six with
--all-faces; two of scikit-image's lfw_subset faces, as they come at 25 px and doubled to 50 px as
tests/test_framing.py does) goes through `render` (actors/render_job.py) with --full-frame, speaking 20 s of
held-out espeak-ng speech (sentences with their pauses) and then 5 s of silence: the evaluation's 'tts' source
(models/data/tts.py), whose phoneme-derived openness (`openness`, the jaw_open of the viseme timeline; 0 in the
silent tail) is the truth lipsync_r_tts is scored against. A photo that framing refuses (no face, too small) is
recorded with its message instead of a render. With weights trained on the motion parameters (the shipped ones),
the photo is animated by its rig (models/photo/rig.py), as render does.

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
| head_yaw_std_deg_dlib,            | a second reader: the same figures from dlib's 68 landmarks        | none    |
| head_pitch_std_deg_dlib,          | (face_id_worker.py), the head fitted to the first frame's Face    |         |
| blinks_dlib (and _silence_dlib)   | Mesh shape under weak perspective, the blinks by the eye aspect   |         |
|                                   | ratio against its median (bench/portraits_measures.py             |         |
|                                   | `dlib_figures`)                                                   |         |

The meter (the worker of models/training/meter.py, tracking) reads the square around the animated face, cut from
the decoded mp4 at the framing's box as render cut the reference; its mouth opening is the inner-lip gap over the
face height. Speech frames: audio RMS >= bench/sheet.py's SILENCE_RMS; silent frames: below it in the frame and
the SILENT_MARGIN frames either side (the jaw leads and trails the sound). Gaze shifts are looked for only where
the eyes are at least half open (a closing lid moves the meter's iris). The r target is set for single-face
photos; a group photo's faces report it too. `meter_check` (bench/portraits_meter_check.py) says how much of a
nod, a turn and a shut eye drawn by the photo's own rig the meter reads back, so that a missed figure can be told
apart: the rig did not draw it, or the meter does not see it on that face; it reads them with dlib's landmarks too
(keys ending _dlib), a reader trained on other faces than Face Mesh was.

Also written: DIR/portraits_<photo>.png (waveform, mouth opening against openness, head yaw and pitch with eye
openness and gaze shifts, the face and its mouth over time, from the mp4), DIR/strip_<photo>.png (the face every
0.4 s), DIR/mouth_<photo>.png (the mouth every 2nd frame of the first 4 s, at the photo's own resolution) and
DIR/portraits_<photo>.mp4 (the render). --quick: the astronaut only, 5 s of speech and the 5 s tail.

This file runs the photos and writes the results; the measures are in bench/portraits_measures.py, the readers of
the video and of the two workers in bench/portraits_readers.py, the pictures in bench/portraits_strips.py, the
meter's check in bench/portraits_meter_check.py.
"""

import argparse
import importlib.util
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, write_json
from bench.portraits_measures import (
    BLINK_CLOSED,
    FIXATION_FRAMES,
    FIXATION_RADIUS,
    IDENTITY_STEP,
    NOISE_JUMP,
    RIGID,
    SACCADE_JUMP,
    SAME_PERSON,
    SILENT_MARGIN,
    TARGETS,
    Speech,
    _round,
    figure,
    motion_figures,
)
from bench.portraits_meter_check import meter_check
from bench.portraits_readers import FrameChecks, decoded, identity_figures, read_dlib_points, read_meter
from bench.portraits_strips import draw_sheet, write_strips
from bench.sheet import SILENCE_RMS
from actorcast.models.data.dataset import HELDOUT_START
from actorcast.models.timebase import FPS, SAMPLES_PER_FRAME

log = logging.getLogger("bench.portraits")

SPEECH_CLIP = HELDOUT_START  # the held-out clip whose voice and words are spoken (the evaluation's first)
SPEECH_S, QUICK_SPEECH_S = 20.0, 5.0   # seconds of speech (with its own pauses) spoken; --quick
TAIL_S = 5.0                 # seconds of silence appended after the speech
LFW_FACES = (0, 1)           # lfw_subset() indices tried

@dataclass(frozen=True)
class Photo:
    """One photo to render: `face` picks a face (1-based, left to right; None: the largest)."""

    name: str
    path: Path
    source: str                  # where the photo comes from, for the report
    face: int | None = None
    may_refuse: bool = False     # framing may refuse it (too small): recorded, not an error


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
        from actorcast.models.photo.framing import find_faces, fit_output
        from actorcast.models.photo.reference import load_image

        n = len(find_faces(fit_output(load_image(t1_path()))))
        group = [Photo(f"t1_face{i}", t1_path(), "insightface data/images/t1.jpg", face=i) for i in range(1, n + 1)]
    else:
        group = [Photo("t1_largest", t1_path(), "insightface data/images/t1.jpg")]
    return [astronaut, *group, *lfw_photos(tmp)]


# ------------------------------------------------------------------------------------------------ one photo

def render_photo(photo: Photo, speech: Speech, wav: Path, engine, weights: Path, out: Path, tmp: Path) -> dict:
    """Render `photo` speaking `wav` full-frame with `engine`; measure it (see the module docstring)."""
    from actorcast.actors.render_job import RenderJob, check_job, paste_back_for, render
    from actorcast.models.errors import InputError
    from actorcast.models.photo.framing import Framing
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
    motion, series = motion_figures(reading, depth, speech, points=read_dlib_points(squares, tmp))
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
        **motion, **identity_figures(photo_square, squares, tmp), "meter_check": meter_check(framing, tmp),
        "sheet": f"portraits_{photo.name}.png", "video": video.name,
        "strip": f"strip_{photo.name}.png", "mouth_strip": f"mouth_{photo.name}.png"})
    draw_sheet(out / entry["sheet"], photo.name, entry, speech, reading, squares, series)
    write_strips(out, photo.name, squares, reading.landmarks, speech)
    return entry


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
    from actorcast.models.media import write_wav

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
