import math
import warnings

import pytest
import timm
import torch
import torchvision
from timm.layers import DropPath

import lambdalib  # noqa: F401  (registers the models)
from lambdalib import models, registry
from lambdalib.imagenette import EVAL_CROP_FRACTION, timm_crop_pct
from lambdalib.layers import LambdaLayer

IMG = 32  # small images keep the ten-model contract tests fast (maps 16, 8, 4, 2, 1)
FEATURE_CHANNELS = [64, 64, 128, 256, 512]  # act1, layer1..layer4 of ResNet18/34
FEATURE_REDUCTIONS = [2, 4, 8, 16, 32]

# what `lambdalib models` prints (img_size=160, num_classes=10), counted before the models became timm-native
PARAMS_160PX_10_CLASSES = {
    "R18": 11_181_642, "R34": 21_289_802,
    "LR18_L2(rpe)": 11_073_050, "LR18_L3(rpe)": 10_634_714, "LR18_L2(lc)": 11_057_178, "LR18_L3(lc)": 10_634_714,
    "LR34_L2(rpe)": 21_181_210, "LR34_L3(rpe)": 20_742_874, "LR34_L2(lc)": 21_165_338, "LR34_L3(lc)": 20_742_874,
    "LR18_L3x4(rpe)": 9_870_602,  # four lambda layers (not a model of the report's tables)
}
FOUR_SITES = ["layer2.0.conv2", "layer2.1.conv2", "layer3.0.conv2", "layer3.1.conv2"]  # LR18_L3x4(rpe)'s, in order


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: threads only add overhead, several times over on a shared CPU. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _lambda_keys(model) -> set[str]:
    names = [n for n, m in model.named_modules() if isinstance(m, LambdaLayer)]
    return {k for k in model.state_dict() if any(k.startswith(n + ".") for n in names)}


# ------------------------------------------------------------------------ parameters and initialisation
def test_summary_table_pins_parameters_and_counts_flops():
    """`lambdalib models`: the parameter counts of the report's ten at 160 px, 10 classes, never change."""
    rows = {r["label"]: r for r in models.summary_table(img_size=160, num_classes=10)}
    assert {label: r["params"] for label, r in rows.items()} == PARAMS_160PX_10_CLASSES
    assert rows["R18"]["gflops"] > rows["LR18_L3(rpe)"]["gflops"] > 0
    assert rows["LR18_L2(rpe)"]["lambda_site"] == "layer2.1.conv2 (rpe, 20x20 map)"
    assert rows["R34"]["lambda_site"] == "-"


@pytest.mark.parametrize("label,depth", [("R18", 18), ("R34", 34), ("LR18_L2(rpe)", 18), ("LR34_L3(lc)", 34),
                                         ("LR18_L3x4(rpe)", 18)])
def test_initialisation_is_torchvisions(label, depth):
    """Same seed -> the same tensors as torchvision's resnet18/34, bit for bit, outside the lambda layer."""
    torch.manual_seed(0)
    reference = getattr(torchvision.models, f"resnet{depth}")(num_classes=10).state_dict()
    torch.manual_seed(0)
    model = models.create(label, num_classes=10, img_size=IMG)
    state = model.state_dict()
    ours = _lambda_keys(model)
    assert bool(ours) == label.startswith("LR")
    assert set(state) - ours <= set(reference)
    replaced = {site.split()[0] + ".weight" for site in model.lambda_site.split("; ")} if ours else set()
    assert set(reference) - set(state) == replaced  # the 3x3 convs the lambda layers took the place of
    for key in set(state) - ours:
        assert torch.equal(state[key], reference[key]), key
    if not ours:  # the baselines: every key, so torchvision checkpoints load strictly
        assert list(state) == list(reference)


def test_old_checkpoints_load_strictly():
    """A state_dict of the pre-timm build (torchvision ResNet + LambdaLayer at layer2[1].conv2) loads as is."""
    old = torchvision.models.resnet18(num_classes=10)
    old.layer2[1].conv2 = LambdaLayer(128, 128, position="rpe", feat_size=models.feature_size(IMG, 2))
    model = models.create("LR18_L2(rpe)", num_classes=10, img_size=IMG)
    model.load_state_dict(old.state_dict())  # strict
    old.eval(), model.eval()
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        torch.testing.assert_close(model(x), old(x))


def test_timms_resnet18_is_initialised_differently():
    """Same layers, but timm zero-initialises the last BN of each block; ours keeps torchvision's ones."""
    timms = timm.create_model("resnet18", num_classes=10)
    ours = models.create("R18", num_classes=10)
    assert list(timms.state_dict()) == list(ours.state_dict())
    assert torch.all(timms.layer1[0].bn2.weight == 0) and torch.all(ours.layer1[0].bn2.weight == 1)


# ------------------------------------------------------------------------------- timm's model contract
@pytest.mark.parametrize("name", [*registry.REPORT_MODELS, "lambda_resnet18_l3x4_rpe"])
def test_timm_contract(name):
    """What timm's own model tests check, on each of the ten (one model built per phase to keep it fast):
    forward/backward (with the trainer's drop_rate and drop_path_rate), default cfg + forward_features /
    forward_head(pre_logits=True) / reset_classifier, features_only feature maps against feature_info."""
    spec = models.SPECS[name]
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10, img_size=IMG, drop_rate=0.2, drop_path_rate=0.1)
    lambdas = [m for m in model.modules() if isinstance(m, LambdaLayer)]
    assert len(lambdas) == (spec.lambda_layers if spec.stage else 0)
    if spec.stage:
        sites = model.lambda_site.split("; ")
        for layer, site in zip(lambdas, sites, strict=True):
            assert layer.position == spec.position and (layer.dim_k, layer.heads) == (16, 4)
            assert model.get_submodule(site.split()[0]) is layer
        assert sites[-1].startswith(f"layer{spec.stage}.")
    assert model.drop_rate == 0.2
    assert sum(isinstance(m, DropPath) for m in model.modules()) == sum(models.STAGE_BLOCKS[spec.depth]) - 1
    x = torch.randn(2, 3, IMG, IMG)

    # test_model_backward: every parameter gets a gradient
    model.train()
    out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.mean().backward()
    params = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)

    # test_model_default_cfgs: cfg names real modules; features -> pre-logits -> logits; classifier resets
    model.eval()
    cfg, state = model.pretrained_cfg, model.state_dict()
    assert cfg["first_conv"] + ".weight" in state and cfg["classifier"] + ".weight" in state
    assert model.get_classifier() is model.fc and model.num_features == model.head_hidden_size == 512
    data = timm.data.resolve_data_config({}, model=model)
    assert data["input_size"] == (3, IMG, IMG) and data["crop_pct"] == timm_crop_pct(IMG)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (2, model.num_features, *cfg["pool_size"])
        pre = model.forward_head(features, pre_logits=True)
        assert pre.shape == (2, model.num_features)
        logits = model(x)
        torch.testing.assert_close(model.forward_head(features), logits)
        torch.testing.assert_close(model.fc(pre), logits)
        model.reset_classifier(5)
        assert model(x).shape == (2, 5) and model.get_classifier().out_features == 5
        model.reset_classifier(0)
        torch.testing.assert_close(model(x), pre)
        model.reset_classifier(0, "")  # no pooling either: the unpooled map
        torch.testing.assert_close(model(x), features)

    # test_model_forward_features: channels and reductions of feature_info match the maps (these weights)
    feats = timm.create_model(name, features_only=True, img_size=IMG).eval()
    assert feats.feature_info.channels() == FEATURE_CHANNELS
    assert feats.feature_info.reduction() == FEATURE_REDUCTIONS
    assert not feats.load_state_dict(state, strict=False).missing_keys
    subset = timm.create_model(name, features_only=True, out_indices=(2, 3), img_size=IMG).eval()
    assert subset.feature_info.channels() == [128, 256] and subset.feature_info.reduction() == [8, 16]
    subset.load_state_dict(state, strict=False)
    with torch.no_grad():
        maps = feats(x)
        assert [m.shape for m in maps] == [(2, c, IMG // r, IMG // r)
                                           for c, r in zip(FEATURE_CHANNELS, FEATURE_REDUCTIONS)]
        for got, want in zip(maps, model.forward_intermediates(x, intermediates_only=True), strict=True):
            torch.testing.assert_close(got, want)
        for got, want in zip(subset(x), maps[2:4], strict=True):
            torch.testing.assert_close(got, want)
        torch.testing.assert_close(maps[-1], features)


# --------------------------------------------------------------------------------- drop_rate, drop_path
def test_drop_rate_is_dropout_before_the_classifier():
    model = models.create("R18", num_classes=10, img_size=IMG, drop_rate=0.5)
    features = torch.ones(4, 512, 2, 2)
    model.train()
    pre = model.forward_head(features, pre_logits=True)
    assert set(pre.unique().tolist()) == {0.0, 2.0}  # inverted dropout at p=0.5
    model.eval()
    assert torch.equal(model.forward_head(features, pre_logits=True), torch.ones(4, 512))


def test_drop_path_rate_is_stochastic_depth_rising_linearly():
    model = models.create("LR34_L3(rpe)", num_classes=10, img_size=IMG, drop_path_rate=0.3)
    blocks = [b for stage in (model.layer1, model.layer2, model.layer3, model.layer4) for b in stage]
    rates = [b.drop_path.drop_prob if b.drop_path is not None else 0.0 for b in blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.3) and rates == sorted(rates)
    assert blocks[-1].drop_path.training  # no-op in eval, drops whole samples in training
    assert models.create("LR34_L3(rpe)", num_classes=10, img_size=IMG).layer4[-1].drop_path is None


# -------------------------------------------------------------------------------------- pretrained_cfg
def test_timm_data_config_reflects_image_size():
    for label, fixed in (("LR18_L2(lc)", False), ("LR18_L2(rpe)", True), ("R34", False)):
        model = models.create(label, num_classes=10, img_size=128)
        cfg = timm.data.resolve_data_config({}, model=model)
        assert cfg["input_size"] == (3, 128, 128)
        assert cfg["crop_pct"] == timm_crop_pct(128) and cfg["interpolation"] == "bilinear"
        assert cfg["mean"] == timm.data.IMAGENET_DEFAULT_MEAN and cfg["std"] == timm.data.IMAGENET_DEFAULT_STD
        assert model.pretrained_cfg["pool_size"] == (4, 4) and model.pretrained_cfg["num_classes"] == 10
        assert model.pretrained_cfg["fixed_input_size"] is fixed
        assert model.pretrained_cfg["architecture"] == registry.resolve_name(label)
    default = timm.create_model("lambda_resnet18_l3_lc")  # timm's defaults: 1000 classes, the report's 160 px
    assert default.num_classes == 1000 and default.pretrained_cfg["input_size"] == (3, 160, 160)


def test_timms_eval_transform_of_a_model_is_lambdalibs_val_transform():
    """A user who preprocesses with timm's data config of our model (resolve_data_config + create_transform) feeds
    it what lambdalib's evaluation does: timm resizes to floor(img / crop_pct), val_transform to round(img / 0.875);
    crop_pct 0.875 itself gave a pixel less at 435 of the sizes 8-1024 (36 for 37 at 32 px, 182 for 183 at 160)."""
    import numpy as np
    from PIL import Image

    from lambdalib.data import val_transform

    assert all(math.floor(s / timm_crop_pct(s)) == round(s / EVAL_CROP_FRACTION) for s in range(8, 4097))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (57, 71, 3), dtype=np.uint8))
    for label, size in (("R18", 32), ("LR18_L2(lc)", 64), ("R34", 160)):
        model = models.create(label, num_classes=10, img_size=size)
        timms = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
        assert torch.equal(timms(image), val_transform(size)(image)), (label, size)
    # so does the registry's cfg before any build (timm.models.get_pretrained_cfg), at the default size
    static = timm.models.get_pretrained_cfg("lambda_resnet18_l2_lc").to_dict()
    timms = timm.data.create_transform(**timm.data.resolve_data_config({}, pretrained_cfg=static))
    assert torch.equal(timms(image), val_transform(models.DEFAULT_IMG_SIZE)(image))


def test_no_pretrained_weights_is_a_clear_error():
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("lambda_resnet18_l2_lc", pretrained=True)


def test_run_checkpoint_loads_through_timm(tmp_path):
    """A run's best.pt ({'model': state_dict, ...}) as timm weights: pretrained_cfg_overlay file or checkpoint_path."""
    trained = models.create("LR18_L3(lc)", num_classes=10, img_size=IMG)
    file = tmp_path / "best.pt"
    torch.save({"model": trained.state_dict(), "config": {"model": "LR18_L3(lc)"}}, file)
    for kwargs in (dict(pretrained=True, pretrained_cfg_overlay=dict(file=str(file))), dict(checkpoint_path=str(file))):
        model = timm.create_model("lambda_resnet18_l3_lc", num_classes=10, img_size=IMG, **kwargs)
        assert torch.equal(model.layer3[1].conv2.pos_emb, trained.layer3[1].conv2.pos_emb)


# ----------------------------------------------------------------------------------------------- names
@pytest.mark.parametrize(
    "label,name",
    [("LR18_L2(rpe)", "lambda_resnet18_l2_rpe"), ("lr34_l3(lc)", "lambda_resnet34_l3_lc"),
     ("R34", "lambdalib_resnet34"), ("ResNet18", "lambdalib_resnet18"), ("resnet18", "resnet18"),
     ("resnet50", "resnet50"), ("lambda_resnet26t", "lambda_resnet26t")],
)
def test_report_labels_resolve(label, name):
    assert registry.resolve_name(label) == name


@pytest.mark.parametrize("name", ["Resnet18", "RESNET34", "resNet18"])
def test_ambiguous_resnet_spelling_is_refused(name):
    with pytest.raises(ValueError, match="Ambiguous.*report's torchvision ResNet.*timm's resnet"):
        registry.resolve_name(name)


def test_timms_resnet18_cannot_pass_for_the_reports():
    note = models.lookalike_note("resnet18")
    assert "timm's resnet18, NOT the report's R18" in note and "lambdalib_resnet18" in note
    assert models.lookalike_note("R18") is None and models.lookalike_note("resnet50") is None
    assert models.describe("resnet34") == models.lookalike_note("resnet34")
    assert "torchvision's ResNet18 exactly" in models.describe("ResNet18")
    assert "LambdaLayer (lc)" in models.describe("LR34_L2(lc)")
    with pytest.warns(models.LookalikeWarning, match="NOT the report's R18"):
        models.create("resnet18", num_classes=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error", models.LookalikeWarning)
        models.create("ResNet18", num_classes=10)
        models.create("resnet50", num_classes=10)


def test_unknown_model_name_suggests():
    with pytest.raises(ValueError, match=r"Unknown model 'LR18_L4\(rpe\)'.*Did you mean"):
        models.create("LR18_L4(rpe)")


# ------------------------------------------------------------------------------------- lambda specifics
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


def test_build_resnet_other_site_is_described():
    net = models.build_resnet(18, num_classes=10, img_size=IMG, lambda_stage=1, position="lc")
    assert net.lambda_site == "layer1.1.conv2 (lc, 8x8 map)"
    assert "not one of the report's ten" in net.pretrained_cfg["description"]


def test_feature_size_matches_a_real_forward():
    net = models.build_resnet(18, num_classes=10)
    for img in (64, 97, 128, 160):
        x = torch.zeros(1, 3, img, img)
        x = net.act1(net.bn1(net.conv1(x)))
        assert x.shape[-1] == models.feature_size(img, 0)
        x = net.maxpool(x)
        for stage in (1, 2, 3, 4):
            x = getattr(net, f"layer{stage}")(x)
            assert x.shape[-1] == models.feature_size(img, stage)


def test_four_lambda_layers_sit_in_every_block_of_stages_2_and_3():
    """LR18_L3x4(rpe): conv2 of layer2.0, 2.1, 3.0, 3.1 are lambda layers, each sized for its own stage's map
    (8x8 and 4x4 at 64 px); it trains, and timm builds it from its name."""
    torch.manual_seed(0)
    model = models.create("LR18_L3x4(rpe)", num_classes=10, img_size=64)
    lambdas = {n: m for n, m in model.named_modules() if isinstance(m, LambdaLayer)}
    assert list(lambdas) == FOUR_SITES
    assert [m.feat_size for m in lambdas.values()] == [(8, 8), (8, 8), (4, 4), (4, 4)]
    assert model.lambda_site == ("layer2.0.conv2 (rpe, 8x8 map); layer2.1.conv2 (rpe, 8x8 map); "
                                 "layer3.0.conv2 (rpe, 4x4 map); layer3.1.conv2 (rpe, 4x4 map)")
    assert model.pretrained_cfg["fixed_input_size"] is True
    assert "layer2.0, layer2.1, layer3.0, layer3.1" in model.pretrained_cfg["description"]
    x, y = torch.randn(4, 3, 64, 64), torch.randint(0, 10, (4,))
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    for name, layer in lambdas.items():  # each of the four takes part in the backward pass
        assert all(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
                   for p in layer.parameters() if p.requires_grad), name
    via_timm = timm.create_model("lambda_resnet18_l3x4_rpe", num_classes=10, img_size=64)
    assert [n for n, m in via_timm.named_modules() if isinstance(m, LambdaLayer)] == FOUR_SITES
    assert via_timm.lambda_site == model.lambda_site and via_timm(x).shape == (4, 10)


def test_one_lambda_layer_is_the_report_model_unchanged():
    model = models.create("LR18_L3(rpe)", num_classes=10, img_size=64)
    assert model.lambda_site == "layer3.1.conv2 (rpe, 4x4 map)"
    assert [n for n, m in model.named_modules() if isinstance(m, LambdaLayer)] == ["layer3.1.conv2"]
    torch.manual_seed(0)
    explicit = models.build_resnet(18, num_classes=10, img_size=64, lambda_stage=3, lambda_layers=1)
    torch.manual_seed(0)
    default = models.build_resnet(18, num_classes=10, img_size=64, lambda_stage=3)
    for (key, a), b in zip(explicit.state_dict().items(), default.state_dict().values(), strict=True):
        assert torch.equal(a, b), key
    assert explicit.pretrained_cfg["architecture"] == "lambda_resnet18_l3_rpe"


@pytest.mark.parametrize("layers", [0, 7])
def test_lambda_layers_beyond_the_blocks_are_refused(layers):
    with pytest.raises(ValueError, match=rf"^lambda_layers={layers}: expected 1 to 6, the basic blocks of ResNet18 "
                                         r"up to layer3\.1$"):
        models.build_resnet(18, lambda_stage=3, lambda_layers=layers, img_size=64)
    with pytest.raises(ValueError, match="lambda_layers=5: expected 1 to 4"):
        timm.create_model("lambda_resnet18_l2_rpe", img_size=64, lambda_layers=5)


def test_lambda_layers_cross_stage_boundaries_with_the_other_site_arguments():
    net = models.build_resnet(34, num_classes=10, img_size=IMG, lambda_stage=3, lambda_block=1, lambda_layers=3,
                              position="lc", scope=5)
    assert [n for n, m in net.named_modules() if isinstance(m, LambdaLayer)] == \
        ["layer2.3.conv2", "layer3.0.conv2", "layer3.1.conv2"]
    assert "3 lc lambda layers up to stage 3 (not one of the report's ten)" in net.pretrained_cfg["description"]


def test_output_stride_dilates_and_sizes_the_lambda_layer():
    model = models.create("LR18_L3(rpe)", num_classes=10, img_size=IMG, output_stride=8)
    assert model.lambda_site == "layer3.1.conv2 (rpe, 4x4 map)"  # stride 8, not 16
    assert model(torch.randn(1, 3, IMG, IMG)).shape == (1, 10)


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


# ------------------------------------------------------------------- the report's own implementation as an arm
@pytest.mark.parametrize("label", ["LR18_L2(rpe)", "LR18_L2(lc)"])
def test_the_report_implementation_arms_build_and_train(label):
    pytest.importorskip("lambda_networks")
    from lambda_networks import LambdaLayer as Lucidrains

    from lambdalib.config import RunConfig

    built = {}
    for arm in ("ours", "ours-n01", "lucidrains"):
        config = RunConfig.from_params(model=label, img_size=64, lambda_layer=arm)
        torch.manual_seed(0)
        model = models.create(config.model, num_classes=10, **config.model_kwargs())
        layers = [m for m in model.modules() if isinstance(m, (LambdaLayer, Lucidrains))]
        assert len(layers) == 1 and isinstance(layers[0], Lucidrains if arm == "lucidrains" else LambdaLayer)
        model(torch.randn(2, 3, 64, 64)).sum().backward()
        built[arm] = layers[0]
    assert built["ours-n01"].pos_emb.std() > 0.9 and built["ours"].pos_emb.std() < 0.2  # N(0, 1) vs unit output
    if label.endswith("(lc)"):
        assert built["lucidrains"].local_contexts and built["lucidrains"].pos_conv.kernel_size[-1] == 23  # report's r
    else:
        assert built["lucidrains"].rel_pos_emb.std() > 0.9  # N(0, 1), as drawn by lucidrains


def test_the_implementation_is_part_of_a_lambda_runs_identity_only():
    from lambdalib.config import RunConfig

    ours = RunConfig.from_params(model="LR18_L2(rpe)")
    assert RunConfig.from_params(model="LR18_L2(rpe)", lambda_layer="lucidrains").run_id != ours.run_id
    assert "lambda_layer" not in ours.identity()  # the default renames no committed run
    resnet = RunConfig.from_params(model="R18")
    assert RunConfig.from_params(model="R18", lambda_layer="lucidrains").run_id == resnet.run_id
    lc = RunConfig.from_params(model="LR18_L2(lc)", lambda_layer="lucidrains", lc_scope=5)
    assert lc.model_kwargs()["scope"] == 23 and "lc_scope" not in lc.identity()
    # the folder says whose layer (and lucidrains' lc its r=23) before the hash
    n01 = RunConfig.from_params(model="LR18_L2(rpe)", lambda_layer="ours-n01")
    assert n01.run_id.startswith("LR18-L2-rpe-ours-n01_")
    assert lc.run_id.startswith("LR18-L2-lc-lucidrains-r23_") and ours.run_id.startswith("LR18-L2-rpe_noise")
