"""bench/portraits.py's readers: the rendered video, frame by frame (`decoded`, `FrameChecks`), and the two workers
run in the MediaPipe venv on its faces: Face Mesh with depth (`read_meter`) and dlib's face descriptors and 68
landmarks (`read_identity`, `identity_figures`, `read_dlib_points`)."""

from pathlib import Path

import numpy as np

from bench.portraits_measures import (
    IDENTITY_STEP,
    SAME_PERSON,
    figure,
    identity_distances,
    masked_ssim,
    outside_max_abs_diff,
)


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
        from actorcast.models.photo.framing import Framing

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


def read_meter(squares: np.ndarray, tmp: Path):
    """The meter's reading of (T, side, side, 3) uint8 frames as one tracked sequence, and the (T, 478) depths
    of its landmarks that MeterReading does not carry: (MeterReading, landmarks_z). The meter worker run as
    FaceMeter runs it (models/training/meter.py)."""
    from actorcast.models.mediapipe_env import run_in_mediapipe_env
    from actorcast.models.training.meter import WORKER, MeterReading

    frames, out = tmp / "meter_frames.npy", tmp / "meter_out.npz"
    np.save(frames, np.ascontiguousarray(squares))
    try:
        run_in_mediapipe_env(WORKER, [str(out), str(frames)], "the lip-sync meter")
        with np.load(out) as d:
            left, right = d["eye_open_l"], d["eye_open_r"]
            reading = MeterReading(mouth_open=d["mouth_open"], eye_open=(left + right) / 2, eye_open_l=left,
                                   eye_open_r=right, found=d["found"], landmarks=d["landmarks"])
            return reading, d["landmarks_z"]
    finally:
        frames.unlink(missing_ok=True)
        out.unlink(missing_ok=True)


def _dlib_faces(frames: np.ndarray, tmp: Path, points_only: bool) -> dict[str, np.ndarray]:
    """face_id_worker.py (in the meter's venv) over frames (n, side, side, 3): its descriptors and 68 points."""
    from actorcast.models.mediapipe_env import run_in_mediapipe_env
    from actorcast.models.training.meter import WORKER

    path, out = tmp / "id_frames.npy", tmp / "id_out.npz"
    np.save(path, np.ascontiguousarray(frames))
    try:
        run_in_mediapipe_env(WORKER.with_name("face_id_worker.py"),
                             ["--points-only"] * points_only + [str(out), str(path)], "the dlib face worker")
        with np.load(out) as d:
            return {"descriptors": d["descriptors"], "points": d["points"]}
    finally:
        path.unlink(missing_ok=True)
        out.unlink(missing_ok=True)


def read_identity(photo_square: np.ndarray, squares: np.ndarray, tmp: Path) -> tuple[np.ndarray, np.ndarray]:
    """dlib face descriptors of the photo's own square (side, side, 3) and of frames (n, side, side, 3):
    ((128,), (n, 128)); NaN rows where dlib found no face."""
    descriptors = _dlib_faces(np.concatenate([photo_square[None], squares]), tmp, points_only=False)["descriptors"]
    return descriptors[0], descriptors[1:]


def read_dlib_points(squares: np.ndarray, tmp: Path) -> np.ndarray:
    """dlib's 68 landmarks of the face in each frame (T, side, side, 3): (T, 68, 2) pixels, NaN where none; the
    second landmark reader beside Face Mesh (bench/portraits_measures.py `dlib_head_pose`, `eye_aspect`)."""
    return _dlib_faces(squares, tmp, points_only=True)["points"]


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
