"""`actorcast render AUDIO -o out.mp4` (or `--say TEXT`, spoken by espeak-ng): the flags become a `RenderJob`,
rendered by actors/render_job.py `render`, in this process or on Ray."""

import argparse
import hashlib
import os
from pathlib import Path

import torch

from actorcast.actors.render_job import RenderJob, render
from actorcast.cluster.cli.args import frame_size, mp4_file, positive_int, positive_seconds, seed
from actorcast.models.data.params import EMOTIONS
from actorcast.models.errors import InputError
from actorcast.models.kv_cache import POLICY_NAMES
from actorcast.models.timebase import SAMPLES_PER_FRAME


def add_parser(sub) -> None:
    p = sub.add_parser("render", help="render an audio file to a talking-portrait mp4 (H.264 + AAC)")
    p.add_argument("audio", type=Path, nargs="?", help="any audio PyAV reads (wav, mp3, m4a, ogg, a video's sound "
                   "track); or --say")
    p.add_argument("--say", metavar="TEXT", help="speak TEXT with espeak-ng and render that instead of AUDIO")
    p.add_argument("--voice", default="en-us", help="espeak-ng voice for --say, e.g. en-us+m3 (default en-us)")
    p.add_argument("-o", "--out", type=mp4_file, required=True, metavar="OUT", help="output file, ending in .mp4")
    ref = p.add_mutually_exclusive_group()
    ref.add_argument("--image", type=Path, help="a photo with a face: the face is found and framed (the largest "
                     "if there are several) and animated through its own landmarks (the photo rig)")
    ref.add_argument("--identity", type=seed, default=0, metavar="N",
                     help="built-in synthetic identity: any whole number >= 0 (default 0)")
    p.add_argument("--face", type=positive_int, default=None, metavar="N",
                   help="with --image: animate face N of the photo, numbered left to right (default: the largest)")
    p.add_argument("--full-frame", action=argparse.BooleanOptionalAction, default=None,
                   help="with --image: paste the animated face back into the whole photo (at most 1080p; larger "
                        "photos are scaled down) instead of writing the square around the face (default: on when "
                        "the photo is larger than that square)")
    p.add_argument("--emotion", choices=EMOTIONS, default="neutral", help="the face's emotion (default neutral)")
    p.add_argument("--shards", type=positive_int, default=1,
                   help="decoder shards (default 1); more than 1 run as Ray actors, a process each, unless --in-process")
    p.add_argument("--cache", choices=POLICY_NAMES, default=None, help="KV-cache policy (default: the preset's)")
    p.add_argument("--weights", type=Path, default=None,
                   help="weights directory (default: the shipped ones); `untrained` runs seeded untrained models")
    p.add_argument("--size", type=frame_size, default=None,
                   help="frame size in pixels, a multiple of 16 in 64..512 (default 256; for a photo pasted back full "
                        "frame, the side of the square around its face, up to 512, so the face is not blown up)")
    p.add_argument("--seed", type=seed, default=0, metavar="N",
                   help="seed of the generator's noise: the same seed gives the same frames (default 0)")
    p.add_argument("--work-dir", type=Path, default=None, help="where finished chunks go (default: next to -o)")
    p.add_argument("--checkpoint-every", type=positive_seconds, default=8.0, help="seconds between checkpoints")
    p.add_argument("--address", default=None,
                   help="render on the Ray cluster at host:port (default: in this process, no Ray start-up; a local "
                        "Ray only for --shards above 1)")
    p.add_argument("--in-process", action="store_true",
                   help="keep every stage in this process even with --shards above 1 (shards as threads)")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    if (args.audio is None) == (args.say is None):
        raise InputError("give an AUDIO file or --say TEXT (one of the two)")
    if args.in_process and args.address:
        raise InputError("--in-process and --address contradict each other: give one of them")
    # Ray only where the work needs it: a cluster, or decoder shards in processes of their own. Otherwise the
    # pipeline runs in this process, and a render does not wait the seconds Ray takes to start.
    use_ray = args.address is not None or (args.shards > 1 and not args.in_process)
    audio = args.audio if args.say is None else _say(args.say, args.voice, Path(args.out))
    job = RenderJob(str(audio), str(args.out), str(args.image) if args.image else None, args.identity,
                    args.emotion, args.shards, args.cache, str(args.weights) if args.weights else None, args.size,
                    args.seed, args.checkpoint_every, args.face, args.full_frame)
    try:
        result = render(job, args.work_dir, args.address, use_ray=use_ray)  # checks all, then starts
    finally:
        if args.say is not None:
            audio.unlink(missing_ok=True)  # a rerun writes it again, the same to the job's fingerprint: it resumes
    print(f"{result['out']}: {result['frames']} frames, {result['seconds']:.1f} s")
    return 0


def _say(text: str, voice: str, out: Path) -> Path:
    """Speak `text` with espeak-ng into a wav beside `out`, padded to whole frames so the video ends with the
    speech. Its name comes from its content and its time is fixed, so the job's fingerprint (path, size,
    time) is the same whenever the same words are spoken again: a rerun after a kill resumes."""
    from actorcast.models.media import write_wav
    from actorcast.models.data.tts import speak

    if not out.parent.is_dir():
        raise InputError(f"output directory {out.parent} does not exist; create it first")
    audio = speak(text, voice=voice).audio
    audio = torch.nn.functional.pad(audio, (0, -len(audio) % SAMPLES_PER_FRAME))  # silence to a whole frame
    path = out.with_name(f".{out.name}.say-{hashlib.sha256(audio.numpy().tobytes()).hexdigest()[:12]}.wav")
    write_wav(path, audio)
    os.utime(path, ns=(0, 0))
    return path
