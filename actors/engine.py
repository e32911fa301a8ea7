"""The engine: one set of stages (in-process or Ray actors) that serves any number of sessions.

    engine = Engine(shards=2, use_ray=True)
    session = await engine.open_session(identity_seed=3)      # async: encodes the reference off the loop
    session.feed(pcm); session.end()
    async for vf in session.frames(): ...
    await session.close(); engine.close()
"""

import asyncio
import logging
import math
import uuid
from pathlib import Path

import numpy as np

from actorcast.actors.clients import AudioClient, MotionClient, ShardClient, StageClients
from actorcast.actors.executor import LocalStage, RayStage, Resources, default_resources, fit_resources, node_rooms
from actorcast.actors.loading import UNTRAINED, ShippedWeights, WeightsBundle, motion_config, resolve_weights
from actorcast.actors.messages import PhotoFace
from actorcast.actors.session import Session
from actorcast.actors.session_config import Seniority, SessionCheckpoint, SessionConfig
from actorcast.actors.stages import AudioEncoderStage, DecoderShard, MotionStage
from actorcast.actors.worker_process import ProcessStage
from actorcast.cluster.ray_connect import ensure_ray
from actorcast.models.errors import ActorcastError, ConfigError
from actorcast.models.photo.reference import check_portrait, synthetic_portrait
from actorcast.models.presets import get_preset

log = logging.getLogger(__name__)


def _ship_weights(bundle: WeightsBundle, node: str) -> tuple[ShippedWeights, object]:
    """The weights' holder actor, pinned to the driver's node (`node`), and the ShippedWeights naming it.

    Pinned, not preferred: a holder on a worker node would go with that node, and then no stage could load its
    weights again, so no lost shard could come back. The driver's node lives as long as the driver, and the holder
    asks for no CPU, so it always fits there."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from actorcast.actors.loading import _WeightsHolder

    name = f"actorcast-weights-{uuid.uuid4().hex[:12]}"
    handle = ray.remote(num_cpus=0)(_WeightsHolder).options(
        name=name, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(bundle)
    return ShippedWeights(name), handle


class Engine:
    """AudioEncoderStage -> MotionStage -> DecoderShard x `shards`, built once and shared by sessions.

    stage_threads: torch threads per in-process stage (None: torch's default). A live server uses 1 (see
    streaming.app.LIVE_STAGE_THREADS): the stages then run side by side instead of fighting over the cores.
    batching: the sessions' motion chunks and frames are gathered and run as one batch per tick (continuous
    batching, actors/batching.py); False sends each session's calls on their own.
    chunk_frames: the frames the generator makes at a time (None: the size it was trained for first); smaller
    chunks wait for less audio, so a live call answers sooner, at more stage calls per frame. A size the weights
    were not trained for is a ConfigError (models/motion.py `MotionConfig.with_chunk`).
    processes: without Ray, run each stage in a worker process of its own (actors/worker_process.py) instead of
    a worker thread of this process, so that the stages' Python does not wait on one interpreter lock.

    The stages' handles (`audio`, `motion`, `shards`: actors/executor.py) are called through typed clients
    (actors/clients.py), built twice over the same stages: `solo` sends each call alone, `batched` gathers the
    motion and decoder calls of the sessions that share it (the same as `solo` when batching is off).
    """

    def __init__(self, weights: str | Path | None = None, preset: str = "tiny", shards: int = 1, use_ray: bool = False,
                 address: str | None = None, size: int | None = None, device: str = "cpu",
                 resources: dict[str, Resources] | None = None, stage_threads: int | None = None,
                 batching: bool = True, processes: bool = False, chunk_frames: int | None = None):
        if shards < 1:
            raise ConfigError(f"shards={shards} must be >= 1")
        self.preset = get_preset(preset).name
        self.weights = resolve_weights(weights, preset)
        if chunk_frames is not None:  # a size the weights were not trained for stops here, before any stage starts
            motion_config(self.weights, preset).with_chunk(chunk_frames)
        self.use_ray, self.n_shards = use_ray, shards
        self._holder = None  # with Ray and weights: the actor the stages fetch the weights from
        args = {"weights": self.weights, "preset": preset, "device": device}
        if use_ray:
            ensure_ray(address)
            import ray
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            res = {k: default_resources(k, shards, device) for k in ("audio", "motion", "decoder")}
            res.update(resources or {})
            # What the stages ask for is fitted to what the nodes have free before anything is placed (a stage
            # that fits no node would wait for ever), or the engine stops here with one line.
            node = ray.get_runtime_context().get_node_id()
            placement = fit_resources(res, shards, node_rooms(), node)
            res = placement.resources
            # The weights travel through Ray's object store (kept alive by this engine), so a stage on any node
            # loads the driver's weights, whether or not that node sees the driver's disk.
            if self.weights != UNTRAINED:
                args["weights"], self._holder = _ship_weights(WeightsBundle.read(self.weights), node)
            # Audio and motion hold each session's state and are fed from here: on this node where it has room.
            # The decoder shards spread over the nodes; one lost with its node is re-placed (RayStage) where
            # there is room, or done without while it is away.
            here = NodeAffinitySchedulingStrategy(placement.home, soft=True)
            strategy = {"audio": here, "motion": here, "decoder": "SPREAD"}

            def make(cls, name, kind, **kw):
                return RayStage(cls, name=name, resources=res[kind], scheduling_strategy=strategy[kind], **args, **kw)
        else:
            local = ProcessStage if processes else LocalStage

            def make(cls, name, kind, **kw):
                return local(cls, name=name, threads=stage_threads, **args, **kw)
        self.audio = make(AudioEncoderStage, "audio", "audio")
        self.motion = make(MotionStage, "motion", "motion", chunk_frames=chunk_frames)
        self.shards = [make(DecoderShard, f"decoder{i}", "decoder", size=size) for i in range(shards)]
        if processes and not use_ray:
            try:  # the workers start side by side; a stage that cannot load its weights stops the engine here
                for stage in (self.audio, self.motion, *self.shards):
                    stage.wait_ready()
            except BaseException:
                self._shutdown_stages()
                raise
        audio = AudioClient(self.audio)
        self.solo = StageClients(audio, MotionClient.solo(self.motion), [ShardClient.solo(s) for s in self.shards])
        # One generator pass and one decoder batch per tick serve every session that shares them.
        self.batched = StageClients(audio, MotionClient.batched(self.motion),
                                    [ShardClient.batched(s) for s in self.shards]) if batching else self.solo
        self.seniority = Seniority()
        self.size = int(self.solo.shards[0].output_size().result())  # --size, else the decoder's own
        self.lookahead = int(audio.lookahead_frames().result())  # the weights' own, not the preset's
        self.chunk_frames, self.trained_chunks = self.solo.motion.stream_shape().result()
        self._closed = False

    async def open_session(self, reference: np.ndarray | None = None, identity_seed: int | None = None,
                           emotion: str = "neutral", cache_policy: str | None = None, seed: int = 0,
                           live: bool = True, steps: int | None = None, resume: SessionCheckpoint | None = None,
                           config: SessionConfig | None = None, batched: bool | None = None,
                           landmarks: np.ndarray | None = None) -> Session:
        """A new session (async; the reference is prepared and encoded off the event loop).

        reference: (H, W, 3) uint8 portrait (cropped to square, resized); else synthetic identity
        `identity_seed` (default 0). live=False: an offline session that never degrades (render jobs).
        resume: continue from a checkpoint of an earlier session with the same settings.
        batched: share the motion and decoder batches with the other sessions (continuous batching); by default
        live sessions do and offline ones do not, so that a render's frames never depend on what else ran
        beside it (batches round floats differently; resumed renders must match bit for bit).
        landmarks: a photo's Face Mesh points (478, 2) in `reference`'s pixels (`Framing.crop_landmarks()`):
        the photo is then animated by its rig (models/photo/rig.py) instead of the cartoon-trained decoder.
        """
        if self._closed:
            raise ActorcastError("the engine is closed; create a new Engine")
        if reference is None:
            reference = await asyncio.to_thread(synthetic_portrait, identity_seed or 0, 256)
        reference = check_portrait(reference)
        config = config or (self.live_config() if live else SessionConfig(live=False))
        sid = resume.session_id if resume else uuid.uuid4().hex[:12]
        first = resume.next_frame if resume else 0
        clients = self.batched if (config.live if batched is None else batched) else self.solo
        wait = asyncio.wrap_future
        # A photo's shards wait for its rest pose: the rig draws the motion relative to the generator's idle for
        # it (models/photo/rig.py), which needs the audio stage's silence and the motion stage's session.
        shards_now = clients.shards if landmarks is None else []
        silence, *_ = await asyncio.gather(
            wait(clients.audio.open(sid, first)),
            wait(clients.motion.open(sid, reference, emotion, cache_policy, seed, steps)),
            *(wait(shard.open(sid, reference)) for shard in shards_now))
        photo = None
        if landmarks is not None:
            photo = PhotoFace(landmarks, await wait(clients.motion.rest_pose(sid, silence)))
            await asyncio.gather(*(wait(shard.open(sid, reference, photo)) for shard in clients.shards))
        if resume:
            await asyncio.gather(wait(clients.audio.restore(sid, resume.audio_state)),
                                 wait(clients.motion.restore(sid, resume.motion_state)))
        return Session(sid, clients, reference, self.size, config, silence,
                       self.lookahead, first_frame=first, samples=resume.samples if resume else 0,
                       chunk_frames=self.chunk_frames, seniority=self.seniority, photo=photo)

    def live_config(self) -> SessionConfig:
        """Low-latency settings for live sessions.

        A chunk of C frames can be generated once the audio through its last frame plus the encoder's lookahead
        has arrived. Audio blocks of gcd(C, lookahead) frames end exactly there (C=4, lookahead 2: blocks of 2
        frames, not 4, which would wait 80 ms longer for the same chunk). Chunks are decoded a frame at a time,
        so the first frame goes out before the rest of its chunk is decoded, at the price of more decoder work per
        frame than larger pieces.
        """
        return SessionConfig(live=True, block_frames=math.gcd(self.chunk_frames, self.lookahead) or self.chunk_frames,
                             decode_piece_frames=1)

    def close(self) -> None:
        """Stop every stage (and its actor, with Ray)."""
        if self._closed:
            return
        self._closed = True
        self._shutdown_stages()
        if self._holder is not None:
            import ray

            ray.kill(self._holder)

    def _shutdown_stages(self) -> None:
        for stage in (self.audio, self.motion, *self.shards):
            try:
                stage.shutdown()
            except Exception as e:  # an actor that is already gone
                log.debug("shutting down %s: %s", stage.name, e)

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
