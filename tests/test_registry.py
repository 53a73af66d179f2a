"""A model family is one row of the registry: a made-up one gets its table, figure and models everywhere."""
import pandas as pd
import pytest
import torch
from test_report import write_record  # noqa: I001  (the report tests' record writer)

from lambdalib import models, registry, report
from lambdalib.registry import Family


@pytest.fixture
def made_up_family():
    family = registry.register_family(Family("L4_rpe", 7, "LambdaResNet Layer4 rpe (made up)", registry.OKABE_ITO[2],
                                             "03_lambda_rpe.ipynb", "rpe", 4, depths=(18,)))
    yield family
    registry.FAMILIES.pop(family.key)
    for depth in family.depths:
        spec = registry.SPECS.pop(family.name(depth))
        registry._BY_LABEL.pop(spec.label.lower())


def test_a_registered_family_builds_a_model(made_up_family):
    spec = registry.SPECS[registry.resolve_name("LR18_L4(rpe)")]
    assert (spec.family, spec.baseline, spec.stage) == ("L4_rpe", "R18", 4)
    model = models.create("LR18_L4(rpe)", num_classes=10, img_size=64)
    assert model.lambda_site.startswith("layer4.")
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 10)


def test_a_registered_family_gets_its_table_and_figure_in_the_report(made_up_family, tmp_path):
    for model in ("R18", "LR18_L4(rpe)"):
        for seed in (0, 1):
            write_record(tmp_path, model=model, seed=seed, loss=2.0 + 0.1 * seed)
    readme = report.build(tmp_path, quiet=True).read_text()
    table = pd.read_csv(tmp_path / "tables" / "table7_L4_rpe.csv")
    assert list(table["label"]) == ["LR18_L4(rpe)"]
    assert "### Table 7: LambdaResNet Layer4 rpe (made up)" in readme
    assert list(tmp_path.glob("figures/*/curves_L4_rpe.png"))
    assert report.tables()[7] is made_up_family


def test_family_labels_take_papermill_strings():
    assert registry.family_label("rpe", "18", "2") == "LR18_L2(rpe)"
    assert registry.family_label(None, 34) == "R34"
    with pytest.raises(ValueError, match="depth"):
        registry.family_label(None, 50)
    assert registry.family_label("rpe", "18", "3", "4") == "LR18_L3x4(rpe)"
    assert registry.family_label("rpe", 18, 3, 1) == registry.family_label("rpe", 18, 3) == "LR18_L3(rpe)"
    with pytest.raises(ValueError, match="lambda_layers=4: lc ResNet18s have 1 lambda layers"):
        registry.family_label("lc", 18, 3, 4)
    with pytest.raises(ValueError, match="lambda_layers"):
        registry.family_label("rpe", 34, 3, 4)  # the four-layer family is ResNet18 only
    with pytest.raises(ValueError, match=r"stage=2, lambda_layers=4: .* are LR18_L3x4\(rpe\)"):
        registry.family_label("rpe", 18, 2, 4)


def test_the_four_lambda_layer_family_is_named_and_read_back():
    family = registry.FAMILIES["L3x4_rpe"]
    assert (family.table, family.position, family.stage, family.lambda_layers) == (6, "rpe", 3, 4)
    assert (family.label(18), family.name(18)) == ("LR18_L3x4(rpe)", "lambda_resnet18_l3x4_rpe")
    for spelling in ("LR18_L3x4(rpe)", "lr18_l3x4(RPE)", "lambda_resnet18_l3x4_rpe"):
        assert registry.resolve_name(spelling) == "lambda_resnet18_l3x4_rpe"
    spec = registry.SPECS["lambda_resnet18_l3x4_rpe"]
    assert (spec.label, spec.lambda_layers, spec.baseline, spec.family) == ("LR18_L3x4(rpe)", 4, "R18", "L3x4_rpe")
    assert registry.report_label("lambda_resnet18_l3x4_rpe") == "LR18_L3x4(rpe)"
    assert registry.split_label(registry.run_label("LR18_L3x4(rpe)", "lucidrains")) == ("LR18_L3x4(rpe)", "lucidrains")
    # one layer: the report's labels and names, unchanged
    assert [registry.SPECS[n].label for n in registry.REPORT_MODELS] == [
        "R18", "R34", "LR18_L2(rpe)", "LR18_L3(rpe)", "LR18_L2(lc)", "LR18_L3(lc)",
        "LR34_L2(rpe)", "LR34_L3(rpe)", "LR34_L2(lc)", "LR34_L3(lc)"]
    assert all(registry.SPECS[n].lambda_layers == 1 for n in registry.REPORT_MODELS)
    assert registry.model_names().index("lambda_resnet18_l3x4_rpe") == 6  # after LR18_L3(lc), before the LR34s


def test_a_run_label_names_another_lambda_layer_and_reads_back():
    assert registry.run_label("LR18_L2(lc)", "lucidrains") == "LR18_L2(lc)[lucidrains]"
    assert registry.run_label("lambda_resnet18_l2_rpe", "ours") == "LR18_L2(rpe)"
    assert registry.run_label("R18", "lucidrains") == "R18"  # a ResNet has no lambda layer
    for label in ("LR18_L2(lc)[lucidrains]", "LR18_L2(rpe)[ours-n01]", "R18", "resnet50"):
        base, impl = registry.split_label(label)
        assert registry.run_label(base, impl) == label if base != "resnet50" else (base, impl) == (label, "ours")
    assert registry.split_label("LR18_L2(lc)[somebody]") == ("LR18_L2(lc)[somebody]", "ours")  # not a layer of ours
    assert registry.family_of("LR18_L2(lc)[lucidrains]").key == "L2_lc"
    ranked = sorted(["LR18_L2(rpe)[lucidrains]", "R18", "LR18_L2(rpe)", "LR18_L2(rpe)[ours-n01]", "resnet50"],
                    key=registry.model_rank)
    assert ranked == ["R18", "LR18_L2(rpe)", "LR18_L2(rpe)[ours-n01]", "LR18_L2(rpe)[lucidrains]", "resnet50"]


def test_a_family_key_is_registered_once():
    """Registering a key again (a notebook cell run twice, a typo'd copy) would silently replace the report's own
    family: it is an error that names the key, and the family stays."""
    before = registry.FAMILIES["L2_rpe"]
    with pytest.raises(ValueError, match="'L2_rpe' is already registered"):
        registry.register_family(Family("L2_rpe", 9, "impostor", registry.OKABE_ITO[1], "99_x.ipynb"))
    assert registry.FAMILIES["L2_rpe"] is before
