"""`actorcast batch`: jobs spread over Ray, failures isolated, a rerun skips what is finished."""

import json

import av

from cluster.cli import main
from tests.test_render import _write_audio


def test_batch_isolates_failures_and_skips_finished(ray_local, tmp_path, capsys):
    _write_audio(tmp_path / "a.wav", 1.2, 16000, "mono")
    _write_audio(tmp_path / "b.m4a", 0.8)
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("\n".join([
        json.dumps({"audio": "a.wav", "identity": 2, "size": 64, "name": "first"}),
        json.dumps({"audio": "missing.wav", "size": 64, "name": "ghost"}),
        "{not json",
        json.dumps({"audio": "b.m4a", "size": 64, "emotion": "happy", "name": "second"}),
        json.dumps({"audio": "a.wav", "colour": "red", "name": "typo"}),
    ]) + "\n")
    out = tmp_path / "renders"
    code = main(["batch", str(jobs), "--out-dir", str(out)])
    text = capsys.readouterr().out
    assert code == 1  # some jobs failed, but not the good ones
    for name, frames in (("first", 30), ("second", 20)):
        with av.open(str(out / f"{name}.mp4")) as c:
            assert sum(1 for _ in c.decode(video=0)) == frames
    rows = {line.split()[0]: line for line in text.splitlines() if line.split() and
            line.split()[0] in ("first", "second", "ghost", "line3", "typo")}
    assert "done" in rows["first"] and "done" in rows["second"]
    assert "failed" in rows["ghost"] and "does not exist" in rows["ghost"]
    assert "failed" in rows["line3"] and "failed" in rows["typo"] and "colour" in rows["typo"]
    assert "2 of 5 jobs finished" in text

    mtime = (out / "first.mp4").stat().st_mtime_ns
    code = main(["batch", str(jobs), "--out-dir", str(out)])
    text = capsys.readouterr().out
    assert code == 1
    assert [ln.split()[1] for ln in text.splitlines() if ln.startswith(("first ", "second "))] == ["skipped"] * 2
    assert (out / "first.mp4").stat().st_mtime_ns == mtime  # not rendered again
