"""`actorcast data preview|speech` end to end, and their one-line errors."""

import subprocess
import sys
from pathlib import Path

import av
import pytest

ROOT = Path(__file__).resolve().parent.parent


def actorcast(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "actorcast.cluster.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_preview_writes_playable_mp4_with_audio(tmp_path):
    out = tmp_path / "p.mp4"
    result = actorcast("data", "preview", "-o", str(out), "--clips", "2", "--seconds", "1", "--size", "64")
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout
    with av.open(str(out)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert video.average_rate == 25 and video.codec_context.name == "h264"
        assert audio.codec_context.name == "aac"
        n = sum(1 for _ in container.decode(video=0))
    assert n == 50
    assert not list(tmp_path.glob(".*.part"))


def test_speech_writes_wav(tmp_path):
    out = tmp_path / "s.wav"
    result = actorcast("data", "speech", "-o", str(out), "--seconds", "1.6", "--emotion", "happy", "--seed", "3")
    assert result.returncode == 0, result.stderr
    with av.open(str(out)) as container:
        stream = container.streams.audio[0]
        assert stream.rate == 16000
        samples = sum(f.samples for f in container.decode(audio=0))
    assert samples == 40 * 640  # 1.6 s = 40 whole frames


@pytest.mark.parametrize("args, message", [
    (["data", "preview", "-o", "/nonexistent-dir/p.mp4"], "does not exist"),
    (["data", "preview", "-o", "OUT.mp4", "--size", "32"], "size must be"),
    (["data", "preview", "-o", "OUT.mp4", "--seconds", "0"], "seconds must be > 0"),
    (["data", "preview", "-o", "OUT.mp4", "--seconds", "nan"], "seconds must be > 0"),
    (["data", "speech", "-o", "OUT.wav", "--emotion", "bored"], "invalid choice: 'bored' (choose from 'neutral'"),
    (["data", "preview", "-o", "OUT.txt"], "must end in .mp4"),
])
def test_bad_input_is_one_line_and_nonzero(tmp_path, args, message):
    args = [a.replace("OUT", str(tmp_path / "out")) for a in args]
    result = actorcast(*args)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not any(tmp_path.iterdir())


def test_bench_subcommand_runs_a_benchmark(tmp_path):
    import json

    result = actorcast("bench", "data", "--out", str(tmp_path / "b"), "--quick")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "b" / "data.json").read_text())
    assert report["frames_per_s_128"] > 0 and report["audio_s_per_s"] > 0
    (tmp_path / "f").write_text("")
    bad = actorcast("bench", "data", "--out", str(tmp_path / "f"))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "is a file" in bad.stderr
