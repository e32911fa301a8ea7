"""Face finder for portrait framing: MediaPipe face detection + Face Mesh on one still, run by the MediaPipe venv's
python (made by `actorcast setup`; see models/mediapipe_env.py):

    METER_VENV/bin/python face_worker.py OUT.npz IMAGE.npy

IMAGE.npy holds one uint8 RGB picture (H, W, 3). The same environment and bundled models as the lip-sync
meter (models/training/meter.py); models/photo/framing.py runs this file. Steps:

1. Both bundled detectors (short range: faces that fill the picture; full range: small faces in a group photo)
   run on the whole picture and on overlapping tiles of half its size (small faces in a group photo); their
   boxes are merged (a box overlapping a kept one by IoU > 0.3 is the same face).
2. For each face, Face Mesh (static, refined) runs on a square cut of twice the box around it, so the mesh's own
   detector sees a face of about half the cut whatever its size in the picture; its landmarks are mapped back.

OUT.npz, with F faces in the order found (framing.py sorts them left to right):

| key       | shape        | dtype   | meaning                                                           |
|-----------|--------------|---------|-------------------------------------------------------------------|
| boxes     | (F, 4)       | float32 | detector box (x0, y0, x1, y1) in picture pixels                   |
| scores    | (F,)         | float32 | detector confidence in [0, 1]                                     |
| landmarks | (F, 478, 2)  | float32 | (x, y) in picture pixels of the refined mesh; NaN where none fit  |

Only numpy, mediapipe and the standard library are imported here (mediapipe 0.10.21 needs numpy<2).
"""

import argparse
import sys

import numpy as np

N_LANDMARKS = 478            # 468 mesh points + 10 iris points (refine_landmarks=True)
SAME_FACE_IOU = 0.3          # detector boxes overlapping more than this are one face
MIN_SCORE = 0.5              # detector confidence below this is not a face
CUT = 2.0                    # mesh cut side / detector box side
MIN_TILE = 128              # pictures under 2x this are searched whole only
EDGE = 2                     # px: a box this close to a tile's inner edge is cut by it
MESH_SIDE = 384              # cuts are resized to at most this (Face Mesh works at 192²; more is wasted)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _tiles(h: int, w: int) -> list[tuple[int, int, int]]:
    """(x0, y0, side) of the whole picture's square-ish view plus half-size square tiles at half-tile strides.

    The detectors letterbox their input to 128² or 192², so a face of 1/10 of a group photo is ~15 px to them;
    in a tile of half the picture it is twice that. With half-tile strides every face under half a tile lies
    wholly inside some tile, away from its edges."""
    tiles = [(0, 0, 0)]  # side 0: the whole picture as it is
    side = min(h, w) // 2
    if side < MIN_TILE:
        return tiles
    stride = side // 2
    xs = sorted({*range(0, w - side, stride), w - side})
    ys = sorted({*range(0, h - side, stride), h - side})
    return tiles + [(x, y, side) for y in ys for x in xs]


def detect(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (F, 4) x0, y0, x1, y1 in pixels and scores (F,) of both detectors over all tiles, merged, best first."""
    from mediapipe.python.solutions import face_detection

    h, w = image.shape[:2]
    found = []
    detectors = [face_detection.FaceDetection(model_selection=m, min_detection_confidence=MIN_SCORE)
                 for m in (0, 1)]  # 0: short range (within ~2 m), 1: full range (within ~5 m)
    try:
        for x0, y0, side in _tiles(h, w):
            view = image if side == 0 else np.ascontiguousarray(image[y0:y0 + side, x0:x0 + side])
            vh, vw = view.shape[:2]
            for det in detectors:
                for d in det.process(view).detections or ():
                    r = d.location_data.relative_bounding_box
                    box = np.array([r.xmin * vw, r.ymin * vh, (r.xmin + r.width) * vw, (r.ymin + r.height) * vh])
                    inner = (box[0] > EDGE or x0 == 0) and (box[1] > EDGE or y0 == 0) and \
                            (box[2] < vw - EDGE or x0 + vw == w) and (box[3] < vh - EDGE or y0 + vh == h)
                    if side and not inner:  # cut by the tile's edge: a whole view of it is in another tile
                        continue
                    found.append((float(d.score[0]), box + (x0, y0, x0, y0)))
    finally:
        for det in detectors:
            det.close()
    found.sort(key=lambda sb: -sb[0])
    kept: list[tuple[float, np.ndarray]] = []
    for score, box in found:
        if all(_iou(box, k) <= SAME_FACE_IOU for _, k in kept):
            kept.append((score, box))
    boxes = np.array([b for _, b in kept], np.float32).reshape(-1, 4)
    return boxes, np.array([s for s, _ in kept], np.float32)


def _cut(image: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, float, float, float]:
    """A square cut of CUT x the box around its centre, edge-padded, resized to at most MESH_SIDE.
    Returns (cut, x0, y0, scale): picture pixel = (x0, y0) + cut pixel / scale."""
    side = round(CUT * max(box[2] - box[0], box[3] - box[1]))
    x0 = round((box[0] + box[2]) / 2 - side / 2)
    y0 = round((box[1] + box[3]) / 2 - side / 2)
    h, w = image.shape[:2]
    pad = ((max(0, -y0), max(0, y0 + side - h)), (max(0, -x0), max(0, x0 + side - w)), (0, 0))
    cut = np.pad(image[max(0, y0):y0 + side, max(0, x0):x0 + side], pad, mode="edge")
    scale = 1.0
    if side > MESH_SIDE:  # nearest-pixel striding would alias; a box-filter shrink is enough for the mesh
        k = int(np.ceil(side / MESH_SIDE))
        n = side // k * k
        cut = cut[:n, :n].reshape(n // k, k, n // k, k, 3).mean(axis=(1, 3)).round().astype(np.uint8)
        scale = 1.0 / k
    return np.ascontiguousarray(cut), float(x0), float(y0), scale


def landmarks(image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(F, 478, 2) picture-pixel landmarks of the mesh nearest each box's centre; NaN where none was found."""
    from mediapipe.python.solutions import face_mesh

    out = np.full((len(boxes), N_LANDMARKS, 2), np.nan, np.float32)
    with face_mesh.FaceMesh(static_image_mode=True, max_num_faces=4, refine_landmarks=True) as mesh:
        for i, box in enumerate(boxes):
            cut, x0, y0, scale = _cut(image, box)
            result = mesh.process(cut)
            if not result.multi_face_landmarks:
                continue
            n = cut.shape[0]
            centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
            best = None
            for face in result.multi_face_landmarks:
                pts = np.array([(p.x * n, p.y * n) for p in face.landmark], np.float64) / scale + (x0, y0)
                dist = np.linalg.norm(pts.mean(axis=0) - centre)
                if best is None or dist < best[0]:
                    best = (dist, pts)
            out[i] = best[1].astype(np.float32)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="output .npz")
    parser.add_argument("image", help="uint8 (H, W, 3) RGB .npy")
    args = parser.parse_args(argv)
    image = np.load(args.image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise SystemExit(f"face worker: {args.image} holds {image.dtype} {image.shape}, expected uint8 (H, W, 3) RGB")
    image = np.ascontiguousarray(image)
    boxes, scores = detect(image)
    np.savez(args.out, boxes=boxes, scores=scores, landmarks=landmarks(image, boxes))


if __name__ == "__main__":
    sys.exit(main())
