"""`actorcast train` on Ray: two DeepSpeed workers, checkpoint, export, and the launcher's one-line errors."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from actorcast.cluster.train import drop_progress_after, latest_complete_checkpoint, launch
from actorcast.models.checkpoint import load_weights
from actorcast.models.probe import Probe, ProbeConfig
from actorcast.models.training.train import TrainConfig
from tests.netcheck import non_loopback_listeners

ROOT = Path(__file__).resolve().parent.parent


def test_a_resume_keeps_the_progress_log_up_to_its_checkpoint(tmp_path):
    """Resumed from step 20, the run redoes 30 and 40: their old lines go (and a line cut short by a crash), the
    earlier ones stay as they were; a log with nothing after the step is left untouched."""
    import json

    log = tmp_path / "progress.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in (10, 20, 30, 40)]
    log.write_text("\n".join(lines) + '\n{"step": 4')
    drop_progress_after(log, 20)
    assert log.read_text() == "\n".join(lines[:2]) + "\n"
    before = log.stat().st_mtime_ns
    drop_progress_after(log, 40)
    assert log.stat().st_mtime_ns == before and log.read_text() == "\n".join(lines[:2]) + "\n"
    drop_progress_after(tmp_path / "none.jsonl", 5)  # no log yet: nothing to do
    assert not (tmp_path / "none.jsonl").exists()


@pytest.mark.slow
def test_ray_train_two_workers_checkpoint_and_export(ray_local, tmp_path):
    cfg = TrainConfig(stage="probe", steps=4, batch_size=4, size=64, checkpoint_every=2, log_every=1,
                      out_dir=str(tmp_path / "run"), device="cpu")
    metrics = launch(cfg, workers=2, resume=False, address=None)
    assert metrics["step"] == 4 and "eval_jaw_r" in metrics
    probe, config = load_weights(tmp_path / "run", "probe", ProbeConfig, Probe)
    assert probe(torch.rand(2, 3, 64, 64)).shape == (2, 16)
    checkpoints = sorted(p for p in (tmp_path / "run" / "ray" / "run").glob("checkpoint_*") if p.is_dir())
    assert len(checkpoints) >= 2
    # Both ranks' ZeRO optimizer shards are in the reported checkpoint.
    shards = list(checkpoints[-1].rglob("*optim_states.pt"))
    assert len(shards) == 2, shards
    assert non_loopback_listeners() == []
    # A restart or --resume takes the newest checkpoint that holds every rank's shard: one whose rank-1 shard
    # never arrived (its node was lost) is passed over for the one before.
    run_dir = tmp_path / "run" / "ray" / "run"
    assert latest_complete_checkpoint(run_dir) == checkpoints[-1]
    next(checkpoints[-1].rglob("zero_pp_rank_1_*optim_states.pt")).unlink()
    assert latest_complete_checkpoint(run_dir) == checkpoints[-2]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "actorcast.cluster.cli", "train", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("args, message", [
    (["--stage", "vocoder"], "invalid choice"),
    (["--stage", "probe", "--preset", "huge"], "invalid choice"),
    (["--stage", "motion", "--steps", "2"], "needs --weights"),
    (["--stage", "probe", "--data", "/nonexistent"], "synthetic renders only"),
    (["--stage", "motion", "--tts-share", "1.5"], "tts_share must be in"),
    (["--stage", "motion", "--weights", "models/weights/tiny", "--distill-steps", "1"], "give it as --init DIR"),
    (["--stage", "probe", "--distill-steps", "2"], "for the motion stage only"),
    (["--stage", "probe", "--workers", "64", "--steps", "1"], "more than the cluster can place"),
    (["--stage", "probe", "--address", "127.0.0.1:1", "--steps", "1"], "cannot reach the Ray cluster"),
])
def test_train_bad_input_is_one_line(tmp_path, args, message):
    result = _cli(*args, "--out", str(tmp_path / "o"))
    assert result.returncode != 0
    lines = [line for line in result.stderr.strip().splitlines() if "WARNING" not in line and line.strip()]
    assert lines and message in lines[-1], result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_finished_run_resumes_from_its_last_checkpoint(tmp_path):
    """A run of 12 steps, then the same --out: refused without --resume; with --resume and --steps 24 it goes on
    from its step-12 checkpoint, not from step 1. (Ctrl-C in mid-run raced the run itself: on a quiet CI machine
    the probe's steps finished before the first checkpoint could be seen, so the run here ends on its own.)"""
    import json

    out = tmp_path / "run"
    args = ["--stage", "probe", "--batch-size", "2", "--checkpoint-every", "4", "--out", str(out)]
    first = _cli(*args, "--steps", "12")
    assert first.returncode == 0, first.stderr
    progress = out / "progress.jsonl"
    done = [json.loads(x)["step"] for x in progress.read_text().splitlines()]
    assert done and max(done) == 12
    again = _cli(*args, "--steps", "12")
    assert again.returncode == 2 and "--resume" in again.stderr  # a second plain run refuses to overwrite
    resumed = _cli(*args, "--steps", "24", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    steps = [json.loads(x)["step"] for x in progress.read_text().splitlines()]
    after = steps[len(done):]
    assert after and after[-1] == 24
    assert min(after) > 12  # continued from the step-12 checkpoint, not from the start
    assert (out / "probe.safetensors").is_file()


@pytest.mark.slow
def test_a_run_stopped_by_ctrl_c_resumes_from_its_last_checkpoint(tmp_path):
    """Ctrl-C once Ray has persisted a checkpoint: the run stops with a note, not a traceback, and --resume goes on
    from the newest whole checkpoint. The run is far longer than the test waits (on a quiet machine 80 probe steps
    were done before the driver saw the first checkpoint), and the resumed run is cut short with --steps."""
    import json
    import signal
    import time

    from actorcast.cluster.train import RUN_NAME, latest_complete_checkpoint
    from actorcast.models.training.train import STATE_FILE

    out = tmp_path / "run"
    args = ["--stage", "probe", "--batch-size", "2", "--checkpoint-every", "4", "--out", str(out)]
    # A shell that starts commands in the background (CI's may) leaves them ignoring SIGINT, and children inherit
    # that: the run gets Ctrl-C's default back, as a terminal would give it.
    proc = subprocess.Popen([sys.executable, "-m", "actorcast.cluster.cli", "train", *args, "--steps", "20000"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if any(out.glob(f"ray/{RUN_NAME}/checkpoint_*/{STATE_FILE}")):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    try:
        _, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()  # never leave a 20,000-step run behind
        raise
    assert proc.returncode != 0 and "interrupted" in stderr and "Traceback" not in stderr, stderr[-3000:]
    progress = out / "progress.jsonl"
    done = [json.loads(x)["step"] for x in progress.read_text().splitlines()]
    assert max(done, default=0) < 20000, "the run finished before it could be interrupted"
    last = latest_complete_checkpoint(out / "ray" / RUN_NAME)
    assert last is not None, "no whole checkpoint was left behind"
    saved = json.loads((last / STATE_FILE).read_text())["step"]
    resumed = _cli(*args, "--steps", str(saved + 8), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from the checkpoint of step {saved}" in resumed.stdout, resumed.stdout
    steps = [json.loads(x)["step"] for x in progress.read_text().splitlines()]
    # the log keeps the steps up to the checkpoint and the resumed ones, each once: the steps the interrupted run
    # made after its checkpoint were redone, and their old lines are gone
    assert [s for s in steps if s <= saved] == [s for s in done if s <= saved], (done, steps)
    after = [s for s in steps if s > saved]
    assert after and after[-1] == saved + 8 and steps == sorted(set(steps)), steps
    assert (out / "probe.safetensors").is_file()


@pytest.mark.slow
def test_motion_stage_on_ray_reads_weights_given_by_a_relative_path(ray_local, tmp_path, monkeypatch):
    """Ray Train workers do not run in the driver's working directory: `--weights runs/x` must still reach them."""
    from actorcast.models.checkpoint import save_weights
    from actorcast.models.motion_ae import MOTION_AE_PRESETS, MotionEncoder

    encoder = MotionEncoder(MOTION_AE_PRESETS["tiny"])
    save_weights(tmp_path / "dec", "motion_encoder", encoder, encoder.config, {"preset": "tiny", "latent": "params"})
    monkeypatch.chdir(tmp_path)
    cfg = TrainConfig(stage="motion", steps=2, batch_size=4, size=64, checkpoint_every=2, log_every=1, clips=2,
                      clip_seconds=2.0, window_frames=16, weights="dec", out_dir="motion", device="cpu")
    metrics = launch(cfg, workers=1, resume=False, address=None)
    assert metrics["step"] == 2 and "eval_loss" in metrics
    assert (tmp_path / "motion" / "motion_generator.safetensors").is_file()
