"""DeepSpeed training: loss falls, resume is exact, export round-trips, Ray Train runs 2 workers."""

import shutil

import pytest
import torch

from actorcast.models.checkpoint import load_weights, save_weights
from actorcast.models.errors import ConfigError, InputError
from actorcast.models.probe import PROBE_PRESETS, Probe, ProbeConfig
from actorcast.models.training.train import TrainConfig, run_local


def _cfg(tmp_path, stage="probe", **kw) -> TrainConfig:
    base = dict(stage=stage, steps=30, batch_size=8, lr=2e-3, warmup_steps=3, size=64, log_every=1,
                checkpoint_every=1000, out_dir=str(tmp_path / stage), device="cpu")
    return TrainConfig(**{**base, **kw})


def _losses(cfg, resume=False):
    seen = []
    metrics = run_local(cfg, resume=resume, on_report=lambda m: seen.append(m["loss"]))
    return seen, metrics


@pytest.mark.parametrize("stage", ["probe", "decoder"])
def test_loss_falls(tmp_path, stage):
    losses, metrics = _losses(_cfg(tmp_path, stage, steps=40 if stage == "probe" else 25))
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, f"{stage} loss {first:.4f} -> {last:.4f}"
    key = "eval_jaw_r" if stage == "probe" else "eval_psnr_db"
    assert key in metrics
    names = {"probe": ["probe"], "decoder": ["motion_encoder", "decoder"]}[stage]
    for name in names:
        assert (tmp_path / stage / f"{name}.safetensors").is_file()
        assert (tmp_path / stage / f"{name}.json").is_file()


def test_resume_continues_with_identical_parameters(tmp_path):
    straight = _cfg(tmp_path, steps=6, checkpoint_every=3, out_dir=str(tmp_path / "a"))
    run_local(straight)
    # Simulate a run killed after step 3: only the step-3 checkpoint exists; resume must reach the same weights.
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "a" / "checkpoints" / "step_00000003", tmp_path / "b" / "checkpoints" / "step_00000003")
    resumed_losses, _ = _losses(_cfg(tmp_path, steps=6, checkpoint_every=3, out_dir=str(tmp_path / "b")), resume=True)
    assert len(resumed_losses) == 3  # steps 4, 5, 6 only
    a, _ = load_weights(tmp_path / "a", "probe", ProbeConfig, Probe)
    b, _ = load_weights(tmp_path / "b", "probe", ProbeConfig, Probe)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name


def test_resume_refuses_a_checkpoint_of_another_stage(tmp_path):
    run_local(_cfg(tmp_path, steps=2, out_dir=str(tmp_path / "x")))
    other = _cfg(tmp_path, stage="decoder", steps=4, out_dir=str(tmp_path / "x"))
    with pytest.raises(ConfigError, match="another run"):
        run_local(other, resume=True)


def test_export_load_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    probe = Probe(PROBE_PRESETS["tiny"]).eval()
    save_weights(tmp_path, "probe", probe, probe.config)
    loaded, config = load_weights(tmp_path, "probe", ProbeConfig, Probe)
    frames = torch.rand(3, 3, 64, 64)
    assert config == probe.config
    assert torch.equal(probe(frames), loaded.eval()(frames))


def test_corrupt_or_mismatched_weights_are_refused(tmp_path):
    probe = Probe(PROBE_PRESETS["tiny"])
    save_weights(tmp_path, "probe", probe, probe.config)
    (tmp_path / "probe.safetensors").write_bytes(b"garbage" * 100)
    with pytest.raises(InputError, match="corrupt"):
        load_weights(tmp_path, "probe", ProbeConfig, Probe)
    save_weights(tmp_path, "probe", Probe(PROBE_PRESETS["base"]), PROBE_PRESETS["base"])
    (tmp_path / "probe.json").write_text((tmp_path / "probe.json").read_text().replace('"hidden": 512', '"hidden": 9'))
    with pytest.raises(InputError, match="does not match"):
        load_weights(tmp_path, "probe", ProbeConfig, Probe)


def test_bad_config_is_refused():
    with pytest.raises(ConfigError, match="unknown stage"):
        TrainConfig(stage="vocoder")
    with pytest.raises(ConfigError, match="steps"):
        TrainConfig(stage="probe", steps=0)


@pytest.mark.parametrize("stage", ["decoder", "motion", "probe"])
def test_each_preset_has_its_own_training_defaults(stage):
    """base and large train with their own settings, not tiny's: fewer steps of bigger batches, a lower learning
    rate the larger the model; each set makes a valid TrainConfig, and an unknown preset is a one-line error."""
    from actorcast.models.training.stages import get_stage

    defaults = {preset: get_stage(stage).defaults(preset) for preset in ("tiny", "base", "large")}
    assert defaults["base"] != defaults["tiny"] and defaults["large"] != defaults["base"]
    tiny, base, large = defaults["tiny"], defaults["base"], defaults["large"]
    assert tiny["steps"] > base["steps"] > large["steps"]
    assert tiny["batch_size"] < base["batch_size"] <= large["batch_size"]
    assert tiny["lr"] > base["lr"] > large["lr"]
    for preset, values in defaults.items():
        assert TrainConfig(stage=stage, preset=preset, **values).steps == values["steps"]
    mine = get_stage(stage).defaults("tiny")
    mine["steps"] = 1  # the caller's copy: the table itself is untouched
    assert get_stage(stage).defaults("tiny")["steps"] == tiny["steps"] > 1
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        get_stage(stage).defaults("huge")


def test_latent_normalisation_fold_keeps_frames_and_whitens_z():
    from actorcast.models.training.decoder_stage import DecoderTrainer, fold_latent_normalisation, latent_statistics

    torch.manual_seed(0)
    module = DecoderTrainer("tiny", 64).eval()
    with torch.no_grad():  # an untrained encoder barely varies (std ~1e-4); spread it like a trained one
        module.encoder.head.weight.normal_(0.0, 1.0)
    cfg = TrainConfig(stage="decoder", size=64, seed=0)
    frames, ref = torch.rand(4, 3, 64, 64), torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        before = module.decoder(module.decoder.encode_reference(ref), module.encoder(frames))
        fold_latent_normalisation(module, cfg)
        after = module.decoder(module.decoder.encode_reference(ref), module.encoder(frames))
    assert (before - after).abs().max() < 1e-4
    mean, std = latent_statistics(module.encoder, seed=0)
    assert mean.abs().max() < 1e-3 and (std - 1).abs().max() < 1e-2


def test_motion_stage_trains_on_cached_latents(tmp_path):
    """The motion stage encodes its clips once (cached on disk), trains, and exports audio encoder + generator."""
    from actorcast.models.motion_ae import MOTION_AE_PRESETS, MotionEncoder
    from actorcast.models.training.motion_stage import clip_sources

    torch.manual_seed(0)
    weights = tmp_path / "decoder-export"
    save_weights(weights, "motion_encoder", MotionEncoder(MOTION_AE_PRESETS["tiny"]), MOTION_AE_PRESETS["tiny"])
    cfg = _cfg(tmp_path, "motion", steps=60, batch_size=8, lr=3e-3, weights=str(weights), clips=4, clip_seconds=2.0,
               window_frames=16)
    losses, metrics = _losses(cfg)
    assert len(list((tmp_path / "motion" / "latents").glob("train-*.pt"))) == 1
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.85 * first, f"motion loss {first:.4f} -> {last:.4f}"
    assert "eval_loss" in metrics
    # Half of the clips are espeak-ng speech, half formant babble (TrainConfig.tts_share 0.5).
    assert clip_sources(4, 0.5) == ["babble", "tts", "babble", "tts"]
    assert clip_sources(4, 0.0) == ["babble"] * 4 and clip_sources(3, 1.0) == ["tts"] * 3
    for name in ("audio_encoder", "motion_generator"):
        assert (tmp_path / "motion" / f"{name}.safetensors").is_file()


def test_motion_stage_init_fine_tunes_an_export_with_the_presets_training_settings(tmp_path):
    """--init starts from an export's audio encoder and generator (every tensor), with the preset's training
    settings, fine-tunes the generator alone, and is refused where there is no generator export or for another
    stage."""
    import dataclasses

    from actorcast.models.audio import AUDIO_PRESETS, AudioEncoder
    from actorcast.models.motion import MOTION_PRESETS, MotionGenerator
    from actorcast.models.presets import get_preset
    from actorcast.models.training.motion_stage import MotionStage, MotionTrainer

    torch.manual_seed(1)
    preset = get_preset("tiny")
    old = dataclasses.replace(preset.motion, p_chunk_level=0.25, chunk_choices=())
    export = tmp_path / "export"
    generator, audio = MotionGenerator(old), AudioEncoder(preset.audio)
    save_weights(export, "motion_generator", generator, old)
    save_weights(export, "audio_encoder", audio, preset.audio)
    trainer = MotionTrainer("tiny", latent="params", init=str(export))
    for mine, theirs in ((trainer.generator, generator), (trainer.audio, audio)):
        for (name, a), b in zip(mine.state_dict().items(), theirs.state_dict().values()):
            assert torch.equal(a, b), name
    assert trainer.generator.config.p_chunk_level == MOTION_PRESETS["tiny"].p_chunk_level != 0.25
    assert trainer.generator.config.chunk_choices == MOTION_PRESETS["tiny"].chunk_choices == (1, 2)
    # the audio encoder stays as exported (the free motion reads its features); the generator learns
    assert not any(p.requires_grad for p in trainer.audio.parameters())
    assert all(p.requires_grad for p in trainer.generator.parameters())
    # On an encoder latent the dimensions name no parameters: nothing is weighted.
    assert MotionTrainer("tiny", latent="encoder").generator.config.dim_weight == 1.0
    assert AUDIO_PRESETS["tiny"] == trainer.audio_config
    from actorcast.models.motion_ae import MOTION_AE_PRESETS, MotionEncoder
    save_weights(export, "motion_encoder", MotionEncoder(MOTION_AE_PRESETS["tiny"]), MOTION_AE_PRESETS["tiny"])
    MotionStage.check(_cfg(tmp_path, "motion", weights=str(export), init=str(export)))
    with pytest.raises(ConfigError, match="holds no motion_generator"):
        MotionStage.check(_cfg(tmp_path, "motion", weights=str(export), init=str(tmp_path)))
    with pytest.raises(ConfigError, match="motion stage only"):
        from actorcast.models.training.probe_stage import ProbeStage
        ProbeStage.check(_cfg(tmp_path, "probe", init=str(export)))


def test_a_fine_tune_to_another_lookahead_trains_the_audio_encoder_too(tmp_path):
    """--lookahead 1 on an export with the preset's 2: the same audio weights, read one frame sooner, learn with
    the generator (the export keeps the new lookahead); the export's own lookahead leaves the encoder frozen;
    another stage refuses the flag with one line."""
    from actorcast.models.audio import AudioEncoder
    from actorcast.models.motion import MotionGenerator
    from actorcast.models.presets import get_preset
    from actorcast.models.training.motion_stage import MotionTrainer

    preset = get_preset("tiny")
    assert preset.audio.lookahead == 2
    export = tmp_path / "export"
    torch.manual_seed(2)
    audio = AudioEncoder(preset.audio)
    save_weights(export, "motion_generator", MotionGenerator(preset.motion), preset.motion)
    save_weights(export, "audio_encoder", audio, preset.audio)
    sooner = MotionTrainer("tiny", latent="params", init=str(export), lookahead=1)
    assert sooner.audio_trains and sooner.audio_config.lookahead == sooner.audio.config.lookahead == 1
    assert all(p.requires_grad for p in sooner.audio.parameters())
    for (name, a), b in zip(sooner.audio.state_dict().items(), audio.state_dict().values()):
        assert torch.equal(a, b), name
    pcm = torch.randn(1, 640 * 12)
    with torch.no_grad():  # one frame sooner: frame f now reads what frame f + 1 read
        assert torch.allclose(sooner.audio(pcm)[0, 1:11], audio(pcm)[0, :10], atol=1e-5)
    same = MotionTrainer("tiny", latent="params", init=str(export), lookahead=2)
    assert not same.audio_trains and not any(p.requires_grad for p in same.audio.parameters())
    assert MotionTrainer("tiny", latent="params", lookahead=1).audio_config.lookahead == 1
    with pytest.raises(ConfigError, match="--lookahead is for the motion stage only"):
        _cfg(tmp_path, "probe", lookahead=1)
