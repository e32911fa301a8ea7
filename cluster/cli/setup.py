"""`actorcast setup [--force]`: make the MediaPipe environment that the lip-sync meter and `render --image` use.

It goes in a per-user cache folder (~/.cache/actorcast/meter-venv, or $ACTORCAST_METER_VENV), so a pip install
needs no Makefile; models/mediapipe_env.py says where it is looked for and how it is built. Nothing is
done when a usable environment is found already, unless the one at the target folder was made from other
requirements (then it is updated in place) or --force is given (then it is made anew).
"""

import argparse
import sys

from actorcast.models import mediapipe_env


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `actorcast setup`."""
    p = sub.add_parser("setup", help="make the MediaPipe environment for photos (--image) and the lip-sync meter",
                       description="Makes a venv with MediaPipe 0.10.21 (it needs numpy<2, so it cannot share the "
                                   "project's environment) in ~/.cache/actorcast/meter-venv, or in "
                                   f"${mediapipe_env.VENV_ENV} when that is set. About 400 MB; pip downloads about "
                                   "100 MB. Does nothing when one is found already.")
    p.add_argument("--force", action="store_true",
                   help="make a new venv at the target folder (emptying one there) even if one works")
    p.set_defaults(run=run)


def _say(line: str) -> None:
    sys.stderr.write(f"actorcast setup: {line}\n")
    sys.stderr.flush()


def run(args: argparse.Namespace) -> int:
    target = mediapipe_env.default_venv()
    stamp = target / mediapipe_env.STAMP
    if not args.force:
        if mediapipe_env.is_complete(target) and stamp.read_text() == mediapipe_env.wanted():
            _say(f"the MediaPipe environment is up to date: {mediapipe_env.venv_python(target)}")
            return 0
        if not mediapipe_env.is_complete(target):
            try:
                python = mediapipe_env.mediapipe_python()
            except mediapipe_env.MediaPipeUnavailable:
                python = None
            if python is not None:
                _say(f"the MediaPipe environment is there already: {python} (--force makes one at {target})")
                return 0
    python = mediapipe_env.build(target, _say, fresh=args.force)
    _say(f"done: {python}")
    return 0
