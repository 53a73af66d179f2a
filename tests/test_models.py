import pytest
import timm
import torch

import lambdalib  # noqa: F401  (registers the models)
from lambdalib import models
from lambdalib.layers import LambdaLayer


def test_resnet18_is_torchvisions_exactly():
    model = timm.create_model("lambdalib_resnet18", num_classes=10)
    assert sum(p.numel() for p in model.parameters()) == 11_181_642


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_every_model_is_registered_and_runs(name):
    spec = models.SPECS[name]
    model = timm.create_model(name, num_classes=10, img_size=64)
    lambdas = [m for m in model.modules() if isinstance(m, LambdaLayer)]
    assert len(lambdas) == (1 if spec.stage else 0)
    if spec.stage:
        layer = lambdas[0]
        assert layer.position == spec.position
        assert (layer.dim_k, layer.heads) == (16, 4)
        site = model.get_submodule(model.lambda_site.split()[0])
        assert site is layer
        assert model.lambda_site.startswith(f"layer{spec.stage}.")
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 10)


@pytest.mark.parametrize(
    "label,name",
    [("LR18_L2(rpe)", "lambda_resnet18_l2_rpe"), ("lr34_l3(lc)", "lambda_resnet34_l3_lc"), ("R34", "lambdalib_resnet34"),
     ("ResNet18", "lambdalib_resnet18"), ("resnet50", "resnet50"), ("lambda_resnet26t", "lambda_resnet26t")],
)
def test_report_labels_resolve(label, name):
    assert models.resolve_name(label) == name


def test_unknown_model_name_suggests():
    with pytest.raises(ValueError, match=r"Unknown model 'LR18_L4\(rpe\)'.*Did you mean"):
        models.create("LR18_L4(rpe)")


def test_rpe_model_checks_image_size():
    model = models.create("LR18_L3(rpe)", num_classes=10, img_size=64)
    with pytest.raises(ValueError, match="4x4 feature map but got 5x5"):
        model(torch.randn(1, 3, 80, 80))
    lc = models.create("LR18_L3(lc)", num_classes=10, img_size=64)
    assert lc(torch.randn(1, 3, 48, 48)).shape == (1, 10)  # a smaller map: the window is cropped, exactly
    with pytest.raises(ValueError, match="4x4 feature map but got 5x5"):  # a larger one needs offsets never stored
        lc(torch.randn(1, 3, 80, 80))


def test_lambda_site_must_be_stride_one():
    with pytest.raises(ValueError, match="stride"):
        models.build_resnet(18, lambda_stage=2, lambda_block=0, lambda_conv="conv1")


def test_no_pretrained_weights_is_a_clear_error():
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("lambda_resnet18_l2_lc", pretrained=True)


def test_timm_data_config_reflects_image_size():
    model = models.create("LR18_L2(lc)", num_classes=10, img_size=128)
    cfg = timm.data.resolve_data_config(model=model)
    assert cfg["input_size"] == (3, 128, 128)


def test_feature_size_matches_a_real_forward():
    net = models.build_resnet(18, num_classes=10)
    for img in (64, 97, 128, 160):
        x = torch.zeros(1, 3, img, img)
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        for stage in (1, 2, 3):
            x = getattr(net, f"layer{stage}")(x)
            assert x.shape[-1] == models.feature_size(img, stage)


def test_summary_table_counts_flops():
    rows = {r["label"]: r for r in models.summary_table(img_size=64)}
    assert len(rows) == 10
    assert rows["R18"]["gflops"] > rows["LR18_L3(rpe)"]["gflops"] > 0


@pytest.mark.parametrize("name", ["LR18_L2(rpe)", "LR18_L2(lc)", "LR18_L3(lc)"])
def test_training_step_under_autocast(name):
    """Mixed precision as train.py runs it on a GPU (bf16 autocast, backward outside), here on the CPU."""
    torch.manual_seed(0)
    model = models.create(name, num_classes=10, img_size=64)
    x, y = torch.randn(4, 3, 64, 64), torch.randint(0, 10, (4,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = torch.nn.functional.cross_entropy(model(x).float(), y)
    loss.backward()
    layer = next(m for m in model.modules() if isinstance(m, LambdaLayer))
    assert layer.pos_emb.grad is not None and layer.pos_emb.grad.dtype == torch.float32
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
