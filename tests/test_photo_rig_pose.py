"""The photo rig's head (models/photo/rig.py, models/photo/pose.py) on a real photo: a turn moves the face in
depth, a photo's own turn is read from its landmarks and damps the generator's, and the rest pose is the photo."""

import numpy as np
import pytest
import torch

from actorcast.models.data.params import PARAM_INDEX
from actorcast.models.errors import InputError
from actorcast.models.photo.pose import MIDLINE, PAIRS, TURN_FLOOR, HeadPose, photo_pose, turn_gain
from actorcast.models.photo.reference import to_uint8
from actorcast.models.photo.rig import PhotoRig
from actorcast.models.training.meter import FaceMeter
from tests.photo_rig_helpers import SIZE, astronaut_framing, astronaut_rig, poses


@pytest.fixture(scope="module")
def framing():
    return astronaut_framing()


@pytest.fixture(scope="module")
def rig(framing):
    return astronaut_rig(framing)


def test_a_head_turn_moves_the_nose_more_than_the_ears_and_not_the_corners(rig):
    """A yaw of 5 degrees turns the head in depth: the meter sees the nose tip (1) move over 1.5 px and over twice
    as far as the sides of the face by the ears (234, 454). Head motion, however large, keeps the corners of the
    square the photo's."""
    turned = rig.render(poses(head_yaw=[0.0, np.deg2rad(5.0)]))
    reading = FaceMeter().read(to_uint8(turned), static=True)
    assert reading.found.all()
    dx = reading.landmarks[1, :, 0] - reading.landmarks[0, :, 0]
    assert dx[1] > 1.5 and dx[1] > 2 * max(abs(dx[234]), abs(dx[454])), dx[[1, 234, 454]]
    frames = torch.cat([turned, rig.render(poses(head_roll=[0.5], head_x=[0.2], head_y=[0.2], head_yaw=[0.6],
                                                  head_pitch=[0.5], head_scale=[1.2]))])
    moved = (frames - rig.image).abs().amax(1)                                # (B, R, R)
    assert moved[:, SIZE // 2 - 20:SIZE // 2 + 20].amax() > 0.2
    for corner in (moved[:, :24, :24], moved[:, :24, -24:], moved[:, -24:, :24], moved[:, -24:, -24:]):
        assert corner.amax() == 0


def _turned(points: np.ndarray, yaw_deg: float, pitch_deg: float) -> np.ndarray:
    """Face Mesh points (478, 3) (px, depth px, smaller nearer the camera) turned in 3-D about their centre, seen
    from the front: (478, 2) px. Yaw + turns the nose towards the image's right, pitch + nods it down."""
    a, b = np.radians(yaw_deg), np.radians(pitch_deg)
    turn = np.array([[np.cos(a), 0, -np.sin(a)], [0, 1, 0], [np.sin(a), 0, np.cos(a)]]) @ \
        np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    centre = points.mean(0)
    return ((points - centre) @ turn.T + centre)[:, :2].astype(np.float32)


def _nose_travel(image: torch.Tensor, marks: np.ndarray, name: str) -> np.ndarray:
    """(dx, dy) px that the nose tip of a rig of `image` with landmarks `marks` moves as `name` (head_yaw or
    head_pitch) goes from -0.2 to 0.2: a green dot painted at the landmarks' nose tip (1), followed by its
    centroid (the green over red and blue, in the 80 px around it)."""
    nose = torch.as_tensor(marks[1], dtype=torch.float32)
    coords = torch.arange(SIZE, dtype=torch.float32) + 0.5
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    dot = (3.5 - ((x - nose[0]).square() + (y - nose[1]).square()).sqrt()).clamp(0, 1)     # (R, R)
    painted = image + dot * (torch.tensor([0.0, 1.0, 0.0])[:, None, None] - image)
    frames = PhotoRig(painted, marks).render(poses(**{name: [-0.2, 0.2]}))
    (x0, y0), r = nose.int().tolist(), 40
    window = (slice(y0 - r, y0 + r), slice(x0 - r, x0 + r))
    green = (frames[:, 1] - torch.maximum(frames[:, 0], frames[:, 2])).clamp(min=0)[:, window[0], window[1]]
    at = torch.stack([(green * x[window]).sum((1, 2)), (green * y[window]).sum((1, 2))], 1) / green.sum((1, 2))[:, None]
    return (at[1] - at[0]).numpy()


def test_the_pose_of_a_turned_mean_face_is_read_back_and_the_gain_falls_smoothly():
    """The pose fit's own mean face, turned in 3-D and seen from the front, reads back as the turn; the turn gain
    is 1 for a face towards the camera, falls steadily with the photo's own turn, and stops at TURN_FLOOR."""
    points = np.zeros((478, 3))
    for i, y, z in MIDLINE:
        points[i] = (0.0, y, z)
    for left, right, x, y, z in PAIRS:
        points[left], points[right] = (-x, y, z), (x, y, z)
    for yaw, pitch in ((0.0, 0.0), (30.0, 0.0), (-20.0, 15.0), (0.0, -35.0)):
        pose = photo_pose(_turned(100 * points + 128, yaw, pitch))
        assert np.degrees([pose.yaw, pose.pitch]) == pytest.approx([yaw, pitch], abs=0.01)
    gains = [turn_gain(HeadPose(np.radians(d), 0.0)) for d in range(0, 90, 5)]
    assert gains[:4] == [1.0] * 4 and gains[-5:] == [TURN_FLOOR] * 5                     # up to 15, from 45 deg
    assert np.all(np.diff(gains) <= 0) and np.abs(np.diff(gains)).max() < 0.2


@pytest.mark.parametrize("yaw, pitch, name", [(40.0, 0.0, "head_yaw"), (0.0, 35.0, "head_pitch")])
def test_a_face_turned_away_in_the_photo_turns_less_and_says_so(framing, rig, tmp_path, yaw, pitch, name):
    """The photo's own landmarks turned in 3-D (by Face Mesh's own depth of them): the rig reads the turn, and the
    generator's head turn (nod) moves the nose tip less than 40 % as far as on the photo facing the camera, but
    still moves it; one line says so. Facing the camera: the turn in full, no line."""
    from bench.portraits_readers import read_meter

    reading, depth = read_meter(to_uint8(rig.image), tmp_path)
    assert reading.found.all()
    marks = _turned(np.concatenate([reading.landmarks[0], depth[0][:, None]], 1), yaw, pitch)
    pose, facing = photo_pose(marks), photo_pose(framing.crop_landmarks(SIZE))
    assert abs(np.degrees(pose.yaw - facing.yaw) - yaw) < 6 and abs(np.degrees(pose.pitch - facing.pitch) - pitch) < 6
    turned = PhotoRig(rig.image, marks)
    assert rig.head.turn_gain == 1.0 and rig.turn_note is None
    assert TURN_FLOOR <= turned.head.turn_gain < 0.4
    assert "turned" in turned.turn_note and "degrees from the camera" in turned.turn_note
    assert "\n" not in turned.turn_note
    axis = 0 if name == "head_yaw" else 1
    full = _nose_travel(rig.image, framing.crop_landmarks(SIZE), name)[axis]
    less = _nose_travel(rig.image, marks, name)[axis]
    assert full > 8.0, full                                                 # px: the nose turns with the head
    assert 0.1 * full < less < 0.4 * full, (less, full)


def test_the_rest_pose_is_the_photo_and_motion_is_drawn_from_it(framing, rig):
    """The generator's idle for a photo (a steady yaw, a half-shut eye, a parted jaw) renders as the photo itself;
    motion away from it is drawn as the same motion away from neutral would be."""
    rest = poses(jaw_open=[0.2], head_yaw=[0.2], head_x=[0.05], head_scale=[0.95], blink_l=[0.5], smile=[0.3])[0]
    rested = PhotoRig(rig.image, framing.crop_landmarks(SIZE), rest.numpy())
    assert torch.allclose(rested.render(rest[None]), rig.image, atol=1e-5)
    moved = rest.clone()
    moved[PARAM_INDEX["head_yaw"]] += 0.1
    moved[PARAM_INDEX["smile"]] += 0.4
    away = poses(head_yaw=[0.1], smile=[0.4])
    assert torch.allclose(rested.render(moved[None]), rig.render(away), atol=1e-4)
    # jaw and blinks: the share of the way from the rest to 1 (nothing under the rest)
    assert torch.allclose(rested.relative(poses(jaw_open=[0.1, 0.6], blink_l=[0.0, 0.75]))[:, [0, 6]],
                          torch.tensor([[0.0, 0.0], [0.5, 0.5]]), atol=1e-6)
    with pytest.raises(InputError, match="rest pose must be"):
        PhotoRig(rig.image, framing.crop_landmarks(SIZE), np.zeros(3))


@pytest.mark.parametrize("name, axis", [("head_yaw", 0), ("head_pitch", 1)])
def test_the_meter_reads_a_drawn_turn_and_nod_at_the_generators_angle(rig, tmp_path, name, axis):
    """Two seconds of a 6-degree swing, read back by a rigid 3-D fit of the meter's Face Mesh points (as
    bench/portraits.py reads head motion): the swing reads at its own size, within 20 %, on its own axis only.
    Without YAW_GAIN a turn read 0.58 of its size."""
    from bench.portraits_measures import head_pose
    from bench.portraits_readers import read_meter

    angle = np.radians(6.0) * np.sin(2 * np.pi * np.arange(50) / 25)
    with torch.no_grad():
        frames = rig.render(poses(**{name: angle.tolist()}))
    reading, depth = read_meter(to_uint8(frames), tmp_path)
    pose = head_pose(reading.landmarks, depth)
    read, other = pose[:, axis], pose[:, 1 - axis]
    assert reading.found.all()
    assert 0.8 < np.std(read) / np.degrees(angle).std() < 1.2, np.std(read)
    assert abs(np.corrcoef(np.degrees(angle), read)[0, 1]) > 0.98
    assert np.std(other) < 0.25 * np.std(read)
