"""The spread calibration of generated speech parameters (models/calibration.py): its fit, its storage in the
generator's export, and the sampler applying it to what it returns while the KV cache keeps the raw output."""

import json

import pytest
import torch

from actorcast.actors.loading import load_model
from actorcast.models.calibration import SPEECH_PARAMS, SpreadCalibration
from actorcast.models.data.params import PARAM_INDEX
from actorcast.models.errors import InputError
from actorcast.models.kv_cache import CacheConfig
from actorcast.models.sampling import MotionStream, SamplerConfig, push_many
from tests.untrained import write_untrained_weights

DIMS = [PARAM_INDEX[n] for n in SPEECH_PARAMS]


def test_fit_gives_the_speech_dims_the_true_mean_and_spread_and_leaves_the_rest():
    g = torch.Generator().manual_seed(0)
    truth = torch.rand(500, 32, generator=g) * 1.6 - 0.8
    made = 0.1 + 0.7 * truth + 0.05 * torch.randn(500, 32, generator=g)  # shrunk towards a mean, a little noise
    cal = SpreadCalibration.fit(made, truth)
    assert cal.dims == tuple(DIMS)
    out = cal.apply(made)
    assert torch.allclose(out[:, DIMS].mean(0), truth[:, DIMS].mean(0), atol=1e-4)
    assert torch.allclose(out[:, DIMS].std(0), truth[:, DIMS].std(0), atol=1e-4)
    rest = [i for i in range(32) if i not in DIMS]
    assert torch.equal(out[:, rest], made[:, rest])
    assert (made[:, DIMS].std(0) < 0.8 * truth[:, DIMS].std(0)).all()  # the fit had something to restore


def test_apply_clamps_to_the_normalised_range():
    cal = SpreadCalibration((0,), (2.0,), (0.0,))
    z = torch.tensor([[0.3, 5.0], [-0.8, -5.0]])
    assert torch.equal(cal.apply(z), torch.tensor([[0.6, 5.0], [-1.0, -5.0]]))


def test_meta_round_trip_and_bad_meta():
    cal = SpreadCalibration((0, 2), (1.1, 1.3), (0.05, -0.1))
    assert SpreadCalibration.from_meta(json.loads(json.dumps(cal.to_meta()))) == cal
    assert SpreadCalibration.from_meta(None) is None
    with pytest.raises(InputError, match="unreadable"):
        SpreadCalibration.from_meta({"dims": [0]})
    with pytest.raises(InputError, match="scales"):
        SpreadCalibration((0,), (0.0,), (0.0,))


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Untrained weights, and a copy whose generator export carries a calibration."""
    plain = write_untrained_weights(tmp_path_factory.mktemp("plain"))
    calibrated = write_untrained_weights(tmp_path_factory.mktemp("calibrated"))
    header = json.loads((calibrated / "motion_generator.json").read_text())
    header["meta"]["calibration"] = SpreadCalibration(tuple(DIMS), (1.5, 1.2, 2.0), (0.1, -0.05, 0.0)).to_meta()
    (calibrated / "motion_generator.json").write_text(json.dumps(header))
    return plain, calibrated


def _stream(model) -> MotionStream:
    z_ref = torch.randn(1, model.config.d_motion, generator=torch.Generator().manual_seed(7))
    return MotionStream(model, z_ref, None, CacheConfig("deep_sink_pc", budget_frames=12, sink_frames=4,
                                                        compress_tokens=4, query_tokens=4), SamplerConfig(seed=3))


def test_the_stream_returns_calibrated_latents_and_caches_the_raw_ones(weights):
    """Every chunk of a calibrated generator is the calibration of what the same generator gives without one; were
    the calibrated values written into the cache, the chunks after the first would differ (the cache evicts and
    compresses here, so all of it matters)."""
    plain, calibrated = (load_model("motion_generator", w) for w in weights)
    assert plain.calibration is None and calibrated.calibration is not None
    feats = torch.randn(1, 60, plain.config.d_audio, generator=torch.Generator().manual_seed(1))
    raw, cal = _stream(plain), _stream(calibrated)
    z_raw = torch.cat((raw.push(feats), raw.flush()), 1)
    z_cal = torch.cat((cal.push(feats), cal.flush()), 1)
    assert z_raw.shape == z_cal.shape == (1, 60, plain.config.d_motion)
    assert torch.allclose(z_cal, calibrated.calibration.apply(z_raw), atol=1e-6)
    assert (z_cal[..., DIMS] - z_raw[..., DIMS]).abs().max() > 0.05


def test_batched_streams_are_calibrated_as_alone(weights):
    calibrated = load_model("motion_generator", weights[1])
    d = calibrated.config.d_audio
    feats = [torch.randn(1, 24, d, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    together = push_many([_stream(calibrated), _stream(calibrated)], feats)
    alone = [_stream(calibrated).push(f) for f in feats]
    for a, b in zip(together, alone):
        assert torch.allclose(a, b, atol=1e-4)
    plain = load_model("motion_generator", weights[0])
    raw = push_many([_stream(plain), _stream(plain)], feats)
    assert torch.allclose(together[0], calibrated.calibration.apply(raw[0]), atol=1e-4)


def test_a_motion_export_on_parameter_latents_fits_its_calibration_on_raw_output(tmp_path):
    """The motion stage's export (decoder trained on the parameters) stores a calibration fitted on training clips
    from the generator's raw output, even when the generator already carries one; `recalibrate` re-fits the same."""
    from actorcast.models.checkpoint import save_weights
    from actorcast.models.motion_ae import MOTION_AE_PRESETS, MotionEncoder
    from actorcast.models.training.motion_stage import MotionStage, MotionTrainer, main
    from actorcast.models.training.train import TrainConfig

    torch.manual_seed(0)
    decoder_export = tmp_path / "decoder-export"
    save_weights(decoder_export, "motion_encoder", MotionEncoder(MOTION_AE_PRESETS["tiny"]), MOTION_AE_PRESETS["tiny"],
                 {"latent": "params"})
    cfg = TrainConfig(stage="motion", steps=1, clips=3, clip_seconds=2.0, size=64, weights=str(decoder_export),
                      out_dir=str(tmp_path / "run"), device="cpu")
    trainer = MotionTrainer("tiny")
    with torch.no_grad():  # an untrained head barely moves: give the speech dims some spread to calibrate
        trainer.generator.head.bias[DIMS] = 0.0
        trainer.generator.head.weight[DIMS] *= 50
    trainer.generator.calibration = SpreadCalibration(tuple(DIMS), (3.0, 3.0, 3.0), (0.0, 0.0, 0.0))
    out = tmp_path / "export"
    MotionStage.export(trainer, out, cfg, {"loss": 1.0})
    assert trainer.generator.calibration.scale == (3.0, 3.0, 3.0)  # restored after the fit
    fitted = SpreadCalibration.from_meta(json.loads((out / "motion_generator.json").read_text())["meta"]["calibration"])
    assert fitted.dims == tuple(DIMS) and fitted != trainer.generator.calibration
    assert load_model("motion_generator", out).calibration == fitted

    save_weights(out, "motion_encoder", MotionEncoder(MOTION_AE_PRESETS["tiny"]), MOTION_AE_PRESETS["tiny"],
                 {"latent": "params"})
    (out / "motion_encoder.safetensors").write_bytes((decoder_export / "motion_encoder.safetensors").read_bytes())
    assert main([str(out), "--clips", "3"]) == 0
    again = load_model("motion_generator", out).calibration
    assert again.dims == fitted.dims
    assert max(abs(a - b) for a, b in zip(again.scale, fitted.scale)) < 1e-6


def test_recalibrate_refuses_an_export_without_parameter_latents(tmp_path, capsys):
    from actorcast.models.training.motion_stage import main

    weights = write_untrained_weights(tmp_path / "w")
    assert main([str(weights)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "latent 'params'" in err and "Traceback" not in err
