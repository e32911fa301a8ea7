"""The `actorcast` command line: one subcommand per job; user errors become one line and exit code 2.

Each command is a module of this package named after it (`actorcast render` is cluster/cli/render.py) with an
`add_parser(sub)` that registers it; the work itself lives in the runtime and cluster modules they call.
"""

import argparse
import errno
import importlib
import logging
import sys
from pathlib import Path

from actorcast.cluster.ray_connect import ray_logs_note
from actorcast.actors.executor import project_error
from actorcast.models.errors import ConfigError, InputError

EXIT_USER_ERROR = 2
# The subcommands in the order `actorcast --help` lists them; each is the module of the same name here.
COMMANDS = ("setup", "data", "train", "eval", "render", "batch", "serve", "call", "bench", "cluster")


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line that points at --help."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        sys.exit(EXIT_USER_ERROR)


def build_parser() -> argparse.ArgumentParser:
    """The full parser; each command module adds its own subcommand."""
    parser = _Parser(prog="actorcast", description="Real-time talking avatars: data, training, rendering, live calls.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--version", action="version", version=f"actorcast {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for command in COMMANDS:
        importlib.import_module(f"{__name__}.{command}").add_parser(sub)
    return parser


def _version() -> str:
    from actorcast.cluster.ray_connect import installed_version

    return installed_version()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `actorcast` console script."""
    args = build_parser().parse_args(argv)
    args.command_line = ["actorcast", *(sys.argv[1:] if argv is None else argv)]  # what ran: a run's record
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.run(args) or 0)
    except OSError as e:  # disk full, permission denied, ... while writing outputs
        sys.stderr.write(f"actorcast: error: {describe_os_error(e)}{_notes(e)}\n")
        return EXIT_USER_ERROR
    except Exception as e:
        own = project_error(e)  # ours, possibly inside a Ray task, actor or Train worker error
        if own is None:  # a bug: its traceback is what a report needs, with Ray's logs when Ray ran
            logs = ray_logs_note()
            if logs:
                sys.stderr.write(f"actorcast: {logs}\n")
            raise
        logs = None if isinstance(own, (InputError, ConfigError)) else ray_logs_note()  # bad input: no help there
        sys.stderr.write(f"actorcast: error: {own}{_notes(own, e)}{'; ' + logs if logs else ''}\n")
        return EXIT_USER_ERROR
    except KeyboardInterrupt as e:  # a job that can be resumed says how in a note
        sys.stderr.write(f"actorcast: interrupted{_notes(e)}\n")
        return 130


# errno values that mean "no room": everything else (no such folder, permission, read-only, /proc) is a path
# that cannot be written, and freeing space would not help.
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def describe_os_error(e: OSError) -> str:
    """One line for an OSError met while writing: what failed, where, and what to do about it."""
    what = e.strerror or str(e)
    if e.errno in _NO_SPACE:
        where = f" ({e.filename})" if e.filename else ""
        return f"{what}{where}: free space or choose another path"
    if e.filename:
        folder = Path(e.filename).parent
        return f"{folder} cannot be written ({what}: {e.filename}): choose another path or folder"
    return f"{what}: check that the paths you gave can be read and written"


def _notes(*errors: BaseException) -> str:
    """What a job added to its error on the way out (e.g. how a rerun resumes), on the same line."""
    notes = dict.fromkeys(n for e in errors for n in getattr(e, "__notes__", ()))
    return "".join(f"; {note}" for note in notes)
