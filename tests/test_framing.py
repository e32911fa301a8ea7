"""Face framing and paste-back on real photos (MediaPipe in .venv-meter, the real worker) and built-in identities.

Photos: tests/data/astronaut.jpg (scikit-image's data.astronaut(), NASA, public domain, re-encoded as JPEG q90);
scikit-image's data.lfw_subset() and insightface's bundled t1.jpg (six faces) come from the `dev` extra.
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from actors.framing import (EYE_LINE, FACE_HEIGHT, FOREHEAD, MIN_FACE, fit_output, frame_face, frame_reference,
                            resize)
from actors.paste import PasteBack
from actors.reference import load_image, synthetic_portrait
from models.errors import InputError

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
    assert f.n_faces == 1 and f.index == 1 and f.note is None
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
    top_row = f.crop()[0]
    assert (top_row == astronaut[0, x0:x0 + side]).all()        # ... with the edge row's own colours


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
    assert f.note == (f"6 faces found, numbered left to right: animating face {f.index} (the largest); "
                      "--face N picks another")
    first, last = frame_reference(group, face=1), frame_reference(group, face=6)
    assert first.face.eyes[0] < f.face.eyes[0] < last.face.eyes[0]   # numbered left to right
    assert first.note.startswith("6 faces found") and "(the largest)" not in first.note
    with pytest.raises(InputError, match=r"^--face 7: the portrait has 6 faces \(numbered 1-6 from left to right\)$"):
        frame_reference(group, face=7)


def test_no_face_says_so():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    with pytest.raises(InputError, match="^no face found in the portrait: "):
        frame_reference(noise)


def test_tiny_face_says_how_big_it_must_be():
    with pytest.raises(InputError, match=rf"px from forehead to chin .*it must be at least {MIN_FACE} px"):
        frame_reference(tiny_faces())


def test_face_without_photo_is_refused():
    with pytest.raises(InputError, match="--face 2 picks a face in a photo: give --image too"):
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


def test_paste_back_of_a_large_photo_is_scaled_to_1080p(astronaut):
    big = resize(astronaut[None], 2400, 2400)[0]                 # 5.8 Mpx
    f = frame_reference(big)
    assert f.picture.shape == (1080, 1080, 3)
    paste = PasteBack(f)
    out = paste.composite(f.crop(256)[None])
    assert out.shape == (1, 1080, 1080, 3)
    outside = paste.mask() == 0
    assert (out[0][outside] == f.picture[outside]).all()
