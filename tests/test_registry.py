"""A model family is one row of the registry: a made-up one gets its table, figure and models everywhere."""
import pandas as pd
import pytest
import torch
from test_report import write_record  # noqa: I001  (the report tests' record writer)

from lambdalib import models, registry, report
from lambdalib.registry import Family


@pytest.fixture
def made_up_family():
    family = registry.register_family(Family("L4_rpe", 6, "LambdaResNet Layer4 rpe (made up)", registry.OKABE_ITO[2],
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
    table = pd.read_csv(tmp_path / "tables" / "table6_L4_rpe.csv")
    assert list(table["label"]) == ["LR18_L4(rpe)"]
    assert "### Table 6: LambdaResNet Layer4 rpe (made up)" in readme
    assert list(tmp_path.glob("figures/*/curves_L4_rpe.png"))
    assert report.tables()[6] is made_up_family


def test_family_labels_take_papermill_strings():
    assert registry.family_label("rpe", "18", "2") == "LR18_L2(rpe)"
    assert registry.family_label(None, 34) == "R34"
    with pytest.raises(ValueError, match="depth"):
        registry.family_label(None, 50)


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
