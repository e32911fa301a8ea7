"""The live benchmark's callers, in a process of their own: `python -m bench.callers URL WAV --calls N --seconds S`.

Starts N `LiveCaller`s at once, each sending WAV as its microphone, lets them run S seconds, then prints the
list of their reports (`LiveCaller.report`) as one JSON document on stdout; logs go to stderr. bench/live.py
runs this apart from the server so that the callers' H.264 and audio decoding does not take the server's event
loop and GIL, as it would not in deployment, where callers are on other machines.
"""

import argparse
import asyncio
import contextlib
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actorcast.streaming.client import LiveCaller  # noqa: E402
from actorcast.streaming.tracks import decode_audio_48k  # noqa: E402


async def run_calls(url: str, wav: Path, n: int, seconds: float) -> list[dict]:
    """`n` calls to `url` at once, each sending `wav`; their reports after `seconds`."""
    pcm = decode_audio_48k(wav.read_bytes())
    callers = [LiveCaller(url, pcm) for _ in range(n)]
    try:
        await asyncio.gather(*(c.start() for c in callers))
        await asyncio.sleep(seconds)
        return [c.report() for c in callers]
    finally:
        await asyncio.gather(*(c.stop() for c in callers))


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench/callers.py", description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the server, e.g. http://127.0.0.1:8080")
    parser.add_argument("wav", type=Path, help="audio every caller sends as its microphone")
    parser.add_argument("--calls", type=int, default=1, help="calls at once")
    parser.add_argument("--seconds", type=float, required=True, help="how long the calls last")
    args = parser.parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    # stdout carries only the JSON document: anything a library prints goes to stderr
    with contextlib.redirect_stdout(sys.stderr):
        reports = asyncio.run(run_calls(args.url, args.wav, args.calls, args.seconds))
    print(json.dumps(reports, default=float))


if __name__ == "__main__":
    main()
