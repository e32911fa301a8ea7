"""The pipeline stages as plain classes: AudioEncoderStage -> MotionStage -> DecoderShard xN.

Each stage serves many sessions, keyed by `session_id`, and exchanges the typed messages of actors/messages.py;
docs/ARCHITECTURE.md "Stages and executors" follows them through a call.
They know nothing about Ray or asyncio: the executors (actors/executor.py) run them in a worker thread or as
Ray actors. State a session needs to resume (audio buffers, KV cache, RNG) is exported by `snapshot` and
re-imported by `restore`, as bytes, so it can cross processes and be written to disk.

The motion generator and the decoder shards do their work in list methods (`process_many`, `decode_many`) that
take the requests of several sessions and answer each with its own `Outcome`; the one-item methods (`process`,
`decode`) are the case n = 1 of them, so there is one code path whether a session's calls are batched or not
(actors/batching.py).
"""

import contextlib
import dataclasses
from dataclasses import dataclass
import io
import logging
import os

import numpy as np
import torch

from actorcast.actors.batching import Outcome
from actorcast.actors.loading import load_model, local_weights
from actorcast.actors.messages import AudioChunk, FeatureChunk, MotionChunk, PhotoFace
from actorcast.models.audio import AudioStreamState
from actorcast.models.data.params import emotion_index, neutral_params
from actorcast.models.decoder import IdentityFeatures
from actorcast.models.errors import InputError
from actorcast.models.free_motion import FREE_SLICE, FreeMotionStream
from actorcast.models.photo.reference import square_tensor, to_uint8
from actorcast.models.photo.rig import PhotoRig, params_of_latent
from actorcast.models.presets import get_preset
from actorcast.models.sampling import MotionStream, SamplerConfig, push_many
from actorcast.models.timebase import FPS, SAMPLES_PER_FRAME

log = logging.getLogger(__name__)
REST_SECONDS = 1.0  # of silence, whose median motion is a photo's rest pose (MotionStage.rest_pose)


def _dumps(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _loads(data: bytes):
    # Our own snapshots (written by `snapshot`), never files from elsewhere: full unpickling is needed for the
    # cache object.
    return torch.load(io.BytesIO(data), weights_only=False)


@dataclass(frozen=True)
class MotionRequest:
    """One session's features for the motion generator; `steps` below the session's own degrades (marked)."""

    chunk: FeatureChunk
    steps: int | None = None


@dataclass(frozen=True)
class DecodeRequest:
    """Motion latents z (n, d_motion) of frames first_frame.. of one session, for a decoder shard."""

    session_id: str
    first_frame: int
    z: torch.Tensor


@dataclass(frozen=True)
class DecodedFrames:
    """Frames first_frame.. of one session: (n, size, size, 3) uint8."""

    first_frame: int
    frames: np.ndarray


class _Sessions:
    """Per-session state of a stage, with an error that says what to do for an unknown session."""

    def __init__(self, stage: str):
        self.stage, self.items = stage, {}

    def __getitem__(self, session_id: str):
        try:
            return self.items[session_id]
        except KeyError:
            raise InputError(f"{self.stage} has no session {session_id!r}: open it first") from None


class AudioEncoderStage:
    """AudioChunk (16 kHz PCM) -> FeatureChunk (one d_audio vector per frame), streaming, per session."""

    def __init__(self, weights=None, preset: str = "tiny", device: str = "cpu"):
        with local_weights(weights, preset) as path:
            self.encoder = load_model("audio_encoder", path, preset, device)
        self.lookahead = self.encoder.config.lookahead
        self.sessions = _Sessions("AudioEncoderStage")

    def lookahead_frames(self) -> int:
        """Frames of audio past a frame that its feature hears: the weights' own (AudioConfig.lookahead)."""
        return self.lookahead

    def open(self, session_id: str, first_frame: int = 0) -> np.ndarray:
        """Start a stream; returns the feature of steady silence (d_audio,), used to blank interrupted speech."""
        self.sessions.items[session_id] = {"state": self.encoder.init_state(), "next": first_frame}
        with torch.no_grad():
            silence = self.encoder(torch.zeros(SAMPLES_PER_FRAME * 25))[-1]  # 1 s of zeros, last frame
        return silence.numpy().copy()

    @torch.no_grad()
    def process(self, chunk: AudioChunk) -> FeatureChunk:
        s = self.sessions[chunk.session_id]
        pcm = torch.as_tensor(np.asarray(chunk.pcm, dtype=np.float32)).reshape(1, -1)
        feats, s["state"] = self.encoder.step(pcm, s["state"])
        return self._emit(chunk.session_id, feats[0], chunk.t_wall)

    @torch.no_grad()
    def end(self, session_id: str) -> FeatureChunk:
        """Flush: the last `lookahead` frames, padded with silence like the offline encoder."""
        s = self.sessions[session_id]
        feats, s["state"] = self.encoder.flush(s["state"])
        return self._emit(session_id, feats[0], None)

    def _emit(self, session_id: str, feats: torch.Tensor, t_wall) -> FeatureChunk:
        s = self.sessions[session_id]
        out = FeatureChunk(session_id, s["next"], feats.contiguous(), t_wall)
        s["next"] += feats.shape[0]
        return out

    @torch.no_grad()
    def reset(self, session_id: str) -> None:
        """Forget buffered audio (interrupt) without breaking the time base.

        The fresh stream is pre-rolled with as many zero samples as the old one held but had not turned into
        frames, so the frame count continues exactly; those frames (and every later one) hear silence.
        """
        s = self.sessions[session_id]
        old: AudioStreamState = s["state"]
        emitted = max(0, old.samples_seen // SAMPLES_PER_FRAME - self.lookahead)
        state = self.encoder.init_state()
        _, state = self.encoder.step(torch.zeros(1, old.samples_seen - emitted * SAMPLES_PER_FRAME), state)
        s["state"] = state  # s["next"] is unchanged: no frame index is skipped or repeated

    def snapshot(self, session_id: str) -> bytes:
        return _dumps(self.sessions[session_id])

    def restore(self, session_id: str, data: bytes) -> None:
        self.sessions.items[session_id] = _loads(data)

    def close(self, session_id: str) -> None:
        self.sessions.items.pop(session_id, None)


class MotionStage:
    """FeatureChunk -> MotionChunks of C frames: the diffusion-forcing generator with each session's KV cache."""

    def __init__(self, weights=None, preset: str = "tiny", device: str = "cpu", chunk_frames: int | None = None):
        """chunk_frames: the chunk size the streams run (None: the generator's own); one it was not trained for
        is a ConfigError."""
        with local_weights(weights, preset) as path:
            self.generator = load_model("motion_generator", path, preset, device)
            self.motion_encoder = load_model("motion_encoder", path, preset, device)
        if chunk_frames is not None:
            self.generator.config = self.generator.config.with_chunk(chunk_frames)
        self.default_cache = get_preset(preset).cache
        self.chunk_frames = self.generator.config.chunk_frames
        self.sessions = _Sessions("MotionStage")

    def stream_shape(self) -> tuple[int, tuple[int, ...]]:
        """The chunk size the streams run, and every chunk size the generator is trained for."""
        return self.chunk_frames, self.generator.config.trained_chunks

    @torch.no_grad()
    def open(self, session_id: str, reference: np.ndarray, emotion: str = "neutral", cache_policy: str | None = None,
             seed: int = 0, steps: int | None = None) -> None:
        """Encode the reference's motion z_ref (the prefix token) and start the session's stream and cache."""
        cache = self.default_cache if cache_policy is None else dataclasses.replace(self.default_cache,
                                                                                      policy=cache_policy)
        ref = square_tensor(reference, self.motion_encoder.config.input_size)
        p = next(self.generator.parameters())
        z_ref = self.motion_encoder(ref.to(p.device))  # (1, d_motion)
        steps = steps or self.generator.config.sampler_steps  # the session's full steps; fewer degrade
        stream = MotionStream(self.generator, z_ref, _emotion(emotion, p.device), cache, SamplerConfig(steps, seed=seed))
        self.sessions.items[session_id] = {"stream": stream, "steps": steps, "z_ref": z_ref, "cache": cache,
                                           "seed": seed}

    @torch.no_grad()
    def rest_pose(self, session_id: str, silence: np.ndarray, seconds: float = REST_SECONDS) -> np.ndarray:
        """The session's idle: the median motion parameters (N_PARAMS,) the generator makes for its reference from
        `seconds` of silence features (the audio stage's `open`), neutral, in a stream of its own with the session's
        seed, so the same reference and seed always give the same rest (a resumed render included). A photo's rig
        draws the motion relative to it (models/photo/rig.py). The generator's own motion, without the free
        motion's draws; where a free-motion model draws brows, lids, gaze and head, their rest is the neutral pose
        it draws them about (the generator's reading of a photo there would be a steady offset from it). The
        median, not the mean: a blink in that second must not leave the rest pose half-shut. Only for a decoder trained on
        the parameters."""
        s = self.sessions[session_id]
        p = next(self.generator.parameters())
        stream = MotionStream(self.generator, s["z_ref"], _emotion("neutral", p.device), s["cache"],
                              SamplerConfig(s["steps"], seed=s["seed"]), free_motion=False)
        frames = max(self.chunk_frames, round(seconds * FPS))
        feats = torch.as_tensor(silence, dtype=p.dtype, device=p.device).expand(1, frames, -1)
        z = torch.cat([stream.push(feats), stream.flush()], dim=1)[0]  # (frames, d_motion)
        rest = params_of_latent(z.float().cpu()).median(0).values
        if self.generator.free_motion is not None:  # brows, lids, gaze and head are drawn about the neutral pose
            rest[FREE_SLICE] = neutral_params(1)[0, FREE_SLICE]
        return rest.numpy()

    def set_emotion(self, session_id: str, emotion: str) -> None:
        stream = self.sessions[session_id]["stream"]
        stream.emotion = _emotion(emotion, next(self.generator.parameters()).device)

    def process(self, chunk: FeatureChunk, steps: int | None = None) -> list[MotionChunk]:
        """Every chunk the new features complete; `steps` < the session's steps degrades (marked). The case
        n = 1 of `process_many`."""
        return self.process_many([MotionRequest(chunk, steps)])[0].unwrap()

    def process_many(self, requests: list[MotionRequest]) -> list[Outcome[list[MotionChunk]]]:
        """Several sessions' features at once (continuous batching; actors/batching.py): the chunks they complete
        go through the generator together, each session with its own cache, noise and steps.

        Returns, per request, its list of MotionChunks or the error that request alone raised: one session's bad
        chunk never fails the others."""
        results: list[Outcome[list[MotionChunk]]] = [Outcome()] * len(requests)
        live, sessions = [], set()
        for i, request in enumerate(requests):
            chunk = request.chunk
            try:
                if chunk.session_id in sessions:
                    raise InputError(f"session {chunk.session_id!r} sent two chunks in one batch")
                stream = self.sessions[chunk.session_id]["stream"]
                if chunk.first_frame != stream.frames_done + stream.pending_frames:
                    raise InputError(f"features start at frame {chunk.first_frame}, the stream expects "
                                     f"{stream.frames_done + stream.pending_frames}: chunks lost or reordered")
                sessions.add(chunk.session_id)
                live.append((i, request, stream))
            except Exception as e:  # noqa: BLE001 - returned to the request's caller
                results[i] = Outcome(error=e)
        with contextlib.ExitStack() as stack, torch.no_grad():
            degraded = {i: stack.enter_context(self._steps(r.chunk.session_id, r.steps)) for i, r, _ in live}
            firsts = {i: stream.frames_done for i, _, stream in live}
            try:
                zs = push_many([stream for *_, stream in live],
                               [r.chunk.feats[None].to(torch.float32) for _, r, _ in live])
            except Exception as e:  # noqa: BLE001 - the batch itself failed: every request gets the error
                for i, *_ in live:
                    results[i] = Outcome(error=e)
                return results
        for (i, request, _), z in zip(live, zs):
            chunk = request.chunk
            results[i] = Outcome(self._split(chunk.session_id, firsts[i], z[0], degraded[i], chunk.t_wall))
        return results

    def end(self, session_id: str) -> list[MotionChunk]:
        """Flush: the remaining frames (a last chunk may be shorter than C)."""
        stream = self.sessions[session_id]["stream"]
        first = stream.frames_done
        return self._split(session_id, first, stream.flush()[0], False, None)

    def _split(self, session_id, first, z, degraded, t_wall) -> list[MotionChunk]:
        return [MotionChunk(session_id, first + i, z[i:i + self.chunk_frames].contiguous(), degraded, t_wall)
                for i in range(0, z.shape[0], self.chunk_frames)]

    def _steps(self, session_id: str, steps: int | None):
        return _SamplerSteps(self.sessions[session_id], steps)

    def snapshot(self, session_id: str) -> bytes:
        """Cache, RNG, buffered features and counters of the session's stream (not the model)."""
        s = self.sessions[session_id]
        state = dict(vars(s["stream"]))
        state["model"] = None
        state["generator"] = s["stream"].generator.get_state()
        state["free"] = None if s["stream"].free is None else s["stream"].free.export()
        return _dumps({"stream": state, "steps": s["steps"]})

    def restore(self, session_id: str, data: bytes) -> None:
        saved = _loads(data)
        stream = MotionStream.__new__(MotionStream)
        vars(stream).update(saved["stream"])
        stream.model = self.generator
        stream.generator = torch.Generator().set_state(saved["stream"]["generator"])
        if saved["stream"]["free"] is not None:
            stream.free = FreeMotionStream.restore(self.generator.free_motion, saved["stream"]["free"])
        self.sessions.items[session_id] = {"stream": stream, "steps": saved["steps"]}

    def close(self, session_id: str) -> None:
        self.sessions.items.pop(session_id, None)


class _SamplerSteps:
    """Context manager: run one call with fewer Euler steps (degraded) and put the session's steps back."""

    def __init__(self, session: dict, steps: int | None):
        self.session, self.steps = session, steps

    def __enter__(self) -> bool:
        stream, full = self.session["stream"], self.session["steps"]
        steps = full if self.steps is None else max(1, min(full, self.steps))
        stream.sampler = dataclasses.replace(stream.sampler, steps=steps)
        return steps < full

    def __exit__(self, *exc) -> None:
        stream = self.session["stream"]
        stream.sampler = dataclasses.replace(stream.sampler, steps=self.session["steps"])


def _emotion(name: str, device) -> torch.Tensor:
    return torch.full((1,), emotion_index(name), dtype=torch.long, device=device)


DEFAULT_SIZE = 256  # pixels: the default side of output frames


class DecoderShard:
    """Motion latents -> RGB frames for a slice of each chunk; holds each session's cached identity features."""

    def __init__(self, weights=None, preset: str = "tiny", size: int | None = None, device: str = "cpu"):
        with local_weights(weights, preset) as path:
            self.decoder = load_model("decoder", path, preset, device, resolution=size)
        self.resolution = self.decoder.config.resolution
        # Output frames are resized when their size differs from the decoder's; by default they are at least
        # DEFAULT_SIZE (the shipped tiny decoder renders 128², upscaled to 256²).
        self.size = size or max(self.resolution, DEFAULT_SIZE)
        self.sessions = _Sessions("DecoderShard")

    @torch.no_grad()
    def open(self, session_id: str, reference: np.ndarray, photo: PhotoFace | None = None) -> None:
        """Encode the reference once into the identity pyramid this shard reuses for every frame.

        photo: the Face Mesh points (478, 2) of a photo's face, in the reference's pixels (models/photo/framing.py
        `Framing.crop_landmarks`), and the session's rest pose (MotionStage.rest_pose), the motion the photo itself
        shows. A photo is then animated by its own rig (models/photo/rig.py), driven by the motion parameters of a
        params-trained decoder's latents; the decoder itself has only seen cartoons."""
        if photo is not None and self.decoder.latent == "params":
            side = reference.shape[0]
            ref = square_tensor(reference, self.size)
            marks = np.asarray(photo.landmarks, np.float32) * (self.size / side)
            self.sessions.items[session_id] = PhotoRig(ref, marks, photo.rest)
            return
        if photo is not None:
            log.warning("these decoder weights were not trained on motion parameters (`train --latent params`): "
                        "the photo is animated by the decoder, which has only seen cartoons")
        p = next(self.decoder.parameters())
        ref = square_tensor(reference, self.resolution).to(p.device, p.dtype)
        self.sessions.items[session_id] = self.decoder.encode_reference(ref)

    def output_size(self) -> int:
        return self.size

    def has_session(self, session_id: str) -> bool:
        return session_id in self.sessions.items

    def decode(self, session_id: str, first_frame: int, z: torch.Tensor) -> DecodedFrames:
        """z (n, d_motion) -> frames first_frame.. (n, size, size, 3) uint8. The case n = 1 of `decode_many`."""
        return self.decode_many([DecodeRequest(session_id, first_frame, z)])[0].unwrap()

    @torch.no_grad()
    def decode_many(self, requests: list[DecodeRequest]) -> list[Outcome[DecodedFrames]]:
        """Several sessions' frames at once (continuous batching; actors/batching.py): one decoder batch, each
        frame with its own session's cached reference. Returns, per request, its DecodedFrames or the error that
        request alone raised."""
        results: list[Outcome[DecodedFrames]] = [Outcome()] * len(requests)
        good = []
        for i, request in enumerate(requests):
            try:
                identity = self.sessions[request.session_id]
                if isinstance(identity, PhotoRig):  # a photo's rig renders its own frames (no decoder batch)
                    frames = to_uint8(identity.render(params_of_latent(request.z.float().cpu())))
                    results[i] = Outcome(DecodedFrames(request.first_frame, frames))
                else:
                    good.append((i, request, identity))
            except Exception as e:  # noqa: BLE001 - returned to the request's caller
                results[i] = Outcome(error=e)
        if not good:
            return results
        p = next(self.decoder.parameters())
        if len(good) == 1:  # alone: the reference's features as they are, no batch to assemble
            i, request, identity = good[0]
            z = request.z
        else:
            sizes = [len(r.z) for _, r, _ in good]
            ids = [ident for *_, ident in good]
            identity = IdentityFeatures(
                levels=tuple(torch.cat([ident.levels[j].expand(n, -1, -1, -1) for ident, n in zip(ids, sizes)])
                             for j in range(len(ids[0].levels))),
                resolution=ids[0].resolution,
                image=torch.cat([ident.image.expand(n, -1, -1, -1) for ident, n in zip(ids, sizes)]))
            z = torch.cat([r.z for _, r, _ in good])
        try:
            frames = self._frames(identity, z.to(p.device, p.dtype))
        except Exception as e:  # noqa: BLE001 - the batch itself failed: every request gets the error
            for i, *_ in good:
                results[i] = Outcome(error=e)
            return results
        r = 0
        for i, request, _ in good:
            n = len(request.z)
            results[i] = Outcome(DecodedFrames(request.first_frame, frames[r:r + n]))
            r += n
        return results

    def _frames(self, identity, z: torch.Tensor) -> np.ndarray:
        return to_uint8(self.decoder(identity, z).float().cpu(), self.size)  # (n, 3, R, R) -> (n, size, size, 3)

    def close(self, session_id: str) -> None:
        self.sessions.items.pop(session_id, None)

    def pid(self) -> int:
        """The process id (fault tests kill it)."""
        return os.getpid()
