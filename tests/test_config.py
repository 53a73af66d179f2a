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
