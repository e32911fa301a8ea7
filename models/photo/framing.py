"""Face framing: find the face in a user's photo and cut the square the built-in identities are framed in.

    picture = fit_output(photo)                 # at most 1080p, even sides: the full-frame output's size
    framing = frame_face(picture, face=None)    # MediaPipe in .venv-meter (models/photo/face_worker.py)
    reference = framing.crop()                  # (side, side, 3) uint8, edges blurred outwards past the picture

The target framing was measured on built-in identities 0-23 (models/data/face.py, neutral, 256²) with the
same Face Mesh landmarks this module uses; all ratios are of the square's side:

| measure                                   | landmarks           | median | range         | used as       |
|-------------------------------------------|---------------------|--------|---------------|---------------|
| face height: forehead top to chin         | 10 - 152            | 0.365  | 0.331 - 0.398 | FACE_HEIGHT   |
| eye line: mean of the two eye centres, y  | 33/133, 362/263     | 0.461  | 0.444 - 0.473 | EYE_LINE      |
| eye midpoint, x                           | same                | 0.498  | 0.496 - 0.501 | centred       |
| margin above the forehead top (y of 10)   | 10                  | 0.328  | 0.303 - 0.349 | FOREHEAD      |

Face height and eye line fix the square's side and height; the eye midpoint centres it; the margin above the
head then follows (FOREHEAD is checked by the tests, not imposed). The square is kept as it is where it runs
past the picture (`box` may start below 0): its outside continues the picture's edges, blurred
(`fill_past_edges`), so the face stays where the decoder expects it and the box pastes back exactly (paste.py).
"""

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from actorcast.models.data.images import resize_images
from actorcast.models.errors import InputError
from actorcast.models.mediapipe_env import run_in_mediapipe_env
from actorcast.models.photo.pose import turn_note
from actorcast.models.photo.reference import check_portrait, synthetic_portrait
from actorcast.models.photo.rig import CHIN, FOREHEAD_TOP, check_landmarks, eyes_note

log = logging.getLogger(__name__)
WORKER = Path(__file__).with_name("face_worker.py")
FACE_HEIGHT = 0.365         # forehead top (10) to chin (152) / side, built-in identities
EYE_LINE = 0.461            # eye line from the top / side
FOREHEAD = 0.328            # forehead top (10) from the top / side (follows from the two above)
MIN_FACE = 64               # px, forehead to chin: smaller faces carry too little detail to animate
MAX_OUTPUT = (1920, 1080)   # full-frame output fits this box in either orientation (1080p)
EYE_R, EYE_L = (33, 133), (362, 263)  # subject's right eye (image left), left eye (image right): corners
PAD_SPREAD = 1.0            # px of Gaussian blur per px past the picture's edge: the fill of the square past it


@dataclass(frozen=True)
class Face:
    """One face found in a picture: its detector box and the refined Face Mesh landmarks, in picture pixels."""

    box: tuple[float, float, float, float]   # x0, y0, x1, y1 of the detector
    score: float                             # detector confidence in [0, 1]
    landmarks: np.ndarray                    # (478, 2) float32 (x, y)

    @property
    def height(self) -> float:
        """Forehead top to chin, px."""
        return float(np.linalg.norm(self.landmarks[CHIN] - self.landmarks[FOREHEAD_TOP]))

    @property
    def eyes(self) -> np.ndarray:
        """(x, y) midpoint between the two eye centres, px."""
        return (self.landmarks[list(EYE_R)].mean(0) + self.landmarks[list(EYE_L)].mean(0)) / 2


@dataclass(frozen=True)
class Framing:
    """A square around one face of a picture: the reference is `crop()`, the output pastes back at `box`."""

    picture: np.ndarray                 # (H, W, 3) uint8, the picture the box refers to
    box: tuple[int, int, int]           # x0, y0, side in picture pixels; may reach past the picture
    face: Face | None                   # None for a built-in identity (framed so by construction)
    index: int = 1                      # the face used, 1-based, faces numbered left to right
    n_faces: int = 1
    largest: int = 1                    # the number of the largest face (the default choice)

    def crop(self, size: int | None = None) -> np.ndarray:
        """The (side, side, 3) uint8 square, the picture's edges blurred outwards past them (`fill_past_edges`);
        resized (antialiased) to `size`."""
        x0, y0, side = self.box
        h, w = self.picture.shape[:2]
        inside = self.picture[max(0, y0):min(h, y0 + side), max(0, x0):min(w, x0 + side)]
        pad = ((max(0, -y0), max(0, y0 + side - h)), (max(0, -x0), max(0, x0 + side - w)))
        square = fill_past_edges(inside, pad) if any(map(any, pad)) else inside
        return square if size is None or size == side else resize(square[None], size, size)[0]

    def crop_landmarks(self, size: int | None = None) -> np.ndarray | None:
        """The face's Face Mesh points (478, 2) in the pixels of `crop(size)`; None for a built-in identity."""
        if self.face is None:
            return None
        x0, y0, side = self.box
        scale = 1.0 if size is None else size / side
        return ((self.face.landmarks - np.array([x0, y0], np.float32)) * scale).astype(np.float32)

    def note(self, option: str = "--face N") -> str | None:
        """Which face is animated, when the picture holds several (`option` picks another); None for one."""
        if self.n_faces < 2:
            return None
        which = " (the largest)" if self.index == self.largest else ""
        return (f"{self.n_faces} faces found, numbered left to right: animating face {self.index}{which}; "
                f"{option} picks another")


def fill_past_edges(inside: np.ndarray, pad: tuple[tuple[int, int], tuple[int, int]]) -> np.ndarray:
    """The picture part `inside` (h, w, 3) uint8 grown by `pad` ((top, bottom), (left, right)) px: each row (or
    column) past an edge is the picture's edge line blurred along itself, the more the further out it lies (a
    Gaussian of PAD_SPREAD px per px past the edge). A copied edge line would draw stripes across the square (any
    picture with a head near its top has them), a mirror would repeat the head above itself; a spreading blur
    continues the edge's colours smoothly. Rows first, then columns, so a corner continues the rows' fill."""
    (top, bottom), (left, right) = pad
    x = inside.astype(np.float32)
    rows = [x]
    if top:
        rows.insert(0, _spread(x[0], top)[::-1])
    if bottom:
        rows.append(_spread(x[-1], bottom))
    x = np.concatenate(rows, axis=0)
    columns = [x]
    if left:
        columns.insert(0, _spread(x[:, 0], left)[::-1].transpose(1, 0, 2))
    if right:
        columns.append(_spread(x[:, -1], right).transpose(1, 0, 2))
    return np.clip(np.round(np.concatenate(columns, axis=1)), 0, 255).astype(np.uint8)


def _spread(line: np.ndarray, n: int) -> np.ndarray:
    """An edge line (L, 3) float -> (n, L, 3): line i is it blurred with a Gaussian of PAD_SPREAD * (i + 1) px,
    interpolated between blurs whose widths double (1, 2, 4 ... px; each mirrored at the line's ends)."""
    x = torch.from_numpy(np.ascontiguousarray(line.T))[None]                     # (1, 3, L)
    levels, sigma = [x], 1.0
    while sigma < PAD_SPREAD * n * 2 and sigma < 2 * x.shape[-1]:
        r = min(int(3 * sigma), x.shape[-1] - 1)
        taps = torch.arange(-r, r + 1, dtype=torch.float32)
        kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
        kernel = (kernel / kernel.sum()).view(1, 1, -1).expand(3, 1, -1)
        levels.append(F.conv1d(F.pad(x, (r, r), mode="reflect"), kernel, groups=3))
        sigma *= 2
    stack = torch.cat(levels)                                                    # (K, 3, L): sigma 0, 1, 2, 4 ...
    # level of sigma s: 1 + log2(s) (level 0 is the line itself, for s < 1 blended towards it)
    s = PAD_SPREAD * torch.arange(1, n + 1, dtype=torch.float32)
    at = torch.where(s < 1, s, 1 + torch.log2(s)).clamp(max=len(levels) - 1)  # n >= 1: two levels at least
    lo = at.floor().long().clamp(max=len(levels) - 2)
    w = (at - lo)[:, None, None]
    return (stack[lo] + w * (stack[lo + 1] - stack[lo])).permute(0, 2, 1).numpy()   # (n, L, 3)


def resize(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, height, width, 3) uint8, bilinear and antialiased (a clean shrink)."""
    if frames.shape[1:3] == (height, width):
        return frames
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).to(torch.float32)  # (N, 3, H, W)
    x = resize_images(x, height, width)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def fit_output(image: np.ndarray) -> np.ndarray:
    """The picture at the full-frame output's size: scaled down to fit 1920x1080 (1080x1920 if portrait), and
    cut to even sides (H.264's 4:2:0 chroma needs them) by dropping the last row or column."""
    h, w = image.shape[:2]
    long_side, short_side = MAX_OUTPUT
    scale = min(1.0, long_side / max(h, w), short_side / min(h, w))
    if scale < 1.0:
        image = resize(image[None], max(2, round(h * scale)), max(2, round(w * scale)))[0]
        h, w = image.shape[:2]
    return image[:h - h % 2, :w - w % 2]


def find_faces(picture: np.ndarray) -> list[Face]:
    """Every face MediaPipe finds and fits landmarks to, left to right (by eye midpoint)."""
    with tempfile.TemporaryDirectory(prefix="actorcast-faces-") as tmp:
        path, out = str(Path(tmp) / "picture.npy"), str(Path(tmp) / "faces.npz")
        np.save(path, np.ascontiguousarray(picture))
        run_in_mediapipe_env(WORKER, [out, path], "face detection")
        with np.load(out) as d:
            boxes, scores, marks = d["boxes"], d["scores"], d["landmarks"]
    faces = [Face(tuple(float(v) for v in b), float(s), m) for b, s, m in zip(boxes, scores, marks)
             if not np.isnan(m).any()]  # a detector box the mesh does not confirm is not a face
    return sorted(faces, key=lambda f: float(f.eyes[0]))


def square_for(face: Face) -> tuple[int, int, int]:
    """The (x0, y0, side) square that frames `face` as the built-in identities are framed."""
    side = max(1, round(face.height / FACE_HEIGHT))
    ex, ey = face.eyes
    return round(ex - side / 2), round(ey - EYE_LINE * side), side


def frame_face(picture: np.ndarray, face: int | None = None, what: str = "the portrait",
               option: str = "--face") -> Framing:
    """Frame a face of `picture` (H, W, 3) uint8: the largest, or face number `face` (1-based, left to right);
    `option` is what the user sets `face` with, as messages name it.

    InputError (one line, what to do) when there is no face, `face` is out of range, or the face is smaller
    than MIN_FACE pixels from forehead to chin. A warning line, once each, for what the photo rig will leave out
    of this face (models/photo/eyes.py `eyes_note`, models/photo/pose.py `turn_note`)."""
    faces = find_faces(picture)
    if not faces:
        raise InputError(f"no face found in {what}: give a photo with a face seen from the front, at least "
                         f"{MIN_FACE} px from forehead to chin")
    if face is not None and not 1 <= face <= len(faces):
        raise InputError(f"{option} {face}: {what} has {len(faces)} face{'s' if len(faces) > 1 else ''} "
                         f"(numbered 1-{len(faces)} from left to right)")
    biggest = max(range(len(faces)), key=lambda i: faces[i].height) + 1
    index = biggest if face is None else face
    chosen = faces[index - 1]
    if chosen.height < MIN_FACE:
        raise InputError(f"the face in {what} is {chosen.height:.0f} px from forehead to chin; it must be at least "
                         f"{MIN_FACE} px: use a larger or closer photo")
    framing = Framing(picture, square_for(chosen), chosen, index, len(faces), biggest)
    check_landmarks(framing.crop_landmarks(), framing.box[2])  # one line for a face in profile, before any render
    # what the photo rig leaves out for this face, each in one line, once: blinks and gaze for shut or hidden eyes,
    # some of the head's turn for a face already turned away
    marks = framing.crop_landmarks()
    for note in (eyes_note(torch.from_numpy(framing.crop()).permute(2, 0, 1)[None].float() / 255, marks),
                 turn_note(marks)):
        if note:
            log.warning(note)
    return framing


def frame_reference(image: np.ndarray | None = None, identity_seed: int | None = None, face: int | None = None,
                    size: int = 256, what: str = "the portrait", option: str = "--face") -> Framing:
    """The reference of a render or call, framed: a photo's face (fit_output, then frame_face), or built-in
    identity `identity_seed` at `size`², which is framed so by construction (its box is the whole picture, and
    the tests check that framing it finds about that box)."""
    if image is None:
        if face is not None:
            raise InputError(f"{option} {face} picks a face in a photo: give a photo too")
        picture = synthetic_portrait(identity_seed or 0, size)
        return Framing(picture, (0, 0, size), None)
    picture = fit_output(check_portrait(image, what))
    if picture.shape[0] < image.shape[0] - 1:  # scaled, not only cut to even sides: sizes are the picture's
        what = f"{what} (scaled to {picture.shape[1]}x{picture.shape[0]}, 1080p)"
    return frame_face(picture, face, what, option)
