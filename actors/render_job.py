"""A render job: any-length audio -> talking-portrait mp4, streaming, resumable. `actorcast render`
(cluster/cli/render.py) runs one; `actorcast batch` (cluster/batch_job.py) one per Ray task.

The audio is decoded block by block and fed to an offline session; frames come back in order and go to H.264
segments in the work directory. Every `--checkpoint-every` seconds the session's state (audio encoder buffers,
the generator's KV cache and RNG) is saved next to the finished segments, so a killed render continues where
it stopped and gives the same frames. At the end the segments and the input's audio are joined into out.mp4
(temporary name, then rename) and the work directory is removed.
"""

import asyncio
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from actorcast.actors.engine import Engine
from actorcast.actors.loading import resolve_weights
from actorcast.actors.render_mux import SegmentWriter, mux_final, probe_audio
from actorcast.actors.session_config import SessionCheckpoint
from actorcast.cluster.ray_connect import check_address
from actorcast.models.data.params import EMOTIONS
from actorcast.models.data.seeds import check_seed
from actorcast.models.errors import InputError
from actorcast.models.kv_cache import POLICY_NAMES
from actorcast.models.media import iter_audio_blocks
from actorcast.models.photo.framing import Framing, frame_reference
from actorcast.models.photo.paste import PasteBack
from actorcast.models.photo.reference import load_image
from actorcast.models.timebase import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME

log = logging.getLogger(__name__)

BLOCK = 4 * SAMPLES_PER_FRAME  # one chunk of audio: the session sees the same blocks in every run


@dataclass(frozen=True)
class RenderJob:
    """Everything that decides a render's frames (its fingerprint keys the work directory)."""

    audio: str
    out: str
    image: str | None = None
    identity: int = 0
    emotion: str = "neutral"
    shards: int = 1
    cache: str | None = None
    weights: str | None = None
    size: int | None = None         # None: 256, or a full-frame photo's face square (frame_size_for)
    seed: int = 0
    checkpoint_every: float = 8.0
    face: int | None = None          # which face of the photo, 1-based left to right (None: the largest)
    full_frame: bool | None = None   # paste back into the photo (None: when the photo is larger than the crop)

    def fingerprint(self) -> str:
        parts = asdict(self)
        parts.pop("out")
        for key in ("audio", "image"):
            if parts[key]:
                st = Path(parts[key]).stat()
                parts[key] = [str(Path(parts[key]).resolve()), st.st_size, st.st_mtime_ns]
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def work_dir_for(job: RenderJob, work_dir: Path | None) -> Path:
    out = Path(job.out)
    return work_dir if work_dir is not None else out.with_name(f".{out.name}.work")


class _WorkDir:
    """Finished segments + the checkpoint after the last one; anything from another job is cleared.

    The folder is made when the first segment or checkpoint is written, so a render that fails (or is killed)
    before its first chunk leaves nothing behind.
    """

    def __init__(self, path: Path, fingerprint: str):
        self.path, self.fingerprint = path, fingerprint
        self.job_file, self.state_file = path / "job.json", path / "state.pt"
        if path.exists() and not path.is_dir():
            raise InputError(f"work folder {path} is a file: give a folder with --work-dir")
        existing = path if path.is_dir() else next(p for p in path.parents if p.is_dir())
        try:  # made later, on the first chunk: find out now whether it can be
            with tempfile.NamedTemporaryFile(dir=existing, prefix=".actorcast-", suffix=".probe"):
                pass
        except OSError as e:
            raise InputError(f"work folder {path} cannot be written ({e.strerror or e}): choose another "
                             "--work-dir") from None
        if path.is_dir() and self._owner() != fingerprint:
            if self._owner() is None and any(path.iterdir()):  # never delete a folder that is not ours
                raise InputError(f"work folder {path} holds other files: give a new or empty folder with --work-dir")
            if self._owner() is not None:
                log.warning("work directory %s belongs to another render; starting over", path)
            shutil.rmtree(path)

    def _owner(self) -> str | None:
        try:
            return json.loads(self.job_file.read_text()).get("job")
        except (OSError, ValueError, AttributeError):
            return None

    def create(self) -> None:
        """Make the folder and mark it as this job's (before anything else is written into it)."""
        if not self.job_file.is_file():
            self.path.mkdir(parents=True, exist_ok=True)
            self.job_file.write_text(json.dumps({"job": self.fingerprint}))

    def resume_frame(self) -> int | None:
        """The frame a rerun of the same job would continue from, or None when no checkpoint is saved."""
        try:
            return int(torch.load(self.state_file, weights_only=False)["checkpoint"]["next_frame"])
        except (OSError, KeyError, TypeError, ValueError, RuntimeError, EOFError):
            return None

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def load(self) -> tuple[SessionCheckpoint | None, int]:
        """The last checkpoint and its segment count; segments written after it are dropped."""
        ckpt, n_seg = None, 0
        if self.state_file.is_file():
            saved = torch.load(self.state_file, weights_only=False)
            ckpt, n_seg = SessionCheckpoint(**saved["checkpoint"]), saved["segments"]
        for seg in self.path.glob("seg_*.mp4"):
            if int(seg.stem[4:]) >= n_seg:
                seg.unlink()
        return ckpt, n_seg

    def segment(self, i: int) -> Path:
        return self.path / f"seg_{i:06d}.mp4"

    def save(self, ckpt: SessionCheckpoint, n_seg: int) -> None:
        self.create()
        tmp = self.state_file.with_suffix(".part")
        buf = io.BytesIO()  # serialised in memory: a failing disk then raises a plain OSError on write
        torch.save({"checkpoint": asdict(ckpt), "segments": n_seg}, buf)
        try:
            tmp.write_bytes(buf.getvalue())
            os.replace(tmp, self.state_file)
        finally:
            tmp.unlink(missing_ok=True)


def _too_short(audio: Path, seconds: float) -> str:
    return f"{audio} holds {seconds * 1000:.0f} ms of audio: give at least {SAMPLES_PER_FRAME / SAMPLE_RATE * 1000:.0f} ms"


def check_job(job: RenderJob, address: str | None = None) -> Framing | None:
    """Every check that needs neither Ray nor a model, so that a bad argument or input file fails at once,
    before Ray starts or weights load: the audio (readable, long enough when its header tells), the portrait
    and its face (framed: returned), the identity, emotion and cache policy, the output folder, the weights
    folder and the Ray address."""
    probe_audio(Path(job.audio))
    head = 0  # decode just enough to know that the audio yields a frame (headers may claim what is not there)
    blocks = iter_audio_blocks(job.audio)
    for block in blocks:
        head += block.size
        if head >= SAMPLES_PER_FRAME:
            break
    blocks.close()
    if head < SAMPLES_PER_FRAME:
        raise InputError(_too_short(Path(job.audio), head / SAMPLE_RATE))
    framing = None
    if job.face is not None and (isinstance(job.face, bool) or not isinstance(job.face, int) or job.face < 1):
        raise InputError(f"face {job.face!r} must be a whole number >= 1 (faces are numbered left to right)")
    if job.full_frame is not None and not isinstance(job.full_frame, bool):
        raise InputError(f"full_frame {job.full_frame!r} must be true or false")
    if job.image:
        framing = frame_reference(load_image(job.image), face=job.face, what=str(job.image))
    else:
        check_seed(job.identity, f"identity {job.identity!r}", InputError)
    if job.face is not None and not job.image:
        raise InputError(f"--face {job.face} picks a face in a photo: give --image too")
    if job.full_frame and not job.image:
        raise InputError("--full-frame pastes the animated face back into a photo: give --image too")
    if job.emotion not in EMOTIONS:
        raise InputError(f"unknown emotion {job.emotion!r}; choose one of {', '.join(EMOTIONS)}")
    if job.cache is not None and job.cache not in POLICY_NAMES:
        raise InputError(f"unknown cache policy {job.cache!r}; choose one of {', '.join(POLICY_NAMES)}")
    out = Path(job.out)
    if out.suffix.lower() != ".mp4":
        raise InputError(f"output {out} must end in .mp4 (the file is an H.264 + AAC mp4)")
    if not out.parent.is_dir():
        raise InputError(f"output directory {out.parent} does not exist; create it first")
    resolve_weights(job.weights)
    if address:
        check_address(address)
    return framing


def frame_size_for(job: RenderJob, framing: Framing | None) -> int:
    """The frame size of a job that leaves it open (size None): for a photo pasted back full frame, the side of the
    square around its face, up to a multiple of 16, in 256..512, so the animated face is not blown up when it goes
    back into the photo; otherwise 256."""
    if job.size is not None:
        return job.size
    if paste_back_for(job, framing) is None:
        return 256
    return min(512, max(256, -(-framing.box[2] // 16) * 16))


def paste_back_for(job: RenderJob, framing: Framing | None) -> PasteBack | None:
    """The paste-back of a full-frame render, or None: --full-frame, --no-full-frame, else on when the photo
    reaches past the square around its face."""
    if framing is None or job.full_frame is False:
        return None
    x0, y0, side = framing.box
    h, w = framing.picture.shape[:2]
    larger = x0 > 0 or y0 > 0 or x0 + side < w or y0 + side < h
    return PasteBack(framing) if job.full_frame or larger else None


async def _feed(session, audio: Path, start: int, every: int) -> None:
    """Feed the audio from sample `start` in BLOCK-sized pieces; a checkpoint every `every` samples."""
    buf, pos, total = np.zeros(0, np.float32), 0, 0
    for block in iter_audio_blocks(audio):
        total += block.size
        if pos + block.size <= start:  # already rendered before the last checkpoint
            pos += block.size
            continue
        block = block[max(0, start - pos):]
        pos = max(pos, start)
        buf = np.concatenate([buf, block])
        n = buf.size // BLOCK * BLOCK
        for i in range(0, n, BLOCK):
            await session.put(buf[i:i + BLOCK])
            pos += BLOCK
            if pos % every == 0:
                session.checkpoint()
        buf = buf[n:]
    if total < SAMPLES_PER_FRAME:
        raise InputError(_too_short(audio, total / SAMPLE_RATE))
    if buf.size:
        await session.put(buf)
    session.end()


async def _render(engine: Engine, job: RenderJob, work: _WorkDir, progress: bool, framing: Framing | None,
                  on_frames=None, on_written=None) -> tuple[int, int]:
    ckpt, n_seg = work.load()
    if ckpt is not None:
        log.warning("resuming %s from frame %d (work directory %s)", job.out, ckpt.next_frame, work.path)
    reference = framing.crop() if framing is not None else None
    paste = paste_back_for(job, framing)
    duration, _, _ = probe_audio(Path(job.audio))
    session = await engine.open_session(reference, identity_seed=job.identity, emotion=job.emotion,
                                        cache_policy=job.cache, seed=job.seed, live=False, resume=ckpt,
                                        landmarks=framing.crop_landmarks() if framing is not None else None)
    total = int(duration * FPS) if duration else None
    done = ckpt.next_frame if ckpt else 0
    every = max(1, int(job.checkpoint_every * FPS / 4)) * BLOCK
    # The feeder runs as part of the session: if reading the audio fails, the events below end with its error.
    feeder = session.produce(_feed(session, Path(job.audio), ckpt.samples if ckpt else 0, every))
    bar = tqdm(total=total, initial=done, unit="frame", desc="render", disable=not progress, dynamic_ncols=True)
    writer = None
    try:
        async for item in session.events():
            if isinstance(item, SessionCheckpoint):
                if writer is not None:
                    writer.close()
                    writer = None
                    n_seg += 1
                work.save(item, n_seg)
                continue
            if writer is None:
                work.create()
                writer = SegmentWriter(work.segment(n_seg), paste.size if paste else (engine.size, engine.size))
            frames = paste.composite(item.frames) if paste else item.frames
            writer.write(frames)
            if on_written is not None:
                on_written(frames)
            done += item.n_frames
            bar.update(item.n_frames)
            if on_frames is not None:
                on_frames(done)
        await feeder
        if writer is not None:
            writer.close()
            writer = None
            n_seg += 1
    finally:
        bar.close()
        if writer is not None:
            writer.abort()
        if not feeder.done():
            feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)
        await session.close()
    return done, n_seg


def render(job: RenderJob, work_dir: Path | None = None, address: str | None = None, use_ray: bool = False,
           progress: bool = True, engine: Engine | None = None, on_frames=None, on_written=None) -> dict:
    """Render `job` to job.out; returns {"out", "frames", "seconds"}. Resumes from the work directory.

    on_frames(frames_done) is called after every chunk written (benchmarks time chunks with it); on_written(frames)
    gets each chunk's (n, H, W, 3) uint8 frames as they go to the encoder, composited when full-frame
    (bench/portraits.py compares them with the photo before H.264 changes them)."""
    audio, out = Path(job.audio), Path(job.out)
    framing = check_job(job, address if use_ray else None)  # a bad input fails before Ray starts or weights load
    if framing is not None and framing.note():
        log.warning("%s: %s", job.image, framing.note())
    if job.size is None:
        job = replace(job, size=engine.size if engine is not None else frame_size_for(job, framing))
    work = _WorkDir(work_dir_for(job, work_dir), job.fingerprint())
    own = engine is None
    try:
        if own:
            engine = Engine(job.weights, shards=job.shards, use_ray=use_ray, address=address, size=job.size)
        try:
            frames, n_seg = asyncio.run(_render(engine, job, work, progress, framing, on_frames, on_written))
        finally:
            if own and engine is not None:
                engine.close()
        mux_final([work.segment(i) for i in range(n_seg)], audio, out, frames)
    except BaseException as e:  # KeyboardInterrupt too: Ctrl-C is the usual way a render stops early
        _keep_if_resumable(work, e)
        raise
    work.remove()
    return {"out": str(out), "frames": frames, "seconds": frames / FPS}


def _keep_if_resumable(work: _WorkDir, error: BaseException) -> None:
    """After a failed render: keep the work folder only if rerunning the same command can resume from it, and
    say so on the error (the CLI prints its notes on the error's line). An InputError would stop the rerun again
    (and fixing the input makes it another job), so its folder goes too."""
    frame = work.resume_frame()
    if not frame or isinstance(error, InputError):  # None, or a checkpoint before the first frame: nothing to keep
        work.remove()
        if isinstance(error, KeyboardInterrupt):
            error.add_note("no chunk was saved yet, so rerunning the same command starts from frame 0")
        return
    error.add_note(f"rerunning the same command resumes from frame {frame} (saved in {work.path})")
