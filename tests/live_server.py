"""Helpers for tests that start the live server on 127.0.0.1: the server itself, a POST that returns the status
and the JSON error, a wait with a hang guard, and a tiny FLAC that decodes to a long silence."""

import asyncio
import contextlib
import io
import json
import time
from pathlib import Path

import aiohttp
import av
import numpy as np
from aiohttp import web

from actorcast.streaming.app import SERVER, ServerConfig, app_runner, create_app

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "s3cret"


@contextlib.asynccontextmanager
async def serving(engine, **config):
    """The live server on 127.0.0.1 (a free port) with ServerConfig(**config): yields (URL, LiveServer)."""
    config = ServerConfig(**config)
    runner = app_runner(create_app(engine, config), config)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", runner.app[SERVER]
    finally:
        await runner.cleanup()


async def wait_for(predicate, timeout: float) -> None:
    """Until predicate() holds; fails after `timeout` s (a guard against a hang, not a measure)."""
    t0 = time.monotonic()
    while not predicate():
        assert time.monotonic() - t0 < timeout, "condition not reached in time"
        await asyncio.sleep(0.05)


def flac_of_silence(seconds: float, rate: int = 8000) -> bytes:
    """A FLAC file of `seconds` of silence: a few hundred bytes per minute, whatever it decodes to."""
    out = io.BytesIO()
    with av.open(out, "w", format="flac") as container:
        stream = container.add_stream("flac", rate=rate, layout="mono")
        block = np.zeros((1, rate), np.int16)
        for k in range(int(seconds)):
            frame = av.AudioFrame.from_ndarray(block, format="s16", layout="mono")
            frame.sample_rate, frame.pts = rate, k * rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


async def post(url: str, path: str, token: str | None = TOKEN, **kwargs) -> tuple[int, str, object]:
    """(status, Content-Type, JSON body or text) of a POST."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    headers.update(kwargs.pop("headers", {}))
    async with aiohttp.ClientSession() as http:
        async with http.post(url + path, headers=headers, **kwargs) as r:
            text = await r.text()
            kind = r.content_type
            return r.status, kind, json.loads(text) if kind.startswith("application/json") else text
