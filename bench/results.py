"""Write bench/RESULTS.md, the one place for measured figures, from the benchmarks' JSON.

    python bench/results.py [--out bench/RESULTS.md] PATH...

Each PATH is a benchmark's JSON (`python bench/NAME.py --out DIR` writes DIR/NAME.json; `actorcast eval --json
FILE` writes the evaluation's) or a folder of them. Every result gets a section: the date, machine and command of
its run (the `run` record bench/common.py writes; "not recorded" for JSON written without one) and a table of its
headline keys (HEADLINES) with their targets, the JSON's own where it records them (portraits). A generated
section of the existing --out file is kept for a benchmark this call brings no JSON of, so one benchmark's new run
does not drop the others'. The section "Recorded before this file was generated" is carried over, less the parts
of the benchmarks that this call brings a new run of (a JSON with a `run` record). The file is written under a
temporary name and renamed.
"""

import argparse
import datetime
import json
import os
import re
import sys
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECORDED = "## Recorded before this file was generated"
RECORDED_PART = re.compile(r"^<!-- recorded: ([a-z_]+) -->$", re.MULTILINE)
ORDER = ("eval", "live", "cluster_live", "pipecat", "livekit", "render", "models", "cache", "data", "portraits",
         "abuse", "ceiling")


@dataclass(frozen=True)
class Row:
    """One headline figure: a dotted key into the JSON (a segment with `*` stands for every key there it matches)."""

    key: str
    what: str
    target: str = ""


HEADLINES: dict[str, tuple[Row, ...]] = {
    "eval": (
        Row("meter_r_ground_truth", "meter on ground-truth frames (the instrument's ceiling), babble"),
        Row("lipsync_r_ceiling", "decoder ceiling: true motion through the decoder, babble", "≥ 0.85"),
        Row("lipsync_r_ceiling_tts", "decoder ceiling, espeak speech"),
        Row("lipsync_r", "lip-sync r from audio alone, babble", "≥ 0.75"),
        Row("lipsync_r_tts", "lip-sync r from audio alone, espeak speech", "≥ 0.6"),
        Row("lipsync_r_floor", "floor: audio zeroed, babble", "≤ 0.2"),
        Row("lipsync_r_floor_tts", "floor: audio zeroed, espeak speech", "≤ 0.2"),
        Row("lip_lag_frames", "lip lag, frames", "|lag| ≤ 1"),
        Row("blink_r_ceiling", "blink r, decoder ceiling", "≥ 0.7"),
        Row("psnr_db", "decoder PSNR, held-out identities, dB", "≥ 28"),
        Row("dynamics_ratio", "dynamics ratio, last ÷ first minute", "0.85–1.15"),
        Row("drift", "drift of mean probe-read parameters"),
        Row("motion_clips", "held-out clips of each source the motion measures pool"),
        Row("motion_spread", "spread ÷ the data's, babble clips (brows, blinks, gaze, head: the free motion)",
            "0.8–1.25"),
        Row("motion_spread_idle", "the same in the clips' silences", "0.8–1.25"),
        Row("motion_spread_tts", "the same, espeak clips", "0.8–1.25"),
        Row("motion_spread_idle_tts", "the same in the espeak clips' silences", "0.8–1.25"),
        Row("blinks_per_min_params", "blinks a minute on the lid parameters, every pooled clip (truth: next row)"),
        Row("blinks_per_min_params_ground_truth", "the same on the true lids"),
        Row("blink_clips", "held-out clips of each source the meter counts blinks on"),
        Row("blinks_per_min", "blinks a minute by the meter, babble clips (ground truth: next row)"),
        Row("blinks_per_min_ground_truth", "the same on ground-truth frames"),
        Row("blinks_per_min_tts", "blinks a minute by the meter, espeak clips (ground truth: next row)"),
        Row("blinks_per_min_ground_truth_tts", "the same on ground-truth frames"),
        Row("policies.*.dynamics_ratio", "dynamics ratio per KV-cache policy"),
        Row("policies.*.lipsync_r", "lip-sync r per KV-cache policy, long run"),
    ),
    "live": (
        Row("ttff_s", "answer → first frame, s", "≤ 1.0"),
        Row("fps", "frames a second at the receiver", "25"),
        Row("server_latency_ms", "audio arrival → its frame sent, ms", "p95 ≤ 300"),
        Row("browser_latency_ms", "capture → presented, in the page, ms", "p95 ≤ 450"),
        Row("av_offset_ms", "A/V offset at the Python receiver, ms", "≤ 45"),
        Row("browser_av_offset_ms", "A/V offset in the page, ms", "≤ 45"),
        Row("degraded_frames", "degraded frames in the call", "0"),
        Row("interrupt_idle_ms", "interrupt → idle, agent mode, ms", "≤ 200"),
        Row("max_sessions_at_25fps", "calls at once at 25 fps, ≤ 1 % degraded", "≥ 2"),
        Row("sessions.calls_*.degraded_after_startup_share", "share of frames degraded after the first 2 s"),
        Row("sessions.calls_*.p95_ms", "server p95 of the worst call, ms"),
        Row("sessions.batched_cost_ratio.*", "cost per session, batched, ratio to 1 session"),
        Row("max_photo_sessions_at_25fps", "photo calls at once at 25 fps, ≤ 0.5 % degraded"),
        Row("photo_sessions.calls_*.degraded_after_startup_share", "photo calls: share degraded after the first 2 s"),
        Row("photo_sessions.calls_*.p95_ms", "photo calls: server p95 of the worst call, ms"),
        Row("core_seconds_per_call_second", "server CPU s per s of one call, built-in / photo"),
        Row("calls_per_16_cores", "calls 16 cores hold if CPU were the only limit, built-in / photo"),
        Row("core_seconds_by_part.*", "one call's server CPU by part: its own process (WebRTC, encoding), each stage"),
        Row("pipecat.added_latency_ms_p95", "Pipecat service's added latency p95, ms"),
        Row("livekit.added_latency_ms_p95", "LiveKit avatar's added latency p95, ms"),
    ),
    "cluster_live": (
        Row("capacity", "calls the loopback cluster takes at once (/health): 3 nodes of 1 CPU on one machine"),
        Row("max_sessions_at_25fps", "calls at once at 25 fps on the cluster, ≤ 1 % degraded"),
        Row("steps.calls_*.calls_per_node", "calls each node served"),
        Row("steps.calls_*.ttff_s", "answer → first frame over the calls, s", "≤ 1.0"),
        Row("steps.calls_*.server_latency_ms", "audio arrival → its frame sent: median p50, worst p95, ms",
            "p95 ≤ 300"),
        Row("steps.calls_*.degraded_after_startup_share", "share of frames degraded after the first 2 s"),
        Row("steps.calls_*.fps", "frames a second at the receivers"),
        Row("single_machine.ttff_s", "one machine (live.json beside): answer → first frame, s"),
        Row("single_machine.server_latency_ms", "one machine: audio arrival → its frame sent, ms"),
        Row("single_machine.max_sessions_at_25fps", "one machine: calls at once at 25 fps"),
        Row("note", "what these figures mean"),
    ),
    "pipecat": (
        Row("added_latency_ms_p50", "TTS frame → its picture, p50, ms"),
        Row("added_latency_ms_p95", "TTS frame → its picture, p95, ms"),
        Row("fed_to_sent_ms_p95", "fed to the session → picture sent, p95, ms"),
        Row("frames_out", "pictures sent (expected_frames)"),
        Row("expected_frames", "pictures expected"),
        Row("repeated_frames", "pictures repeated"),
        Row("degraded_frames", "pictures degraded", "0"),
        Row("input_late_ms_p95", "how late the TTS frames were queued, p95, ms"),
    ),
    "livekit": (
        Row("added_latency_ms_p50", "audio frame pushed → its picture out, p50, ms"),
        Row("added_latency_ms_p95", "audio frame pushed → its picture out, p95, ms"),
        Row("fed_to_sent_ms_p95", "fed to the session → picture out, p95, ms"),
        Row("frames_out", "pictures given out"),
        Row("expected_frames", "pictures expected"),
        Row("repeated_frames", "pictures repeated"),
        Row("degraded_frames", "pictures degraded", "0"),
        Row("speech_out_s", "speech given out, s"),
    ),
    "render": (
        Row("cli_rtf.*", "`actorcast render` end to end, seconds of video per second, by seconds of speech"),
        Row("rtf.*", "render RTF on Ray, by decoder shards"),
        Row("rtf_in_process", "render RTF in one process"),
        Row("encode_only_rtf", "H.264 encoding alone (its ceiling)"),
        Row("ray_overhead_ratio", "time per chunk on Ray ÷ in one process"),
        Row("rss_mb.*", "peak RSS of a long render, MB, by minutes of speech"),
        Row("ms_per_chunk.*", "median ms per chunk of a long render, by minutes"),
    ),
    "models": (
        Row("stages.*.ms_per_frame", "ms per frame, by stage (tiny preset, 256²)"),
        Row("stages.*.gflops_per_frame", "GFLOP per frame, by stage"),
        Row("rtf", "whole chain in one process, RTF"),
        Row("shipped_decoder.ms_per_frame", "the shipped decoder (its resolution, resized to 256²), ms per frame"),
        Row("rtf_shipped", "whole chain with the shipped decoder, RTF"),
        Row("live_motion.ms_per_frame.*", "the generator at 1-frame chunks, ms per frame, by Euler steps"),
        Row("live_motion.ratio_to_4_steps.*", "the same ÷ 4 steps, by Euler steps"),
        Row("live_motion.shipped_steps", "Euler steps the shipped generator runs"),
        Row("photo_rig.ms_per_frame", "the photo rig, 256², one thread, ms per frame", "≤ 15"),
        Row("photo_rig.ms_per_frame_batch", "the same in batches of 4, ms per frame"),
    ),
    "data": (
        Row("frames_per_s_128", "frames rendered a second, 128²", "≥ 1,000"),
        Row("frames_per_s_256", "frames rendered a second, 256²"),
        Row("audio_s_per_s", "seconds of speech synthesised a second"),
    ),
    "abuse": (
        Row("long_upload.status", "status of 30 min of FLAC silence sent to /speak", "413"),
        Row("long_upload.seconds", "time until that refusal, s"),
        Row("rss_mb.*", "server RSS, MB"),
        Row("ghost_offer.server_full_while_held", "offers that never connect fill the server"),
        Row("ghost_offer.held_s", "how long they hold their slots, s"),
        Row("ghost_offer.real_call_after", "a real call gets in afterwards"),
        Row("caller_av_offset.*.cpu_s_per_call_s", "caller's A/V offset: CPU s per s of call, by call seconds"),
        Row("caller_av_offset.*.peak_mb", "caller's A/V offset: peak memory, MB, by call seconds"),
    ),
    "ceiling": (
        Row("*", "decoder checkpoint read by the meter"),
    ),
}
PORTRAIT_KEYS = ("lipsync_r", "mouth_open_range_speech", "outside_mask_max_abs_diff_frames", "face_ssim_silent_frames",
                 "face_ssim_silent_mp4", "head_yaw_std_deg", "head_pitch_std_deg", "blinks", "gaze_shifts",
                 "identity_distance_mean", "head_pitch_std_deg_dlib", "blinks_dlib", "meter_check")
EYE_KEYS = ("blinks", "gaze_shifts", "blinks_dlib")  # none drawn where the photo's eyes are shut or hidden
METER_CHECK = (("pitch_gain", "nod"), ("yaw_gain", "turn"), ("shut_eye_openness", "shut eye"))  # + "_dlib": dlib's


@dataclass(frozen=True)
class Result:
    """One benchmark's JSON: which benchmark, where it was read, its figures and its run record (or None)."""

    name: str
    path: Path
    data: dict
    run: dict | None


def load(path: Path) -> Result:
    """Read one JSON; its benchmark is named by its run record, else by the file's name (an evaluation by its keys)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"bench/results.py: {path} is not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise SystemExit(f"bench/results.py: {path} holds no JSON object")
    run = data.get("run") if isinstance(data.get("run"), dict) else None
    name = (run or {}).get("bench") or path.stem
    if name not in HEADLINES and name != "portraits" and "lipsync_r_ceiling" in data:
        name = "eval"
    return Result(name, path, data, run)


def expand(data: dict, key: str) -> list[tuple[str, object]]:
    """(full key, value) for a dotted key, each segment with `*` expanded over the keys it matches, in their order."""
    found = [("", data)]
    for part in key.split("."):
        step = []
        for prefix, node in found:
            if not isinstance(node, dict):
                continue
            names = [k for k in node if k != "run" and fnmatchcase(k, part)] if "*" in part else \
                [part] if part in node else []
            step += [(f"{prefix}.{k}" if prefix else k, node[k]) for k in names]
        found = step
    return found


def fmt(value: object) -> str:
    """A figure as the tables show it: 3 significant digits, thousands with commas, dicts as `key value / ...`."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    if isinstance(value, dict):
        parts = [f"{k} {fmt(v)}" for k, v in value.items() if not isinstance(v, (dict, list))]
        return " / ".join(parts) if parts else f"{len(value)} entries"
    if isinstance(value, list):
        return ", ".join(fmt(v) for v in value) if len(value) <= 6 else f"{len(value)} values"
    return cell(str(value))


def cell(text: str) -> str:
    """Text made safe for a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def run_lines(result: Result) -> list[str]:
    """The date, machine and command of a result's run, as a list."""
    shown = os.path.relpath(result.path.resolve(), ROOT) if result.path.resolve().is_relative_to(ROOT) \
        else str(result.path)
    if result.run is None:
        return [f"- source: `{shown}`", "- date, machine, command: not recorded in this JSON (written before "
                "benchmarks recorded their runs)"]
    m = result.run.get("machine") or {}
    machine = ", ".join(x for x in (m.get("cpu"), f"{m['cores']} cores" if m.get("cores") else None,
                                    f"{m['ram_gib']} GiB RAM" if m.get("ram_gib") else None,
                                    m.get("gpu") or "no GPU") if x)
    commit = f" (commit {result.run['commit']})" if result.run.get("commit") else ""
    return [f"- date: {result.run.get('date', 'not recorded')}{commit}", f"- machine: {machine or 'not recorded'}",
            f"- command: `{result.run.get('command', 'not recorded')}`", f"- source: `{shown}`"]


def headline_table(result: Result) -> list[str]:
    """The headline rows of a result: key, what it is, the figure and its target."""
    lines = ["| key | what | measured | target |", "|---|---|---|---|"]
    for row in HEADLINES.get(result.name, (Row("*", ""),)):
        found = expand(result.data, row.key)
        if not found and "*" not in row.key:
            lines.append(f"| `{row.key}` | {cell(row.what)} | not measured | {cell(row.target)} |")
        lines += [f"| `{key}` | {cell(row.what)} | {fmt(value)} | {cell(row.target)} |" for key, value in found]
    return lines


def cache_table(result: Result) -> list[str]:
    """KV cache: ms per chunk and cache size for each policy and stream length."""
    policies = result.data.get("policies", {})
    seconds = list(next(iter(policies.values()), {}))
    lines = ["| policy | " + " | ".join(f"{s} s" for s in seconds) + " |", "|---" * (len(seconds) + 1) + "|"]
    for policy, rows in policies.items():
        cells = [f"{fmt(rows[s].get('ms_per_chunk'))} ms, {fmt(rows[s].get('cache_bytes', 0) / 1024)} KiB"
                 for s in seconds]
        lines.append(f"| `{policy}` | " + " | ".join(cells) + " |")
    return lines


def portraits_table(result: Result) -> list[str]:
    """Real portraits: one row per photo (or why it was refused), the JSON's own targets in the last row."""
    keys = PORTRAIT_KEYS
    lines = ["| photo | " + " | ".join(f"`{k}`" for k in keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, photo in result.data.get("photos", {}).items():
        if "refused" in photo:
            lines.append(f"| {name} | refused: {fmt(photo['refused'])} |" + " |" * (len(keys) - 1))
            continue
        cells = []
        for k in keys:
            cell = photo.get(k)
            if k == "meter_check":  # the meter's (and dlib's) reading of the rig's own nod, turn and shut eye
                cell = cell or {}
                text = " / ".join(f"{label} {fmt(cell.get(key))}" for key, label in METER_CHECK)
                if any(f"{key}_dlib" in cell for key, _ in METER_CHECK):
                    text += "; dlib: " + " / ".join(f"{label} {fmt(cell.get(key + '_dlib'))}"
                                                    for key, label in METER_CHECK)
                cells.append(text)
                continue
            value = cell.get("value") if isinstance(cell, dict) else cell
            missed = isinstance(cell, dict) and cell.get("met") is False
            if k in EYE_KEYS and (photo.get("meter_check") or {}).get("eyes_drawn") is False:
                cells.append(fmt(value) + " (eyes shut or hidden in the photo)")
                continue
            cells.append(fmt(value) + (" (missed)" if missed else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    targets = result.data.get("targets", {})
    lines.append("| target | " + " | ".join(fmt(targets.get(k)) for k in keys) + " |")
    return lines


TABLES = {"cache": cache_table, "portraits": portraits_table}


def section(result: Result) -> str:
    """One result's section: heading, run record, table."""
    table = TABLES.get(result.name, headline_table)(result)
    return "\n".join([f"## {result.name}", "", *run_lines(result), "", *table]) + "\n"


def recorded_parts(text: str) -> tuple[str, dict[str, str]]:
    """The recorded section of an existing RESULTS.md: its introduction and its parts by benchmark name."""
    if RECORDED not in text:
        return "", {}
    body = text.split(RECORDED, 1)[1]
    marks = list(RECORDED_PART.finditer(body))
    intro = body[:marks[0].start()] if marks else body
    parts = {}
    for i, mark in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(body)
        parts[mark.group(1)] = body[mark.start():end].rstrip() + "\n"
    return intro.strip(), parts


def generated_parts(text: str) -> dict[str, str]:
    """The generated sections of an existing RESULTS.md (before its recorded section) by benchmark name."""
    body = text.split(RECORDED, 1)[0]
    starts = [m.start() for m in re.finditer(r"^## ", body, re.MULTILINE)]
    parts = {}
    for i, start in enumerate(starts):
        part = body[start:starts[i + 1] if i + 1 < len(starts) else len(body)].rstrip() + "\n"
        parts[part[3:part.index("\n")].strip()] = part
    return parts


def build(results: list[Result], previous: str, command: str) -> str:
    """The whole RESULTS.md: a header, one section per result and per earlier generated section of a benchmark
    this call brings no run of (kept as it was, with its own date, machine and command), then what is still only
    recorded."""
    order = lambda name: (ORDER.index(name) if name in ORDER else len(ORDER), name)  # noqa: E731
    sections = {r.name: section(r) for r in results}
    sections.update({name: part for name, part in generated_parts(previous).items() if name not in sections})
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head = ["# Measured results", "",
            "Generated by `bench/results.py`: do not edit by hand. Run a benchmark (`python bench/NAME.py --out DIR`, "
            "or `actorcast eval --json FILE`), then this file's command with its JSON. Each section gives the date, "
            "machine and command of its run; keys are described in docs/ARCHITECTURE.md (\"Benchmarks\") and in each "
            "benchmark's docstring.", "", f"Generated {now} by `{command}`.", ""]
    out = "\n".join(head) + "\n" + "\n".join(sections[name] for name in sorted(sections, key=order))
    intro, parts = recorded_parts(previous)
    fresh = {r.name for r in results if r.run is not None}
    kept = [part for name, part in parts.items() if name not in fresh]
    if kept:
        out += "\n" + RECORDED + "\n\n" + (intro + "\n\n" if intro else "") + "\n".join(kept)
    return out


def write_atomic(path: Path, text: str) -> None:
    """Write through a temporary name in the same folder, then rename, so no half-written file is left."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def json_paths(paths: list[Path]) -> list[Path]:
    """The JSON files named, and those inside the folders named (not their *.tmp leftovers)."""
    found = []
    for p in paths:
        if p.is_dir():
            found += sorted(q for q in p.glob("*.json") if q.is_file())
        elif p.is_file():
            found.append(p)
        else:
            raise SystemExit(f"bench/results.py: {p} does not exist; give benchmark JSON files or their folder")
    return found


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="bench/results.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS.md", help="default: bench/RESULTS.md")
    parser.add_argument("paths", nargs="+", type=Path, help="benchmark JSON files, or folders of them")
    args = parser.parse_args(argv)
    results = [load(p) for p in json_paths(args.paths)]
    previous = args.out.read_text() if args.out.is_file() else ""
    shown = ["python", "bench/results.py", *(argv if argv is not None else sys.argv[1:])]
    write_atomic(args.out, build(results, previous, " ".join(shown)))
    return args.out


if __name__ == "__main__":
    print(main())
