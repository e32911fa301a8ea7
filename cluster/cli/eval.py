"""`actorcast eval`: score trained weights on held-out clips (docs/ARCHITECTURE.md "Measures") and write the JSON
report."""

import argparse
import json
import os
from pathlib import Path

from actorcast.cluster.cli.args import frame_size, output_file, positive_int, positive_seconds
from actorcast.models.errors import ActorcastError
from actorcast.models.kv_cache import POLICY_NAMES
from actorcast.models.run_record import run_record


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `actorcast eval`."""
    p = sub.add_parser("eval", help="measure lip-sync, PSNR, dynamics and drift of trained weights",
                       description="Generate from audio alone on held-out clips (formant babble and espeak "
                                   "speech), read the frames with the MediaPipe face-landmark meter, and report "
                                   "lip-sync r beside the meter's own ceiling, the decoder's ceiling and the "
                                   "audio-zeroed floor, lip lag, blink r, decoder PSNR, and the dynamics ratio and "
                                   "drift of a long generation for every KV-cache policy.")
    p.add_argument("--weights", default=None, help="weights directory (default: the shipped tiny weights)")
    p.add_argument("--clips", type=positive_int, default=None,
                   help="held-out clips of each speech source for lip-sync and PSNR (default 8; --quick 2)")
    p.add_argument("--motion-clips", type=positive_int, default=None,
                   help="held-out clips of each source the motion measures (spread of brows, blinks, gaze, head in "
                        "speech and silence; blinks a minute by the lid parameters) pool: they need no decoding, so "
                        "more clips than --clips are cheap (default 160; --quick 8)")
    p.add_argument("--blink-clips", type=positive_int, default=None,
                   help="held-out clips of each source whose generated and true frames the meter counts blinks on "
                        "(blinks_per_min): a few blinks a clip, so a rate needs many; past --clips only these two are "
                        "decoded and read (default 32; --quick as --clips)")
    p.add_argument("--clip-seconds", type=positive_seconds, default=None,
                   help="length of each clip in seconds (default 10; --quick 8)")
    p.add_argument("--long-seconds", type=positive_seconds, default=None,
                   help="length of the long generation for dynamics/drift (default 300 = 5 min; --quick 60)")
    p.add_argument("--quick", action="store_true",
                   help="a smaller run (2 clips of 8 s per source, a 60 s long generation): every key, in minutes")
    p.add_argument("--size", type=frame_size, default=None, help="frame size the frames are scored at, as `render` outputs them (default 256, or the "
                        "decoder's if larger); a smaller decoder's frames are upscaled")
    p.add_argument("--cache", choices=POLICY_NAMES, default=None, help="default policy (default: the preset's)")
    p.add_argument("--chunk-frames", type=positive_int, default=None, metavar="N",
                   help="frames the generator makes at a time (default: its own; any size it was trained for, as "
                        "serve --latency low runs the smallest)")
    p.add_argument("--json", type=output_file, default=None, help="write the report here")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    import torch
    from tqdm import tqdm

    from actorcast.actors.loading import UNTRAINED, load_model, resolve_weights
    from actorcast.models.checkpoint import load_weights
    from actorcast.actors.stages import DEFAULT_SIZE
    from actorcast.models.training.evaluate import Models, evaluate
    from actorcast.models.training.motion_stage import encoder_latent_kind
    from actorcast.models.training.meter import FaceMeter
    from actorcast.models.presets import get_preset
    from actorcast.models.probe import Probe, ProbeConfig

    weights = resolve_weights(args.weights)
    if weights == UNTRAINED:
        raise ActorcastError("no trained weights to evaluate: pass --weights DIR from `actorcast train`")
    torch.set_num_threads(os.cpu_count() or 1)
    models = Models(*(load_model(n, weights) for n in ("audio_encoder", "motion_generator", "motion_encoder",
                                                       "decoder")),
                    load_weights(weights, "probe", ProbeConfig, Probe)[0].eval().requires_grad_(False),
                    encoder_latent_kind(weights))
    if args.chunk_frames is not None:
        models.motion.config = models.motion.config.with_chunk(args.chunk_frames)
    size = args.size or max(models.decoder.config.resolution, DEFAULT_SIZE)
    cache = get_preset("tiny").cache
    if args.cache:
        cache = dataclasses.replace(cache, policy=args.cache, sink_frames=None)
    quick = args.quick
    clips = args.clips or (2 if quick else 8)
    motion_clips = args.motion_clips or (8 if quick else 160)
    blink_clips = args.blink_clips or (clips if quick else 32)
    clip_seconds = args.clip_seconds or (8.0 if quick else 10.0)
    long_seconds = args.long_seconds or (60.0 if quick else 300.0)
    meter = FaceMeter()  # fails here, in one line, if its environment is missing
    with tqdm(total=2 + len(POLICY_NAMES), desc="eval", unit="part") as bar:
        report = evaluate(models, clips, clip_seconds, long_seconds, size, cache, meter=meter,
                          progress=lambda _: bar.update(1), motion_clips=motion_clips,
                          blink_clips=blink_clips)
    report["weights"] = str(Path(weights).resolve())
    report["chunk_frames"] = models.motion.config.chunk_frames
    report["run"] = run_record("eval", args.command_line)
    text = json.dumps(report, indent=2, sort_keys=True) + "\n"
    if args.json:
        tmp = args.json.with_name(f".{args.json.name}.part")
        tmp.write_text(text)
        os.replace(tmp, args.json)
    print(text, end="")
    return 0
