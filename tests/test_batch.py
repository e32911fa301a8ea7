"""`actorcast batch`: jobs spread over Ray, failures isolated, a rerun skips what is finished."""

import json

import av

from actorcast.cluster.batch_job import parse_jobs, summary_table
from actorcast.cluster.cli import main
from tests.helpers import write_audio


def test_batch_isolates_failures_and_skips_finished(ray_local, tmp_path, capsys):
    write_audio(tmp_path / "a.wav", 1.2, 16000, "mono")
    write_audio(tmp_path / "b.m4a", 0.8)
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


def test_jobs_are_named_after_their_output_and_checked_before_ray(tmp_path):
    write_audio(tmp_path / "speech.wav", 0.5, 16000, "mono")
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("\n".join(json.dumps(spec) for spec in [
        {"audio": "speech.wav"},
        {"audio": "speech.wav", "emotion": "happy"},
        {"audio": "speech.wav", "out": "talk.mp4"},
        {"audio": "speech.wav", "out": "talk.mp4"},
        {"audio": "speech.wav", "name": "intro"},
        {"audio": "speech.wav", "out": "talk.txt"},
        {"audio": "speech.wav", "identity": -1, "out": "bad_identity.mp4"},
    ]) + "\n")
    out = tmp_path / "renders"
    out.mkdir()
    parsed = parse_jobs(jobs, out)
    names = [name for name, _, _ in parsed]
    assert names[:3] == ["speech", "speech_2", "talk"] and names[4] == "intro"
    assert [job.out if job else None for _, job, _ in parsed][:3] == [str(out / "speech.mp4"),
                                                                      str(out / "speech_2.mp4"), str(out / "talk.mp4")]
    errors = [error or "" for _, _, error in parsed]
    assert "also the output of line 3" in errors[3]
    assert ".mp4" in errors[5] and "identity" in errors[6]  # render's own checks, on the driver


def test_summary_table_has_no_trailing_blanks():
    rows = [{"job": "a", "status": "done", "seconds": 1.0, "wall_s": 2.0},
            {"job": "bb", "status": "failed", "error": "line 2: audio file /a/very/long/path/x.wav does not exist"}]
    table = summary_table(rows).splitlines()
    assert all(line == line.rstrip() for line in table)
    assert table[2].split() == ["a", "done", "1.0", "2.0"]
