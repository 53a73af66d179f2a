from pathlib import Path

import numpy as np
import pytest

from lambdalib.config import RunConfig


def test_defaults_are_the_reports_recipe():
    config = RunConfig.from_params()
    assert (config.lr, config.batch_size, config.t0, config.t_mult, config.eta_min) == (1e-5, 64, 5, 2, 0.0)


def test_preset_then_explicit_values_win():
    assert RunConfig.from_params(preset="fast").lr == 1e-3
    assert RunConfig.from_params(preset="fast", lr=3e-4).lr == 3e-4


def test_strings_from_the_cli_are_coerced():
    config = RunConfig.from_params(noise="0.25", epochs="3", synthetic_noise="false")
    assert (config.noise, config.epochs, config.synthetic_noise) == (0.25, 3, False)


@pytest.mark.parametrize(
    "params,field",
    [(dict(noise=0.3), "noise"), (dict(epochs=0), "epochs"), (dict(lr=-1), "lr"), (dict(amp="fp8"), "amp"),
     (dict(epochs="many"), "epochs"), (dict(preset="slow"), "preset"), (dict(img_size=16), "img_size")],
)
def test_invalid_values_name_the_field(params, field):
    with pytest.raises(ValueError, match=field):
        RunConfig.from_params(**params)


def test_unknown_field_and_unknown_model():
    with pytest.raises(ValueError, match="unknown parameter"):
        RunConfig.from_params(learning_rate=1)
    with pytest.raises(ValueError, match="Unknown model"):
        RunConfig.from_params(model="LR50")


def test_synthetic_noise_unlocks_other_rates():
    assert RunConfig.from_params(noise=0.3, synthetic_noise=True).noise == 0.3


def test_run_id_is_stable_and_distinguishes_experiments():
    a = RunConfig.from_params(model="LR18_L2(rpe)", noise=0.25)
    assert a.run_id == RunConfig.from_params(model="lambda_resnet18_l2_rpe", noise=0.25).run_id
    assert a.run_id != RunConfig.from_params(model="LR18_L2(rpe)", noise=0.05).run_id
    assert a.run_id != RunConfig.from_params(model="LR18_L2(rpe)", noise=0.25, preset="fast").run_id
    assert "/" not in a.run_id and "(" not in a.run_id


def test_save_load_roundtrip(tmp_path):
    config = RunConfig.from_params(noise=0.05, epochs=3)
    config.save(tmp_path / "c.json")
    assert RunConfig.load(tmp_path / "c.json") == config


# ---------------------------------------------------------------------------- experiment identity
IDENTITY_CHANGES = dict(lr=3e-4, batch_size=128, weight_decay=1e-4, t0=3, t_mult=1, eta_min=1e-7, grad_clip=1.0,
                        diverge_factor=20.0, train_per_class=24, val_per_class=16, epochs=5, img_size=64,
                        world_size=2, amp="fp16", data="imagenette2-160", synthetic_noise=True, preset="fast")
OPERATIONAL_CHANGES = dict(workers=3, results="/elsewhere", device="cpu", checkpoints="none", channels_last="on",
                           deterministic=True, on_error="skip")


@pytest.mark.parametrize("name,value", IDENTITY_CHANGES.items())
def test_every_field_that_changes_the_computation_changes_the_experiment(name, value):
    base = RunConfig.from_params(model="LR18_L2(rpe)", noise=0.25, amp="off")
    other = RunConfig.from_params(**{**base.to_dict(), name: value})
    assert other.experiment_id != base.experiment_id and other.run_id != base.run_id
    assert name in base.differences(other)


@pytest.mark.parametrize("name,value", OPERATIONAL_CHANGES.items())
def test_where_and_how_a_run_goes_is_not_part_of_the_experiment(name, value):
    base = RunConfig.from_params(model="LR18_L2(rpe)", noise=0.25)
    other = RunConfig.from_params(**{**base.to_dict(), name: value})
    assert other.run_id == base.run_id and not base.differences(other)


def test_seeds_share_the_experiment_and_names_and_labels_are_one_model():
    a = RunConfig.from_params(model="LR18_L2(rpe)", seed=0)
    b = RunConfig.from_params(model="lambda_resnet18_l2_rpe", seed=1)
    assert a.experiment_id == b.experiment_id and a.run_id != b.run_id
    assert a.run_id.startswith("LR18-L2-rpe_noise0_report_e35_160px_embedded_") and a.run_id.endswith("_s0")


def test_amp_auto_means_what_this_machine_computes(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    auto = RunConfig.from_params(amp="auto")
    assert auto.resolved().amp == "off" and auto.run_id == RunConfig.from_params(amp="off").run_id
    assert auto.run_id != RunConfig.from_params(amp="bf16").run_id


def test_world_size_comes_from_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert RunConfig.from_params().resolved().world_size == 4  # 4 x 64 images per step: another experiment
    assert RunConfig.from_params().run_id != RunConfig.from_params(world_size=1).run_id


def test_bad_choices_name_the_field_and_the_allowed_values():
    with pytest.raises(ValueError, match=r"on_error='maybe'.*'fail', 'skip'"):
        RunConfig.from_params(on_error="maybe")
    with pytest.raises(ValueError, match=r"amp='fp8'"):
        RunConfig.from_params(amp="fp8")


@pytest.mark.parametrize("value", [1.5, True, "3"])
def test_counts_must_be_whole_numbers(value):
    """1.5 images per class passed every range check and then picked different subsets in the two loaders."""
    with pytest.raises(ValueError, match=rf"train_per_class={value!r}: must be a whole number"):
        RunConfig(train_per_class=value).validate()
    RunConfig(train_per_class=np.int64(3)).validate()


def test_results_live_on_drive_when_colab_has_it_mounted(tmp_path, monkeypatch):
    from lambdalib import paths

    monkeypatch.delenv("LAMBDALIB_RESULTS", raising=False)
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    monkeypatch.delenv("COLAB_GPU", raising=False)
    monkeypatch.setattr(paths, "COLAB_DRIVE", tmp_path / "drive" / "MyDrive")
    local = paths.project_root() / "results"
    assert paths.results_dir() == local  # not on Colab
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab-2026")
    assert paths.results_dir() == local  # on Colab, Drive not mounted: /content (a warning is the notebook's)
    (tmp_path / "drive" / "MyDrive").mkdir(parents=True)
    assert paths.results_dir() == tmp_path / "drive" / "MyDrive" / "lambdalib" / "results"
    assert RunConfig.from_params().run_dir().parent.parent == paths.results_dir()
    monkeypatch.setenv("LAMBDALIB_RESULTS", str(tmp_path / "mine"))
    assert paths.results_dir() == tmp_path / "mine"


# ------------------------------------------------------------------------------------- lc scope
def test_scaled_scope_covers_the_share_of_the_image_r23_covers_at_224px():
    from lambdalib.config import scaled_scope

    assert [scaled_scope(s) for s in (32, 64, 96, 128, 160, 224)] == [3, 5, 9, 13, 15, 23]
    assert all(scaled_scope(s) % 2 == 1 and scaled_scope(s) <= 23 * s / 224 for s in range(32, 400))


def test_lc_scope_is_part_of_an_lc_experiment_only():
    lc = RunConfig.from_params(model="LR18_L2(lc)", img_size=64)
    assert lc.identity()["lc_scope"] == 23 and "-r23_" in lc.run_id
    scaled = RunConfig.from_params(model="LR18_L2(lc)", img_size=64, lc_scope=0)
    explicit = RunConfig.from_params(model="LR18_L2(lc)", img_size=64, lc_scope=5)
    assert scaled.run_id == explicit.run_id != lc.run_id and "-r5_" in scaled.run_id
    assert scaled.differences(lc) == {"lc_scope": (5, 23)}
    for model in ("R18", "LR18_L2(rpe)", "resnet18"):  # no lc layer: the scope computes nothing there
        assert RunConfig.from_params(model=model, lc_scope=5).run_id == RunConfig.from_params(model=model).run_id
    for bad in (-1, 4, 22):
        with pytest.raises(ValueError, match="lc_scope"):
            RunConfig.from_params(model="LR18_L2(lc)", lc_scope=bad)


def test_the_model_is_built_with_the_runs_scope_and_says_when_it_covers_the_map():
    from lambdalib import models
    from lambdalib.layers import LambdaLayer

    def built(**params):
        config = RunConfig.from_params(model="LR18_L2(lc)", img_size=64, **params)
        return models.create(config.model, num_classes=10, **config.model_kwargs())

    scoped = built(lc_scope=0)
    assert [m.scope for m in scoped.modules() if isinstance(m, LambdaLayer)] == [5]
    assert models.scope_covers_map(scoped) is None  # r=5 on the 8x8 stage-2 map: lc differs from rpe
    assert "covers the whole 8x8 map" in models.scope_covers_map(built())
    assert models.scope_covers_map(models.create("R18", num_classes=10, img_size=64)) is None
    # a saved config from before the field rebuilds the model it trained: the report's r=23
    old = {k: v for k, v in RunConfig.from_params(model="LR18_L2(lc)").to_dict().items() if k != "lc_scope"}
    assert RunConfig.from_dict(old).model_kwargs() == dict(img_size=160, scope=23)


# ------------------------------------------------------------------- the identity keeps committed records named
COMMITTED_RUNS = sorted((Path(__file__).resolve().parents[1] / "results" / "runs").glob("*/config.json"))


def test_identity_fields_are_the_explicit_list():
    from dataclasses import fields

    from lambdalib import config as C

    marked = {f.name for f in fields(RunConfig) if f.metadata.get("identity")}
    assert marked == set(C.BASE_IDENTITY) | set(C.ADDED_IDENTITY)


@pytest.mark.skipif(not COMMITTED_RUNS, reason="no committed run records")
@pytest.mark.parametrize("path", COMMITTED_RUNS, ids=lambda p: p.parent.name[:40])
def test_every_committed_run_folder_is_named_by_its_own_config(path):
    from lambdalib.config import PIPELINE

    config = RunConfig.load(path)
    assert config.run_id == path.parent.name
    assert config.pipeline == PIPELINE, "the records were made by another pipeline: re-run the study"


def test_a_new_field_with_its_default_renames_no_committed_run(monkeypatch):
    """A field added to RunConfig (here label_smoothing) joins the identity only where it is not its default."""
    from dataclasses import field, make_dataclass

    from lambdalib import config as C

    Extended = make_dataclass("Extended", [("label_smoothing", "float", field(
        default=0.0, metadata=dict(help="label smoothing", choices=None, identity=True)))], bases=(RunConfig,))
    saved = [RunConfig.load(path) for path in COMMITTED_RUNS]
    plain = RunConfig.from_params(model="R18").run_id
    monkeypatch.setattr(C, "ADDED_IDENTITY", (*C.ADDED_IDENTITY, "label_smoothing"))
    for path, old in zip(COMMITTED_RUNS, saved):
        assert Extended.from_dict(old.to_dict()).run_id == path.parent.name
    base = Extended.from_params(model="R18")
    smoothed = Extended.from_params(model="R18", label_smoothing=0.1)
    assert base.run_id == plain
    assert smoothed.run_id != base.run_id and "label_smoothing" in base.differences(smoothed)


def test_a_pipeline_bump_gives_every_run_a_new_identity():
    old = RunConfig.from_params(model="LR18_L2(lc)", noise=0.25)
    bumped = RunConfig.from_params(**{**old.to_dict(), "pipeline": old.pipeline + 1})
    assert bumped.run_id != old.run_id and bumped.differences(old)
    saved = old.to_dict()
    saved.pop("pipeline")  # a record written before pipelines existed
    assert RunConfig.from_dict(saved).pipeline == 1
