"""The mean face that models/photo/pose.py fits to a photo's landmarks to read its head pose, measured.

    python bench/portraits_face_model.py

Face Mesh (the meter worker, models/training/meter_worker.py) reads x, y and a depth z of every landmark on the
framed faces of tests/data/astronaut.jpg and of insightface's t1.jpg (six faces, several turned and nodding).
Each face is turned to face the camera by its own symmetry: x along the mean of its mirrored pairs' right - left,
y along forehead top (10) to chin (152) made square to x, z away from the camera; then scaled to face heights,
centred on its midline points, averaged over the faces, and each mirrored pair made symmetric. Printed as the
MIDLINE and PAIRS tables of models/photo/pose.py.
"""

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT
from bench.portraits import t1_path
from bench.portraits_readers import read_meter
from actorcast.models.photo.pose import MIDLINE, PAIRS

CHIN, FOREHEAD_TOP = 152, 10


def frontal(points: np.ndarray) -> np.ndarray:
    """One face's (478, 3) Face Mesh points (px, depth px) turned to face the camera, in face heights."""
    mid = [row[0] for row in MIDLINE]
    height = np.linalg.norm(points[CHIN] - points[FOREHEAD_TOP])              # in 3-D: its true height
    p = (points - points[mid].mean(0)) / height
    x = sum(p[right] - p[left] for left, right, *_ in PAIRS)
    x = x / np.linalg.norm(x)
    y = p[CHIN] - p[FOREHEAD_TOP]
    y = y - (y @ x) * x
    y = y / np.linalg.norm(y)
    return p @ np.stack([x, y, np.cross(x, y)]).T


def main() -> None:
    from actorcast.models.photo.framing import find_faces, fit_output, frame_reference
    from actorcast.models.photo.reference import load_image

    group = load_image(t1_path())
    crops = [frame_reference(load_image(ROOT / "tests" / "data" / "astronaut.jpg")).crop(256)]
    crops += [frame_reference(group, face=i).crop(256) for i in range(1, len(find_faces(fit_output(group))) + 1)]
    faces = []
    with tempfile.TemporaryDirectory(prefix="actorcast-face-model-") as tmp:
        for crop in crops:
            reading, depth = read_meter(crop[None], Path(tmp))
            faces.append(frontal(np.concatenate([reading.landmarks[0], depth[0][:, None]], 1).astype(np.float64)))
    mean = np.mean(faces, 0)                                                  # (478, 3) face heights
    print(f"# {len(faces)} faces: astronaut.jpg and t1.jpg's")
    print("MIDLINE = (")
    for i, *_ in MIDLINE:
        print(f"    ({i}, {mean[i, 1]:.3f}, {mean[i, 2]:.3f}),")
    print(")\nPAIRS = (")
    for left, right, *_ in PAIRS:
        x, (y, z) = (mean[right, 0] - mean[left, 0]) / 2, (mean[left, 1:] + mean[right, 1:]) / 2
        print(f"    ({left}, {right}, {x:.3f}, {y:.3f}, {z:.3f}),")
    print(")")


if __name__ == "__main__":
    main()
