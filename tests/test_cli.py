"""The `actorcast` command line as a user meets it: one-line errors that say what to do, checks before start-up."""

import errno
import os
from pathlib import Path

import pytest

from actorcast.cluster.cli import describe_os_error, main
from tests.helpers import write_pcm_wav


def _run(capsys, *argv: str) -> tuple[int, list[str]]:
    """(exit code, stderr lines without progress bars) of `actorcast ARGV...` in this process."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse refused an argument
        code = e.code
    err = [line for line in capsys.readouterr().err.splitlines() if line and not line.startswith("render:")]
    return code, err


# ---- a folder that cannot be written is not a full disk ----------------------------------------------------------

@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_unwritable_output_folder_is_named_as_such(tmp_path, capsys):
    code, err = _run(capsys, "render", write_pcm_wav(tmp_path / "a.wav", 16000), "-o", "/proc/x.mp4", "--in-process")
    assert code == 2 and len(err) == 1, err
    assert "/proc cannot be written" in err[0] and "space" not in err[0]
    assert not list(Path("/proc").glob(".x.mp4*"))


def test_os_errors_say_space_only_when_space_is_the_problem():
    full = describe_os_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/o.mp4"))
    missing = describe_os_error(OSError(errno.ENOENT, os.strerror(errno.ENOENT), "/proc/.x.mp4.work"))
    denied = describe_os_error(OSError(errno.EACCES, os.strerror(errno.EACCES), "/srv/out/o.mp4"))
    assert "free space" in full
    assert "/proc cannot be written" in missing and "space" not in missing
    assert "/srv/out cannot be written" in denied and "space" not in denied


# ---- every argument and input file is checked before Ray starts or weights load ----------------------------------

@pytest.fixture
def nothing_may_start(monkeypatch):
    """Fail the test if Ray starts or any stage loads weights."""
    import ray

    from actorcast.actors import engine, loading

    def tripwire(*args, **kwargs):
        raise AssertionError("started Ray or loaded weights before the arguments were checked")

    monkeypatch.setattr(ray, "init", tripwire)
    monkeypatch.setattr(engine.Engine, "__init__", tripwire)
    monkeypatch.setattr(loading, "load_model", tripwire)


@pytest.mark.parametrize("case", ["missing_audio", "empty_wav", "20ms_wav", "bad_image", "negative_identity",
                                  "weights_dir_without_weights", "bad_emotion", "foreign_work_dir",
                                  "unwritable_work_dir", "unreachable_address"])
def test_render_checks_everything_before_start_up(tmp_path, capsys, nothing_may_start, case):
    good = write_pcm_wav(tmp_path / "a.wav", 16000)
    args = {
        "missing_audio": [tmp_path / "nope.wav"],
        "empty_wav": [write_pcm_wav(tmp_path / "e.wav", 0)],
        "20ms_wav": [write_pcm_wav(tmp_path / "s.wav", 320)],
        "bad_image": [good, "--image", tmp_path / "a.wav"],
        "negative_identity": [good, "--identity", "-5"],
        "weights_dir_without_weights": [good, "--weights", tmp_path],
        "bad_emotion": [good, "--emotion", "bored"],
        "foreign_work_dir": [good, "--work-dir", tmp_path],
        "unwritable_work_dir": [good, "--work-dir", "/proc/w"],
        "unreachable_address": [good, "--address", "127.0.0.1:9"],
    }[case]
    code, err = _run(capsys, "render", *args, "-o", tmp_path / "o.mp4")  # nothing may start
    assert code == 2 and len(err) == 1 and "error" in err[0], err
    assert not (tmp_path / "o.mp4").exists() and not list(tmp_path.glob(".o.mp4*"))


def test_serve_checks_weights_and_port_before_start_up(tmp_path, capsys, nothing_may_start):
    import socket

    code, err = _run(capsys, "serve", "--weights", tmp_path)
    assert code == 2 and len(err) == 1 and "weights" in err[0], err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code, err = _run(capsys, "serve", "--port", busy.getsockname()[1])
    assert code == 2 and len(err) == 1 and "--port" in err[0], err


def test_serve_runs_its_stages_in_worker_processes_and_ray_only_for_threaded_shards(capsys, monkeypatch):
    from actorcast.actors import engine as engine_module
    from actorcast.actors.loading import motion_config, resolve_weights
    from actorcast.cluster.cli import serve as serve_module

    built = []

    class Recorded:
        def __init__(self, **kwargs):
            built.append({k: kwargs[k] for k in ("shards", "use_ray", "processes", "chunk_frames")})

        def close(self):
            pass

    async def no_server(engine, config, ready=None, app=None):
        pass

    monkeypatch.setattr(engine_module, "Engine", Recorded)
    monkeypatch.setattr(serve_module, "serve", no_server)
    for flags in ([], ["--shards", "2"], ["--stages", "threads"], ["--stages", "threads", "--shards", "2"],
                  ["--latency", "balanced"]):
        assert _run(capsys, "serve", "--port", "0", *flags)[0] == 0
    low = min(motion_config(resolve_weights(None)).trained_chunks)  # the smallest chunk the shipped generator is trained for
    assert built == [{"shards": 1, "use_ray": False, "processes": True, "chunk_frames": low},
                     {"shards": 2, "use_ray": False, "processes": True, "chunk_frames": low},
                     {"shards": 1, "use_ray": False, "processes": False, "chunk_frames": low},
                     {"shards": 2, "use_ray": True, "processes": False, "chunk_frames": low},
                     {"shards": 1, "use_ray": False, "processes": True, "chunk_frames": None}]


# ---- train checks its inputs on the driver; project errors from Ray come out as their one line -------------------

def test_train_refuses_an_empty_data_folder_before_ray_starts(tmp_path, capsys, nothing_may_start):
    (tmp_path / "empty").mkdir()
    code, err = _run(capsys, "train", "--stage", "decoder", "--data", tmp_path / "empty", "--steps", "1",
                     "--out", tmp_path / "run")
    assert code == 2 and err == [f"actorcast: error: data folder {tmp_path / 'empty'} has no video files "
                                 "(.mp4, .mov, .mkv, .webm, .avi)"], err


def test_project_errors_are_unwrapped_from_ray_wrappers():
    from ray.exceptions import RayTaskError
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback
    from ray.train.v2.api.exceptions import ControllerError, WorkerGroupError

    from actorcast.actors.executor import project_error
    from actorcast.models.errors import InputError

    own = InputError("data folder d has no video files")
    task = RayTaskError("worker_loop", "Traceback (most recent call last):\n...\n" * 20, own).as_instanceof_cause()
    assert isinstance(task, InputError) and "\n" in str(task)  # Ray's copy is an InputError that prints 41 lines
    workers = WorkerGroupError("Training failed", {1: UserExceptionWithTraceback(own, "Traceback ...")})
    for wrapped in (task, workers, ControllerError(workers)):
        assert project_error(wrapped) is own
    assert project_error(RuntimeError("a bug")) is None


def test_cli_prints_the_one_line_of_an_error_raised_in_a_ray_task(ray_local, monkeypatch, capsys):
    """A project error raised inside a real Ray task reaches the user as its own line."""
    import argparse

    from actorcast.models.errors import InputError

    @ray_local.remote
    def fails():
        raise InputError("the clip is too short: give at least 40 ms")

    def run(args: argparse.Namespace) -> int:
        return ray_local.get(fails.remote())

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", lambda self, argv=None: argparse.Namespace(
        verbose=False, run=run))
    code, err = _run(capsys, "batch", "x")
    assert code == 2 and err == ["actorcast: error: the clip is too short: give at least 40 ms"], err


# ---- one vocabulary across commands ------------------------------------------------------------------------------

def _subcommands():
    """(name, parser) of every subcommand, nested ones (data preview) included."""
    import argparse

    from actorcast.cluster.cli import build_parser

    todo, found = [("actorcast", build_parser())], []
    while todo:
        name, parser = todo.pop()
        found.append((name, parser))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo += [(f"{name} {sub}", p) for sub, p in action.choices.items()]
    return found


def test_every_option_has_help_and_outputs_are_dash_o_out():
    for name, parser in _subcommands():
        for action in parser._actions:
            if action.help is None and action.option_strings:
                pytest.fail(f"{name} {'/'.join(action.option_strings)} has no help text")
            assert "--output" not in action.option_strings and "--identity-seed" not in action.option_strings
            if "-o" in action.option_strings:
                assert action.option_strings == ["-o", "--out"] and action.metavar == "OUT", name


def test_emotion_choices_are_listed_and_identity_is_one_name():
    from actorcast.models.data.params import EMOTIONS

    parsers = dict(_subcommands())
    for name in ("actorcast render", "actorcast call"):
        help_text = parsers[name].format_help()
        assert "{" + ",".join(EMOTIONS) + "}" in help_text and "--seed" in parsers["actorcast render"].format_help()
        assert "--identity N" in help_text
    batch_help = parsers["actorcast batch"].format_help()
    assert all(f"  {key} " in batch_help for key in ("audio", "image", "identity", "emotion", "out", "name"))


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("actorcast ")


@pytest.mark.parametrize("argv", [["render", "{audio}", "-o", "{tmp}/out.txt"],
                                  ["call", "http://127.0.0.1:9", "--audio", "{audio}", "--record", "{tmp}/r.mkv"],
                                  ["data", "preview", "-o", "{tmp}/p.webm"]])
def test_outputs_not_named_mp4_are_refused(tmp_path, capsys, nothing_may_start, argv):
    audio = write_pcm_wav(tmp_path / "a.wav", 16000)
    code, err = _run(capsys, *(a.format(audio=audio, tmp=tmp_path) for a in argv))
    assert code == 2 and len(err) == 1 and ".mp4" in err[0], err
    assert [p.name for p in tmp_path.iterdir()] == ["a.wav"]


# ---- a local Ray start prints nothing of Ray's; errors name Ray's logs -------------------------------------------

def test_errors_after_ray_started_name_its_logs_and_input_errors_do_not(ray_local, monkeypatch, capsys):
    import argparse

    from actorcast.cluster.ray_connect import ray_driver_log
    from actorcast.models.errors import ActorcastError, InputError

    for error, named in ((ActorcastError("decoder shard decoder0 failed 4 times on frame 8"), True),
                         (InputError("the audio is corrupt"), False)):
        def run(args, error=error):
            raise error

        monkeypatch.setattr(argparse.ArgumentParser, "parse_args", lambda self, argv=None, run=run:
                            argparse.Namespace(verbose=False, run=run))
        code, err = _run(capsys, "batch", "x")
        assert code == 2 and len(err) == 1 and str(error) in err[0], err
        assert ("Ray's logs are in" in err[0] and str(ray_driver_log()) in err[0]) == named, err


@pytest.mark.slow
def test_a_ray_render_prints_only_actorcast_lines(tmp_path):
    """The local default: Ray starts (2 shards) and stops without a line of its own on stdout or stderr."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    audio = write_pcm_wav(tmp_path / "a.wav", 16000)
    run = subprocess.run([sys.executable, "-m", "actorcast.cluster.cli", "render", str(audio), "-o", str(tmp_path / "o.mp4"),
                          "--size", "64", "--shards", "2"], cwd=root, env={**env, "PYTHONPATH": str(root)},
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.splitlines() == [f"{tmp_path / 'o.mp4'}: 25 frames, 1.0 s"]
    others = [line for line in run.stderr.replace("\r", "\n").splitlines() if line and not line.startswith("render:")]
    assert others == [], others


# ---- the fast path is the default: Ray only for --address, shards in processes, batch ----------------------------

def test_render_runs_in_process_by_default_and_on_ray_only_when_asked(tmp_path, capsys, monkeypatch):
    import ray

    from actorcast.cluster.cli import render as render_module

    def no_ray(*args, **kwargs):
        raise AssertionError("a plain render started Ray")

    monkeypatch.setattr(ray, "init", no_ray)
    audio = write_pcm_wav(tmp_path / "a.wav", 16000)
    code, err = _run(capsys, "render", audio, "-o", tmp_path / "o.mp4", "--size", "64")
    assert code == 0 and err == [] and (tmp_path / "o.mp4").is_file()

    asked = []
    monkeypatch.setattr(render_module, "render", lambda job, work_dir, address, use_ray: asked.append(use_ray)
                        or {"out": job.out, "frames": 0, "seconds": 0.0})
    for flags in (["--shards", "2"], ["--shards", "2", "--in-process"], ["--address", "127.0.0.1:6379"], []):
        assert _run(capsys, "render", audio, "-o", tmp_path / "p.mp4", *flags)[0] == 0
    assert asked == [True, False, True, False]
    code, err = _run(capsys, "render", audio, "-o", tmp_path / "p.mp4", "--in-process", "--address", "h:1")
    assert code == 2 and "contradict" in err[0]
