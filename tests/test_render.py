"""`actorcast render`: real H.264 + AAC files, resume after a kill, bad input never leaves a half-written mp4."""

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from actorcast.actors import render_job as render_module
from actorcast.actors.render_job import RenderJob, render
from actorcast.actors.render_mux import SegmentWriter
from actorcast.cluster.cli import main
from actorcast.models.errors import ActorcastError, InputError
from tests.helpers import png_header_only, write_audio, write_pcm_wav

ROOT = Path(__file__).resolve().parent.parent


def _within(seconds: float, fn):
    """fn() on a daemon thread: its result, or its exception; fails (instead of hanging the run) if it has not
    returned after `seconds`. A guard against a hang, not a measure of speed: keep it far above any real run."""
    result: dict = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as e:  # noqa: BLE001 (re-raised below, on the test's thread)
            result["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"hung: still running after {seconds} s"
    if "error" in result:
        raise result["error"]
    return result["value"]


HANG_GUARD_S = 300


def _decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def test_render_h264_aac_interleaved_original_audio(tmp_path):
    audio = write_audio(tmp_path / "in.m4a", 3.0)  # AAC stereo 44.1 kHz in
    out = tmp_path / "out.mp4"
    result = render(RenderJob(str(audio), str(out), identity=4, size=64, checkpoint_every=1.0), use_ray=False,
                    progress=False)
    assert result["frames"] == 75 and out.is_file()
    assert not list(tmp_path.glob(".out.mp4*"))  # temporary files and the work directory are gone
    with av.open(str(out)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        assert (v.codec_context.name, a.codec_context.name) == ("h264", "aac")
        assert (a.codec_context.sample_rate, a.codec_context.channels) == (44100, 2)  # not resampled
        order = [p.stream.type for p in c.demux() if p.size]
    run, longest = 0, 0
    for kind in order:  # interleaved: never a long run of one stream
        run = run + 1 if kind == "video" else 0
        longest = max(longest, run)
    assert longest <= 5 and order.count("audio") > 50
    frames = _decode(out)
    assert frames.shape == (75, 64, 64, 3)


def _cli(tmp_path, *args):
    out = tmp_path / "o.mp4"
    try:
        code = main(["render", *map(str, args), "-o", str(out), "--in-process", "--size", "64"])
    except SystemExit as e:  # argparse refused an argument
        code = e.code
    return code, out


@pytest.mark.parametrize("case", ["corrupt", "text", "truncated", "no_audio", "empty", "20ms", "cut_after_60_bytes",
                                  "bad_image", "bomb", "missing_dir", "address", "negative_identity",
                                  "weights_dir_without_weights"])
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, capsys, case):
    good = write_audio(tmp_path / "good.wav", 1.0, 16000, "mono")
    args: list = [good]
    if case == "corrupt":
        (tmp_path / "c.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt " + os.urandom(3000))
        args = [tmp_path / "c.wav"]
    elif case == "text":
        (tmp_path / "t.mp3").write_text("hello, not audio\n" * 50)
        args = [tmp_path / "t.mp3"]
    elif case == "truncated":
        full = write_audio(tmp_path / "f.m4a", 2.0)
        (tmp_path / "tr.m4a").write_bytes(full.read_bytes()[: full.stat().st_size // 3])
        args = [tmp_path / "tr.m4a"]
    elif case == "no_audio":
        seg = SegmentWriter(tmp_path / "v.mp4", 64)
        seg.write(np.zeros((5, 64, 64, 3), np.uint8))
        seg.close()
        args = [tmp_path / "v.mp4"]
    elif case == "empty":  # a valid WAV of 0 samples
        args = [write_pcm_wav(tmp_path / "e.wav", 0)]
    elif case == "20ms":
        args = [write_pcm_wav(tmp_path / "s.wav", 320)]
    elif case == "cut_after_60_bytes":  # the header promises 1 s, the file holds 8 samples
        args = [write_pcm_wav(tmp_path / "cut.wav", 16000, keep_bytes=60)]
    elif case == "negative_identity":
        args = [good, "--identity", "-5"]
    elif case == "weights_dir_without_weights":
        (tmp_path / "no_weights").mkdir()
        (tmp_path / "no_weights" / "notes.txt").write_text("not weights")
        args = [good, "--weights", tmp_path / "no_weights"]
    elif case == "bad_image":
        (tmp_path / "i.png").write_bytes(os.urandom(500))
        args = [good, "--image", tmp_path / "i.png"]
    elif case == "bomb":
        (tmp_path / "b.png").write_bytes(png_header_only(9000, 9000))
        args = [good, "--image", tmp_path / "b.png"]
    if case == "missing_dir":
        with pytest.raises(SystemExit) as e:
            main(["render", str(good), "-o", str(tmp_path / "nope" / "o.mp4")])
        code, out = e.value.code, tmp_path / "nope" / "o.mp4"
    elif case == "address":
        code = main(["render", str(good), "-o", str(tmp_path / "o.mp4"), "--address", "127.0.0.1:9"])
        out = tmp_path / "o.mp4"
    else:
        code, out = _within(HANG_GUARD_S, lambda: _cli(tmp_path, *args))
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("render:")]
    assert code == 2
    assert len(err) == 1 and "error" in err[0] and "Traceback" not in err[0], err
    assert not out.exists() and not list(tmp_path.glob(".o.mp4*"))


@pytest.fixture(scope="module")
def engine64():
    from actorcast.actors.engine import Engine

    with Engine(size=64) as engine:
        yield engine


def _failing_reader(point, error: Exception):
    """iter_audio_blocks that raises `error` before block `point`, after the last block ("end"), or that yields a
    block of NaN samples there ("nan": session.put refuses it). The first call (check_job's look at the head of
    the file, before start-up) reads normally: the failures are the feeder's, once the session runs."""
    real = render_module.iter_audio_blocks
    calls = []

    def blocks(path):
        calls.append(path)
        if len(calls) == 1:
            yield from real(path)
            return
        for i, block in enumerate(real(path)):
            if i == point:
                raise error
            if point == ("nan", i):
                block = np.full_like(block, np.nan)
            yield block
        if point == "end":
            raise error
    return blocks


@pytest.mark.parametrize("point, error, message", [
    (0, InputError("unreadable first block"), "unreadable first block"),
    (6, RuntimeError("read failed"), "reading the input failed (RuntimeError: read failed)"),
    ("end", InputError("the audio ends badly"), "the audio ends badly"),
    (("nan", 4), None, "NaN"),
])
def test_a_failing_feeder_ends_the_render_with_its_error(tmp_path, monkeypatch, engine64, point, error, message):
    """Any failure while the audio is read or fed ends the render with that error, never a wait for frames."""
    audio = write_pcm_wav(tmp_path / "a.wav", 16000 * 2)
    monkeypatch.setattr(render_module, "iter_audio_blocks", _failing_reader(point, error))
    job = RenderJob(str(audio), str(tmp_path / "o.mp4"), size=64, checkpoint_every=0.16)
    with pytest.raises(ActorcastError) as e:
        _within(HANG_GUARD_S, lambda: render(job, engine=engine64, progress=False))
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "o.mp4").exists()
    work = tmp_path / ".o.mp4.work"
    if isinstance(error, InputError) or error is None:  # the rerun would fail the same way: nothing is kept
        assert not work.exists()
    elif work.exists():  # kept only with a checkpoint to resume from, and the error says so
        assert "resumes from frame" in "".join(getattr(e.value, "__notes__", []))


def test_a_later_failure_keeps_a_resumable_work_folder_and_says_so(tmp_path, monkeypatch, engine64):
    """A render that fails after checkpoints keeps its work folder and names the frame a rerun resumes from;
    the rerun finishes the render and removes the folder."""
    audio = write_pcm_wav(tmp_path / "a.wav", 16000 * 2)
    out, work = tmp_path / "o.mp4", tmp_path / ".o.mp4.work"
    job = RenderJob(str(audio), str(out), size=64, checkpoint_every=0.16)
    real_write = SegmentWriter.write

    def full_disk_from_segment_3(self, frames):  # a segment per chunk (checkpoint_every 0.16 s = 4 frames)
        if int(self.path.stem[4:]) >= 3:
            raise OSError(28, "No space left on device", str(self.tmp))
        real_write(self, frames)

    monkeypatch.setattr(SegmentWriter, "write", full_disk_from_segment_3)
    with pytest.raises(OSError) as e:
        _within(HANG_GUARD_S, lambda: render(job, engine=engine64, progress=False))
    assert (work / "state.pt").is_file() and not out.exists()
    saved = torch.load(work / "state.pt", weights_only=False)["checkpoint"]["next_frame"]
    assert saved == 12 and e.value.__notes__ == [f"rerunning the same command resumes from frame {saved} "
                                               f"(saved in {work})"]
    monkeypatch.setattr(SegmentWriter, "write", real_write)
    result = _within(HANG_GUARD_S, lambda: render(job, engine=engine64, progress=False))
    assert result["frames"] == 50 and out.is_file() and not work.exists()


def test_work_dir_that_is_not_a_work_folder_is_refused_and_kept(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    code = main(["render", str(write_pcm_wav(tmp_path / "a.wav", 16000)), "-o", str(tmp_path / "o.mp4"),
                 "--in-process", "--work-dir", str(mine)])
    assert code == 2 and (mine / "thesis.tex").read_text() == "precious"


def test_silence_renders(tmp_path, capsys):
    code, out = _cli(tmp_path, write_audio(tmp_path / "s.wav", 1.0, 22050, "mono", silent=True))
    assert code == 0 and _decode(out).shape[0] == 25


def _cmd(audio, out, work):
    return [sys.executable, "-m", "actorcast.cluster.cli", "render", str(audio), "-o", str(out), "--in-process", "--size",
            "64", "--checkpoint-every", "0.8", "--work-dir", str(work), "--seed", "3"]


@pytest.mark.slow
def test_killed_render_resumes_frame_identical(tmp_path):
    audio = write_audio(tmp_path / "a.wav", 24.0, 16000, "mono")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    clean = tmp_path / "clean.mp4"
    subprocess.run(_cmd(audio, clean, tmp_path / "w1"), check=True, env=env, cwd=ROOT, capture_output=True)
    out, work = tmp_path / "resumed.mp4", tmp_path / "w2"
    proc = subprocess.Popen(_cmd(audio, out, work), env=env, cwd=ROOT, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(work.glob("seg_*.mp4"))) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # killed mid-way, like a crashed machine
    proc.wait()
    assert not out.exists() and (work / "state.pt").is_file()
    rerun = subprocess.run(_cmd(audio, out, work), env=env, cwd=ROOT, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming" in rerun.stderr
    a, b = _decode(clean), _decode(out)
    assert a.shape == b.shape == (600, 64, 64, 3)
    diff = np.nonzero((a != b).reshape(len(a), -1).any(1))[0]
    assert np.array_equal(a, b), f"frames differ: {diff[:10]} ({len(diff)} of {len(a)}), max {np.abs(a.astype(int) - b).max()}"  # identical decoded frames
    assert not work.exists()


def test_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    import resource

    audio = write_audio(tmp_path / "a.wav", 10.0, 16000, "mono")
    out = tmp_path / "o.mp4"

    def small_disk():  # every file this process writes is capped at 30 kB: writes fail like on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (30_000, 30_000))

    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "actorcast.cluster.cli", "render", str(audio), "-o", str(out), "--in-process", "--size", "64",
           "--work-dir", str(tmp_path / "w")]
    run = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, preexec_fn=small_disk)
    err = [line for line in run.stderr.splitlines() if line.startswith("actorcast")]
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert len(err) == 1 and ("space" in err[0] or "large" in err[0]), run.stderr[-2000:]
    assert not out.exists() and not list(tmp_path.glob(".o.mp4*"))


def test_segment_encoding_is_repeatable(tmp_path):
    """The same frames always give the same H.264 bytes (resumed renders rely on it). Letting PyAV convert RGB to
    YUV inside `encode` gave up to 11 different files over 24 encodes of these decoder frames; a threaded
    `reformat`, 1 in 150. (CRF rate control also varied, but only inside whole renders:
    test_killed_render_resumes_frame_identical covers that.)"""
    from actorcast.models.photo.reference import synthetic_portrait
    from actorcast.actors.stages import DecoderShard

    shard = DecoderShard(size=64)
    shard.open("s", synthetic_portrait(0, 256))
    z = torch.randn(20, shard.decoder.config.d_motion, generator=torch.Generator().manual_seed(0)) * 0.5
    frames = shard.decode("s", 0, z).frames
    digests = set()
    for i in range(150):
        writer = SegmentWriter(tmp_path / "s.mp4", 64)
        writer.write(frames)
        writer.close()
        digests.add(hashlib.md5((tmp_path / "s.mp4").read_bytes()).hexdigest())
    assert len(digests) == 1, f"{len(digests)} different encodings of the same frames"


@pytest.mark.parametrize("stop_at_segment, expected", [
    (3, "actorcast: interrupted; rerunning the same command resumes from frame 12 (saved in {work})"),
    (0, "actorcast: interrupted; no chunk was saved yet, so rerunning the same command starts from frame 0"),
])
def test_ctrl_c_says_how_a_rerun_resumes(tmp_path, monkeypatch, capsys, stop_at_segment, expected):
    """Ctrl-C during a render names the frame that rerunning the same command resumes from."""
    audio = write_pcm_wav(tmp_path / "a.wav", 16000 * 2)
    out, work = tmp_path / "o.mp4", tmp_path / ".o.mp4.work"
    real_write = SegmentWriter.write

    def ctrl_c(self, frames):  # a segment per chunk (checkpoint every 0.16 s = 4 frames)
        if int(self.path.stem[4:]) >= stop_at_segment:
            raise KeyboardInterrupt
        real_write(self, frames)

    monkeypatch.setattr(SegmentWriter, "write", ctrl_c)
    argv = ["render", str(audio), "-o", str(out), "--in-process", "--size", "64", "--checkpoint-every", "0.16"]
    code = _within(HANG_GUARD_S, lambda: main(argv))
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("actorcast")]
    assert code == 130 and err == [expected.format(work=work)]
    assert work.exists() == bool(stop_at_segment) and not out.exists()
