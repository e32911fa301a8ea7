"""The photo rig (models/photo/rig.py) on a real photo: its own landmarks (MediaPipe in .venv-meter) drive the
warp, and the meter, an instrument the rig never saw, reads the mouth and eyes it renders. Its head and rest pose:
test_photo_rig_pose.py."""

from pathlib import Path

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from actorcast.actors.engine import Engine
from actorcast.actors.messages import PhotoFace
from actorcast.actors.stages import DecodeRequest, DecoderShard
from actorcast.models.data.params import N_PARAMS, PARAM_INDEX, neutral_params
from actorcast.models.decoder import param_latent
from actorcast.models.errors import InputError
from actorcast.models.photo.framing import frame_reference
from actorcast.models.photo.reference import square_tensor, to_uint8
from actorcast.models.photo.rig import (
    CHIN,
    EYES,
    FOREHEAD_TOP,
    IRISES,
    MOUTH_CORNERS,
    PhotoRig,
    check_landmarks,
    eyes_note,
    params_of_latent,
)
from actorcast.models.training.meter import FaceMeter
from tests.photo_rig_helpers import SIZE, astronaut_framing, astronaut_rig, poses

SHIPPED = Path(__file__).resolve().parent.parent / "models" / "weights" / "tiny"
ASSETS = Path(__file__).resolve().parent.parent / "assets"


@pytest.fixture(scope="module")
def framing():
    return astronaut_framing()


@pytest.fixture(scope="module")
def rig(framing):
    return astronaut_rig(framing)


def test_at_rest_the_photo_renders_as_itself(rig):
    out = rig.render(neutral_params(2))
    assert torch.allclose(out, rig.image.expand(2, -1, -1, -1), atol=1e-5)


def test_the_mouth_opens_with_jaw_open_as_the_meter_reads_it(rig):
    """Stills of rising jaw_open: the meter's inner-lip gap rises in step, and the widest one is clearly open."""
    jaw = [0.0, 0.4, 0.7, 1.0]
    reading = FaceMeter().read(to_uint8(rig.render(poses(jaw_open=jaw))), static=True)
    assert reading.found.all()
    opening = reading.mouth_open
    assert np.all(np.diff(opening) > 0.005), opening
    assert opening[-1] - opening[0] > 0.08, opening                    # face heights


def test_blinks_close_the_eyes_and_only_the_mouth_moves_for_speech(rig):
    frames = rig.render(poses(blink_l=[0.0, 1.0], blink_r=[0.0, 1.0]))
    reading = FaceMeter().read(to_uint8(frames), static=True)
    assert reading.eye_open[1] < 0.6 * reading.eye_open[0], reading.eye_open
    # speech moves the mouth and chin, not the eyes or forehead: the rows above the nose stay the photo's
    spoken = rig.render(poses(jaw_open=[0.9], lip_spread=[0.8], smile=[0.5]))
    nose_y = int(rig.mouth.origin[1] - 0.25 * rig.height)
    assert torch.allclose(spoken[..., :nose_y, :], rig.image[..., :nose_y, :], atol=1e-5)
    assert (spoken - rig.image).abs().amax() > 0.3


def _eye_mask(marks: np.ndarray, grow: int) -> torch.Tensor:
    """(R, R) bool: inside either eye's landmark outline (corners and lid points), grown by `grow` px."""
    img = Image.new("L", (SIZE, SIZE), 0)
    for left, right, upper, lower in EYES:
        outline = [left, *upper, right, *reversed(lower)]
        ImageDraw.Draw(img).polygon([tuple(map(float, marks[i])) for i in outline], fill=1)
    inside = torch.from_numpy(np.array(img, np.float32))[None, None]
    return F.max_pool2d(inside, 2 * grow + 1, stride=1, padding=grow)[0, 0] > 0


def test_a_blink_closes_the_eye_with_the_lid_and_leaves_the_skin_above_it(framing, rig):
    """blink 1: the meter reads each eye below 35 % of its open reading, and the upper lid, not the skin above it,
    came down: the skin more than 1.2 eye openings over the upper lid (the crease, the brow) is the photo's."""
    reading = FaceMeter().read(to_uint8(rig.render(poses(blink_l=[0.0, 1.0], blink_r=[0.0, 1.0]))), static=True)
    assert reading.found.all()
    for side in (reading.eye_open_l, reading.eye_open_r):
        assert side[1] < 0.35 * side[0], side
    closed = rig.render(poses(blink_l=[1.0], blink_r=[1.0]))[0]
    moved = (closed - rig.image[0]).abs().amax(0)                          # (R, R)
    marks = framing.crop_landmarks(SIZE)
    for left, right, upper, lower in EYES:
        opening = float(np.linalg.norm(marks[upper[3]] - marks[lower[3]]))
        columns = slice(int(marks[left][0]) + 1, int(marks[right][0]))
        lid = marks[list(upper), 1].min()
        above = slice(int(lid - 3 * opening), int(lid - 1.2 * opening))
        assert moved[above, columns].amax() < 1e-5, moved[above, columns].amax()
        assert moved[int(lid):int(lid + opening), columns].amax() > 0.2    # the eye itself did change


def test_gaze_moves_the_irises_and_nothing_outside_the_eyes(framing, rig):
    """gaze_x -1 and +1: the meter's iris centres (refined landmarks) move left and right by over 2 px, not up or
    down; every pixel outside the eyes' outlines (grown by 2 px) is the photo's."""
    frames = rig.render(poses(gaze_x=[-1.0, 1.0, 0.0, 0.0], gaze_y=[0.0, 0.0, -1.0, 1.0]))
    marks = framing.crop_landmarks(SIZE)
    outside = ~_eye_mask(marks, 2)
    assert (frames - rig.image).abs().amax(1)[:, outside].amax() < 1e-5
    reading = FaceMeter().read(to_uint8(frames[:2]), static=True)
    assert reading.found.all()
    for iris in IRISES:
        dx, dy = reading.landmarks[1, iris] - reading.landmarks[0, iris]
        assert dx > 2.0 and abs(dy) < 1.0, (iris, dx, dy)
    inside = _eye_mask(marks, 0)
    assert (frames[3] - frames[2]).abs().amax(0)[inside].amax() > 0.1        # gaze_y moves them too


def test_paste_back_takes_every_pixel_the_head_moves(framing):
    """No seam in a full-frame render: wherever the rig changes the square (the head turned, rolled and shifted as
    far as it goes, the jaw wide open), the paste-back's mask is 1, so the still photo takes over only where the
    square is the photo again."""
    from actorcast.models.photo.paste import PasteBack

    x0, y0, side = framing.box
    rig = PhotoRig(square_tensor(framing.crop(), side), framing.crop_landmarks(side))
    moves = poses(head_yaw=[0.6, -0.6], head_pitch=[0.5, -0.5], head_roll=[0.5, -0.5], head_x=[0.2, -0.2],
                   head_y=[-0.2, 0.2], head_scale=[1.2, 0.8], jaw_open=[1.0, 1.0])
    changed = ((rig.render(moves) - rig.image).abs().amax(1) > 1 / 255).any(0).numpy()   # (side, side)
    ys, xs = np.nonzero(changed)
    ys, xs = ys + y0, xs + x0
    inside = (ys >= 0) & (ys < framing.picture.shape[0]) & (xs >= 0) & (xs < framing.picture.shape[1])
    mask = PasteBack(framing).mask()
    assert inside.sum() > 5000 and mask[ys[inside], xs[inside]].min() == 1.0


def test_shut_or_hidden_eyes_are_left_as_they_are_and_said_so_in_one_line(framing, rig, caplog):
    """Sunglasses (dark lenses painted over the eyes) and shut eyes (the rig's own blink, re-read by the meter):
    blinks and gaze change nothing, and a line says why; framing such a photo logs that line. Open eyes: no line."""
    assert rig.eyes_note is None
    marks = framing.crop_landmarks(SIZE)
    lenses = _eye_mask(marks, 4)
    shaded = torch.where(lenses, torch.tensor([0.05, 0.06, 0.08])[:, None, None], rig.image[0])[None]
    closed = to_uint8(rig.render(poses(blink_l=[1.0], blink_r=[1.0])))
    reading = FaceMeter().read(closed, static=True)
    assert reading.found.all()
    shut = torch.from_numpy(closed[0]).permute(2, 0, 1)[None].float() / 255
    looks = poses(blink_l=[1.0], blink_r=[1.0], gaze_x=[1.0], gaze_y=[1.0])
    for image, landmarks, why in ((shaded, marks, "hidden"), (shut, reading.landmarks[0], "closed")):
        still = PhotoRig(image, landmarks)
        assert why in still.eyes_note and "\n" not in still.eyes_note, still.eyes_note
        assert torch.allclose(still.render(looks), image, atol=1e-5)
        assert eyes_note(image, landmarks) == still.eyes_note
    # framing a photo with dark lenses over the eyes says so, once
    picture = framing.picture.copy()
    x0, y0, side = framing.box
    eyes = np.array(Image.fromarray(lenses.numpy().astype(np.uint8) * 255).resize((side, side)), bool)
    top, left = max(0, -y0), max(0, -x0)
    region = eyes[top:top + picture.shape[0] - max(0, y0), left:left + picture.shape[1] - max(0, x0)]
    window = picture[max(0, y0):max(0, y0) + region.shape[0], max(0, x0):max(0, x0) + region.shape[1]]
    window[region] = (13, 15, 20)
    with caplog.at_level(logging.WARNING, logger="actorcast.models.photo.framing"):
        frame_reference(picture)
    warned = [r.getMessage() for r in caplog.records if r.name == "actorcast.models.photo.framing"]
    assert len(warned) == 1 and "without blinks or gaze" in warned[0], warned


def test_latents_map_back_to_parameters():
    p = poses(jaw_open=[0.0, 0.7], lip_spread=[-0.5, 0.4], head_scale=[0.9, 1.1], head_roll=[0.2, -0.1])
    assert torch.allclose(params_of_latent(param_latent(p, 32)), p, atol=1e-6)
    assert params_of_latent(torch.full((1, 32), 5.0))[0, PARAM_INDEX["jaw_open"]] == 1.0   # clamped to the range


def test_bad_landmarks_and_params_are_refused(rig):
    with pytest.raises(InputError, match="params must be"):
        rig.render(torch.zeros(2, N_PARAMS - 1))
    with pytest.raises(InputError, match="landmarks must be"):
        check_landmarks(np.zeros((68, 2)), SIZE)
    marks = np.full((478, 2), np.nan)
    with pytest.raises(InputError, match="finite"):
        check_landmarks(marks, SIZE)
    with pytest.raises(InputError, match="frame the photo first"):
        check_landmarks(np.full((478, 2), 5000.0), SIZE)


def test_a_face_in_profile_is_refused_with_what_to_do(framing):
    marks = framing.crop_landmarks(SIZE)
    check_landmarks(marks, SIZE)                                     # the astronaut faces the camera
    profile = marks.copy()
    profile[MOUTH_CORNERS[1]] = profile[MOUTH_CORNERS[0]] + (0.1 * (profile[CHIN] - profile[FOREHEAD_TOP]))[::-1]
    with pytest.raises(InputError, match="turned too far from the camera") as err:
        check_landmarks(profile, SIZE)
    assert "\n" not in str(err.value) and "use a photo that faces the camera" in str(err.value)


def test_the_decoder_shard_animates_a_photo_with_its_rig(framing):
    """Given the photo's landmarks, a shard with params-trained weights renders the rig's frames; without them,
    the decoder's own."""
    shard = DecoderShard(SHIPPED, size=SIZE)
    assert shard.decoder.latent == "params"
    crop, marks = framing.crop(), framing.crop_landmarks()
    rest = poses(jaw_open=[0.2], head_yaw=[0.2], blink_l=[0.5])[0].numpy()
    shard.open("photo", crop, PhotoFace(marks, rest))
    shard.open("cartoon-path", crop)
    z = param_latent(poses(jaw_open=[0.2, 0.8], head_yaw=[0.2, 0.3], blink_l=[0.5, 0.5]), shard.decoder.config.d_motion)
    frames = shard.decode("photo", 0, z).frames
    expected = PhotoRig(square_tensor(crop, SIZE), marks * (SIZE / crop.shape[0]), rest).render(params_of_latent(z))
    assert np.array_equal(frames, to_uint8(expected))
    assert np.abs(frames[0].astype(int) - to_uint8(square_tensor(crop, SIZE))[0]).max() <= 1   # at rest: the photo
    assert np.abs(frames[1].astype(int) - frames[0]).max() > 80                                 # away from it: moved
    decoded = shard.decode("cartoon-path", 0, z).frames
    assert not np.array_equal(decoded, frames)
    batched = shard.decode_many([DecodeRequest(sid, 0, z) for sid in ("photo", "cartoon-path", "gone")])
    assert np.array_equal(batched[0].value.frames, frames)
    assert batched[1].error is None and batched[2].error is not None


async def _photo_frames(engine, framing, pcm: np.ndarray) -> np.ndarray:
    session = await engine.open_session(framing.crop(), seed=7, live=False, landmarks=framing.crop_landmarks())
    await session.put(pcm)
    session.end()
    frames = [vf.frames async for vf in session.frames()]
    await session.close()
    return np.concatenate(frames)


def test_a_silent_photo_session_is_the_photo_and_speech_moves_its_mouth(framing):
    """Through the engine (shipped weights, 2 shards): a second of silence renders the photo itself, up to the
    idle motion about its rest pose (the free motion's gaze and head drift, drawn in 3-D, move many pixels a little);
    speech opens the mouth. The rest pose is the same every time."""
    import asyncio

    from actorcast.models.media import read_audio

    with Engine(SHIPPED, size=SIZE, shards=2) as engine:
        silent = asyncio.run(_photo_frames(engine, framing, np.zeros(16_000, np.float32)))
        again = asyncio.run(_photo_frames(engine, framing, np.zeros(16_000, np.float32)))
        speech = read_audio(ASSETS / "sample_speech.wav").numpy()[:3 * 16_000]
        spoken = asyncio.run(_photo_frames(engine, framing, speech))
    assert np.array_equal(silent, again)
    photo = to_uint8(square_tensor(framing.crop(), SIZE))[0].astype(int)
    still = np.abs(silent.astype(int) - photo).mean(axis=(1, 2, 3))        # per frame, 8-bit levels
    offset = np.abs(np.median(silent, axis=0) - photo).mean()             # 8-bit levels
    # drawn from its rest pose: no offset beyond the idle's own gaze and head drift (the turn drawn at YAW_GAIN),
    # which in a pause moves about as much as the data's (1.6 levels for this seed)
    assert offset < 2.0, offset
    assert still.mean() < 3.5, still                                       # only small motion about it (2.8)
    # speech opens the mouth, silence does not (the idle head motion moves the whole face in both, so the mouth is
    # read by the meter rather than by pixel differences)
    meter = FaceMeter()
    spread = [np.nanpercentile(r.mouth_open, 95) - np.nanpercentile(r.mouth_open, 5)
              for r in (meter.read(spoken), meter.read(silent))]
    assert spread[0] > 0.04 and spread[0] > 3 * spread[1], spread


_LUMA = torch.tensor([0.299, 0.587, 0.114])


def _middle_column(frame: torch.Tensor, x: float, top: float, bottom: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Luminance and red/green ratio of a frame (3, R, R) down the 5 columns around x, rows top..bottom (inclusive):
    (n,) each, averaged across the columns."""
    x, rows = int(round(x)), slice(int(np.floor(top)), int(np.ceil(bottom)) + 1)
    column = frame[:, rows, x - 2:x + 3].mean(2)                               # (3, n)
    return (column * _LUMA[:, None]).sum(0), column[0] / column[1].clamp(min=1e-3)


def test_teeth_appear_only_inside_the_opened_mouth(framing, rig):
    """jaw_open 0 renders the photo; with the jaw open (and the lips spread or narrowed) every pixel that changed
    lies in the mouth and jaw region (from a quarter of a face height over the lips to a third under the chin,
    within a tenth of a face height of the face's sides), and the teeth the photo shows stay whole with the upper
    lip: down the mouth's middle column, the bright band from the upper lip to the dark inside holds as much
    brightness over the lips' as the photo's teeth do (a seam through the teeth would drop their lower half with
    the jaw; a lip rise that squashed them would thin them)."""
    marks = framing.crop_landmarks(SIZE)
    height = float(np.linalg.norm(marks[CHIN] - marks[FOREHEAD_TOP]))
    assert torch.allclose(rig.render(poses(jaw_open=[0.0]))[0], rig.image[0], atol=1e-5)
    jaw, spread = np.meshgrid([0.3, 0.6, 1.0], [-0.5, 0.0, 0.5])
    frames = rig.render(poses(jaw_open=jaw.ravel().tolist(), lip_spread=spread.ravel().tolist()))
    changed = ((frames - rig.image).abs().amax(1) > 1 / 255).any(0).numpy()
    ys, xs = np.nonzero(changed)
    lips_top = marks[[0, 13, *MOUTH_CORNERS], 1].min()
    assert len(ys) > 500
    assert ys.min() >= lips_top - 0.25 * height and ys.max() <= marks[CHIN][1] + 0.33 * height, (ys.min(), ys.max())
    assert xs.min() >= marks[234][0] - 0.1 * height and xs.max() <= marks[454][0] + 0.1 * height

    def teeth(frame: torch.Tensor, end: int | None = None) -> float:
        """Brightness over the lips' (luminance 0.75) summed down the run from the upper lip's reddest row to the
        first dark one (or the `end`th row)."""
        lum, _ = _middle_column(frame, marks[13][0], marks[0][1] - 2, marks[0][1] + 0.3 * height)
        run = lum[int(lum[:6].argmin()):end]
        dark = torch.nonzero(run < 0.5)
        run = run[:int(dark[0])] if len(dark) else run
        return float((run - 0.75).clamp(min=0).sum())

    photo = teeth(rig.image[0], int(marks[14][1] - marks[0][1]) + 4)     # down to the photo's lower lip
    assert photo > 0.3, photo                                             # the astronaut's lips show her teeth
    for frame in frames:
        assert teeth(frame) > 0.85 * photo, (teeth(frame), photo)


def test_the_open_mouth_shows_both_teeth_rows_and_a_tongue_before_a_darker_throat(rig):
    """Down the middle column of the open mouth, between the inner lip points (13, 14) that the meter reads on the
    frame: a bright, nearly grey band in the top quarter (upper teeth) and another in the bottom quarter (lower
    teeth); between them a darker, redder inside: the throat, near black, and in front of it, lower down, the
    tongue, a red clearly brighter than the throat."""
    frames = rig.render(poses(jaw_open=[0.6, 1.0, 1.0, 1.0], lip_spread=[0.0, 0.0, 0.5, -0.5]))
    reading = FaceMeter().read(to_uint8(frames), static=True)
    assert reading.found.all()
    for frame, marks in zip(frames, reading.landmarks):
        lum, red = _middle_column(frame, marks[13][0], marks[13][1] - 1, marks[14][1] + 1)
        n = len(lum)
        quarter = max(2, n // 4)
        upper, lower = int(lum[:quarter].argmax()), n - quarter + int(lum[-quarter:].argmax())
        assert lum[upper] > 0.75 and red[upper] < 1.25, (lum.tolist(), red.tolist())
        assert lum[lower] > 0.65 and red[lower] < 1.25, (lum.tolist(), red.tolist())
        inside = slice(upper + 1, lower)
        deepest = upper + 1 + int(lum[inside].argmin())
        assert lum[deepest] < 0.2 and red[deepest] > 2.0, (lum.tolist(), red.tolist())
        front = slice(deepest + 1, lower)                                   # under the throat, over the lower teeth
        tongue = (lum[front] > 3 * lum[deepest]) & (lum[front] < 0.7 * lum[lower]) & (red[front] > 1.6)
        assert tongue.any(), (lum.tolist(), red.tolist())


def test_the_mouth_is_the_same_for_the_same_parameters(rig):
    """Nothing flickers: the frames are a function of the parameters alone (twice, alone or in a batch), and a
    slow opening changes the mouth a little each frame, never in a jump."""
    ramp = poses(jaw_open=np.linspace(0.5, 0.7, 11).tolist(), lip_spread=np.linspace(-0.3, 0.3, 11).tolist())
    frames = rig.render(ramp)
    assert torch.equal(frames, rig.render(ramp))
    assert torch.equal(frames[4:5], rig.render(ramp[4:5]))
    steps = (frames[1:] - frames[:-1]).abs().mean((1, 2, 3)) * 255           # 8-bit levels per step
    assert steps.amax() < 2 * steps.median() + 0.05, steps


def test_the_lips_thin_as_they_spread(rig):
    """lip_spread 1 widens the mouth and thins the lips: the meter's upper plus lower lip thickness down the middle
    (outer border 0 to inner edge 13, inner edge 14 to outer border 17) falls by over a tenth; narrowed lips
    (lip_spread -0.5) are no thinner than at rest."""
    reading = FaceMeter().read(to_uint8(rig.render(poses(lip_spread=[0.0, 1.0, -0.5]))), static=True)
    assert reading.found.all()
    marks = reading.landmarks
    thickness = (marks[:, 13, 1] - marks[:, 0, 1]) + (marks[:, 17, 1] - marks[:, 14, 1])
    width = marks[:, MOUTH_CORNERS[1], 0] - marks[:, MOUTH_CORNERS[0], 0]
    assert width[1] > width[0] + 2, width
    assert thickness[1] < 0.9 * thickness[0] and thickness[2] >= thickness[0] - 0.1, thickness
