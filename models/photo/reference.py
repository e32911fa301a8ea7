"""Reference portraits: a synthetic identity by seed, or a picture (decoded upright, checked; framed by framing.py)."""

import warnings
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np
import torch
import torch.nn.functional as F

from actorcast.models.data.face import render
from actorcast.models.data.face_identity import sample_identities
from actorcast.models.data.images import square_image
from actorcast.models.data.params import neutral_params
from actorcast.models.data.seeds import check_seed
from actorcast.models.errors import InputError, TooLargeError

MAX_PIXELS = 40_000_000  # larger images are rejected before decoding (decompression bombs)
MIN_SIDE = 32


def synthetic_portrait(seed: int, size: int) -> np.ndarray:
    """The neutral portrait (size, size, 3) uint8 of synthetic identity `seed`."""
    check_seed(seed, f"identity seed {seed}", InputError)
    frame = render(sample_identities([seed]), neutral_params(1), size)  # (1, 3, size, size) in [0, 1]
    return to_uint8(frame)[0]


def to_uint8(frames: torch.Tensor, size: int | None = None) -> np.ndarray:
    """(B, 3, H, W) floats in [0, 1] -> (B, H, W, 3) uint8, resized to (size, size) if given (bilinear, antialiased).

    The resize works on the uint8 pixels in channels-last order, torch's vectorised path, which is several times
    faster than the same resize in floats (models/data/images.py) and within 1 level of it."""
    pixels = (frames.clamp(0, 1) * 255).round().to(torch.uint8)
    if size is not None and tuple(pixels.shape[-2:]) != (size, size):
        pixels = F.interpolate(pixels.contiguous(memory_format=torch.channels_last), size=(size, size),
                               mode="bilinear", align_corners=False, antialias=True)
    return pixels.permute(0, 2, 3, 1).contiguous().numpy()


def load_image(path: Path | str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode an image file (png, jpeg, webp, bmp, ...) to (H, W, 3) uint8; InputError for non-images and bombs."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image {path} does not exist or is not a file: check the path")
    return decode_image(str(path), str(path), max_pixels)


def decode_image(source: str | BinaryIO, what: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode a still picture (a path or a file object of png, jpeg, webp, ...) to upright (H, W, 3) uint8 RGB;
    InputError naming `what` for non-images, videos and corrupt files, TooLargeError for pictures over
    `max_pixels` (whatever their encoding)."""
    try:
        container = av.open(source)
    except (av.error.FFmpegError, ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{what} is not an image PyAV can read ({e.__class__.__name__}): give a png or jpeg") from None
    with container:
        if not container.streams.video:
            raise InputError(f"{what} holds no image: give a png or jpeg portrait")
        ctx = container.streams.video[0].codec_context
        if ctx is None:  # a format PyAV demuxes but cannot decode (svg without librsvg, ...)
            raise InputError(f"{what} is a {container.format.name} picture, which PyAV cannot decode: convert it "
                             "to png or jpeg")
        width, height = int(ctx.width or 0), int(ctx.height or 0)
        size, pixels = f"{width}x{height} = {width * height / 1e6:.0f} Mpx", width * height
        if not pixels:  # ffmpeg leaves the size unset for a picture beyond its own limit (~268 Mpx)
            size, pixels = header_size(source)
        if pixels > max_pixels:  # from the header, before anything is decoded
            raise TooLargeError(f"{what} is {size}, too large: the limit is {max_pixels / 1e6:.0f} Mpx; downscale "
                                "the portrait first")
        try:
            frames = container.decode(video=0)
            frame = next(frames, None)
            moving = frame is not None and next(frames, None) is not None
        except av.error.FFmpegError as e:
            raise InputError(f"{what} is a corrupt image ({e}): re-export it as png or jpeg") from None
    if frame is None:
        raise InputError(f"{what} holds no decodable image: give a png or jpeg portrait")
    if moving:
        raise InputError(f"{what} is a video or an animation, not a still picture: give a png or jpeg portrait")
    if frame.width * frame.height > max_pixels:
        raise TooLargeError(f"{what} decodes to {frame.width}x{frame.height}, too large: the limit is "
                            f"{max_pixels / 1e6:.0f} Mpx; downscale the portrait first")
    try:
        picture = upright_rgb(frame)
    except (av.error.FFmpegError, ValueError) as e:  # a pixel format with no conversion to RGB
        raise InputError(f"{what} has pixels PyAV cannot convert to RGB ({frame.format.name}: {e}): re-export it "
                         "as an 8-bit png or jpeg") from None
    return check_portrait(picture, what)


def header_size(source: str | BinaryIO) -> tuple[str, float]:
    """A picture's size read from its header by Pillow, without decoding it: ("WxH = N Mpx", pixels), or
    ("of unknown size", 0) when Pillow cannot read it. A file object is left where it was (PyAV reads on)."""
    try:
        from PIL import Image
    except ImportError:
        return "of unknown size", 0
    at = None if isinstance(source, str) else source.tell()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the caller judges the size
            with Image.open(source) as picture:
                width, height = picture.size
        return f"{width}x{height} = {width * height / 1e6:.0f} Mpx", width * height
    except Image.DecompressionBombError:  # Pillow refuses to open over twice its own limit
        limit = 2 * Image.MAX_IMAGE_PIXELS
        return f"over {limit / 1e6:.0f} Mpx", limit + 1
    except Exception:  # not a format Pillow knows: the decode that follows says what is wrong
        return "of unknown size", 0
    finally:
        if at is not None:
            source.seek(at)


def upright_rgb(frame: av.VideoFrame) -> np.ndarray:
    """A decoded picture as (H, W, 3) uint8 RGB, the way viewers show it: grey, CMYK, palette and YUV are
    converted; transparency is laid over white (a cut-out portrait on a white background); the EXIF orientation
    (PyAV's `rotation`, degrees counter-clockwise) is applied. Mirrored EXIF orientations are shown unmirrored."""
    rgba = frame.to_ndarray(format="rgba")
    alpha = rgba[..., 3:].astype(np.uint16)
    if (alpha < 255).any():
        rgb = ((rgba[..., :3] * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)
    else:
        rgb = rgba[..., :3]
    turns = round((frame.rotation or 0) / 90) % 4
    return np.ascontiguousarray(np.rot90(rgb, turns) if turns else rgb)


def check_portrait(image: np.ndarray, what: str = "reference") -> np.ndarray:
    """Validate an (H, W, 3) uint8 array; returns it."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"{what} must be an (H, W, 3) uint8 RGB image, got "
                         f"{getattr(image, 'dtype', type(image).__name__)} {getattr(image, 'shape', '')}")
    if min(image.shape[:2]) < MIN_SIDE:
        raise InputError(f"{what} is {image.shape[1]}x{image.shape[0]}; give a portrait of at least {MIN_SIDE}x{MIN_SIDE}")
    if image.shape[0] * image.shape[1] > MAX_PIXELS:
        raise TooLargeError(f"{what} has {image.shape[0] * image.shape[1] / 1e6:.0f} Mpx, too large: the limit is "
                            f"{MAX_PIXELS / 1e6:.0f} Mpx; downscale it")
    return image


def square_tensor(image: np.ndarray, size: int) -> torch.Tensor:
    """Centre-crop (H, W, 3) uint8 to a square and resize (antialiased) -> (1, 3, size, size) float in [0, 1]."""
    return square_image(check_portrait(image), size)
