"""Per-frame cost (ms and GFLOPs) of each stage of the `tiny` preset at 256^2 on this CPU, and the chain's RTF.

Writes DIR/models.json with `stages.<audio|motion|decoder>.{ms_per_frame,gflops_per_frame}` and `rtf`
(generated seconds per wall second of the whole chain run in-process: 40 ms / sum of per-frame costs). The shipped
decoder may work at another resolution than the preset's (models/weights/tiny/decoder.json; its frames are resized
to 256^2, as `render` does): `shipped_decoder` and `rtf_shipped` are the same figures with that decoder.
Untrained weights: cost does not depend on the values. `photo_rig`: the photo rig (models/photo/rig.py) animating
the astronaut photo (tests/data/astronaut.jpg, framed as `render --image` frames it) at 256^2 on one thread, one
frame at a time and in batches of CHUNK, with the mouth open, a half-closed blink, a gaze offset and a turned head
(every layer at work); target <= 15 ms a frame on one core. `live_motion`: the generator at a live call's 1-frame
chunks with 4, 2 and 1 Euler steps, and each as a ratio to 4 steps. Usage: python bench/models.py --out DIR [--quick]
"""

import dataclasses
import json
import logging

from common import ROOT, median_seconds, parse_args, write_json  # noqa: E402  (common puts the root on sys.path)

import torch
from torch.utils.flop_counter import FlopCounterMode

from actorcast.models.audio import AUDIO_PRESETS, AudioEncoder
from actorcast.models.decoder import DECODER_PRESETS, VideoDecoder
from actorcast.models.motion import MOTION_PRESETS, MotionGenerator
from actorcast.models.photo.reference import to_uint8
from actorcast.models.sampling import MotionStream, SamplerConfig
from actorcast.models.timebase import FPS, SAMPLES_PER_FRAME

log = logging.getLogger("bench.models")

CHUNK = 4  # frames per generation chunk (docs/ARCHITECTURE.md "Time base"), also the decoder's batch
FRAME_MS = 1000 / FPS  # 40 ms of video per frame
OUTPUT = 256  # frame size the chain outputs
SHIPPED = ROOT / "models" / "weights" / "tiny" / "decoder.json"


def gflops(fn) -> float:
    """Total FLOPs (FlopCounterMode: 2 x MAC for matmul/conv) of one call of `fn`, in GFLOP."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def bench_audio(repeats: int) -> dict:
    """Streaming step on 160 ms chunks (what the live path does), per frame."""
    enc = AudioEncoder(AUDIO_PRESETS["tiny"]).eval()
    pcm = 0.1 * torch.randn(1, (repeats + 8) * CHUNK * SAMPLES_PER_FRAME)
    chunks = iter(pcm.split(CHUNK * SAMPLES_PER_FRAME, dim=1))
    state = enc.init_state()

    def one_chunk() -> None:
        nonlocal state
        _, state = enc.step(next(chunks), state)

    seconds = median_seconds(one_chunk, repeats=repeats, warmup=4)
    n_frames = 100
    with torch.no_grad():
        flops = gflops(lambda: enc(0.1 * torch.randn(1, n_frames * SAMPLES_PER_FRAME)))
    return {"ms_per_frame": seconds * 1000 / CHUNK, "gflops_per_frame": flops / n_frames, "chunk_frames": CHUNK}


def bench_motion(repeats: int, chunk: int = CHUNK, steps: int = 4) -> dict:
    """One chunk of `chunk` frames: `steps` Euler steps + the cache-writing pass, with a full cache, per frame."""
    # the generator reads the audio encoder's features, so its d_audio is the encoder's (as models/presets wires)
    config = dataclasses.replace(MOTION_PRESETS["tiny"], d_audio=AUDIO_PRESETS["tiny"].d_audio).with_chunk(chunk)
    model = MotionGenerator(config).eval()
    sampler = SamplerConfig(steps=steps)
    stream = MotionStream(model, torch.randn(1, config.d_motion), sampler=sampler)
    warm_chunks = stream.cache.config.budget_frames // chunk + 2  # time the steady state: bounded cache full
    feats = torch.randn(1, (warm_chunks + repeats + 1) * chunk, config.d_audio).split(chunk, dim=1)
    chunks = iter(feats)
    with torch.no_grad():
        seconds = median_seconds(lambda: stream.push(next(chunks)), repeats=repeats, warmup=warm_chunks)
        flops = gflops(lambda: stream.push(next(chunks)))
    return {
        "ms_per_frame": seconds * 1000 / chunk, "gflops_per_frame": flops / chunk, "chunk_frames": chunk,
        "euler_steps": sampler.steps, "cache_policy": stream.cache.config.policy,
    }


def bench_live_motion(repeats: int) -> dict:
    """The generator as a live call runs it, 1-frame chunks, at 4, 2 and 1 Euler steps (ms per frame), and each
    against 4 steps; `shipped_steps`: the steps the shipped weights declare (MotionConfig.sampler_steps)."""
    ms = {str(s): bench_motion(repeats * 4, chunk=1, steps=s)["ms_per_frame"] for s in (4, 2, 1)}
    shipped = json.loads((ROOT / "models" / "weights" / "tiny" / "motion_generator.json").read_text())
    return {"chunk_frames": 1, "ms_per_frame": ms, "ratio_to_4_steps": {s: v / ms["4"] for s, v in ms.items()},
            "shipped_steps": shipped["config"].get("sampler_steps", 4)}


def bench_decoder(repeats: int, resolution: int | None = None) -> dict:
    """Decode a batch of CHUNK latents against a cached reference pyramid into 256^2 uint8 frames, per frame: at
    256^2, or at `resolution` with the frames resized to 256^2 as a decoder shard does (the conversion to uint8
    and the resize are timed too)."""
    config = DECODER_PRESETS["tiny"]
    if resolution:
        config = dataclasses.replace(config, resolution=resolution)
    dec = VideoDecoder(config).eval()
    reference = torch.rand(1, 3, config.resolution, config.resolution)
    z = torch.randn(CHUNK, config.d_motion)

    def frames(identity):
        return to_uint8(dec(identity, z), OUTPUT)

    with torch.no_grad():
        identity = dec.encode_reference(reference)
        seconds = median_seconds(lambda: frames(identity), repeats=repeats, warmup=2)
        ref_seconds = median_seconds(lambda: dec.encode_reference(reference), repeats=3, warmup=1)
        flops = gflops(lambda: dec(identity, z))
    return {
        "ms_per_frame": seconds * 1000 / CHUNK, "gflops_per_frame": flops / CHUNK, "batch": CHUNK,
        "resolution": config.resolution, "output": OUTPUT, "reference_ms_once_per_session": ref_seconds * 1000,
    }


PHOTO = ROOT / "tests" / "data" / "astronaut.jpg"
RIG_TARGET_MS = 15.0


def bench_photo_rig(repeats: int) -> dict:
    """The photo rig at OUTPUT^2 on one thread, per frame, alone and in batches of CHUNK (frames of one session)."""
    from actorcast.models.data.params import PARAM_INDEX, neutral_params
    from actorcast.models.photo.framing import frame_reference
    from actorcast.models.photo.reference import load_image, square_tensor
    from actorcast.models.photo.rig import PhotoRig

    framing = frame_reference(load_image(PHOTO))
    rig = PhotoRig(square_tensor(framing.crop(), OUTPUT), framing.crop_landmarks(OUTPUT))
    params = neutral_params(CHUNK)
    # a speech frame: every part the rig draws moves (the rig skips the work of a part at rest in every frame)
    for name, value in (("jaw_open", 0.6), ("lip_spread", 0.2), ("lip_round", 0.15), ("smile", 0.2),
                        ("brow_raise", 0.2), ("brow_furrow", 0.1), ("blink_l", 0.5), ("blink_r", 0.5),
                        ("gaze_x", 0.4), ("gaze_y", -0.1), ("head_yaw", 0.08), ("head_pitch", 0.05),
                        ("head_roll", 0.03), ("head_x", 0.02), ("head_y", -0.02)):
        params[:, PARAM_INDEX[name]] = value
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            one = median_seconds(lambda: to_uint8(rig.render(params[:1])), repeats=repeats, warmup=2)
            batch = median_seconds(lambda: to_uint8(rig.render(params)), repeats=repeats, warmup=2)
    finally:
        torch.set_num_threads(threads)
    return {"ms_per_frame": one * 1000, "ms_per_frame_batch": batch * 1000 / CHUNK, "batch": CHUNK, "threads": 1,
            "output": OUTPUT, "target_ms": RIG_TARGET_MS, "met": one * 1000 <= RIG_TARGET_MS}


def shipped_resolution() -> int:
    """The resolution of the shipped tiny decoder (its weights' config)."""
    return json.loads(SHIPPED.read_text())["config"]["resolution"]


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args("models", __doc__.splitlines()[0])
    repeats = 10 if args.quick else 30  # medians; the 2 shared cores make single runs noisy
    torch.manual_seed(0)
    stages = {"audio": bench_audio(repeats), "motion": bench_motion(repeats), "decoder": bench_decoder(repeats)}
    total_ms = sum(stage["ms_per_frame"] for stage in stages.values())
    shipped = bench_decoder(repeats, shipped_resolution())
    shipped_ms = total_ms - stages["decoder"]["ms_per_frame"] + shipped["ms_per_frame"]
    result = {
        "stages": stages,
        "rtf": FRAME_MS / total_ms,
        "ms_per_frame_total": total_ms,
        "shipped_decoder": shipped,
        "rtf_shipped": FRAME_MS / shipped_ms,
        "live_motion": bench_live_motion(repeats),
        "photo_rig": bench_photo_rig(repeats),
        "preset": "tiny",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "quick": args.quick,
    }
    path = write_json(args.out, "models", result)
    for name, stage in stages.items():
        log.info("%-8s %7.2f ms/frame  %.4f GFLOP/frame", name, stage["ms_per_frame"], stage["gflops_per_frame"])
    log.info("shipped decoder at %d² (+ resize to %d²) %7.2f ms/frame", shipped["resolution"], OUTPUT,
             shipped["ms_per_frame"])
    live = result["live_motion"]
    log.info("generator at 1-frame chunks, ms/frame by Euler steps: %s (shipped: %d steps)",
             " / ".join(f"{s}: {v:.2f}" for s, v in live["ms_per_frame"].items()), live["shipped_steps"])
    rig = result["photo_rig"]
    log.info("photo rig at %d² on one thread %7.2f ms/frame (%.2f in batches of %d; target <= %.0f)", OUTPUT,
             rig["ms_per_frame"], rig["ms_per_frame_batch"], rig["batch"], rig["target_ms"])
    log.info("rtf %.2f (whole chain, in-process), %.2f with the shipped decoder -> %s", result["rtf"],
             result["rtf_shipped"], path)


if __name__ == "__main__":
    main()
