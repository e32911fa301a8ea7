"""The live benchmark's callers, in a process of their own:
`python -m bench.callers URL WAV --calls N --seconds S [--portrait PHOTO]`.

Starts N `LiveCaller`s at once, each sending WAV as its microphone, lets them run S seconds, then prints the
list of their reports (`LiveCaller.report`) as one JSON document on stdout; logs go to stderr. With --portrait,
each caller first uploads PHOTO to POST /portrait, as the browser page does before a call, and its offer carries
the photo as its face (the server frames an upload once and keeps it). bench/live.py
runs this apart from the server so that the callers' H.264 and audio decoding does not take the server's event
loop and GIL, as it would not in deployment, where callers are on other machines.
"""

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actorcast.streaming.client import LiveCaller  # noqa: E402
from actorcast.streaming.tracks import decode_audio_48k  # noqa: E402


def portrait_data(photo: Path) -> str:
    """A photo file as the data: URL the page sends as "portrait"."""
    kind = "png" if photo.suffix.lower() == ".png" else "jpeg"
    return f"data:image/{kind};base64," + base64.b64encode(photo.read_bytes()).decode()


async def run_calls(url: str, wav: Path, n: int, seconds: float, portrait: Path | None = None) -> list[dict]:
    """`n` calls to `url` at once, each sending `wav` (with `portrait` as its face); their reports after
    `seconds`."""
    pcm = decode_audio_48k(wav.read_bytes())
    face = {"portrait": portrait_data(portrait)} if portrait is not None else {}
    callers = [LiveCaller(url, pcm, **face) for _ in range(n)]
    try:
        if face:  # one after another: the first upload is framed, the others find it kept
            for caller in callers:
                await caller.post("/portrait", json=face)
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
    parser.add_argument("--portrait", type=Path, help="a photo every caller uploads as its face (else built-in)")
    args = parser.parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    # stdout carries only the JSON document: anything a library prints goes to stderr
    with contextlib.redirect_stdout(sys.stderr):
        reports = asyncio.run(run_calls(args.url, args.wav, args.calls, args.seconds, args.portrait))
    print(json.dumps(reports, default=float))


if __name__ == "__main__":
    main()
