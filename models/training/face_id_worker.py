"""Face identity descriptors and landmarks: dlib's face-recognition network and 68-point shape model over frames,
run by the MediaPipe venv's python (`dlib-bin` and `face-recognition-models` are in meter-requirements.txt; numpy<2
like the meter):

    METER_VENV/bin/python face_id_worker.py [--points-only] OUT.npz FRAMES.npy [FRAMES.npy ...]

Each FRAMES.npy holds uint8 RGB frames (N, H, W, 3), read as unrelated stills. In each, dlib's HOG face detector
(the picture upsampled once, so faces down to ~40 px are found) picks the face nearest the picture's centre
(the frames are squares around one face); its 5-point landmarks align it, and the ResNet of
face_recognition_models (dlib_face_recognition_resnet_model_v1) maps it to a 128-d descriptor. Two descriptors
of one person lie within a Euclidean distance of 0.6 of each other (dlib's own threshold). The 68-point shape
model (iBUG 300-W layout: 0-16 the jaw line, 27-35 the nose, 36-41 and 42-47 the eyes) places its points on the
same face: a second landmark reader beside Face Mesh, trained on other data. `--points-only` skips the
descriptors (NaN), which cost most of the time. OUT.npz gets, over all frames in order (N = total frames):

| key         | shape      | dtype   | meaning                                                               |
|-------------|------------|---------|-----------------------------------------------------------------------|
| descriptors | (N, 128)   | float64 | the face's descriptor; NaN where no face was found (or --points-only) |
| found       | (N,)       | bool    | dlib found a face                                                     |
| boxes       | (N, 4)     | float64 | the face's detector box (x0, y0, x1, y1) in pixels; NaN where none    |
| points      | (N, 68, 2) | float64 | the 68 landmarks (x, y) in pixels; NaN where none                     |

Only numpy, dlib and the standard library are imported here: this runs in the meter's own venv.
"""

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np

UPSAMPLE = 1             # HOG detector pyramid upsamplings: finds faces down to ~40 px instead of ~80 px
DESCRIPTOR = 128
POINTS = 68


def model_files() -> tuple[Path, Path, Path]:
    """(5-point shape predictor, face-recognition ResNet, 68-point shape predictor) of the installed
    face_recognition_models package, found without importing it (it reads its paths through pkg_resources)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("face id worker: face_recognition_models is not installed in this environment "
                         "(meter-requirements.txt lists it): run `actorcast setup`")
    models = Path(spec.submodule_search_locations[0]) / "models"
    return (models / "shape_predictor_5_face_landmarks.dat", models / "dlib_face_recognition_resnet_model_v1.dat",
            models / "shape_predictor_68_face_landmarks.dat")


def measure(paths: list[str], descriptors: bool = True) -> dict[str, np.ndarray]:
    """Descriptors (unless not `descriptors`) and 68 landmarks of the face nearest the centre of every frame of
    `paths`, in order (module docstring)."""
    import dlib

    shape_file, net_file, points_file = model_files()
    detector = dlib.get_frontal_face_detector()
    shape = dlib.shape_predictor(str(shape_file))
    net = dlib.face_recognition_model_v1(str(net_file)) if descriptors else None
    points68 = dlib.shape_predictor(str(points_file))
    descs, boxes, found, points = [], [], [], []
    for path in paths:
        frames = np.load(path, mmap_mode="r")
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise SystemExit(f"face id worker: {path} holds {frames.dtype} {frames.shape}, "
                             "expected uint8 (N, H, W, 3) RGB frames")
        h, w = frames.shape[1:3]
        for frame in frames:
            image = np.ascontiguousarray(frame)
            faces = list(detector(image, UPSAMPLE))
            if not faces:
                descs.append(np.full(DESCRIPTOR, np.nan))
                boxes.append(np.full(4, np.nan))
                points.append(np.full((POINTS, 2), np.nan))
                found.append(False)
                continue
            face = min(faces, key=lambda r: (r.center().x - w / 2) ** 2 + (r.center().y - h / 2) ** 2)
            descs.append(np.array(net.compute_face_descriptor(image, shape(image, face)), np.float64) if net
                         else np.full(DESCRIPTOR, np.nan))
            boxes.append(np.array([face.left(), face.top(), face.right(), face.bottom()], np.float64))
            points.append(np.array([[p.x, p.y] for p in points68(image, face).parts()], np.float64))
            found.append(True)
    return {"descriptors": np.array(descs, np.float64).reshape(-1, DESCRIPTOR),
            "found": np.array(found, bool), "boxes": np.array(boxes, np.float64).reshape(-1, 4),
            "points": np.array(points, np.float64).reshape(-1, POINTS, 2)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="output .npz")
    parser.add_argument("frames", nargs="+", help="uint8 (N, H, W, 3) RGB .npy files")
    parser.add_argument("--points-only", action="store_true", help="the 68 landmarks only: descriptors are NaN")
    args = parser.parse_args(argv)
    np.savez(args.out, **measure(args.frames, descriptors=not args.points_only))


if __name__ == "__main__":
    sys.exit(main())
