"""A photo's own head pose, read off its Face Mesh landmarks, and how far the photo rig may turn a head so turned.

    pose = photo_pose(landmarks)     # (478, 2) Face Mesh points -> HeadPose(yaw, pitch), radians
    gain = turn_gain(pose)           # 1 for a face towards the camera, down to TURN_FLOOR for a turned one
    note = turn_note(landmarks)      # one line when the gain is under NOTE_UNDER, else None

The photo rig (models/photo/rig.py) turns and nods a photo's head by warping its pixels over a rounded depth of the
face. On a face towards the camera, that shows nothing the photo lacks; on a face already turned away, the same
warp would have to show the side the photo hides (the far cheek, the ear, under the chin), and can only smear the
silhouette's pixels across it. So the rig scales its turn and nod down by `turn_gain` as the photo's own turn grows.

The pose is a rigid fit: a mean face's 3-D points (MIDLINE, PAIRS: Face Mesh's depth on real faces, measured by
bench/portraits_face_model.py) turned, scaled and shifted so that, seen from the front (orthographic), they land
on the photo's landmarks in the least-squares sense. Only points that move with the skull are used (no lips, jaw
or lids), so an open mouth or a blink does not read as a nod. Zero is the face whose forehead top (10) and chin
(152) lie square to the camera; tests/data/astronaut.jpg reads about 9 degrees of pitch.
"""

import math
from dataclasses import dataclass

import numpy as np

# The mean face: x right (the subject's left), y down, z away from the camera, in face heights (forehead top to
# chin). Midline points (index, y, z) have x = 0; mirrored pairs (image-left index, image-right index, x, y, z) sit
# at -x and +x.
MIDLINE = (
    (10, -0.290, 0.091),
    (151, -0.199, 0.063),
    (168, -0.004, 0.043),
    (6, 0.042, 0.014),
    (4, 0.206, -0.110),
    (1, 0.246, -0.102),
)
PAIRS = (
    (33, 263, 0.267, 0.034, 0.173),
    (133, 362, 0.107, 0.037, 0.137),
    (234, 454, 0.420, 0.181, 0.480),
    (127, 356, 0.423, 0.091, 0.460),
    (162, 389, 0.416, -0.007, 0.408),
    (54, 284, 0.358, -0.165, 0.273),
    (109, 338, 0.113, -0.286, 0.103),
    (116, 345, 0.379, 0.141, 0.245),
    (123, 352, 0.378, 0.220, 0.231),
    (50, 280, 0.293, 0.221, 0.129),
)
TURN_EASY = math.radians(15)   # the photo's own turn (yaw and pitch together) up to which the head turns in full
TURN_HARD = math.radians(45)   # ... and past which it turns at TURN_FLOOR: the gain falls smoothly in between
TURN_FLOOR = 0.25              # the least turn gain: the head still moves a little, never showing its hidden side
NOTE_UNDER = 0.95              # a turn gain under this is said (`turn_note`); a cut of a few % would be noise


@dataclass(frozen=True)
class HeadPose:
    """Where a face in a photo looks, radians: yaw + with the nose towards the image's right, pitch + nose down."""

    yaw: float
    pitch: float

    @property
    def turn(self) -> float:
        """The angle between the face's forward axis and the camera's, radians."""
        return math.acos(math.cos(self.yaw) * math.cos(self.pitch))


def _mean_face() -> tuple[list[int], np.ndarray]:
    """The mean face's landmark indices and (K, 3) points."""
    index, points = [], []
    for i, y, z in MIDLINE:
        index.append(i)
        points.append((0.0, y, z))
    for left, right, x, y, z in PAIRS:
        index += [left, right]
        points += [(-x, y, z), (x, y, z)]
    return index, np.asarray(points, np.float64)


def photo_pose(landmarks) -> HeadPose:
    """The head pose of a face from its (478, 2) Face Mesh points (px; checked by rig.check_landmarks).

    Weak perspective: the least-squares linear map (2, 3) from the centred mean face to the centred points, made
    the nearest scaled pair of orthonormal rows (its SVD with the singular values evened), completed to a rotation
    R by their cross product; the face's forward axis is R (0, 0, -1)."""
    index, face = _mean_face()
    marks = np.asarray(landmarks, np.float64)[index]
    a = face - face.mean(0)                                                   # (K, 3)
    b = marks - marks.mean(0)                                                 # (K, 2)
    linear = np.linalg.lstsq(a, b, rcond=None)[0].T                           # (2, 3): b ~ a @ linear.T
    u, _, vt = np.linalg.svd(linear, full_matrices=False)
    rot = np.vstack([u @ vt, np.zeros(3)])                                    # (3, 3): two orthonormal rows
    rot[2] = np.cross(rot[0], rot[1])                                         # ... and the third: a rotation
    forward = -rot[:, 2]                                                      # R (0, 0, -1): towards the camera
    yaw = math.atan2(forward[0], -forward[2])
    pitch = math.atan2(forward[1], math.hypot(forward[0], forward[2]))
    return HeadPose(yaw, pitch)


def turn_gain(pose: HeadPose) -> float:
    """The share of the generator's head turn and nod the rig draws on a face in `pose`: 1 up to TURN_EASY of the
    photo's own turn, TURN_FLOOR from TURN_HARD, a smoothstep between."""
    x = min(max((pose.turn - TURN_EASY) / (TURN_HARD - TURN_EASY), 0.0), 1.0)
    return 1.0 - (1.0 - TURN_FLOOR) * x * x * (3 - 2 * x)


def turn_note(landmarks) -> str | None:
    """Why the head of a face with (478, 2) Face Mesh points turns and nods less than the motion asks, in one
    line, or None when it turns in full or nearly (`turn_gain` of NOTE_UNDER or more)."""
    pose = photo_pose(landmarks)
    gain = turn_gain(pose)
    if gain >= NOTE_UNDER:
        return None
    return (f"the face in the photo is turned {math.degrees(pose.turn):.0f} degrees from the camera: animating its "
            f"head's turns and nods at {round(100 * gain)} %, so the side the photo hides never shows (a photo "
            "facing the camera gets them whole)")
