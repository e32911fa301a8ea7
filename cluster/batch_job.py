"""The batch job of `actorcast batch jobs.jsonl` (cluster/cli/batch.py): many renders spread over the Ray cluster,
one Ray task per job.

Each line of jobs.jsonl is one render (cluster/cli/batch.py JOBS_FORMAT, also `actorcast batch --help`), named after its
output file. Lines are checked on the driver first; a job's failure is its own: it is reported in the summary
and the others go on. Finished jobs are recorded in OUT_DIR/batch_status.json and skipped by a rerun.

Nothing assumes that a worker node sees the driver's disk: a job's audio, portrait and weights travel with the
task through Ray's object store, the worker renders into a folder of its own, and the mp4 comes back to the
driver, which writes it where --out-dir says. Jobs are spread over the nodes; a job whose node is lost is run
again on another (Ray retries the task), and gives the same file. A job interrupted on a node resumes from its
work folder there (tempdir/actorcast-batch/) when it runs on that node again.
"""

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from actorcast.actors.executor import project_error
from actorcast.actors.loading import WeightsBundle, local_weights
from actorcast.actors.render_job import RenderJob, check_job, render
from actorcast.models.errors import ActorcastError, InputError

log = logging.getLogger(__name__)

JOB_KEYS = {f.name for f in dataclasses.fields(RenderJob)} - {"checkpoint_every"}
STATUS_FILE = "batch_status.json"


def parse_jobs(path: Path, out_dir: Path) -> list[tuple[str, RenderJob | None, str | None]]:
    """(name, job or None, error or None) per non-empty line. A job is named after its output file (its "name"
    if it gives one); a line that is not a valid job, or whose inputs fail render's checks, is an error for that
    job only, found here on the driver before any worker starts."""
    if not path.is_file():
        raise InputError(f"jobs file {path} does not exist: give a .jsonl file with one render per line")
    jobs, outputs, names = [], {}, {}  # output path / job name -> the line that has it
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        name = f"line{lineno}"
        try:
            spec = json.loads(line)
            if not isinstance(spec, dict) or "audio" not in spec:
                raise InputError('each line must be a JSON object with at least "audio"')
            given = spec.pop("name", None)
            name = str(given) if given is not None else name
            unknown = set(spec) - JOB_KEYS
            if unknown:
                raise InputError(f"unknown keys {sorted(unknown)}; valid: {sorted(JOB_KEYS | {'name'})}")
            for key in ("audio", "image", "weights"):
                if spec.get(key):
                    spec[key] = str((path.parent / spec[key]).resolve())
            out = spec.pop("out", None) or _default_out(given, Path(str(spec["audio"])).stem, lineno, out_dir, outputs)
            out_path = out_dir / out
            if given is None:
                name = out[:-4] if out.lower().endswith(".mp4") else out
            if out_path.resolve() in outputs:
                name = f"line{lineno}"
                raise InputError(f'out {out} is also the output of line {outputs[out_path.resolve()]}; give each '
                                 'job its own "out"')
            if name in names:
                name, taken = f"line{lineno}", name
                raise InputError(f"name {taken} is also line {names[taken]}'s; give each job its own name")
            outputs[out_path.resolve()], names[name] = lineno, lineno
            job = RenderJob(**spec, out=str(out_path))
            check_job(job)
            jobs.append((name, job, None))
        except (json.JSONDecodeError, TypeError, ActorcastError, OSError) as e:
            jobs.append((name, None, f"line {lineno}: {e}"))
        except RecursionError:  # JSON nested deeper than Python's parser goes
            jobs.append((name, None, f"line {lineno}: the JSON is nested too deep; give one flat object per job"))
    if not jobs:
        raise InputError(f"jobs file {path} has no jobs (it is empty or blank): put one JSON object per line, "
                         "e.g. {\"audio\": \"speech.wav\"}")
    return jobs


def _default_out(name: str | None, audio_stem: str, lineno: int, out_dir: Path, taken: dict) -> str:
    """NAME.mp4, else AUDIO-STEM.mp4, else (another line writes that) AUDIO-STEM_LINE.mp4."""
    if name is not None:
        return f"{name}.mp4"
    if (out_dir / f"{audio_stem}.mp4").resolve() not in taken:
        return f"{audio_stem}.mp4"
    return f"{audio_stem}_{lineno}.mp4"


@dataclasses.dataclass(frozen=True)
class ShippedJob:
    """A job with its input files' bytes, to run on a node that may not see the driver's disk."""

    job: RenderJob
    fingerprint: str
    files: dict  # the job's field ("audio", "image") -> (file name, bytes)
    weights: WeightsBundle | None

    @classmethod
    def read(cls, job: RenderJob) -> "ShippedJob":
        files = {key: (Path(path).name, Path(path).read_bytes())
                 for key, path in (("audio", job.audio), ("image", job.image)) if path}
        weights = WeightsBundle.read(Path(job.weights)) if job.weights else None
        return cls(job, job.fingerprint(), files, weights)


def run_job(shipped: ShippedJob) -> dict:
    """One render, in-process on whichever node runs it, in a folder of its own there; returns the status row
    and the mp4's bytes (user errors come back as a result, not a crash)."""
    import ray

    t0 = time.monotonic()
    node = ray.get_runtime_context().get_node_id()
    folder = Path(tempfile.gettempdir()) / "actorcast-batch" / shipped.fingerprint
    try:
        folder.mkdir(parents=True, exist_ok=True)
        local = {}
        for key, (name, data) in shipped.files.items():
            path = folder / f"in-{key}-{name}"
            path.write_bytes(data)
            os.utime(path, ns=(0, 0))  # the same fingerprint each time: a rerun here resumes from folder/work
            local[key] = str(path)
        with local_weights(shipped.weights) as weights:
            job = dataclasses.replace(shipped.job, **local, out=str(folder / "out.mp4"),
                                      weights=str(weights) if weights else None)
            result = render(job, work_dir=folder / "work", progress=False)
        mp4 = Path(result["out"]).read_bytes()
        shutil.rmtree(folder, ignore_errors=True)
        return {"status": "done", "frames": result["frames"], "seconds": result["seconds"],
                "wall_s": round(time.monotonic() - t0, 2), "node": node, "mp4": mp4}
    except (ActorcastError, OSError) as e:
        if not (folder / "work").is_dir():  # nothing to resume from: the copied inputs go too
            shutil.rmtree(folder, ignore_errors=True)
        return {"status": "failed", "error": str(e).splitlines()[0], "wall_s": round(time.monotonic() - t0, 2),
                "node": node}


def run_batch(jobs_file: Path, out_dir: Path, address: str | None = None, cpus_per_job: float = 1.0) -> list[dict]:
    """Run every job of `jobs_file` as Ray tasks (Ray starts, or joins `address`, only when a job is left to
    run); returns one status row per job, in file order."""
    from actorcast.cluster.ray_connect import ensure_ray

    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = parse_jobs(jobs_file, out_dir)
    status_path = out_dir / STATUS_FILE
    status = json.loads(status_path.read_text()) if status_path.is_file() else {}
    rows, todo, pending = {}, [], {}
    for name, job, error in jobs:
        if job is None:
            rows[name] = {"job": name, "status": "failed", "error": error}
        elif status.get(name, {}).get("fingerprint") == _fingerprint(job) and Path(job.out).is_file():
            rows[name] = {**status[name], "job": name, "status": "skipped"}
        else:
            todo.append((name, job))
    if todo:
        ensure_ray(address)  # before Ray is imported here: a local start sets Ray's loopback-only switch first
        import ray

        cpus_per_job = _fit_job_cpus(cpus_per_job)
        remote = ray.remote(run_job).options(num_cpus=cpus_per_job, max_retries=3, scheduling_strategy="SPREAD")
        pending = {remote.remote(ShippedJob.read(job)): (name, job) for name, job in todo}
    total = len(jobs)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        name, job = pending.pop(ready[0])
        try:
            row = ray.get(ready[0])
        except ray.exceptions.RayError as e:  # the worker died (after retries) or the task crashed
            own = project_error(e)
            row = {"status": "failed", "error": str(own).splitlines()[0] if own is not None else
                   f"{e.__class__.__name__}: {str(e).strip().splitlines()[-1]}"}
        mp4 = row.pop("mp4", None)
        if mp4 is not None:
            _write_atomic(Path(job.out), mp4)
        rows[name] = {"job": name, "out": job.out, **row}
        if row["status"] == "done":
            status[name] = {**rows[name], "fingerprint": _fingerprint(job)}
            _write_status(status_path, status)
        print(f"[{sum(r['status'] != 'skipped' for r in rows.values())}/{total}] {name}: {row['status']}"
              + (f" ({row['error']})" if row["status"] == "failed" else f" ({row['seconds']:.1f} s video in "
                                                                         f"{row['wall_s']:.1f} s)"), flush=True)
    return [rows[name] for name, _, _ in jobs]


def _fit_job_cpus(cpus_per_job: float) -> float:
    """A job's CPUs, at most what the largest alive node has (a task asking for more would wait for ever); one
    line when no node has a CPU at all. Jobs queue for their turn, so nodes are compared by size, not by what
    other jobs leave free now."""
    import ray

    largest = max((node["Resources"].get("CPU", 0.0) for node in ray.nodes() if node.get("Alive")), default=0.0)
    if largest <= 0:
        raise ActorcastError("no node of the Ray cluster has a CPU for the jobs: add a node with CPUs "
                             "(`ray start --num-cpus N`), or leave --address out to run them here")
    if largest < cpus_per_job:
        log.info("each job asks for %g CPU, the largest node's share (instead of %g)", largest, cpus_per_job)
    return min(cpus_per_job, largest)


def _fingerprint(job: RenderJob) -> str:
    try:
        return job.fingerprint()
    except OSError:
        return ""


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _write_status(path: Path, status: dict) -> None:
    tmp = path.with_suffix(".part")
    tmp.write_text(json.dumps(status, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def summary_table(rows: list[dict]) -> str:
    """A plain-text table: job, status, video seconds, wall seconds, error."""
    header = ("job", "status", "video s", "wall s", "error")
    lines = [(r["job"], r["status"], f"{r['seconds']:.1f}" if "seconds" in r else "-",
              f"{r['wall_s']:.1f}" if "wall_s" in r else "-", r.get("error", "")) for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)][:-1]  # the last column is not padded
    rule = tuple("-" * w for w in widths) + ("-----",)

    def row(cells) -> str:
        return "  ".join([f"{c:<{w}}" for c, w in zip(cells, widths)] + [str(cells[-1])]).rstrip()
    return "\n".join(row(cells) for cells in [header, rule, *lines])
