"""Every way out of eager PyTorch gives the eager outputs (within fp32 noise) or refuses in one line (#22):
torch.jit.script, torch.jit.trace, torch.fx (plain, torchvision's and timm's feature extraction), torch.compile,
ONNX (the dynamo exporter and the legacy TorchScript one, run with onnxruntime) and `lambdalib export`."""
import io
import json
import warnings

import pytest
import timm
import torch

import lambdalib  # noqa: F401  (registers the models)
from lambdalib.layers import LambdaLayer

IMG = 64  # lambda maps: stage 2 8x8, stage 3 4x4
# an rpe model and an lc model whose table is cropped to its map (stage 3 at 64 px: 4x4 map, 7x7 of the 23x23)
MODELS = ["lambda_resnet18_l2_rpe", "lambda_resnet18_l3_lc"]
# layer-level cases covering the three position-term paths: rpe, lc dense (an off-size map: index built on the
# fly), lc conv
LAYERS = {
    "rpe": (dict(position="rpe", feat_size=6), (6, 6)),
    "lc-dense": (dict(position="lc", feat_size=8, scope=7, impl="dense"), (6, 5)),
    "lc-conv": (dict(position="lc", scope=5, impl="conv"), (7, 6)),
}


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():  # torch.jit.script / trace / onnx deprecation notices, TracerWarnings
        warnings.simplefilter("ignore")
        yield


def model(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    net = timm.create_model(name, num_classes=10, img_size=IMG, **kwargs)
    with torch.no_grad():  # non-trivial BN statistics, so eval mode really uses them
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def layer(case: str) -> tuple[LambdaLayer, torch.Tensor]:
    kwargs, size = LAYERS[case]
    torch.manual_seed(0)
    mod = LambdaLayer(8, 8, heads=2, dim_k=4, **kwargs)
    return mod, torch.randn(3, 8, *size)


def image(batch: int = 2, size: int = IMG) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def assert_same(actual: torch.Tensor, expected: torch.Tensor, what: str = "") -> None:
    """Equal within fp32 noise, relative to the output's scale (an untrained ResNet's logits are far from 1)."""
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5 * scale, msg=lambda m: f"{what}: {m}")


def eager(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net(x)


def grads(net: torch.nn.Module, x: torch.Tensor, fn=None) -> dict[str, torch.Tensor]:
    """Parameter gradients of (fn or net)(x).square().mean() in train mode."""
    net.zero_grad(set_to_none=True)
    (net if fn is None else fn)(x).square().mean().backward()
    return {n: p.grad.clone() for n, p in net.named_parameters()}


# ------------------------------------------------------------------------------------------- TorchScript
@pytest.mark.parametrize("name", MODELS)
def test_torchscript_matches_eager_and_survives_save_load(name, tmp_path):
    net, x = model(name), image()
    scripted = torch.jit.script(net)
    assert_same(eager(scripted, x), eager(net, x), "scripted")
    torch.jit.save(scripted, tmp_path / "m.pt")  # no Python left inside: the autograd Function is not in it
    loaded = torch.jit.load(tmp_path / "m.pt")
    assert_same(eager(loaded, image(batch=3)), eager(net, image(batch=3)), "saved and loaded")
    with pytest.raises(Exception, match=r"LambdaLayer\((rpe|lc)\) was built for a \dx\d feature map but got") as info:
        loaded(image(size=2 * IMG))  # the layer's own refusal, raised inside TorchScript
    assert last_line_is_the_refusal(info.value)


def last_line_is_the_refusal(error: Exception) -> bool:
    """TorchScript prints its own traceback first; the refusal itself is the last line, whole."""
    last = str(error).strip().splitlines()[-1]
    return last.startswith("builtins.ValueError: LambdaLayer") and "; " in last


@pytest.mark.parametrize("case", list(LAYERS))
def test_torchscript_trains_like_eager(case):
    """Scripted, the position term runs as plain ops: same outputs and gradients, BN statistics updated alike."""
    mod, x = layer(case)
    mod.train()
    scripted = torch.jit.script(mod)
    assert_same(scripted(x), mod(x), case)
    expected = grads(mod, x)
    actual = grads(mod, x, scripted)  # the scripted module shares the parameters
    for key in expected:
        assert_same(actual[key], expected[key], f"{case} grad {key}")


# ------------------------------------------------------------------------------------------- tracing
@pytest.mark.parametrize("name", MODELS)
def test_trace_matches_eager_and_refuses_another_map_size_in_one_line(name):
    net = model(name)
    traced = torch.jit.trace(net, image())
    assert_same(eager(traced, image(batch=3)), eager(net, image(batch=3)), "traced, another batch size")
    side = 8 if name.endswith("l2_rpe") else 4
    for size in (IMG - 16, IMG + 32):  # smaller and larger maps: a trace holds one
        with pytest.raises(Exception, match=rf"traced \(torch.jit.trace\) on a {side}x{side} map but got") as info:
            traced(image(size=size))
        assert last_line_is_the_refusal(info.value)


@pytest.mark.parametrize("case", list(LAYERS))
def test_trace_trains_like_eager(case):
    mod, x = layer(case)
    mod.train()
    traced = torch.jit.trace(mod, x, check_trace=False)  # BN in train mode: outputs differ run to run by design
    expected = grads(mod, x)
    actual = grads(mod, x, traced)
    for key in expected:
        assert_same(actual[key], expected[key], f"{case} grad {key}")


# ------------------------------------------------------------------------------------------- torch.fx
@pytest.mark.parametrize("name", MODELS)
def test_fx_symbolic_trace_and_feature_extraction(name):
    from torchvision.models.feature_extraction import create_feature_extractor

    net, x = model(name), image()
    graph = torch.fx.symbolic_trace(net)  # plain fx: no leaf modules; the layer's wrapped functions are calls
    assert_same(eager(graph, x), eager(net, x), "fx.symbolic_trace")
    extractor = create_feature_extractor(net, return_nodes={"layer3": "mid", "fc": "out"}).eval()
    features = eager(extractor, x)
    assert_same(features["out"], eager(net, x), "torchvision feature extractor, logits")
    with torch.no_grad():
        assert_same(features["mid"], net.layer3(net.layer2(net.layer1(net.maxpool(net.act1(net.bn1(
            net.conv1(x))))))), "torchvision feature extractor, layer3")
    # timm's (the layer is a registered leaf): the model's own intermediates
    fx = timm.create_model(name, img_size=IMG, features_only=True, feature_cls="fx").eval()
    state = net.state_dict()
    fx.load_state_dict({key: state[key.removeprefix("graph_module.")] for key in fx.state_dict()})
    with torch.no_grad():
        expected = net.forward_intermediates(x, intermediates_only=True)
    got = eager(fx, x)
    assert len(got) == len(expected) == 5
    for i, (feature, want) in enumerate(zip(got, expected)):
        assert_same(feature, want, f"timm feature_cls='fx', feature {i}")


def test_fx_graph_trains_like_eager():
    net, x = model("lambda_resnet18_l3_lc"), image()
    net.train()
    graph = torch.fx.symbolic_trace(net)  # shares net's parameters
    expected = grads(net, x)
    actual = grads(net, x, graph)
    for key in expected:
        assert_same(actual[key], expected[key], f"grad {key}")


# ------------------------------------------------------------------------------------------- torch.compile
@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_torch_compile_model_matches_eager(name):
    torch._dynamo.reset()
    net, x = model(name), image()
    compiled = torch.compile(net)
    assert_same(eager(compiled, x), eager(net, x), "compiled, eval")


def relative_errors(actual: dict, reference: dict) -> dict[str, float]:
    return {k: ((actual[k].double() - reference[k]).norm() / reference[k].norm()).item() for k in reference}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(LAYERS))
def test_torch_compile_trains_like_eager(case):
    """Forward and backward (the autograd Function through dynamo) as accurate as eager against a float64
    reference; for the conv path again after a second map size makes dynamo recompile with a dynamic size (which
    inductor cannot lay out: the layer runs that conv outside the graph). At model level, inductor's own kernels
    for the rest of the network (BatchNorm on a batch of 2) differ from eager's by more than this."""
    import copy

    torch._dynamo.reset()
    mod, x = layer(case)
    mod.train()
    compiled = torch.compile(mod)
    sizes = [x.shape[-2:]] + ([(x.shape[-2] - 1, x.shape[-1] - 2)] if case == "lc-conv" else [])
    for size in sizes:
        probe = torch.randn(3, 8, *size)
        reference = copy.deepcopy(mod).double()
        expected = {k: v.double() for k, v in grads(reference, probe.double()).items()}
        errors = relative_errors(grads(mod, probe, compiled), expected)
        eager_errors = relative_errors(grads(mod, probe), expected)
        assert max(errors.values()) < 1e-5 + 10 * max(eager_errors.values()), (case, size, errors, eager_errors)


# ------------------------------------------------------------------------------------------- ONNX
def onnx_outputs(blob: bytes, x: torch.Tensor) -> torch.Tensor:
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


def export_legacy(net: torch.nn.Module, x: torch.Tensor) -> bytes:
    pytest.importorskip("onnx")
    buffer = io.BytesIO()
    torch.onnx.export(net, (x,), buffer, dynamo=False)
    return buffer.getvalue()


def export_dynamo(net: torch.nn.Module, x: torch.Tensor, tmp_path) -> bytes:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    program = torch.onnx.export(net, (x,), dynamo=True, verbose=False)
    program.save(str(tmp_path / "m.onnx"))
    return (tmp_path / "m.onnx").read_bytes()


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("name", MODELS)
def test_onnx_export_runs_to_eager_outputs(name, exporter, tmp_path):
    """The legacy exporter used to write the position term as a constant (max |diff| ~1-2 at 160 px)."""
    net, x = model(name), image()
    blob = export_legacy(net, x) if exporter == "legacy" else export_dynamo(net, x, tmp_path)
    assert_same(onnx_outputs(blob, x), eager(net, x), exporter)
    other = image(batch=2, size=IMG + 8)  # a fresh input: a constant position term would not follow it
    assert_same(onnx_outputs(blob, image(batch=2, size=IMG) * 0.5), eager(net, image(batch=2, size=IMG) * 0.5),
                f"{exporter}, another input")
    with pytest.raises(Exception, match="(?i)dimension"):  # static shapes: onnxruntime refuses another size
        onnx_outputs(blob, other)


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("case", list(LAYERS))
def test_onnx_export_of_each_position_path(case, exporter, tmp_path):
    mod, x = layer(case)
    mod.eval()
    with torch.no_grad():
        for bn in (mod.norm_q, mod.norm_v):
            bn.running_var.uniform_(0.5, 1.5)
    blob = export_legacy(mod, x) if exporter == "legacy" else export_dynamo(mod, x, tmp_path)
    for probe in (x, torch.randn_like(x)):
        assert_same(onnx_outputs(blob, probe), eager(mod, probe), f"{case} {exporter}")


# ------------------------------------------------------------------------------------------- lambdalib export
@pytest.mark.slow
def test_lambdalib_export_tells_the_truth_about_the_input_size(tiny_imagenette, tmp_path):
    """An lc model whose stage-3 map (2x2 at 32 px) is below its 23x23 window stores a 3x3 table: the exported
    config says fixed_input_size, and the model loaded from the folder refuses a larger image in one line."""
    from lambdalib.config import RunConfig
    from lambdalib.export import export
    from lambdalib.train import run

    config = RunConfig.from_params(model="LR18_L3(lc)", data=str(tiny_imagenette), results=str(tmp_path / "runs"),
                                   epochs=1, img_size=32, batch_size=8, workers=0, preset="fast", noise=0.25)
    out = export(run(config, progress=False))
    hub = json.loads((out / "config.json").read_text())
    assert hub["pretrained_cfg"]["fixed_input_size"] is True
    loaded = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    assert loaded.pretrained_cfg["fixed_input_size"] is True
    assert eager(loaded, image(size=32)).shape == (2, 10)
    with pytest.raises(ValueError, match=r"built for a 2x2 feature map but got 4x4") as info:
        eager(loaded, image(size=64))
    assert "\n" not in str(info.value)
