"""Face framing and paste-back on real photos (MediaPipe in .venv-meter, the real worker) and built-in identities.

Photos: tests/data/astronaut.jpg (scikit-image's data.astronaut(), NASA, public domain, re-encoded as JPEG q90);
scikit-image's data.lfw_subset() and insightface's bundled t1.jpg (six faces) come from the `dev` extra.
"""

import dataclasses
import importlib.util
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from actorcast.models.errors import InputError
from actorcast.models.mediapipe_env import PYTHON_ENV, MediaPipeError
from actorcast.models.photo.framing import (EYE_LINE, FACE_HEIGHT, FOREHEAD, MIN_FACE, fit_output, frame_face,
                                            frame_reference, resize)
from actorcast.models.photo.paste import PasteBack
from actorcast.models.photo.reference import load_image, synthetic_portrait
from actorcast.models.training.meter import MeterError

DATA = Path(__file__).parent / "data"
ASTRONAUT = DATA / "astronaut.jpg"


def t1_path() -> Path:
    """insightface's sample group photo, found without importing insightface (that would load onnxruntime)."""
    spec = importlib.util.find_spec("insightface")
    assert spec is not None, "insightface (the dev extra) is needed for its bundled t1.jpg: pip install -e '.[dev]'"
    return Path(spec.submodule_search_locations[0]) / "data" / "images" / "t1.jpg"


def tiny_faces() -> np.ndarray:
    """A 256² grey picture holding 16 LFW faces at 50 px (scikit-image's lfw_subset, 25 px, doubled)."""
    from skimage import data

    faces = (data.lfw_subset()[:16] * 255).round().astype(np.uint8)        # (16, 25, 25) grey
    faces = faces.repeat(2, axis=1).repeat(2, axis=2)                       # (16, 50, 50)
    grid = np.full((256, 256), 128, np.uint8)
    for i, face in enumerate(faces):
        y, x = (i // 4) * 64 + 7, (i % 4) * 64 + 7
        grid[y:y + 50, x:x + 50] = face
    return np.repeat(grid[..., None], 3, axis=2)


@pytest.fixture(scope="module")
def astronaut():
    return load_image(ASTRONAUT)


@pytest.fixture(scope="module")
def astronaut_framing(astronaut):
    return frame_reference(astronaut)


@pytest.fixture(scope="module")
def group():
    return load_image(t1_path())


def ratios(framing):
    """(face height, eye line, forehead top, eye midpoint x) as fractions of the square's side."""
    x0, y0, side = framing.box
    face = framing.face
    return (face.height / side, (face.eyes[1] - y0) / side, (face.landmarks[10, 1] - y0) / side,
            (face.eyes[0] - x0) / side)


def test_astronaut_framed_like_the_builtin_identities(astronaut, astronaut_framing):
    f = astronaut_framing
    assert f.n_faces == 1 and f.index == 1 and f.note() is None
    assert f.picture.shape == astronaut.shape                   # 512² fits 1080p: not scaled
    height, eyes, forehead, centre = ratios(f)
    assert height == pytest.approx(FACE_HEIGHT, abs=0.01)
    assert eyes == pytest.approx(EYE_LINE, abs=0.01)
    assert centre == pytest.approx(0.5, abs=0.01)
    assert forehead == pytest.approx(FOREHEAD, abs=0.04)      # the margin above the head follows
    # her face: eyes at about (225, 103) in the 512² photo (detector box x 176-277, y 75-176), 108 px tall
    assert f.face.eyes == pytest.approx([225, 103], abs=6)
    assert f.face.height == pytest.approx(108, abs=10)
    x0, y0, side = f.box
    assert y0 < 0 and f.crop().shape == (side, side, 3)          # the head is near the top: padded above
    # ... continuing the edge row's colours, blurred outwards: no stripes (a copied edge row draws vertical ones)
    crop, edge = f.crop().astype(int), astronaut[0, x0:x0 + side].astype(int)
    band = crop[:-y0]
    assert np.array_equal(crop[-y0:], astronaut[:side + y0, x0:x0 + side])            # the picture itself below
    assert np.abs(band.mean((0, 1)) - edge.mean(0)).max() < 2                         # the edge's colours
    assert np.abs(np.diff(band, axis=1)).mean() < 0.3 * np.abs(np.diff(edge, axis=0)).mean()   # smooth across


def test_box_is_stable_across_calls(astronaut, astronaut_framing):
    again = frame_reference(astronaut)
    assert again.box == astronaut_framing.box
    assert np.array_equal(again.crop(256), astronaut_framing.crop(256))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_builtin_identity_framing_is_the_whole_picture(seed):
    """The built-in identities define the framing: framing one finds (about) its whole picture."""
    picture = synthetic_portrait(seed, 256)
    f = frame_face(picture)
    x0, y0, side = f.box
    assert f.n_faces == 1
    assert abs(x0) <= 0.05 * 256 and abs(y0) <= 0.06 * 256 and 0.9 * 256 <= side <= 1.1 * 256
    builtin = frame_reference(identity_seed=seed)
    assert builtin.box == (0, 0, 256) and np.array_equal(builtin.crop(), picture)


def test_several_faces_largest_by_default_and_face_n(group):
    f = frame_reference(group)
    assert f.n_faces == 6 and f.index == f.largest
    heights = [frame_reference(group, face=i).face.height for i in (1, 2, 6)]
    assert f.face.height >= max(heights)
    assert f.note() == (f"6 faces found, numbered left to right: animating face {f.index} (the largest); "
                      "--face N picks another")
    first, last = frame_reference(group, face=1), frame_reference(group, face=6)
    assert first.face.eyes[0] < f.face.eyes[0] < last.face.eyes[0]   # numbered left to right
    assert first.note().startswith("6 faces found") and "(the largest)" not in first.note()
    with pytest.raises(InputError, match=r"^--face 7: the portrait has 6 faces \(numbered 1-6 from left to right\)$"):
        frame_reference(group, face=7)


def test_a_face_turned_away_is_said_to_turn_less(group, caplog):
    """Framing a face that the photo shows turned away (t1.jpg's face 5, about 50 degrees) says in one line that the
    photo rig turns its head less; a face towards the camera (face 1) says nothing of the kind."""
    said = {}
    for face in (1, 5):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="actorcast.models.photo.framing"):
            frame_reference(group, face=face)
        said[face] = [r.getMessage() for r in caplog.records if "from the camera" in r.getMessage()]
    assert said[1] == [], said[1]
    assert len(said[5]) == 1 and "turned" in said[5][0] and "\n" not in said[5][0], said[5]


def test_no_face_says_so():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    with pytest.raises(InputError, match="^no face found in the portrait: "):
        frame_reference(noise)


def test_tiny_face_says_how_big_it_must_be():
    with pytest.raises(InputError) as err:
        frame_reference(tiny_faces())
    said = str(err.value)   # 16 LFW faces doubled to 50 px: the largest is about 47 px from forehead to chin
    assert said.startswith("the face in the portrait is 4") and said.endswith(
        f" px from forehead to chin; it must be at least {MIN_FACE} px: use a larger or closer photo")


def test_a_failed_face_finder_is_a_mediapipe_error_not_the_meters(monkeypatch, astronaut):
    # The project's own python has no mediapipe: the face worker dies on import.
    monkeypatch.setenv(PYTHON_ENV, sys.executable)
    with pytest.raises(MediaPipeError) as err:
        frame_reference(astronaut)
    msg = str(err.value)
    assert not isinstance(err.value, MeterError)
    assert msg.startswith("face detection failed: ") and "\n" not in msg and "mediapipe" in msg


def test_face_without_photo_is_refused():
    with pytest.raises(InputError, match="--face 2 picks a face in a photo: give a photo too"):
        frame_reference(identity_seed=1, face=2)


def test_fit_output_scales_to_1080p_and_even_sides():
    photo = np.zeros((3001, 2001, 3), np.uint8)                   # portrait 2001 wide, 3001 tall
    assert fit_output(photo).shape == (1620, 1080, 3)             # 2001 wide -> 1080 (1080x1920 upright)
    assert fit_output(np.zeros((701, 333, 3), np.uint8)).shape == (700, 332, 3)   # small: only even sides
    assert fit_output(np.zeros((1200, 2400, 3), np.uint8)).shape == (960, 1920, 3)


@pytest.mark.parametrize("kind", ["grey", "cmyk", "alpha", "exif_rotated"])
def test_picture_modes_load_upright_rgb(tmp_path, astronaut, kind):
    img = Image.open(ASTRONAUT)
    path = tmp_path / ("p.png" if kind == "alpha" else "p.jpg")
    if kind == "grey":
        img.convert("L").save(path, quality=95)
    elif kind == "cmyk":
        img.convert("CMYK").save(path, quality=95)
    elif kind == "alpha":
        rgba = np.array(img.convert("RGBA"))
        rgba[:, :64, 3] = 0                                       # a transparent stripe on the left
        Image.fromarray(rgba).save(path)
    else:  # stored turned a quarter left, with EXIF orientation 6 (viewers turn it right)
        exif = Image.Exif()
        exif[0x0112] = 6
        img.transpose(Image.Transpose.ROTATE_90).save(path, quality=95, exif=exif.tobytes())
    got = load_image(path)
    assert got.shape == astronaut.shape and got.dtype == np.uint8
    diff = np.abs(got.astype(int) - astronaut)
    if kind == "grey":
        assert (got[..., 0] == got[..., 1]).all() and (got[..., 1] == got[..., 2]).all()
    elif kind == "alpha":
        assert (got[:, :64] == 255).all()                       # laid over white
        assert (got[:, 64:] == np.array(img)[:, 64:]).all()      # the rest untouched (a PNG: lossless)
    else:
        assert diff.mean() < 4                                    # the same picture, upright, up to JPEG


def test_paste_back_keeps_outside_mask_identical(astronaut_framing):
    f = astronaut_framing
    paste = PasteBack(f)
    crop = f.crop(256)
    frames = np.stack([255 - crop, crop, np.zeros_like(crop)])   # (3, 256, 256, 3): very unlike the photo
    out = paste.composite(frames)
    mask = paste.mask()
    assert out.shape == (3, *f.picture.shape) and paste.size == (512, 512)
    outside = mask == 0
    assert 0.02 < (~outside).mean() < 0.2                         # a face-sized mask, not all or nothing
    assert (out[:, outside] == f.picture[outside]).all()
    inside = mask == 1                                            # weight 1: the animated pixel itself
    x0, y0, side = f.box
    ys, xs = np.nonzero(inside)
    expected = resize((255 - crop)[None], side, side)[0][ys - y0, xs - x0]
    assert len(ys) > 1000 and np.abs(out[0][ys, xs].astype(int) - expected).max() <= 1
    assert np.abs(out[2][inside].astype(int) - f.picture[inside]).mean() > 50   # the black face is pasted in


def test_a_full_frame_photo_renders_at_its_face_square_unless_told(astronaut_framing):
    """Left open, the frame size of a photo pasted back is the side of its face's square (up to 16 px more, 256 to
    512): the animated face goes back into the photo without being blown up."""
    from actorcast.actors.render_job import RenderJob, frame_size_for

    job = RenderJob("a.wav", "o.mp4", image=str(ASTRONAUT))
    side = astronaut_framing.box[2]                                   # 296 px
    assert frame_size_for(job, astronaut_framing) == 304 and 0 <= 304 - side < 16
    assert frame_size_for(RenderJob("a.wav", "o.mp4", image=str(ASTRONAUT), size=128), astronaut_framing) == 128
    assert frame_size_for(RenderJob("a.wav", "o.mp4", image=str(ASTRONAUT), full_frame=False), astronaut_framing) == 256
    assert frame_size_for(RenderJob("a.wav", "o.mp4", identity=3), None) == 256
    big = dataclasses.replace(astronaut_framing, box=(0, 0, 1000))
    assert frame_size_for(RenderJob("a.wav", "o.mp4", image=str(ASTRONAUT), full_frame=True), big) == 512


def test_paste_back_of_a_large_photo_is_scaled_to_1080p(astronaut):
    big = resize(astronaut[None], 2400, 2400)[0]                 # 5.8 Mpx
    f = frame_reference(big)
    assert f.picture.shape == (1080, 1080, 3)
    paste = PasteBack(f)
    out = paste.composite(f.crop(256)[None])
    assert out.shape == (1, 1080, 1080, 3)
    outside = paste.mask() == 0
    assert (out[0][outside] == f.picture[outside]).all()


# ---- render: framing, paste-back and bad photos through the command line ------------------------------------

def _render_cli(capsys, tmp_path, *args) -> tuple[int, list[str], Path]:
    """(exit code, stderr lines without progress bars, output path) of `actorcast render` on 1 s of speech."""
    from actorcast.cluster.cli import main
    from tests.helpers import write_pcm_wav

    out = tmp_path / "o.mp4"
    wav = write_pcm_wav(tmp_path / "a.wav", 16000)
    try:
        code = main(["render", str(wav), "-o", str(out), "--in-process", "--size", "64", *map(str, args)])
    except SystemExit as e:  # argparse refused an argument
        code = e.code
    err = [line for line in capsys.readouterr().err.splitlines() if line and not line.startswith("render:")]
    return code, err, out


def _save(path: Path, picture: np.ndarray) -> Path:
    Image.fromarray(picture).save(path)
    return path


@pytest.mark.parametrize("case", ["no_face", "tiny_face", "face_out_of_range", "face_without_image",
                                  "full_frame_without_image", "face_zero"])
def test_render_bad_photo_is_one_line_and_leaves_nothing(tmp_path, capsys, case):
    noise = np.random.default_rng(1).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    args, expect = {
        "no_face": (["--image", _save(tmp_path / "noise.png", noise)], "no face found in "),
        "tiny_face": (["--image", _save(tmp_path / "lfw.png", tiny_faces())], f"it must be at least {MIN_FACE} px"),
        "face_out_of_range": (["--image", ASTRONAUT, "--face", "2"], "--face 2: "),
        "face_without_image": (["--face", "2"], "--face 2 picks a face in a photo: give --image too"),
        "full_frame_without_image": (["--full-frame"], "--full-frame pastes the animated face back into a photo"),
        "face_zero": (["--image", ASTRONAUT, "--face", "0"], "expected an integer >= 1"),
    }[case]
    code, err, out = _render_cli(capsys, tmp_path, *args)
    assert code == 2 and len(err) == 1 and expect in err[0] and "Traceback" not in err[0], err
    assert not out.exists() and not list(tmp_path.glob(".o.mp4*"))   # no output, no work folder, no speech file


def _decode(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


@pytest.mark.slow
def test_render_photo_full_frame_and_square(tmp_path, capsys, astronaut_framing):
    """A photo larger than its face's square renders full frame by default: the photo's size, the photo itself
    outside the mask (up to H.264), the animated face inside; --no-full-frame writes the square."""
    code, err, out = _render_cli(capsys, tmp_path, "--image", ASTRONAUT)
    assert code == 0 and not err, err
    frames = _decode(out)                                           # (25, 512, 512, 3)
    picture = astronaut_framing.picture
    assert frames.shape == (25, *picture.shape)
    mask = PasteBack(astronaut_framing).mask()
    far = mask == 0
    diff = np.abs(frames.astype(int) - picture)                     # (25, H, W, 3)
    assert diff[:, far].mean() < 3                                  # the photo, up to H.264 at QP 24
    assert diff[:, mask == 1].mean() > diff[:, far].mean() + 3       # the 64² animated face, upscaled, differs
    code, err, out = _render_cli(capsys, tmp_path, "--image", ASTRONAUT, "--no-full-frame")
    assert code == 0 and _decode(out).shape == (25, 64, 64, 3)


# ---- live: the upload check and the offer frame through the same code ---------------------------------------

class _RecordingEngine:
    """Just enough of Engine for POST /offer to reach open_session: records the reference and stops there."""

    def __init__(self):
        self.references, self.landmarks = [], []

    async def open_session(self, reference=None, identity_seed=None, emotion="neutral", live=True, landmarks=None):
        self.references.append(reference)
        self.landmarks.append(landmarks)
        raise InputError("stop here: the test looks at the reference only")


def _data_url(path: Path) -> str:
    import base64

    return "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode()


@pytest.mark.asyncio
async def test_portrait_upload_is_framed_and_its_errors_come_back(tmp_path, astronaut_framing):
    import base64
    import io

    from aiohttp.test_utils import TestClient, TestServer

    from actorcast.streaming.app import PREVIEW_SIDE, ServerConfig, create_app

    engine = _RecordingEngine()
    async with TestClient(TestServer(create_app(engine, ServerConfig()))) as client:
        resp = await client.post("/portrait", json={"portrait": _data_url(ASTRONAUT)})
        info = await resp.json()
        assert resp.status == 200, info
        assert (info["faces"], info["face"], info["note"]) == (1, 1, None)
        assert tuple(info["box"]) == astronaut_framing.box and (info["width"], info["height"]) == (512, 512)
        preview = Image.open(io.BytesIO(base64.b64decode(info["preview"].split(",", 1)[1])))
        assert preview.size == (PREVIEW_SIDE, PREVIEW_SIDE)
        expected = astronaut_framing.crop(PREVIEW_SIDE).astype(int)
        assert np.abs(np.asarray(preview.convert("RGB")).astype(int) - expected).mean() < 6

        noise = _save(tmp_path / "noise.png", np.random.default_rng(2).integers(0, 256, (200, 300, 3), np.uint8))
        resp = await client.post("/portrait", json={"portrait": _data_url(noise)})
        assert resp.status == 400 and (await resp.json())["error"].startswith("no face found in the portrait")
        resp = await client.post("/portrait", json={"portrait": _data_url(ASTRONAUT), "face": 3})
        assert resp.status == 400 and (await resp.json())["error"].startswith("face 3: the portrait has 1 face")
        resp = await client.post("/portrait", json={"portrait": "data:image/png;base64,AAAA"})
        assert resp.status == 400 and "the portrait" in (await resp.json())["error"]

        # the offer frames the upload the same way: the session gets the framed square, not the whole photo
        sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
        resp = await client.post("/offer", json={"sdp": sdp, "type": "offer", "portrait": _data_url(ASTRONAUT)})
        assert resp.status == 400 and "stop here" in (await resp.json())["error"]
        resp = await client.post("/offer", json={"sdp": sdp, "type": "offer", "identity_seed": 3})
        assert resp.status == 400
    side = astronaut_framing.box[2]
    assert engine.references[0].shape == (side, side, 3)
    assert np.array_equal(engine.references[0], astronaut_framing.crop())
    assert np.array_equal(engine.references[1], synthetic_portrait(3, 256))   # a built-in identity, as framed
    assert np.array_equal(engine.landmarks[0], astronaut_framing.crop_landmarks())  # the photo's rig gets them
    assert engine.landmarks[1] is None


def test_batch_lines_with_bad_face_options_are_their_own_errors(tmp_path):
    import json

    from actorcast.cluster.batch_job import parse_jobs
    from tests.helpers import write_pcm_wav

    write_pcm_wav(tmp_path / "a.wav", 16000)
    lines = [{"audio": "a.wav", "image": str(ASTRONAUT), "face": 1, "full_frame": False, "name": "ok"},
             {"audio": "a.wav", "image": str(ASTRONAUT), "face": 2, "name": "second_face"},
             {"audio": "a.wav", "image": str(ASTRONAUT), "full_frame": "yes", "name": "not_bool"},
             {"audio": "a.wav", "face": 1, "name": "face_of_identity"}]
    (tmp_path / "jobs.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    jobs = {name: (job, error) for name, job, error in parse_jobs(tmp_path / "jobs.jsonl", tmp_path)}
    assert jobs["ok"][1] is None and (jobs["ok"][0].face, jobs["ok"][0].full_frame) == (1, False)
    assert jobs["second_face"][1] == f"line 2: --face 2: {ASTRONAUT} has 1 face (numbered 1-1 from left to right)"
    assert jobs["not_bool"][1] == "line 3: full_frame 'yes' must be true or false"
    assert jobs["face_of_identity"][1] == "line 4: --face 1 picks a face in a photo: give --image too"


@pytest.mark.slow
def test_render_of_a_group_photo_says_which_face(tmp_path, capsys, caplog):
    """The render says which face it animates (a warning: the CLI prints it as a WARNING line)."""
    code, _, out = _render_cli(capsys, tmp_path, "--image", t1_path(), "--no-full-frame")
    assert code == 0 and out.is_file()
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "faces found" in r.getMessage()]
    assert said == [(f"{t1_path()}: 6 faces found, numbered left to right: animating face 3 (the largest); "
                     "--face N picks another")]
