"""The `actorcast` command line as a user meets it: one-line errors that say what to do, checks before start-up."""

import errno
import os
from pathlib import Path

import pytest

from cluster.cli import describe_os_error, main
from tests.test_render import _write_pcm_wav


def _run(capsys, *argv: str) -> tuple[int, list[str]]:
    """(exit code, stderr lines without progress bars) of `actorcast ARGV...` in this process."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse refused an argument
        code = e.code
    err = [line for line in capsys.readouterr().err.splitlines() if line and not line.startswith("render:")]
    return code, err


# ---- issue 11.3: a folder that cannot be written is not a full disk -----------------------------------------

@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_unwritable_output_folder_is_named_as_such(tmp_path, capsys):
    code, err = _run(capsys, "render", _write_pcm_wav(tmp_path / "a.wav", 16000), "-o", "/proc/x.mp4", "--in-process")
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
