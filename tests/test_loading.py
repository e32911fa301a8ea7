"""Which weights a stage runs: the shipped ones by default, an error (never a quiet untrained run) when they are
missing, and untrained models only when asked for by name."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from actorcast.actors import loading
from actorcast.actors.loading import SHIPPED_ROOT, UNTRAINED, load_model, resolve_weights
from actorcast.models.errors import ConfigError, InputError

SAMPLE = Path(__file__).resolve().parent.parent / "assets" / "sample_speech.wav"


def test_the_default_is_the_shipped_weights():
    assert resolve_weights(None) == SHIPPED_ROOT / "tiny"
    shipped = load_model("decoder", resolve_weights(None))
    untrained = load_model("decoder", resolve_weights(UNTRAINED))
    assert not torch.equal(next(shipped.parameters()), next(untrained.parameters()))


def test_missing_shipped_weights_are_an_error(monkeypatch, tmp_path):
    (tmp_path / "tiny").mkdir()
    monkeypatch.setattr(loading, "SHIPPED_ROOT", tmp_path)
    with pytest.raises(InputError) as err:
        resolve_weights(None)
    assert str(err.value) == (f"the shipped tiny weights are missing from {tmp_path}/tiny (no audio_encoder): "
                              "reinstall actorcast, or pass --weights DIR written by `actorcast train`")


def test_a_preset_without_shipped_weights_is_an_error():
    with pytest.raises(InputError) as err:
        resolve_weights(None, "base")
    assert str(err.value) == ("no weights ship for preset base: train them (`actorcast train --preset base`) and "
                              "pass --weights DIR, or --weights untrained for a test run")


def test_untrained_only_by_name_and_seeded():
    assert resolve_weights("untrained", "base") == UNTRAINED
    a, b = (load_model("motion_generator", UNTRAINED, "tiny") for _ in range(2))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(ConfigError):
        load_model("motion_generator", None)


def test_render_without_the_shipped_weights_stops_at_once(tmp_path):
    # The render command of an install whose weights folder is gone: one line, before any model or Ray starts.
    script = ("import sys; from pathlib import Path; from actorcast.actors import loading; "
              f"loading.SHIPPED_ROOT = Path({str(tmp_path)!r}); from actorcast.cluster.cli import main; "
              f"sys.exit(main(['render', {str(SAMPLE)!r}, '-o', {str(tmp_path / 'x.mp4')!r}]))")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.splitlines() == [f"actorcast: error: the shipped tiny weights are missing from {tmp_path}/tiny "
                                       "(no audio_encoder): reinstall actorcast, or pass --weights DIR written by "
                                       "`actorcast train`"]
    assert not (tmp_path / "x.mp4").exists()
