"""Who an agent framework's avatar is and what it runs on, checked before anything loads.

Pipecat's ActorcastVideoService (streaming/pipecat.py) and LiveKit's ActorcastVideoGenerator
(streaming/livekit_video.py) take the same options: a built-in identity or a portrait, an emotion and a seed
(`face_of`), and an Engine given to share or built from weights, preset and size (`engine_args`, `build_engine`).
"""

import asyncio
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from actorcast.models.data.params import emotion_index
from actorcast.models.errors import ConfigError
from actorcast.models.photo.framing import Framing
from actorcast.models.photo.reference import check_portrait, load_image
from actorcast.streaming.app import LIVE_STAGE_THREADS


@dataclass(frozen=True)
class AvatarFace:
    """Who the avatar is: a built-in identity or a portrait (with its landmarks when framed), and how it feels."""

    identity: int | None
    portrait: np.ndarray | None  # (H, W, 3) uint8
    landmarks: np.ndarray | None  # (478, 2) in the portrait's pixels, from models.photo.framing (the photo rig)
    emotion: str
    seed: int


def face_of(identity: int | None = None, portrait: "Framing | np.ndarray | str | Path | None" = None,
            emotion: str = "neutral", seed: int = 0, landmarks: np.ndarray | None = None) -> AvatarFace:
    """Check the avatar's options (ConfigError or InputError saying what to give) before anything loads.

    portrait: a photo framed by models.photo.framing.frame_reference (animated by its own rig, models/photo/rig.py), or
    an (H, W, 3) uint8 picture or an image file, used as it is (with `landmarks`, in its pixels, when it was framed
    before: the rig animates it)."""
    emotion_index(emotion)  # ConfigError naming the emotions
    if identity is not None and portrait is not None:
        raise ConfigError("give an identity or a portrait, not both")
    if isinstance(portrait, Framing):
        portrait, landmarks = portrait.crop(), portrait.crop_landmarks()
    if isinstance(portrait, (str, Path)):
        portrait = load_image(portrait)
    portrait = None if portrait is None else check_portrait(portrait, "the portrait")
    return AvatarFace(identity, portrait, landmarks, emotion, seed)


def engine_args(weights: str | Path | None = None, preset: str = "tiny", use_ray: bool = False,
                address: str | None = None, shards: int = 1, size: int = 256) -> dict:
    """The Engine an avatar builds when none is given: in-process with the live call's stage threads, or on Ray
    (use_ray, address or shards > 1); the generator at the smallest chunk its weights are trained for, as
    `serve --latency low` runs it (a voice agent's answer waits for its face)."""
    from actorcast.actors.loading import motion_config, resolve_weights

    ray = use_ray or address is not None or shards > 1
    chunk = motion_config(resolve_weights(weights, preset), preset).trained_chunks[0]
    return {"weights": weights, "preset": preset, "shards": shards, "use_ray": ray, "address": address,
            "size": size, "stage_threads": None if ray else LIVE_STAGE_THREADS, "chunk_frames": chunk}


async def build_engine(args: dict):
    """An Engine from engine_args, built off the event loop when in-process."""
    from actorcast.actors.engine import Engine

    # Ray joins from this thread (it installs signal handlers); in-process stages load in a worker thread
    return Engine(**args) if args["use_ray"] else await asyncio.to_thread(Engine, **args)


async def open_face(engine, face: AvatarFace):
    return await engine.open_session(reference=face.portrait, identity_seed=face.identity, emotion=face.emotion,
                                     seed=face.seed, landmarks=face.landmarks)
