"""`actorcast call URL --audio FILE`: a WebRTC call from Python; prints the receiver's measurements as JSON."""

import argparse
import asyncio
import json
import os
from pathlib import Path

from actorcast.cluster.cli.args import mp4_file, positive_seconds, seed
from actorcast.models.data.params import EMOTIONS


def add_parser(sub) -> None:
    p = sub.add_parser("call", help="call a live server with an audio file as the microphone",
                       description="Call an `actorcast serve` server: send FILE as the microphone, receive the "
                                   "avatar, and print what this caller measured and the server's own figures, each "
                                   "with its unit and meaning (--json: as JSON).",
                       epilog=_figures_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url", help="server URL, e.g. http://127.0.0.1:8080")
    p.add_argument("--audio", type=Path, required=True, help="audio file sent as the microphone")
    p.add_argument("--seconds", type=positive_seconds, help="call length (default: the audio's length)")
    p.add_argument("--record", type=mp4_file, metavar="OUT",
                   help="write what came back (video + voice) to this file, ending in .mp4")
    p.add_argument("--token", help="bearer token, when the server has one (default: the ACTORCAST_TOKEN environment "
                   "variable, which `ps` does not show)")
    p.add_argument("--emotion", choices=EMOTIONS, default="neutral", help="the face's emotion (default neutral)")
    p.add_argument("--identity", type=seed, metavar="N",
                   help="built-in synthetic identity: any whole number >= 0 (default 0)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON (keys end in their unit; "
                   "their meanings are listed below) instead of the table")
    p.set_defaults(run=run)


def _figures_help() -> str:
    from actorcast.streaming.figures import FIGURES

    width = max(map(len, FIGURES))
    return "figures (unit: meaning):\n" + "\n".join(
        f"  {f.key:<{width}}  {f.unit + ': ' if f.unit else ''}{f.meaning}" for f in FIGURES.values())


def run(args: argparse.Namespace) -> int:
    from actorcast.models.errors import ActorcastError
    from actorcast.streaming.client import run_call
    from actorcast.streaming.figures import summary_table

    if not args.url.startswith(("http://", "https://")):
        raise ActorcastError(f"{args.url} is not an http(s) URL; give e.g. http://127.0.0.1:8080")
    options = {"emotion": args.emotion}
    if args.identity is not None:
        options["identity"] = args.identity
    token = args.token or os.environ.get("ACTORCAST_TOKEN") or None
    report = asyncio.run(run_call(args.url, args.audio, args.seconds, args.record, token, **options))
    print(json.dumps(report, indent=1, default=float) if args.json else summary_table(report))
    return 0
