"""`actorcast batch jobs.jsonl`: many renders spread over the Ray cluster, one Ray task per job
(cluster/batch_job.py); prints a line per finished job and a table at the end."""

import argparse
from pathlib import Path

from actorcast.cluster.batch_job import run_batch, summary_table
from actorcast.cluster.ray_connect import check_address
from actorcast.models.errors import InputError

JOBS_FORMAT = """\
jobs file: one JSON object per line, one render each; blank lines are skipped.
  {"audio": "talk.wav", "out": "talk.mp4", "identity": 3, "emotion": "happy"}
  {"audio": "intro.m4a", "image": "face.png", "size": 384, "seed": 7, "name": "intro"}
keys:
  audio     (required) any audio PyAV reads
  image     a photo with a face (found and framed); else
  face      with image: which face, numbered left to right from 1 (default: the largest)
  full_frame  with image: true/false, paste the face back into the whole photo (default: when it is larger)
  identity  built-in synthetic identity, any whole number >= 0 (default 0)
  emotion   neutral, happy, sad, angry or surprised (default neutral)
  out       output file in --out-dir, ending in .mp4 (default: NAME.mp4, else AUDIO-STEM.mp4)
  name      the job's name in the status lines and the table (default: out without .mp4)
  size, seed, shards, cache, weights   as the render options of the same names
audio, image and weights paths are relative to the jobs file, out to --out-dir."""


def add_parser(sub) -> None:
    p = sub.add_parser("batch", help="run many renders (one per line of a .jsonl file) over the Ray cluster",
                       description="Run one render per line of a jobs file as Ray tasks. A failed job never stops "
                                   "the others, and a rerun skips the jobs that finished.",
                       epilog=JOBS_FORMAT, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("jobs", type=Path, help="jobs file (.jsonl): its format is below")
    p.add_argument("--out-dir", type=Path, default=Path("renders"), help="where the mp4s go (default renders/)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local one)")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    if not args.jobs.is_file():
        raise InputError(f"jobs file {args.jobs} does not exist: give a .jsonl file with one render per line")
    if args.address:
        check_address(args.address)
    rows = run_batch(args.jobs, args.out_dir, args.address)
    print(summary_table(rows))
    failed = sum(r["status"] == "failed" for r in rows)
    print(f"{len(rows) - failed} of {len(rows)} jobs finished; outputs in {args.out_dir}")
    return 1 if failed else 0
