"""`actorcast data preview|speech`: look at and listen to the built-in synthetic data set."""

import argparse
import logging

from actorcast.cluster.cli.args import frame_size, mp4_file, output_file, positive_int, positive_seconds
from actorcast.models.data.params import EMOTIONS
from actorcast.models.errors import ActorcastError

log = logging.getLogger(__name__)
RENDER_BATCH = 25  # frames rendered per call: bounds memory at 512² (25 × 3 MB)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `actorcast data ...`."""
    data = sub.add_parser("data", help="the built-in synthetic talking-avatar data set",
                          description="Preview the built-in synthetic talking avatars (video + speech).")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION", parser_class=type(data))

    preview = dsub.add_parser("preview", help="write an mp4 of synthetic clips with their speech",
                              description="Render K synthetic clips one after another into an H.264 + AAC mp4, "
                                          "so you can watch the mouth follow the voice.")
    preview.add_argument("-o", "--out", required=True, type=mp4_file, metavar="OUT", help="output file, ending in .mp4")
    preview.add_argument("--clips", type=positive_int, default=4, help="number of clips (default 4)")
    preview.add_argument("--seconds", type=positive_seconds, default=5.0, help="seconds per clip (default 5)")
    preview.add_argument("--size", type=frame_size, default=256, help="frame size in pixels, 64..512 (default 256)")
    preview.add_argument("--seed", type=int, default=0, help="first clip seed (default 0)")
    preview.add_argument("--emotion", choices=EMOTIONS, default=None, help="force one emotion (default: drawn per clip)")
    preview.set_defaults(run=run_preview)

    speech = dsub.add_parser("speech", help="write synthetic speech as a WAV file",
                             description="Synthesise formant speech (16 kHz mono WAV).")
    speech.add_argument("-o", "--out", required=True, type=output_file, metavar="OUT", help="output file, ending in .wav")
    speech.add_argument("--seconds", type=positive_seconds, default=5.0, help="duration (default 5)")
    speech.add_argument("--emotion", choices=EMOTIONS, default=None, help="emotion (default: drawn from the seed)")
    speech.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    speech.set_defaults(run=run_speech)


def _check_seed(seed: int, count: int) -> None:
    from actorcast.models.data.dataset import HELDOUT_END

    if seed < 0 or seed + count > HELDOUT_END:
        raise ActorcastError(f"--seed must be in 0..{HELDOUT_END - count}, got {seed}")


def run_preview(args: argparse.Namespace) -> int:
    """Render the clips frame batch by frame batch into the mp4 (memory flat in clip length)."""
    from tqdm import tqdm

    from actorcast.models.data.dataset import identity_seed, performance_seed
    from actorcast.models.data.face import render, sample_identities
    from actorcast.models.media import Mp4Writer
    from actorcast.models.data.performance import generate_performance
    from actorcast.models.timebase import FPS, SAMPLES_PER_FRAME

    if args.out.suffix.lower() != ".mp4":
        raise ActorcastError(f"output {args.out} must end in .mp4")
    _check_seed(args.seed, args.clips)
    total = args.clips * max(1, round(args.seconds * FPS))
    with Mp4Writer(args.out, args.size) as writer, tqdm(total=total, unit="frame", desc="preview") as bar:
        for seed in range(args.seed, args.seed + args.clips):
            perf = generate_performance(performance_seed(seed), args.seconds, emotion=args.emotion)
            identity = sample_identities([identity_seed(seed)])
            log.info("clip %d: emotion %s, %d frames", seed, perf.emotion, len(perf.params))
            for start in range(0, len(perf.params), RENDER_BATCH):
                params = perf.params[start:start + RENDER_BATCH]
                frames = render(identity, params, args.size)
                audio = perf.audio[start * SAMPLES_PER_FRAME:(start + len(params)) * SAMPLES_PER_FRAME]
                writer.write(frames, audio)
                bar.update(len(params))
    seconds = writer.frames_written / FPS
    print(f"wrote {args.out} ({writer.frames_written} frames, {seconds:.1f} s, {args.size}x{args.size}, "
          f"{args.clips} clips)")
    return 0


def run_speech(args: argparse.Namespace) -> int:
    """Write one synthetic utterance as WAV."""
    from actorcast.models.media import write_wav
    from actorcast.models.data.performance import generate_performance

    if args.out.suffix.lower() != ".wav":
        raise ActorcastError(f"output {args.out} must end in .wav")
    perf = generate_performance(args.seed, args.seconds, emotion=args.emotion)
    write_wav(args.out, perf.audio)
    print(f"wrote {args.out} ({len(perf.audio) / 16000:.2f} s, emotion {perf.emotion})")
    return 0

