"""FullGrad maps: every bias layer counted and read where the bias acts, maps that point at the evidence,
run-record checkpoints, a clear message when pretrained weights cannot be had, and the measures of a map."""
import numpy as np
import pytest
import timm
import torch
from PIL import Image
from pytorch_grad_cam import FullGrad
from timm.layers import BatchNormAct2d
from torch import nn

from lambdalib import fullgrad, models
from lambdalib.config import RunConfig
from lambdalib.train import run

IMAGE = fullgrad.default_image()


def _conv_norm_bias_modules(model: nn.Module) -> list[nn.Module]:
    """Independent count: modules of conv or norm type that hold a bias parameter."""
    kinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)
    return [m for m in model.modules() if isinstance(m, kinds) and isinstance(getattr(m, "bias", None), nn.Parameter)]


def _used_layers(model: nn.Module, size: int) -> int:
    cam = fullgrad.CompleteFullGrad(model)
    try:
        cam(torch.randn(1, 3, size, size), targets=None)
        return cam.layers_used
    finally:
        cam.activations_and_grads.release()


def test_default_image_is_shipped():
    assert IMAGE.is_file() and Image.open(IMAGE).size == (224, 224)


def test_lambda_resnet26t_every_bias_layer_is_used():
    torch.manual_seed(0)
    model = timm.create_model("lambda_resnet26t", pretrained=False).eval()  # counting only, never shown
    expected = _conv_norm_bias_modules(model)
    kinds = [type(m).__name__ for m in expected]
    assert (kinds.count("BatchNormAct2d"), kinds.count("BatchNorm2d"), kinds.count("Conv3d")) == (31, 6, 3)
    # the only other bias in the net is the classifier's Linear, which has no spatial map
    others = [m for m in model.modules() if isinstance(getattr(m, "bias", None), nn.Parameter) and
              not any(m is e for e in expected)]
    assert [type(m) for m in others] == [nn.Linear]
    assert len(fullgrad.bias_layers(model)) == len(expected) == 40
    assert len(fullgrad.grad_cam_default_layers(model)) == 6  # what pytorch-grad-cam's own FullGrad sees
    assert _used_layers(model, 64) == 40  # every one of them received a gradient and entered the map


@pytest.mark.parametrize("label", ["LR18_L2(rpe)", "LR18_L3(lc)", "R18"])
def test_our_models_every_bias_layer_is_used(label):
    model = models.create(label, num_classes=10, img_size=64).eval()
    expected = _conv_norm_bias_modules(model)
    assert len(fullgrad.bias_layers(model)) == len(expected) == (20 if label == "R18" else 22)
    assert _used_layers(model, 64) == len(expected)


def test_same_map_as_stock_fullgrad_when_it_sees_every_layer():
    """On a plain-BatchNorm2d net both use the same 20 layers: CompleteFullGrad keeps pytorch-grad-cam's arithmetic."""
    torch.manual_seed(0)
    model = models.create("R18", num_classes=10, img_size=64).eval()
    x = torch.randn(1, 3, 64, 64)
    np.testing.assert_array_equal(fullgrad.CompleteFullGrad(model)(x, None), FullGrad(model, [])(x, None))


def test_bias_gradients_are_read_before_the_activation():
    """FullGrad completeness on a piecewise-linear net with timm's BatchNormAct2d (in-place ReLU inside):
    logit = sum(x * dlogit/dx) + sum over bias layers of sum(bias * dlogit/d(layer's affine output)) + fc bias.
    It holds only if each norm+act layer's gradient is taken before its activation."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=True), BatchNormAct2d(8, act_layer=nn.ReLU, inplace=True),
        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(8, 4, 3, padding=1, bias=False), BatchNormAct2d(4, act_layer=nn.ReLU, inplace=True),
        nn.Flatten(), nn.Linear(4 * 8 * 8, 3),
    )
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 2), m.bias.data.uniform_(-1, 1)
    net.eval()
    layers = [layer for _, layer in fullgrad.bias_layers(net)]
    assert len(layers) == 4
    recorder = fullgrad._BiasGradients(net, layers)
    x = torch.randn(1, 3, 16, 16, requires_grad=True)
    logit = recorder(x)[0, 1]
    logit.backward()
    total = (x.grad * x).sum() + net[-1].bias[1]
    for layer, grad in zip(layers, recorder.gradients):
        total = total + (grad * fullgrad._effective_bias(layer)[None, :, None, None]).sum()
    recorder.release()
    assert torch.allclose(total, logit, atol=1e-4), (float(total), float(logit))


# ------------------------------------------------------------------- maps that point at evidence
PATCH, SIDE = 6, 32


def _patch_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noise images whose class is where a bright patch sits: 0 top-left, 1 bottom-right (+-2 px jitter)."""
    images = rng.integers(0, 90, (n, SIDE, SIDE, 3)).astype(np.uint8)
    labels = rng.integers(0, 2, n)
    corners = np.zeros((n, 2), int)
    for i, label in enumerate(labels):
        base = 3 if label == 0 else SIDE - 3 - PATCH
        top, left = base + rng.integers(-2, 3, 2)
        images[i, top:top + PATCH, left:left + PATCH] = 255
        corners[i] = top, left
    return images, labels, corners


@pytest.fixture(scope="module")
def patch_net():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 8 * 8, 2),
    )
    # what timm.data.resolve_data_config reads: 32 px input, pixels in [0, 1]
    net.pretrained_cfg = dict(input_size=(3, SIDE, SIDE), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                              interpolation="bilinear", crop_pct=1.0)
    net.class_names = ["top-left", "bottom-right"]
    images, labels, _ = _patch_images(512, np.random.default_rng(0))
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(labels)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    net.train()
    for _ in range(40):
        batch = torch.randint(0, len(x), (64,))
        loss = nn.functional.cross_entropy(net(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    with torch.no_grad():
        accuracy = (net(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.98
    return net


def test_fullgrad_peak_is_on_the_patch(patch_net, tmp_path):
    images, labels, corners = _patch_images(6, np.random.default_rng(1))
    for image, label, (top, left) in zip(images, labels, corners):
        path = tmp_path / "patch.png"
        Image.fromarray(image).save(path)
        result = fullgrad.attention_map(patch_net, path)
        assert result.index == result.top_index == label and result.n_bias_layers == 4  # 2 conv + 2 BN
        row, col = np.unravel_index(result.cam.argmax(), result.cam.shape)
        margin = 2  # px around the 6x6 patch
        assert top - margin <= row < top + PATCH + margin and left - margin <= col < left + PATCH + margin, \
            (label, (row, col), (top, left))
    assert set(labels) == {0, 1}


def test_map_shape_range_and_target(patch_net, tmp_path):
    images, labels, _ = _patch_images(1, np.random.default_rng(2))
    path = tmp_path / "patch.png"
    Image.fromarray(np.kron(images[0], np.ones((2, 3, 1), np.uint8))).save(path)  # 64 x 96: not the input size
    top = fullgrad.attention_map(patch_net, path)
    other = fullgrad.attention_map(patch_net, path, target=1 - int(labels[0]))
    by_name = fullgrad.attention_map(patch_net, path, target=patch_net.class_names[1 - int(labels[0])])
    for result in (top, other):
        assert result.cam.shape == (64, 96) and result.cam.dtype == np.float32
        assert np.isfinite(result.cam).all() and result.cam.min() >= 0 and result.cam.max() <= 1
    assert top.index == labels[0] and other.index == 1 - labels[0] and other.top_index == labels[0]
    assert 0.5 < top.prob <= 1 and abs(other.prob - (1 - top.prob)) < 1e-5
    assert np.abs(top.cam - other.cam).mean() > 0.01  # the explained class changes the map
    np.testing.assert_allclose(by_name.cam, other.cam)
    gradcam = fullgrad.attention_map(patch_net, path, method="Grad-CAM++", target_layer=patch_net[6])
    assert gradcam.cam.shape == (64, 96) and gradcam.n_bias_layers is None and gradcam.target_layer == "6"
    with pytest.raises(ValueError, match="'zebra'.*top-left"):
        fullgrad.attention_map(patch_net, path, target="zebra")
    with pytest.raises(ValueError, match="'fullgrad2'.*gradcam\\+\\+"):
        fullgrad.attention_map(patch_net, path, method="fullgrad2")


# ----------------------------------------------------------------- run records and missing weights
@pytest.fixture(scope="module")
def run_home(tiny_imagenette, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    config = RunConfig.from_params(model="LR18_L3(lc)", data=str(tiny_imagenette), results=str(home / "results"),
                                   epochs=1, img_size=32, batch_size=8, workers=0, preset="fast",
                                   checkpoints="best+last")
    run_dir = run(config, progress=False)
    assert (run_dir / "best.pt").is_file()
    return home, run_dir


def test_run_record_checkpoint_gives_a_map(run_home):
    _, run_dir = run_home
    for source in (run_dir, run_dir / "best.pt"):
        model, info = fullgrad.load_model(source)
        assert info.trained and info.label == "LR18_L3(lc)" and info.class_names[1] == "English springer"
    result = fullgrad.attention_map(model, IMAGE, target="tench")
    assert result.cam.shape == (224, 224) and np.isfinite(result.cam).all()
    assert result.name == "tench" and result.n_bias_layers == 22
    last_model, last_info = fullgrad.load_model(run_dir / "last.pt")  # no class list in it: Imagenette's
    assert last_info.class_names == info.class_names
    with pytest.raises(FileNotFoundError, match="nowhere/best.pt"):
        fullgrad.load_model("nowhere/best.pt")



def test_offline_pretrained_says_so(offline):
    with pytest.raises(fullgrad.WeightsUnavailableError, match="resnet18: pretrained weights unavailable"):
        fullgrad.load_model("resnet18")
    with pytest.raises(fullgrad.WeightsUnavailableError, match="no pretrained weights"):
        fullgrad.load_model("LR18_L2(rpe)")
    with pytest.warns(fullgrad.WeightsUnavailableWarning, match="resnet18"):
        model, info = fullgrad.load_model("resnet18", allow_random=True)
    assert not info.trained and info.weights == fullgrad.RANDOM_TITLE


def test_pretrained_from_a_weights_file(offline, tmp_path):
    torch.manual_seed(0)
    weights = timm.create_model("resnet18").state_dict()
    torch.save(weights, tmp_path / "resnet18.pth")
    model, info = fullgrad.load_model("resnet18", pretrained=tmp_path / "resnet18.pth")
    assert info.trained and "resnet18.pth" in info.weights and info.class_names[281] == "tabby"
    assert torch.equal(model.state_dict()["fc.weight"], weights["fc.weight"])
    with pytest.raises(fullgrad.WeightsUnavailableError, match="missing.pth"):
        fullgrad.load_model("resnet18", pretrained=tmp_path / "missing.pth")


# ------------------------------------------------------------------------------ measures of a map
def test_measures_on_planted_maps():
    uniform = np.ones((100, 100), np.float32)
    assert fullgrad.concentration(uniform) == pytest.approx(0.1, abs=1e-12)  # top 10 % of pixels: 10 % of mass
    assert fullgrad.normalised_entropy(uniform) == pytest.approx(1.0)
    box = (10, 20, 30, 60)  # left, top, right, bottom: 20 x 40 px
    assert fullgrad.mass_in_boxes(uniform, [box]) == pytest.approx(20 * 40 / 100 ** 2)  # the box's area share
    overlapping = [(0, 0, 50, 50), (25, 25, 75, 75)]  # union, not sum: 2 * 2500 - 625 px
    assert fullgrad.mass_in_boxes(uniform, overlapping) == pytest.approx((2 * 2500 - 625) / 100 ** 2)
    inside = np.zeros((100, 100), np.float32)
    inside[20:60, 10:30] = np.random.default_rng(0).uniform(0.1, 1, (40, 20))  # all mass in the box
    assert fullgrad.mass_in_boxes(inside, [box]) == pytest.approx(1.0)
    assert fullgrad.mass_in_boxes(inside, [(50, 50, 100, 100)]) == 0.0
    assert fullgrad.concentration(inside) == pytest.approx(1.0)  # 800 px <= the top 1,000
    spike = np.zeros((100, 100))
    spike[3, 4] = 1
    assert fullgrad.concentration(spike) == 1.0 and fullgrad.normalised_entropy(spike) == 0.0
    spread = np.zeros((10, 10))
    spread[0, :] = 1  # uniform on 10 of 100 pixels: log 10 / log 100
    assert fullgrad.normalised_entropy(spread) == pytest.approx(0.5)
    half = np.zeros((100, 100))
    half[:, :50] = 1  # the top 10 % of pixels hold a fifth of the mass
    assert fullgrad.concentration(half) == pytest.approx(0.2) and fullgrad.concentration(half, 0.5) == 1.0
    zero = np.zeros((10, 10))
    assert np.isnan(fullgrad.concentration(zero)) and np.isnan(fullgrad.mass_in_boxes(zero, [box]))
    with pytest.raises(ValueError, match="non-negative"):
        fullgrad.concentration(-uniform)
    measures = fullgrad.map_measures(inside, {"a": box, "b": (50, 50, 100, 100)})
    assert measures["mass_a"] == pytest.approx(1.0) and measures["mass_b"] == 0.0
    assert measures["mass_either"] == pytest.approx(1.0)
    assert set(fullgrad.map_measures(inside)) == {"concentration_top10", "normalised_entropy"}
    # the uniform baseline of each share: the box's (or the union's) share of the image area
    assert measures["area_a"] == fullgrad.area_share((100, 100), [box]) == pytest.approx(20 * 40 / 100 ** 2)
    assert measures["area_b"] == pytest.approx(0.25) and measures["area_either"] == pytest.approx(0.33)
    assert fullgrad.area_share((100, 100), overlapping) == pytest.approx((2 * 2500 - 625) / 100 ** 2)
    assert np.isnan(fullgrad.area_share((10, 10), []))


def test_both_png_has_hand_drawn_dog_and_cat_boxes(tmp_path):
    boxes = fullgrad.load_boxes(IMAGE)
    assert list(boxes) == ["dog", "cat"]
    dog, cat = boxes["dog"], boxes["cat"]
    assert dog[1] < cat[1] and dog[3] < cat[3]  # the dog sits above the cat (top and bottom edges)
    for left, top, right, bottom in boxes.values():
        assert 0 <= left < right <= 224 and 0 <= top < bottom <= 224 and (right - left) * (bottom - top) > 5000
    assert "by hand" in (IMAGE.parent / "PROVENANCE.md").read_text()
    image = tmp_path / "picture.png"
    Image.open(IMAGE).save(image)
    assert fullgrad.load_boxes(image) == {}  # no boxes file: no boxes
    fullgrad.boxes_file(image).write_text('{"size": [100, 100], "boxes": {"dog": [0, 0, 10, 10]}}')
    with pytest.raises(ValueError, match="picture.boxes.json.*100x100 image, picture.png is 224x224"):
        fullgrad.load_boxes(image)
    fullgrad.boxes_file(image).write_text('{"size": [224, 224], "boxes": {"dog": [0, 0, 300, 10]}}')
    with pytest.raises(ValueError, match="box 'dog'"):
        fullgrad.load_boxes(image)
