"""`actorcast train --stage STAGE`: the flags become a TrainConfig (the stage's defaults, then the flags), and
cluster/train.py `launch` runs it on Ray Train workers."""

import argparse
import sys
from pathlib import Path

from actorcast.cluster.cli.args import frame_size, positive_int
from actorcast.cluster.train import launch
from actorcast.models.training.train import STAGE_NAMES, TrainConfig


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `actorcast train`."""
    p = sub.add_parser("train", help="train a stage with DeepSpeed on Ray",
                       description="Train one stage (DeepSpeed ZeRO, launched by Ray Train) and export "
                                   "safetensors + JSON to --out. Stages: decoder (motion autoencoder + video "
                                   "decoder), motion (audio encoder + diffusion-forcing generator; needs "
                                   "--weights with a trained decoder), probe (the evaluation probe), free (the free motion: blinks, "
                                   "gaze, brows and head sampled beside the generator; needs --weights with a "
                                   "decoder and a motion export, whose clips it reads).")
    p.add_argument("--stage", required=True, choices=STAGE_NAMES, help="what to train")
    p.add_argument("--preset", default="tiny", choices=("tiny", "base", "large"), help="model sizes (default tiny)")
    p.add_argument("--workers", type=positive_int, default=1, help="Ray Train workers (default 1)")
    p.add_argument("--steps", type=positive_int, default=None, help="optimizer steps (default: the stage's)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="micro-batch per worker")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate")
    p.add_argument("--out", default=None, help="output directory (default runs/STAGE-PRESET)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local one)")
    p.add_argument("--storage", default=None, metavar="PATH",
                   help="where Ray Train keeps checkpoints (default OUT/ray): on a cluster, a folder every node "
                        "and this machine can reach (NFS, a shared disk); --resume reads it")
    p.add_argument("--data", default="synthetic", help="'synthetic' or a folder of talking-head mp4s")
    p.add_argument("--weights", default="", help="trained weights this stage builds on (motion: decoder export; free: "
                                                     "decoder and motion export)")
    p.add_argument("--init", default=None, metavar="DIR",
                   help="motion stage: start from the audio encoder and generator exported in DIR and fine-tune "
                        "the generator with the preset's training settings (the audio encoder stays as it is: the "
                        "free motion reads its features) instead of training both from scratch")
    p.add_argument("--lookahead", type=int, default=None, metavar="FRAMES",
                   help="motion stage: the audio encoder's lookahead in video frames (40 ms each; default: the "
                        "--init export's, else the preset's 2). With --init, another lookahead fine-tunes the audio "
                        "encoder too, so the free motion must be trained again on the new export")
    p.add_argument("--distill-steps", type=positive_int, default=None, metavar="N",
                   help="motion stage, with --init: distil the --init generator (the teacher, frozen; 4 Euler steps "
                        "for the shipped one) into one that samples in N steps, fewer passes per live frame "
                        "(progressive distillation, docs/ARCHITECTURE.md \"Sampler\"); the teacher's steps must be a "
                        "multiple of N")
    p.add_argument("--checkpoint-every", type=positive_int, default=None, help="steps between checkpoints")
    p.add_argument("--size", type=frame_size, default=None,
                   help="frame size the models train at (default: the preset decoder's, 256 for tiny)")
    p.add_argument("--clips", type=positive_int, default=None,
                   help="motion and free stages: training clips, their latents computed once (default 256)")
    p.add_argument("--tts-share", type=float, default=None,
                   help="motion and free stages: share of the clips spoken by espeak-ng, 0..1; the rest is formant babble "
                        "(default 0.5)")
    p.add_argument("--latent", default="auto", choices=("auto", "params", "encoder"),
                   help="decoder stage: what drives the decoder while it learns. params: the true motion parameters "
                        "(normalised) as the first latent dimensions, the rest zero, and the motion encoder learns "
                        "to regress them beside it; encoder: the motion encoder's output, trained jointly (the only "
                        "choice for --data FOLDER). auto (default): params on synthetic data")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: GPU if present")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """CLI entry: build the TrainConfig from the stage defaults and the flags, then launch."""
    from actorcast.models.training.stages import get_stage

    defaults = get_stage(args.stage).defaults(args.preset)
    overrides = {k: v for k, v in {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
                                   "checkpoint_every": args.checkpoint_every, "size": args.size,
                                   "clips": args.clips, "tts_share": args.tts_share}.items()
                 if v is not None}
    out = args.out or f"runs/{args.stage}-{args.preset}"
    # A bad value raises ConfigError, an ActorcastError: the CLI prints it as one line.
    cfg = TrainConfig(**{**defaults, **overrides, "stage": args.stage, "preset": args.preset, "out_dir": out,
                         "data": args.data, "weights": args.weights, "device": args.device,
                         "latent": args.latent, "init": args.init or "",
                         "lookahead": -1 if args.lookahead is None else args.lookahead,
                         "distill_steps": args.distill_steps or 0})
    get_stage(args.stage).check(cfg)
    metrics = launch(cfg, args.workers, args.resume, args.address, args.storage)
    shown = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}
    print(f"trained {args.stage} ({args.preset}) → {Path(out).resolve()}  {shown}")
    sys.stdout.flush()
    return 0
