"""A real headless Chromium calls the server through the page at / and shows the avatar with its own stats."""

import json
from pathlib import Path

import pytest
from aiohttp import web

from actorcast.actors.engine import Engine
from actorcast.models.data.performance import generate_speech
from actorcast.models.media import write_wav
from bench.live import browser_call, chromium_flags
from actorcast.streaming.app import LIVE_STAGE_THREADS, SERVER, ServerConfig, create_app

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
    # video arrives and the page presents it, with its own measures; how fast (25 fps, latency, A/V offset) is
    # bench/live.py's to report, not a test's to assert on a shared machine
    assert stats["server"]["sent_frames"] > 0 and stats["presented"] > 0 and stats["fps"] is not None
    assert stats["latency_ms"]["n"] > 0 and stats["latency_ms"]["p50"] > 0
    assert stats["av_offset_ms"] is not None and stats["server"]["sender_av_offset_ms"] is not None
    assert server.metrics.sessions_total == 1 and not server.calls  # the page's hang-up freed the call


REFUSE_MICROPHONE = """navigator.mediaDevices.getUserMedia = () =>
  Promise.reject(new DOMException("Permission denied", "NotAllowedError"));"""


@pytest.mark.slow
@pytest.mark.asyncio
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)")
async def test_page_takes_any_identity_and_explains_the_microphone(tmp_path):
    """The identity field takes any whole number (not built-ins 0-3 only), the page says it will ask for the
    microphone, and a refused microphone gets a message that says what to do, with Start enabled again."""
    from playwright.async_api import async_playwright

    wav = tmp_path / "speech.wav"
    write_wav(wav, generate_speech(5, 4.0))
    with Engine(stage_threads=LIVE_STAGE_THREADS) as engine:
        runner = web.AppRunner(create_app(engine, ServerConfig()))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url, server = f"http://127.0.0.1:{runner.addresses[0][1]}/", runner.app[SERVER]
        offered = []
        real_admit = server._admit

        async def admit(offer, options):
            offered.append(options.identity_seed)
            return await real_admit(offer, options)

        server._admit = admit
        try:
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                                   args=chromium_flags(wav))
                try:
                    page = await browser.new_page()
                    await page.goto(url)
                    assert "allow it" in await page.text_content("#mic-hint")
                    await page.fill("#identity", "123456789")
                    await page.click("#start")
                    await page.wait_for_function("window.actorcast.presentedCount > 0", timeout=60000)
                    await page.click("#stop")
                    assert offered == [123456789] and not await page.text_content("#error")

                    refused = await browser.new_page()
                    await refused.add_init_script(REFUSE_MICROPHONE)
                    await refused.goto(url)
                    await refused.click("#start")
                    await refused.wait_for_function("document.getElementById('error').textContent !== ''")
                    message = await refused.text_content("#error")
                    assert "microphone was refused" in message and "allow it" in message, message
                    assert await refused.is_enabled("#start") and len(offered) == 1  # nothing was offered

                    await refused.fill("#identity", "-3")
                    await refused.click("#start")
                    await refused.wait_for_function("document.getElementById('error').textContent.includes('identity')")
                finally:
                    await browser.close()
        finally:
            await runner.cleanup()


ASTRONAUT = Path(__file__).parent / "data" / "astronaut.jpg"


@pytest.mark.slow
@pytest.mark.asyncio
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)")
async def test_page_uploads_a_photo_and_shows_a_no_face_error(tmp_path):
    """A photo chosen in the page is framed by the server (a preview shows), and a call with it starts and
    presents video; a picture without a face shows the server's message, with no call offered."""
    import numpy as np
    from PIL import Image
    from playwright.async_api import async_playwright

    wav = tmp_path / "speech.wav"
    write_wav(wav, generate_speech(5, 4.0))
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (200, 300, 3), np.uint8)).save(noise)
    with Engine(stage_threads=LIVE_STAGE_THREADS) as engine:
        runner = web.AppRunner(create_app(engine, ServerConfig()))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url, server = f"http://127.0.0.1:{runner.addresses[0][1]}/", runner.app[SERVER]
        offered = []
        real_admit = server._admit

        async def admit(offer, options):
            offered.append(options.reference.shape)
            return await real_admit(offer, options)

        server._admit = admit
        try:
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                                   args=chromium_flags(wav))
                try:
                    page = await browser.new_page()
                    await page.goto(url)
                    await page.set_input_files("#portrait", str(ASTRONAUT))
                    await page.wait_for_selector("#portrait-check:not([hidden])", timeout=60000)
                    assert "face found in the 512×512 picture" in await page.text_content("#portrait-note")
                    assert (await page.get_attribute("#portrait-preview", "src")).startswith("data:image/jpeg")
                    await page.click("#start")
                    await page.wait_for_function("window.actorcast.presentedCount > 0", timeout=60000)
                    await page.click("#stop")
                    assert not await page.text_content("#error")
                    side = server.framings[next(iter(server.framings))].box[2]
                    assert offered == [(side, side, 3)]                 # the framed square, not the photo

                    await page.set_input_files("#portrait", str(noise))
                    await page.wait_for_function("document.getElementById('error').textContent !== ''")
                    assert (await page.text_content("#error")).startswith("portrait: no face found in the portrait")
                    await page.click("#start")                          # a call with it is not even offered
                    await page.wait_for_function("document.getElementById('error').textContent !== ''")
                    assert "no face found" in await page.text_content("#error")
                    assert await page.is_enabled("#start") and len(offered) == 1
                finally:
                    await browser.close()
        finally:
            await runner.cleanup()
