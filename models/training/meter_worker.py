"""The lip-sync meter's worker: MediaPipe Face Mesh over a sequence of frames, run by the MediaPipe venv's python
(made by `actorcast setup`; see models/mediapipe_env.py):

    METER_VENV/bin/python meter_worker.py [--static] OUT.npz FRAMES.npy [FRAMES.npy ...]

Each FRAMES.npy holds uint8 RGB frames (N, H, W, 3); the files are consecutive pieces of one video sequence and
are read in order by one FaceMesh (so its tracking carries over between them). `--static` runs detection on
every frame (unrelated stills). OUT.npz gets, over all frames in order (N = total frames):

| key         | shape         | dtype   | meaning                                                           |
|-------------|---------------|---------|-------------------------------------------------------------------|
| mouth_open  | (N,)          | float64 | inner-lip gap (13-14) / face height (10-152)                      |
| eye_open_l  | (N,)          | float64 | subject's left eye (image right): lid gap 386-374 / width 362-263 |
| eye_open_r  | (N,)          | float64 | subject's right eye (image left): lid gap 159-145 / width 33-133  |
| found       | (N,)          | bool    | a face was found; where not, the floats are NaN                   |
| landmarks   | (N, 478, 2)   | float32 | (x, y) in pixels of the 478 refined landmarks                     |
| landmarks_z | (N, 478)      | float32 | their depth, z * W in pixels: Face Mesh's z is relative depth on  |
|             |               |         | x's scale, near 0 at the head's centre, smaller nearer the camera |

Distances are measured in pixels (landmark x * W, y * H), so the ratios do not depend on the aspect ratio.
Only numpy, mediapipe and the standard library are imported here: this runs in the meter's own venv
(mediapipe 0.10.21 needs numpy<2; the project runs numpy 2).
"""

import argparse
import sys

import numpy as np

N_LANDMARKS = 478                    # 468 mesh points + 10 iris points (refine_landmarks=True)
LIPS = (13, 14)                      # inner upper lip, inner lower lip
FACE = (10, 152)                     # forehead top, chin
EYE_L = (386, 374, 362, 263)         # subject's left eye: upper lid, lower lid, inner corner, outer corner
EYE_R = (159, 145, 33, 133)          # subject's right eye: upper lid, lower lid, outer corner, inner corner


def _ratio(pts: np.ndarray, a: int, b: int, c: int, d: int) -> float:
    """|pts[a] - pts[b]| / |pts[c] - pts[d]| for pts (478, 2) in pixels."""
    return float(np.linalg.norm(pts[a] - pts[b]) / np.linalg.norm(pts[c] - pts[d]))


def measure(paths: list[str], static: bool) -> dict[str, np.ndarray]:
    """Run one FaceMesh over the frames of `paths` in order; returns the arrays of the module docstring."""
    from mediapipe.python.solutions import face_mesh

    rows, marks, depths, found = [], [], [], []
    with face_mesh.FaceMesh(static_image_mode=static, max_num_faces=1, refine_landmarks=True) as mesh:
        for path in paths:
            frames = np.load(path, mmap_mode="r")
            if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
                raise SystemExit(f"meter worker: {path} holds {frames.dtype} {frames.shape}, "
                                 "expected uint8 (N, H, W, 3) RGB frames")
            h, w = frames.shape[1:3]
            for frame in frames:
                result = mesh.process(np.ascontiguousarray(frame))
                if not result.multi_face_landmarks:
                    rows.append((np.nan, np.nan, np.nan))
                    marks.append(np.full((N_LANDMARKS, 2), np.nan, np.float32))
                    depths.append(np.full(N_LANDMARKS, np.nan, np.float32))
                    found.append(False)
                    continue
                lm = result.multi_face_landmarks[0].landmark
                pts = np.array([(p.x * w, p.y * h) for p in lm], np.float64)   # (478, 2) pixels
                rows.append((_ratio(pts, *LIPS, *FACE), _ratio(pts, *EYE_L), _ratio(pts, *EYE_R)))
                marks.append(pts.astype(np.float32))
                depths.append(np.array([p.z * w for p in lm], np.float32))
                found.append(True)
    values = np.array(rows, np.float64).reshape(-1, 3)
    return {"mouth_open": values[:, 0], "eye_open_l": values[:, 1], "eye_open_r": values[:, 2],
            "found": np.array(found, bool),
            "landmarks": np.array(marks, np.float32).reshape(-1, N_LANDMARKS, 2),
            "landmarks_z": np.array(depths, np.float32).reshape(-1, N_LANDMARKS)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--static", action="store_true", help="unrelated stills: detect on every frame")
    parser.add_argument("out", help="output .npz")
    parser.add_argument("frames", nargs="+", help="uint8 (N, H, W, 3) RGB .npy files, in sequence order")
    args = parser.parse_args(argv)
    np.savez(args.out, **measure(args.frames, args.static))


if __name__ == "__main__":
    sys.exit(main())
