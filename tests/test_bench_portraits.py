"""bench/portraits.py's measures on known inputs: pixel identity outside the mask, SSIM inside it, silence, head
pose from a rotated point cloud, blinks from eye series with known dips, gaze shifts from iris tracks with known
jumps, identity distances; and its two workers on a real photo (bench/portraits_measures.py, _readers.py and
_strips.py)."""

import numpy as np
import pytest
from PIL import Image

from bench.portraits_measures import (
    BLINK_CLOSED,
    DLIB_EYES,
    DLIB_RIGID,
    EYES,
    FIXATION_RADIUS,
    RIGID,
    SACCADE_JUMP,
    SILENT_MARGIN,
    Speech,
    blink_figures,
    dlib_head_pose,
    eye_aspect,
    figure,
    gaze_jump,
    head_pose,
    identity_distances,
    iris_noise,
    iris_positions,
    kabsch,
    masked_ssim,
    nan_std,
    outside_max_abs_diff,
    saccades,
    weak_perspective,
    yaw_pitch,
)
from bench.portraits_readers import read_dlib_points, read_identity
from bench.portraits_strips import write_strips
from tests.conftest import ROOT


@pytest.fixture
def picture():
    return np.random.default_rng(0).integers(0, 200, (32, 40, 3), dtype=np.uint8)


def test_outside_max_abs_diff_sees_only_outside_the_mask(picture):
    outside = np.ones((32, 40), bool)
    outside[8:24, 10:30] = False                        # the face
    frames = np.repeat(picture[None], 3, axis=0)
    frames[1, 12:20, 15:25] = 255                       # inside: not counted
    assert outside_max_abs_diff(frames, picture, outside) == 0
    frames[2, 2, 3, 1] = picture[2, 3, 1] + 9           # one channel of one pixel outside
    assert outside_max_abs_diff(frames, picture, outside) == 9
    assert outside_max_abs_diff(frames, picture, np.zeros_like(outside)) == 0   # no outside at all


def test_masked_ssim_is_one_for_the_same_face_and_falls_with_noise(picture):
    everywhere = np.ones((32, 40), bool)
    assert masked_ssim(picture, picture, everywhere) == pytest.approx(1.0)
    noise = np.random.default_rng(1).normal(0, 1, picture.shape)
    ssim = [masked_ssim(np.clip(picture + sigma * noise, 0, 255).astype(np.uint8), picture, everywhere)
            for sigma in (10, 40)]
    assert 1.0 > ssim[0] > ssim[1]                       # more noise, less alike
    changed = picture.copy()
    changed[:, :10] = 255 - changed[:, :10]               # the left quarter inverted
    right = np.zeros((32, 40), bool)
    right[:, 25:] = True                                 # beyond the 11-px Gaussian window of the change
    assert masked_ssim(changed, picture, right) == pytest.approx(1.0)
    assert masked_ssim(changed, picture, ~right) < 0.5


def test_silent_frames_keep_a_margin_from_speech():
    loud = np.full(20, 0.1)
    loud[5:14] = 0.0                                     # 9 quiet frames
    speech = Speech(audio=np.zeros(20 * 640, np.float32), openness=np.zeros(20), rms=loud)
    assert speech.speech.sum() == 11
    assert np.flatnonzero(speech.silent).tolist() == list(range(5 + SILENT_MARGIN, 14 - SILENT_MARGIN))


def test_figure_states_its_target():
    assert figure("lipsync_r", 0.7) == {"value": 0.7, "target": ">= 0.65", "met": True}
    assert figure("lipsync_r", 0.6)["met"] is False
    assert figure("identity_distance_mean", 0.3) == {"value": 0.3, "target": "<= 0.35", "met": True}
    assert figure("identity_distance_max", 0.46)["met"] is False
    assert figure("blinks", 3)["met"] is True and figure("blinks_silence", 0)["met"] is False
    assert figure("outside_mask_max_abs_diff_frames", 3)["met"] is False
    assert figure("lip_lag_frames", -1) == {"value": -1, "target": None, "met": None}
    assert figure("face_ssim_silent_mp4", None, silent_frames=0)["met"] is None


def test_the_silent_tail_is_the_last_frames():
    speech = Speech(audio=np.zeros(10 * 640, np.float32), openness=np.zeros(10), rms=np.full(10, 0.1), tail=4)
    assert speech.spoken.tolist() == [True] * 6 + [False] * 4
    assert speech.in_tail.tolist() == [False] * 6 + [True] * 4


# ------------------------------------------------------------------------------------------------ head pose

def rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Ry(yaw) Rx(pitch) Rz(roll), degrees, image axes (x right, y down, z away)."""
    a, b, c = np.radians([yaw, pitch, roll])
    ry = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return ry @ rx @ rz


@pytest.fixture
def cloud():
    """A face-sized cloud of 478 points (pixels), like Face Mesh's."""
    return np.random.default_rng(3).normal(0, 1, (478, 3)) * [40.0, 55.0, 25.0]


def test_kabsch_gives_the_yaw_and_pitch_a_cloud_was_turned_by(cloud):
    poses = [(0, 0, 0), (5, 0, 0), (0, -4, 0), (12, 7, 3), (-20, 15, -10)]
    moved = np.stack([1.1 * cloud @ rotation(*pose).T + [300, 200, 5] for pose in poses])  # scaled and shifted too
    angles = yaw_pitch(kabsch(cloud, moved))
    assert angles == pytest.approx(np.array(poses)[:, :2], abs=1e-9)
    assert np.linalg.det(kabsch(cloud, moved)) == pytest.approx(np.ones(5))     # rotations, not reflections
    moved[2, 7, 0] = np.nan
    angles = yaw_pitch(kabsch(cloud, moved))
    assert np.isnan(angles[2]).all() and angles[3] == pytest.approx([12, 7], abs=1e-9)


def test_head_pose_follows_the_rigid_points_not_the_jaw(cloud):
    yaws, pitches = [0, 3, -3, 1, 0, -2], [0, -1, 2, 2, -2, 0]
    frames = np.stack([cloud @ rotation(y, p, 1).T for y, p in zip(yaws, pitches)])
    others = np.setdiff1d(np.arange(478), RIGID)
    frames[:, others, 1] += np.arange(6)[:, None] * 4.0       # the jaw and lids move; the skull does not
    frames[4] = np.nan                                        # no face read there
    pose = head_pose(frames[..., :2].astype(np.float32), frames[..., 2].astype(np.float32))
    assert np.isnan(pose[4]).all()
    keep = [0, 1, 2, 3, 5]
    assert pose[keep] == pytest.approx(np.array([yaws, pitches]).T[keep], abs=1e-3)
    assert nan_std(pose[:, 0]) == pytest.approx(np.std(np.array(yaws)[keep]), abs=1e-3)
    assert nan_std(pose[:, 1]) == pytest.approx(np.std(np.array(pitches)[keep]), abs=1e-3)
    assert nan_std(np.array([np.nan, 1.0])) is None


def test_weak_perspective_gives_the_yaw_and_pitch_a_cloud_was_turned_by_from_its_picture_alone(cloud):
    poses = [(0, 0, 0), (5, 0, 0), (0, -4, 0), (12, 7, 3), (-20, 15, -10)]
    seen = np.stack([(0.9 * cloud @ rotation(*pose).T)[:, :2] + [300, 200] for pose in poses])  # x, y only
    rot = weak_perspective(cloud, seen)
    assert yaw_pitch(rot) == pytest.approx(np.array(poses)[:, :2], abs=1e-6)
    assert np.linalg.det(rot) == pytest.approx(np.ones(5))
    seen[1, 3, 1] = np.nan
    assert np.isnan(yaw_pitch(weak_perspective(cloud, seen))[1]).all()


def test_dlib_head_pose_takes_the_face_shape_from_the_mesh_and_the_motion_from_dlibs_points(cloud):
    """dlib's points sit on 68 of the mesh's; only the first frame's mesh and depth are given, and the jaw and lid
    points, which move on their own, do not turn the head."""
    on_mesh = np.random.default_rng(4).choice(478, 68, replace=False)
    yaws, pitches = [0, 4, -3, 1, 0, -2], [0, -1, 3, 2, -2, 0]
    frames = np.stack([cloud @ rotation(y, p, 0).T for y, p in zip(yaws, pitches)])      # (6, 478, 3)
    points = frames[:, on_mesh, :2].copy()
    others = np.setdiff1d(np.arange(68), DLIB_RIGID)
    points[:, others, 1] += np.arange(6)[:, None] * 5.0
    points[4] = np.nan                                                                  # dlib found no face
    pose = dlib_head_pose(points, frames[0, :, :2], frames[0, :, 2])
    assert np.isnan(pose[4]).all()
    keep = [0, 1, 2, 3, 5]
    assert pose[keep] == pytest.approx(np.array([yaws, pitches]).T[keep], abs=1e-6)
    flat = dlib_head_pose(points, frames[0, :, :2], np.zeros(478))                       # no depth: no pose
    assert not np.allclose(flat[keep], pose[keep], atol=0.5)


def test_eye_aspect_is_the_lid_gaps_over_the_width_and_zero_when_shut():
    points = np.zeros((2, 68, 2))
    for eye, x0 in zip(DLIB_EYES, (0.0, 50.0)):
        c0, u1, u2, c1, l2, l1 = eye
        points[:, c0], points[:, c1] = [x0, 0], [x0 + 30, 0]
        points[:, u1], points[:, u2] = [x0 + 10, -5], [x0 + 20, -5]
        points[:, l1], points[:, l2] = [x0 + 10, 4], [x0 + 20, 4]
    points[1, [37, 38, 43, 44], 1] = 4.0                                                  # the upper lids come down
    assert eye_aspect(points) == pytest.approx([18 / 60, 0.0])


# ------------------------------------------------------------------------------------------------ blinks

def test_blink_figures_count_only_blinks_below_35_percent_and_give_every_dip():
    eye = np.full(80, 0.30)
    eye[10:14] = [0.2, 0.06, 0.09, 0.2]          # to 20 % of open: a blink
    eye[30:33] = [0.2, 0.12, 0.2]                # to 40 %: a dip, not a blink
    eye[40:45] = [0.1, 0.09, 0.2, 0.1, 0.2]      # to 30 %, read back above half for a frame: one blink
    eye[60:63] = [0.15, 0.03, 0.15]              # to 10 %, in the tail
    eye[70] = np.nan                             # no face read
    spoken = np.arange(80) < 55
    talk = blink_figures(eye, spoken, 0.30)
    assert talk["blinks"] == 2
    assert talk["bottoms"] == [0.2, 0.4, 0.3]
    assert talk["deepest"] == pytest.approx(0.2)
    tail = blink_figures(eye, ~spoken, 0.30)
    assert tail == {"blinks": 1, "deepest": pytest.approx(0.1), "bottoms": [0.1]}
    assert BLINK_CLOSED == 0.35
    still = blink_figures(np.full(80, 0.3), spoken, 0.3)
    assert still == {"blinks": 0, "deepest": pytest.approx(1.0), "bottoms": []}


def test_motion_measures_blinks_give_spans_and_bottoms_and_keep_the_onsets():
    from actorcast.models.training.motion_measures import blink_onsets, blinks

    eye = np.full(40, 0.4)
    eye[5:8] = [0.1, 0.04, 0.1]
    eye[20:26] = [0.1, 0.3, 0.16, 0.3, 0.3, 0.12]      # flicker one frame apart: one; then two frames apart: two
    found = blinks(eye)
    assert [(b.start, b.end) for b in found] == [(5, 8), (20, 23), (25, 26)]
    assert [b.bottom for b in found] == pytest.approx([0.1, 0.25, 0.3])
    assert blink_onsets(eye).tolist() == [5, 20, 25]
    assert [(b.start, b.end) for b in blinks(eye, depth=0.2, open_level=0.4)] == [(6, 7)]   # under 0.08


# ------------------------------------------------------------------------------------------------ gaze

def eye_landmarks(along: np.ndarray, across: np.ndarray, turn: float = 0.0) -> np.ndarray:
    """(T, 478, 2) landmarks whose two eyes (20 px wide) hold their irises at `along`, `across` eye widths,
    the eyes' corner line turned by `turn` degrees."""
    t = np.radians(turn)
    axis, normal = np.array([np.cos(t), np.sin(t)]), np.array([-np.sin(t), np.cos(t)])
    marks = np.zeros((len(along), 478, 2), np.float32)
    for (left, right, iris), x0 in zip(EYES, (10.0, 50.0)):
        corner = np.array([x0, 20.0])
        marks[:, left], marks[:, right] = corner, corner + 20 * axis
        marks[:, iris] = corner + 20 * (along[:, None] * axis + across[:, None] * normal)
    return marks


def test_iris_positions_are_in_eye_widths_along_and_across_the_corners():
    along, across = np.array([0.5, 0.75, 0.3]), np.array([0.0, 0.1, -0.05])
    for turn in (0.0, 25.0):
        assert iris_positions(eye_landmarks(along, across, turn)) == pytest.approx(np.stack([along, across], 1),
                                                                                  abs=1e-5)


def test_saccades_are_jumps_between_held_fixations():
    noise = np.random.default_rng(5).uniform(-0.004, 0.004, 100)
    x = np.full(100, 0.5)
    x[10:20] = 0.6                               # a jump at frame 10, held
    x[20], x[21:30] = 0.5, 0.45                  # a two-frame jump starting at 20
    x[30:40] = 0.45 + 0.03                       # a small jump, under the threshold
    x[40:70] = 0.48 + 0.004 * np.arange(30)      # a slow drift of 0.12: no jump
    x[70:78], x[78:] = 0.6, 0.5                  # a jump at 78, while the lids are shut
    track = np.stack([x + noise, np.zeros(100)], 1)
    valid = np.ones(100, bool)
    valid[76:81] = False
    assert saccades(track, valid).tolist() == [10, 20]
    assert saccades(track, np.ones(100, bool)).tolist() == [10, 20, 78]
    track[:, 1] = np.where(np.arange(100) >= 90, 0.06, 0.0)   # a vertical jump counts too
    assert saccades(track, np.ones(100, bool)).tolist() == [10, 20, 78, 90]
    assert saccades(track, np.ones(100, bool), jump=0.12).tolist() == [20]   # jumps of 0.1, 0.15, 0.1, 0.06
    assert saccades(track, np.ones(100, bool), jump=0.09).tolist() == [10, 20, 78]
    jittery = track + np.random.default_rng(6).uniform(-3, 3, (100, 2)) * FIXATION_RADIUS
    assert saccades(jittery, valid).tolist() == []   # nothing is held, so nothing jumps from a fixation
    assert SACCADE_JUMP == 0.05
    assert gaze_jump(0.01) == 0.05 and gaze_jump(0.02) == pytest.approx(0.08) and gaze_jump(None) == 0.05


def test_iris_noise_is_the_standard_deviation_of_one_reading():
    rng = np.random.default_rng(8)
    track = np.zeros((4000, 2))
    track[:, 0] = 0.5 + rng.normal(0, 0.015, 4000)
    track[2000:, 0] += 0.1                               # a gaze shift does not count as noise
    valid = np.ones(4000, bool)
    assert iris_noise(track, valid) == pytest.approx(0.015, rel=0.1)
    valid[5:] = False
    assert iris_noise(track, valid) is None               # 4 steps are too few


# ------------------------------------------------------------------------------------------------ identity, strips

def test_identity_distances_are_euclidean_and_nan_where_no_face():
    reference = np.zeros(128)
    descriptors = np.zeros((3, 128))
    descriptors[0, :2] = [0.3, 0.4]
    descriptors[2] = np.nan
    d = identity_distances(reference, descriptors)
    assert d[:2] == pytest.approx([0.5, 0.0]) and np.isnan(d[2])


def test_strips_hold_the_faces_every_10_frames_and_the_mouths_at_their_own_pixels(tmp_path):
    squares = np.random.default_rng(7).integers(0, 255, (60, 100, 100, 3), dtype=np.uint8)
    landmarks = np.zeros((60, 478, 2), np.float32)
    landmarks[:, [13, 14, 78, 308]] = [40.0, 70.0]           # the mouth centred at (40, 70)
    speech = Speech(audio=np.zeros(60 * 640, np.float32), openness=np.zeros(60), rms=np.zeros(60))
    write_strips(tmp_path, "x", squares, landmarks, speech)
    strip = np.asarray(Image.open(tmp_path / "strip_x.png"))
    assert strip.shape == (100, 600, 3)                      # 6 faces, one row
    assert (strip[:, 100:200] == squares[10]).all()
    mouth = np.asarray(Image.open(tmp_path / "mouth_x.png"))
    assert mouth.shape == (48, 25 * 24, 3)                   # 30 crops of 24 px (half 12), 25 a row
    assert (mouth[:24, 24:48] == squares[2, 58:82, 28:52]).all()
    assert (mouth[24:, 5 * 24:] == 0).all()                  # the second row runs short


# ------------------------------------------------------------------------------------------------ the workers

@pytest.fixture(scope="module")
def astronaut_square():
    picture = np.asarray(Image.open(ROOT / "tests" / "data" / "astronaut.jpg").convert("RGB"))
    return np.ascontiguousarray(picture[40:264, 110:334])     # the face and some background, 224 px


def test_dlib_finds_the_same_person_in_the_photo_and_its_mirror_and_no_one_in_grey(astronaut_square, tmp_path):
    frames = np.stack([astronaut_square, astronaut_square[:, ::-1], np.full_like(astronaut_square, 128)])
    reference, descriptors = read_identity(astronaut_square, frames, tmp_path)
    d = identity_distances(reference, descriptors)
    assert d[0] == pytest.approx(0.0, abs=1e-6)
    assert 0.0 < d[1] < 0.6                                  # mirrored: still the same person by dlib's threshold
    assert np.isnan(d[2])
    assert list(tmp_path.iterdir()) == []                    # its files are cleaned up


def test_dlib_places_its_68_points_on_the_face_the_meter_reads(astronaut_square, tmp_path):
    from bench.portraits_readers import read_meter

    frames = np.stack([astronaut_square, np.full_like(astronaut_square, 128)])
    points = read_dlib_points(frames, tmp_path)
    assert points.shape == (2, 68, 2) and np.isfinite(points[0]).all() and np.isnan(points[1]).all()
    reading, _ = read_meter(astronaut_square[None], tmp_path)
    width = np.linalg.norm(reading.landmarks[0, 263] - reading.landmarks[0, 33])            # outer eye corners
    for dlib_corner, mesh_corner in ((36, 33), (45, 263), (30, 1)):                         # eyes, nose tip
        assert np.linalg.norm(points[0, dlib_corner] - reading.landmarks[0, mesh_corner]) < 0.12 * width
    assert 0.2 < eye_aspect(points[:1])[0] < 0.45                                           # open eyes
    assert list(tmp_path.iterdir()) == []


def test_the_meter_worker_gives_depth_nearer_at_the_nose_than_at_the_cheeks(astronaut_square, tmp_path):
    from bench.portraits_readers import read_meter

    reading, depth = read_meter(astronaut_square[None], tmp_path)
    assert depth.shape == (1, 478) and reading.found.all()
    assert depth[0, 1] < depth[0, 234] - 20 and depth[0, 1] < depth[0, 454] - 20   # nose tip vs. face sides
    assert reading.landmarks.shape == (1, 478, 2)


def test_a_still_photo_reads_as_still_and_as_itself(astronaut_square, tmp_path):
    """The noise floor: 12 copies of one photo, read as a video, move less than the targets ask of a live face."""
    from bench.portraits_measures import motion_figures
    from bench.portraits_readers import identity_figures, read_meter

    frames = np.repeat(astronaut_square[None], 12, axis=0)
    reading, depth = read_meter(frames, tmp_path)
    speech = Speech(audio=np.zeros(12 * 640, np.float32), openness=np.zeros(12), rms=np.zeros(12), tail=6)
    figures, series = motion_figures(reading, depth, speech, points=read_dlib_points(frames, tmp_path))
    for key in ("head_yaw_std_deg", "head_pitch_std_deg", "head_yaw_std_deg_silence", "head_pitch_std_deg_silence"):
        for reader in ("", "_dlib"):
            assert 0.0 <= figures[key + reader]["value"] < 0.5, key + reader
    assert figures["blinks"]["value"] == figures["blinks_silence"]["value"] == 0
    assert figures["blinks_dlib"]["value"] == figures["blinks_silence_dlib"]["value"] == 0
    assert figures["blinks_dlib"]["target"] is None
    assert figures["gaze_shifts"]["value"] == figures["gaze_shifts_silence"]["value"] == 0
    assert figures["blink_deepest_closure"]["value"] > 0.8
    assert series["pose"].shape == (12, 2) and series["iris"].shape == (12, 2)
    identity = identity_figures(astronaut_square, frames, tmp_path)
    assert identity["identity_distance_max"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert identity["identity_distance_mean"]["frames_sampled"] == 3 and identity["identity_distance_max"]["met"]


def test_the_meter_check_reads_the_rigs_nod_turn_and_shut_eye_on_the_astronaut(tmp_path):
    """bench/portraits_meter_check.py: on a photo facing the camera, the meter reads the rig's nod and turn at about
    the angle asked and its shut eye under the blink threshold; a rig that drew nothing would read 0 and 1."""
    from bench.portraits_meter_check import meter_check
    from tests.photo_rig_helpers import astronaut_framing

    check = meter_check(astronaut_framing(), tmp_path)
    assert check["eyes_drawn"]
    assert 0.6 < check["pitch_gain"] < 1.5 and 0.6 < check["yaw_gain"] < 1.5
    assert check["shut_eye_openness"] < 0.35
    # dlib's points, read the same way: the nod at about its angle, the shut eye well under the open one
    assert 0.6 < check["pitch_gain_dlib"] < 1.5 and 0.6 < check["yaw_gain_dlib"] < 2.5
    assert check["shut_eye_openness_dlib"] < 0.6
