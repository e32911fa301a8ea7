"""The wheel, built from a clean clone: one top-level package, `actorcast`, carrying what the program reads at
run time; installed into a fresh venv that sees nothing but the declared dependencies, its command runs from
another folder on the installed copy.

The fresh venv gets no download: the wheel goes in with --no-deps, and the dependencies it declares (and theirs,
as their metadata says) are linked in from the project's venv, one top-level entry of each distribution's
RECORD at a time. So a run-time import of a package that is not a declared dependency fails here too.
"""

import ast
import importlib.metadata as md
import json
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("models", "actors", "streaming", "cluster")  # the folders that become actorcast.<name>
# The `pipecat` and `livekit` extras' packages; and the workers (NAME_worker.py), which run in the MediaPipe venv that
# `actorcast setup` makes from meter-requirements.txt, not in the one the package is installed in.
EXTRAS = {"pipecat", "livekit"}
IN_MEDIAPIPE_VENV = "*_worker.py"
RUNTIME_FILES = [
    *(f"actorcast/models/weights/tiny/{m}.{ext}" for m in ("audio_encoder", "motion_encoder", "motion_generator",
                                                            "decoder") for ext in ("json", "safetensors")),
    "actorcast/streaming/static/index.html", "actorcast/streaming/static/client.js",
    "actorcast/models/meter-requirements.txt", "actorcast/models/training/meter_worker.py",
    "actorcast/models/photo/face_worker.py", "actorcast/cluster/cli/__init__.py",
]


def build_wheel(folder: Path) -> Path:
    """The wheel of the committed tree: a clone (so untracked and ignored files stay out), built with this venv's
    setuptools (no build isolation: nothing is downloaded)."""
    subprocess.run(["git", "clone", "-q", str(ROOT), str(folder / "src")], check=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(folder / "dist"), str(folder / "src")], check=True, capture_output=True)
    (wheel,) = (folder / "dist").glob("actorcast-*.whl")
    return wheel


def dependency_closure(requirements: list[str]) -> list[md.Distribution]:
    """The installed distributions that `requirements` need, with their own requirements, extras followed."""
    found, todo, seen = {}, [(Requirement(r), ("",)) for r in requirements], set()
    while todo:
        req, extras = todo.pop()
        if req.marker and not any(req.marker.evaluate({"extra": e}) for e in extras):
            continue
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        dist = md.distribution(req.name)  # PackageNotFoundError: this venv lacks a declared dependency
        found[key[0]] = dist
        todo += [(Requirement(r), ("", *req.extras)) for r in dist.requires or []]
    return list(found.values())


def install_fresh(wheel: Path, folder: Path) -> Path:
    """A new venv at `folder` with the wheel installed and only its declared dependencies importable; its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    "--no-index", str(wheel)], check=True, capture_output=True)
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    requires = [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    deps = folder / "deps"
    deps.mkdir()
    for dist in dependency_closure(requires):
        site = Path(dist.locate_file(""))
        for top in {f.parts[0] for f in dist.files or [] if f.parts[0] != ".."}:
            if (site / top).exists() and not (deps / top).exists():
                (deps / top).symlink_to(site / top)
    (site_packages,) = (folder / "lib").glob("python3*/site-packages")
    (site_packages / "declared_dependencies.pth").write_text(f"{deps}\n")
    return python


def imported_distributions() -> dict[str, str]:
    """Every third-party top-level module that the package code imports (anywhere, lazily too; the workers that
    run in the MediaPipe venv left out), as the distribution that provides it here: {distribution: a file}."""
    providers = md.packages_distributions()
    found = {}
    for folder in PACKAGES:
        for path in sorted(set((ROOT / folder).rglob("*.py")) - set((ROOT / folder).rglob(IN_MEDIAPIPE_VENV))):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for top in {n.split(".")[0] for n in names} - set(sys.stdlib_module_names) - {"actorcast", *EXTRAS}:
                    dist = providers.get(top, [top])[0]  # not installed here: named by its module
                    found.setdefault(canonicalize_name(dist), str(path.relative_to(ROOT)))
    return found


def test_every_imported_package_is_a_declared_dependency():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {canonicalize_name(Requirement(r).name) for r in declared}
    used = imported_distributions()
    assert {"torch", "aiortc", "av"} <= set(used)
    assert {d: f for d, f in used.items() if d not in names} == {}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.mark.slow
def test_the_wheel_holds_one_package_and_its_run_time_files(built):
    with zipfile.ZipFile(built) as z:
        names = z.namelist()
        entry_points = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert {n.split("/")[0] for n in names} == {"actorcast", built.name.split("-py3")[0] + ".dist-info"}
    assert [f for f in RUNTIME_FILES if f not in names] == []
    assert "actorcast = actorcast.cluster.cli:main" in entry_points


@pytest.mark.slow
def test_the_installed_wheel_runs_from_another_folder(built, tmp_path):
    python = install_fresh(built, tmp_path / "venv")
    work = tmp_path / "elsewhere"
    work.mkdir()
    run = subprocess.run([str(tmp_path / "venv" / "bin" / "actorcast"), "--help"], cwd=work, capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert all(c in run.stdout for c in ("setup", "render", "serve"))
    probe = ("import importlib.util, json; import actorcast.cluster.cli as cli; "
             "from actorcast.actors.loading import resolve_weights; from actorcast.streaming.app import STATIC; "
             "print(json.dumps({'cli': cli.__file__, 'weights': str(resolve_weights(None)), "
             "'page': (STATIC / 'index.html').is_file(), "
             f"'others': [n for n in {PACKAGES} if importlib.util.find_spec(n)]}}))")
    run = subprocess.run([str(python), "-c", probe], cwd=work, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    found = json.loads(run.stdout)
    site = str(next((tmp_path / "venv" / "lib").glob("python3*/site-packages")))
    assert found["cli"] == f"{site}/actorcast/cluster/cli/__init__.py"
    assert found["weights"] == f"{site}/actorcast/models/weights/tiny"
    assert found["page"] is True and found["others"] == []
