"""A picture of a rendered video talking: its waveform, the meter's mouth opening, and mouth crops over time.

    python bench/sheet.py VIDEO.mp4 --out DIR [--start S] [--seconds S] [--step N]
        → DIR/sheet.png and DIR/sheet.json (the meter's mouth-opening span and mean, in speech and in silence)

A look at the crops tells in a second whether the avatar talks: the mouth should open on vowels and shut in the
silences the waveform shows. The mouth is located by the meter's landmarks (inner lips 13/14, corners 78/308).
"""

import argparse
import json
import os
import sys
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from actorcast.models.media import read_audio  # noqa: E402
from actorcast.models.timebase import FPS, SAMPLES_PER_FRAME  # noqa: E402
from actorcast.models.training.evaluate import span  # noqa: E402
from actorcast.models.training.meter import FaceMeter  # noqa: E402

SILENCE_RMS = 0.01  # a frame whose audio RMS is below this counts as silence


def read_frames(path: Path) -> np.ndarray:
    """Every video frame of `path` as (T, H, W, 3) uint8 RGB."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def mouth_crops(frames: np.ndarray, landmarks: np.ndarray, half: int) -> list[np.ndarray]:
    """A square crop (2 half, 2 half, 3) around each frame's mouth; the last known centre where no face is found."""
    h, w = frames.shape[1:3]
    centre, crops = np.array([w / 2, h * 0.62]), []
    padded = np.pad(frames, ((0, 0), (half, half), (half, half), (0, 0)), mode="edge")
    for frame, points in zip(padded, landmarks):
        if np.isfinite(points).all():
            centre = points[[13, 14, 78, 308]].mean(0)
        x, y = int(round(centre[0])) + half, int(round(centre[1])) + half
        crops.append(frame[y - half:y + half, x - half:x + half])
    return crops


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench/sheet.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("video", type=Path, help="an mp4 written by `actorcast render`")
    parser.add_argument("--out", required=True, type=Path, help="directory for sheet.png and sheet.json")
    parser.add_argument("--start", type=float, default=0.0, help="first second shown (default 0)")
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds shown (default 4)")
    parser.add_argument("--step", type=int, default=2, help="show every N-th frame (default 2)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames, audio = read_frames(args.video), read_audio(args.video).numpy()
    reading = FaceMeter().read(frames)
    n = len(frames)
    rms = np.array([np.sqrt(np.mean(audio[i * SAMPLES_PER_FRAME:(i + 1) * SAMPLES_PER_FRAME] ** 2) + 1e-12)
                    for i in range(n)])
    speech = rms >= SILENCE_RMS
    mouth = reading.mouth_open

    first, last = int(args.start * FPS), min(n, int((args.start + args.seconds) * FPS))
    shown = list(range(first, last, args.step))
    crops = mouth_crops(frames[shown], reading.landmarks[shown], half=max(12, frames.shape[1] // 10))
    rows = -(-len(shown) // 20)
    fig = plt.figure(figsize=(14, 3.6 + 0.75 * rows))
    grid = fig.add_gridspec(3, 1, height_ratios=[1, 1, 0.55 * rows], hspace=0.35)
    t_audio = np.arange(first * SAMPLES_PER_FRAME, last * SAMPLES_PER_FRAME) / (FPS * SAMPLES_PER_FRAME)
    ax = fig.add_subplot(grid[0])
    ax.plot(t_audio, audio[first * SAMPLES_PER_FRAME:last * SAMPLES_PER_FRAME], lw=0.4, color="0.3")
    ax.set_xlim(args.start, last / FPS)
    ax.set_ylabel("audio")
    ax.set_title(f"{args.video.name}: waveform, meter mouth opening, mouth crops every {args.step} frames")
    ax = fig.add_subplot(grid[1])
    ax.plot(np.arange(first, last) / FPS, mouth[first:last], color="tab:red")
    ax.set_xlim(args.start, last / FPS)
    ax.set_ylabel("mouth open")
    ax.set_xlabel("seconds")
    ax = fig.add_subplot(grid[2])
    per_row = 20  # crops per row of the strip, left to right then down
    crops += [np.zeros_like(crops[0])] * (-len(crops) % per_row)
    ax.imshow(np.concatenate([np.concatenate(crops[i:i + per_row], axis=1)
                              for i in range(0, len(crops), per_row)], axis=0))
    ax.set_axis_off()
    tmp = args.out / ".sheet.png.part"
    fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    os.replace(tmp, args.out / "sheet.png")
    result = {"video": str(args.video), "frames": n, "meter_missing": int(reading.n_missing),
              "mouth_open_span_speech": span(mouth[speech]), "mouth_open_span_silence": span(mouth[~speech]),
              "mouth_open_mean_speech": float(np.nanmean(mouth[speech])) if speech.any() else 0.0,
              "mouth_open_mean_silence": float(np.nanmean(mouth[~speech])) if (~speech).any() else 0.0}
    (args.out / "sheet.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
