"""Set-up shared by the photo rig's tests (test_photo_rig.py, test_photo_rig_pose.py): the astronaut photo's
framing, a rig of it, and rows of motion parameters."""

from functools import lru_cache
from pathlib import Path

import torch

from actorcast.models.data.params import PARAM_INDEX, neutral_params
from actorcast.models.photo.framing import Framing, frame_reference
from actorcast.models.photo.reference import load_image, square_tensor
from actorcast.models.photo.rig import PhotoRig

ASTRONAUT = Path(__file__).parent / "data" / "astronaut.jpg"
SIZE = 256


@lru_cache(maxsize=1)
def astronaut_framing() -> Framing:
    """The astronaut photo framed as `render --image` frames it (MediaPipe runs once per test session)."""
    return frame_reference(load_image(ASTRONAUT))


def astronaut_rig(framing: Framing) -> PhotoRig:
    """A rig of the framed astronaut at SIZE², driven by its own landmarks."""
    return PhotoRig(square_tensor(framing.crop(), SIZE), framing.crop_landmarks(SIZE))


def poses(**columns) -> torch.Tensor:
    """Neutral rows, one per value of the given parameters' lists (all lists the same length)."""
    n = len(next(iter(columns.values())))
    p = neutral_params(n)
    for name, values in columns.items():
        p[:, PARAM_INDEX[name]] = torch.tensor(values, dtype=torch.float32)
    return p
