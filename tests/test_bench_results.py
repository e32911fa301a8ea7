"""bench/results.py: RESULTS.md built from small benchmark JSON written here, and bench/common.py's run record."""

import json
import re
import sys

from bench import common, results

RUN = {"bench": "data", "date": "2026-12-01 10:00 UTC", "commit": "abc1234",
       "machine": {"cpu": "Test CPU 9000", "cores": 2, "ram_gib": 8.0, "gpu": None},
       "command": "python bench/data.py --out bench-out --quick"}

PREVIOUS = f"""# Measured results

old generated text

{results.RECORDED}

Copied from the README.

<!-- recorded: data -->
### Data set

| `frames_per_s_128` |
|---|
| 1,111 |

<!-- recorded: cache -->
### KV cache

| policy | 10 s |
|---|---|
| `full` | 8.5 ms |
"""


def _write(path, data):
    path.write_text(json.dumps(data))
    return path


def _row(text: str, key: str) -> list[str]:
    """The cells of the table row whose first cell is `key` (code-quoted)."""
    line = next(line for line in text.splitlines() if line.startswith(f"| `{key}` |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_results_tables_carry_the_figures_targets_and_run_of_each_json(tmp_path):
    bench_out = tmp_path / "bench-out"
    bench_out.mkdir()
    _write(bench_out / "data.json", {"frames_per_s_128": 1509.3, "frames_per_s_256": 364.0, "audio_s_per_s": 161.2,
                                     "run": RUN})
    _write(bench_out / "live.json", {"ttff_s": 0.3612, "fps": 25.0, "server_latency_ms": {"p50": 257.2, "p95": 263.4},
                                     "max_sessions_at_25fps": 3,
                                     "sessions": {"calls_1": {"p95_ms": 265.0}, "calls_2": {"p95_ms": 303.0}},
                                     "run": {**RUN, "bench": "live", "command": "python bench/live.py --out x"}})
    _write(bench_out / "notes.txt", {})  # not JSON by name: ignored in a folder
    eval_json = _write(tmp_path / "my-eval.json", {"lipsync_r": 0.797925, "lipsync_r_tts": 0.6296,
                                                   "lipsync_r_ceiling": 0.8889,
                                                   "policies": {"full": {"lipsync_r": 0.565}}})
    out = tmp_path / "RESULTS.md"
    out.write_text(PREVIOUS)

    results.main(["--out", str(out), str(bench_out), str(eval_json)])
    text = out.read_text()

    assert _row(text, "frames_per_s_128")[2:] == ["1,509", "≥ 1,000"]
    assert _row(text, "audio_s_per_s")[2] == "161"
    assert _row(text, "server_latency_ms")[2:] == ["p50 257 / p95 263", "p95 ≤ 300"]
    assert _row(text, "ttff_s")[2] == "0.361"
    assert _row(text, "max_sessions_at_25fps")[2:] == ["3", "≥ 2"]
    assert _row(text, "sessions.calls_2.p95_ms")[2] == "303"
    assert _row(text, "browser_latency_ms")[2] == "not measured"
    assert _row(text, "lipsync_r")[2:] == ["0.798", "≥ 0.75"]
    assert "| `lip_lag_frames` | lip lag, frames | not measured | \\|lag\\| ≤ 1 |" in text
    assert _row(text, "policies.full.lipsync_r")[2] == "0.565"
    # each section: its date, machine and command; the evaluation's JSON has no run record and says so
    live = text.split("## live", 1)[1].split("\n## ", 1)[0]
    assert "- date: 2026-12-01 10:00 UTC (commit abc1234)" in live
    assert "- machine: Test CPU 9000, 2 cores, 8.0 GiB RAM, no GPU" in live
    assert "- command: `python bench/live.py --out x`" in live
    evaluation = text.split("## eval", 1)[1].split("\n## ", 1)[0]
    assert "not recorded in this JSON" in evaluation
    assert text.index("## eval") < text.index("## live") < text.index("## data")
    # the new data run replaces the recorded data figures; the recorded cache figures stay, with their intro
    assert "1,111" not in text and "old generated text" not in text
    assert "<!-- recorded: cache -->" in text and "| `full` | 8.5 ms |" in text and "Copied from the README." in text
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_cache_and_portraits_get_their_own_tables(tmp_path):
    cache = {"policies": {"full": {"10": {"ms_per_chunk": 8.51, "cache_bytes": 1572864},
                                   "600": {"ms_per_chunk": 149.8, "cache_bytes": 100663296}},
                          "deep_sink_pc": {"10": {"ms_per_chunk": 7.3, "cache_bytes": 202752},
                                           "600": {"ms_per_chunk": 7.2, "cache_bytes": 202752}}}}
    portraits = {"targets": {"lipsync_r": ">= 0.65"}, "photos": {
        "astronaut": {"lipsync_r": {"value": 0.73, "met": True}, "blinks": {"value": 0, "met": False},
                      "meter_check": {"pitch_gain": 0.36, "yaw_gain": 0.86, "shut_eye_openness": 1.04}},
        "t1_largest": {"lipsync_r": {"value": 0.7, "met": True}, "blinks": {"value": 0, "met": False},
                       "meter_check": {"eyes_drawn": False, "pitch_gain": 0.36, "yaw_gain": 0.86, "shut_eye_openness": 1.04,
                                       "pitch_gain_dlib": 0.76, "yaw_gain_dlib": 1.32, "shut_eye_openness_dlib": 1.38}},
        "lfw_0_25px": {"refused": "it is 25x25; give a portrait of at least 32x32"}}}
    out = tmp_path / "RESULTS.md"
    results.main(["--out", str(out), str(_write(tmp_path / "cache.json", cache)),
                  str(_write(tmp_path / "portraits.json", portraits))])
    text = out.read_text()
    assert "| `full` | 8.51 ms, 1,536 KiB | 150 ms, 98,304 KiB |" in text
    assert "| `deep_sink_pc` | 7.3 ms, 198 KiB | 7.2 ms, 198 KiB |" in text
    astronaut = next(line for line in text.splitlines() if line.startswith("| astronaut |"))
    assert "| 0.73 |" in astronaut and "| 0 (missed) |" in astronaut
    assert astronaut.endswith("| nod 0.36 / turn 0.86 / shut eye 1.04 |")
    t1 = next(line for line in text.splitlines() if line.startswith("| t1_largest |"))
    assert "| 0 (eyes shut or hidden in the photo) |" in t1
    assert t1.endswith("| nod 0.36 / turn 0.86 / shut eye 1.04; dlib: nod 0.76 / turn 1.32 / shut eye 1.38 |")
    assert "refused: it is 25x25" in text
    assert re.search(r"^\| target \| >= 0\.65 \|", text, re.MULTILINE)
    assert results.RECORDED not in text  # nothing recorded before: no such section


def test_write_json_adds_the_run_record(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(common.ROOT / "bench" / "data.py"), "--out", "DIR", "--quick"])
    path = common.write_json(tmp_path, "data", {"frames_per_s_128": 1.0})
    run = json.loads(path.read_text())["run"]
    assert run["bench"] == "data" and run["command"] == "python bench/data.py --out DIR --quick"
    assert run["machine"]["cores"] >= 1 and run["machine"]["cpu"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", run["date"])
    kept = common.write_json(tmp_path, "data", {"run": RUN})  # a result that brings its own record keeps it
    assert json.loads(kept.read_text())["run"] == RUN


def test_a_new_run_of_one_benchmark_keeps_the_other_benchmarks_sections(tmp_path):
    out = tmp_path / "RESULTS.md"
    out.write_text("# Measured results\n\nGenerated before.\n\n## live\n\n- date: old live run\n\n| old live |\n\n"
                   "## models\n\n- date: 2026-11-30 (the models run)\n\n| `rtf` | 14.8 |\n\n"
                   f"{results.RECORDED}\n\n<!-- recorded: cache -->\n### KV cache\n\n| `full` | 8.5 ms |\n")
    eval_json = _write(tmp_path / "eval.json", {"lipsync_r": 0.81, "run": {**RUN, "bench": "eval"}})
    live_json = _write(tmp_path / "live.json", {"ttff_s": 0.39, "run": {**RUN, "bench": "live"}})
    results.main(["--out", str(out), str(eval_json), str(live_json)])
    text = out.read_text()
    assert "- date: 2026-11-30 (the models run)\n\n| `rtf` | 14.8 |" in text  # kept as it was
    assert "old live run" not in text and _row(text, "ttff_s")[2] == "0.39"  # replaced by the new run
    assert text.index("## eval") < text.index("## live") < text.index("## models") < text.index(results.RECORDED)
    assert text.count("## models") == 1 and "| `full` | 8.5 ms |" in text
