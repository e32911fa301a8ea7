"""A real headless Chromium calls the server through the page at / and shows the avatar with its own stats."""

import json
from pathlib import Path

import pytest
from aiohttp import web

from actors.engine import Engine
from models.data.media import write_wav
from models.data.performance import generate_speech
from bench.live import browser_call
from streaming.app import LIVE_STAGE_THREADS, SERVER, ServerConfig, create_app

CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.slow
@pytest.mark.asyncio
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)")
async def test_browser_call_shows_avatar_with_stats(tmp_path, artifacts_dir):
    wav = tmp_path / "speech.wav"
    write_wav(wav, generate_speech(5, 8.0))
    with Engine(stage_threads=LIVE_STAGE_THREADS) as engine:
        runner = web.AppRunner(create_app(engine, ServerConfig()))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        server = runner.app[SERVER]
        try:
            stats = await browser_call(url, wav, 12.0, artifacts_dir / "browser_call.png")
        finally:
            await runner.cleanup()
    stats["server"].pop("frames", None)
    (artifacts_dir / "browser_call.json").write_text(json.dumps(stats, indent=1))
    assert not stats["page_error"], stats["page_error"]
    assert stats["presented"] >= 10 * 25 * 0.95  # at least 10 s of video at 25 fps presented by the page
    assert 23.0 <= stats["fps"] <= 27.0
    assert stats["latency_ms"]["n"] >= 100 and stats["latency_ms"]["p95"] is not None
    assert 0 < stats["latency_ms"]["p50"] < 1500  # measured in the page; the target (p95 <= 450) is in bench/live.py
    # the page's A/V estimate (sender offset + audio playout - video display delay) must exist; its target
    # (|offset| <= 45 ms) is reported by bench/live.py, not asserted on this shared, headless machine
    assert stats["av_offset_ms"] is not None and abs(stats["server"]["sender_av_offset_ms"]) <= 45
    assert server.metrics.sessions_total == 1 and not server.calls  # the page's hang-up freed the call
