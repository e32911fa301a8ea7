"""`actorcast eval`: score trained weights on held-out clips (DESIGN.md "Measures") and write the JSON report."""

import argparse
import json
import os
from pathlib import Path

from cluster.cli_args import frame_size, output_file, positive_int, positive_seconds
from models.errors import ActorcastError
from models.kv_cache import POLICY_NAMES


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `actorcast eval`."""
    p = sub.add_parser("eval", help="measure lip-sync, PSNR, dynamics and drift of trained weights",
                       description="Generate from audio alone on held-out clips, read the frames with the probe, "
                                   "and report lip-sync r (with ceiling and floor), lip lag, decoder PSNR, and the "
                                   "dynamics ratio and drift of a long generation for every KV-cache policy.")
    p.add_argument("--weights", default=None, help="weights directory (default: the shipped tiny weights)")
    p.add_argument("--clips", type=positive_int, default=8, help="held-out clips for lip-sync and PSNR (default 8)")
    p.add_argument("--clip-seconds", type=positive_seconds, default=10.0, help="length of each clip (default 10)")
    p.add_argument("--long-seconds", type=positive_seconds, default=300.0,
                   help="length of the long generation for dynamics/drift (default 300 = 5 min)")
    p.add_argument("--size", type=frame_size, default=None, help="frame size (default: the decoder's)")
    p.add_argument("--cache", choices=POLICY_NAMES, default=None, help="default policy (default: the preset's)")
    p.add_argument("--json", type=output_file, default=None, help="write the report here")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    import torch
    from tqdm import tqdm

    from actors.loading import load_model, resolve_weights
    from models.checkpoint import load_weights
    from models.evaluate import Models, evaluate
    from models.presets import get_preset
    from models.probe import Probe, ProbeConfig

    weights = resolve_weights(args.weights)
    if weights is None:
        raise ActorcastError("no trained weights to evaluate: pass --weights DIR from `actorcast train`")
    torch.set_num_threads(os.cpu_count() or 1)
    models = Models(*(load_model(n, weights) for n in ("audio_encoder", "motion_generator", "motion_encoder",
                                                       "decoder")),
                    load_weights(weights, "probe", ProbeConfig, Probe)[0].eval().requires_grad_(False))
    size = args.size or models.decoder.config.resolution
    if size != models.decoder.config.resolution:
        raise ActorcastError(f"--size {size} differs from the decoder's resolution "
                             f"{models.decoder.config.resolution}; leave --size out")
    cache = get_preset("tiny").cache
    if args.cache:
        cache = dataclasses.replace(cache, policy=args.cache, sink_frames=None)
    with tqdm(total=6, desc="eval", unit="part") as bar:
        report = evaluate(models, args.clips, args.clip_seconds, args.long_seconds, size, cache,
                          progress=lambda _: bar.update(1))
    report["weights"] = str(Path(weights).resolve())
    text = json.dumps(report, indent=2, sort_keys=True) + "\n"
    if args.json:
        tmp = args.json.with_name(f".{args.json.name}.part")
        tmp.write_text(text)
        os.replace(tmp, args.json)
    print(text, end="")
    return 0
