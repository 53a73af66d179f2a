"""Attention maps (FullGrad by default) for timm's pretrained models and our run records: the report's figure 7.

    from lambdalib import attention
    model, info = attention.load_model("lambda_resnet26t")          # pretrained; raises if unavailable
    result = attention.attention_map(model, "data/images/both.png")  # explains the top-1 class
    attention.attention_figure(["resnet18", "resnet50", "lambda_resnet26t", "lambda_resnet50ts"])

Why not pytorch-grad-cam's FullGrad as is: it collects the layers whose type is *exactly* nn.Conv2d or
nn.BatchNorm2d. timm's lambda models normalise with BatchNormAct2d (a BatchNorm2d subclass that also
applies the activation), so stock FullGrad sums 6 of lambda_resnet26t's 40 bias terms but all of
resnet18's 20: the report compared maps built from unlike sums. `CompleteFullGrad` keeps
pytorch-grad-cam's arithmetic and counts every conv/norm layer that carries a bias (isinstance, so
subclasses too), taking each norm+act layer's gradient *before* its activation, where the bias acts.
"""
from __future__ import annotations

import difflib
import logging
import os
import socket
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import timm
import timm.data
import torch
import torch.nn.functional as F
from PIL import Image
from pytorch_grad_cam import (
    AblationCAM,
    EigenCAM,
    EigenGradCAM,
    FullGrad,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.activations_and_gradients import ActivationsAndGradients
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from . import models
from .paths import data_dir, results_dir

log = logging.getLogger(__name__)

DEFAULT_IMAGE = "images/both.png"  # under data/
REPORT_MODELS = ("resnet18", "resnet50", "lambda_resnet26t", "lambda_resnet50ts")  # figure 7's four
RANDOM_TITLE = "random init (no weights available)"

# conv/norm types whose bias FullGrad can place on the image (the classifier's Linear bias cannot)
_CONV = nn.modules.conv._ConvNd
_NORM = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


# ---------------------------------------------------------------------------------- FullGrad
def bias_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every conv or norm module (subclasses included) with a bias parameter, in module order."""
    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, (_CONV, *_NORM)) and isinstance(getattr(module, "bias", None), nn.Parameter)]


def grad_cam_default_layers(model: nn.Module) -> list[nn.Module]:
    """The layers pytorch-grad-cam 1.5.7's own FullGrad uses: type exactly Conv2d/BatchNorm2d, with a bias."""
    return [m for m in model.modules() if type(m) in (nn.Conv2d, nn.BatchNorm2d) and m.bias is not None]


def _effective_bias(layer: nn.Module) -> torch.Tensor:
    """The constant a layer adds per channel in eval mode; BN folds its running mean into it."""
    if isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.running_mean is not None:
        scale = layer.weight / torch.sqrt(layer.running_var + layer.eps)
        return (layer.bias - layer.running_mean * scale).detach()
    return layer.bias.detach()


def _hook_point(layer: nn.Module) -> tuple[nn.Module, bool]:
    """(module, on_input): where the layer's affine output (bias included, activation not yet) flows.

    timm's norm+act layers (BatchNormAct2d, GroupNormAct, ...) run norm -> self.drop -> self.act inside
    one forward, so their output is post-activation; the input of `drop` (or of `act`) is the norm's.
    """
    if isinstance(layer, _NORM):
        for child in ("drop", "act"):
            sub = getattr(layer, child, None)
            if isinstance(sub, nn.Module):
                return sub, True
    return layer, False


def _as_nchw(layer: nn.Module, grad: torch.Tensor) -> torch.Tensor | None:
    """The gradient as (B, C, H, W) with C the bias's channels, or None when it has no such layout."""
    channels = layer.bias.numel()
    if grad.ndim == 5 and isinstance(layer, nn.Conv3d) and layer.kernel_size[-1] == layer.stride[-1] == 1:
        # timm's lambda layers: a 2-D conv over (H, W) batched along the last (value) axis, output
        # (B, K, H, W, V). FullGrad takes |bias x grad| per element, so sum |grad| over V (bias is per K).
        grad = grad.abs().sum(-1)
    if grad.ndim != 4:
        return None
    if grad.shape[1] == channels:
        return grad
    if grad.shape[-1] == channels:  # channels-last norms (timm's LayerNorm in ConvNeXt blocks)
        return grad.permute(0, 3, 1, 2)
    return None


class _BiasGradients(ActivationsAndGradients):
    """Gradient w.r.t. each bias layer's affine output, stored by layer index.

    pytorch-grad-cam stores gradients in the order backward happens to reach them and zips that list with
    the layers; on branched networks that order is not guaranteed, so here each hook writes its own slot.
    """

    def __init__(self, model: nn.Module, layers: list[nn.Module]):
        self.model, self.reshape_transform, self.detach = model, None, True
        self.layers, self.handles, self.activations = layers, [], []
        self.gradients: list[torch.Tensor | None] = [None] * len(layers)
        for index, layer in enumerate(layers):
            module, on_input = _hook_point(layer)
            if on_input:
                hook = module.register_forward_pre_hook(lambda m, args, i=index: self._watch(i, args[0]))
            else:
                hook = module.register_forward_hook(lambda m, args, out, i=index: self._watch(i, out))
            self.handles.append(hook)

    def _watch(self, index: int, tensor: torch.Tensor) -> None:
        if not isinstance(tensor, torch.Tensor) or not tensor.requires_grad:
            return

        def store(grad: torch.Tensor) -> None:
            # a hook registered before an in-place activation still gets the pre-activation gradient
            grad = _as_nchw(self.layers[index], grad.detach())
            if grad is None:
                return
            old = self.gradients[index]
            self.gradients[index] = grad if old is None or old.shape != grad.shape else old + grad

        tensor.register_hook(store)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.gradients = [None] * len(self.layers)
        return self.model(x)

    def clear(self) -> None:
        self.gradients = [None] * len(self.layers)


class CompleteFullGrad(FullGrad):
    """pytorch-grad-cam's FullGrad summed over *every* bias-carrying conv/norm layer (see `bias_layers`).

    Same arithmetic as FullGrad (|input x grad| plus |bias x grad| per layer, each channel min-max scaled,
    summed); what changes is which layers enter and where their gradient is read. After a call,
    `layers_used` holds how many bias terms entered the map (layers that ran and reached the target).
    """

    def __init__(self, model: nn.Module):
        # BaseCAM's set-up without FullGrad's exact-type layer search (and its target_layers warning)
        BaseCAM.__init__(self, model, [], reshape_transform=None, compute_input_gradient=True)
        self.activations_and_grads.release()
        self.named_layers = bias_layers(model)
        self.target_layers = [layer for _, layer in self.named_layers]
        self.activations_and_grads = _BiasGradients(model, self.target_layers)
        self.bias_data = [self.get_bias_data(layer).cpu().numpy() for layer in self.target_layers]
        self.layers_used = 0

    def get_bias_data(self, layer: nn.Module) -> torch.Tensor:
        return _effective_bias(layer)

    def compute_cam_per_layer(self, input_tensor, target_category, eigen_smooth):
        grads = self.activations_and_grads.gradients
        used = [i for i, grad in enumerate(grads) if grad is not None]
        all_bias = self.bias_data
        self.bias_data = [all_bias[i] for i in used]
        self.activations_and_grads.gradients = [grads[i] for i in used]
        try:
            return super().compute_cam_per_layer(input_tensor, target_category, eigen_smooth)
        finally:
            self.bias_data, self.layers_used = all_bias, len(used)


class _StockFullGrad(FullGrad):
    """pytorch-grad-cam's FullGrad as shipped (exact-type layers); `layers_used` for the caption."""

    def __init__(self, model: nn.Module):
        super().__init__(model, [])
        self.layers_used = len(self.bias_data)


# name -> (class, needs a target layer); names are matched lower-case without "-", "_" and spaces
METHODS = {
    "fullgrad": (CompleteFullGrad, False),
    "fullgradstock": (_StockFullGrad, False),
    "gradcam": (GradCAM, True),
    "gradcam++": (GradCAMPlusPlus, True),
    "hirescam": (HiResCAM, True),
    "xgradcam": (XGradCAM, True),
    "layercam": (LayerCAM, True),
    "eigencam": (EigenCAM, True),
    "eigengradcam": (EigenGradCAM, True),
    "gradcamelementwise": (GradCAMElementWise, True),
    "scorecam": (ScoreCAM, True),  # one forward per channel of the target layer: slow on CPU
    "ablationcam": (AblationCAM, True),
}


def _method_key(method: str) -> str:
    key = str(method).lower().replace("-", "").replace("_", "").replace(" ", "")
    if key not in METHODS:
        raise ValueError(f"Unknown CAM method {method!r}; choose one of {', '.join(METHODS)} "
                         f"('fullgradstock' is pytorch-grad-cam's FullGrad with its exact-type layer match)")
    return key


def last_conv_stage(model: nn.Module) -> nn.Module:
    """The target layer for Grad-CAM-style methods: the last block of the last conv stage."""
    for name in ("layer4", "stages"):  # torchvision/timm ResNets and ours; timm's ByobNet (lambda_resnet*)
        stage = getattr(model, name, None)
        if isinstance(stage, nn.Sequential) and len(stage):
            last = stage[-1]
            return last[-1] if isinstance(last, nn.Sequential) and len(last) else last
    info = getattr(model, "feature_info", None)
    if info:
        return model.get_submodule(info[-1]["module"])
    raise ValueError(f"{type(model).__name__}: no layer4, stages or timm feature_info to take the last conv stage "
                     f"from; use method='fullgrad' (needs no target layer) or pass target_layer=")


# ------------------------------------------------------------------------------------ models
class WeightsUnavailableError(FileNotFoundError):
    """Pretrained weights for a model cannot be had here (offline, not cached, or none exist)."""


class WeightsUnavailableWarning(UserWarning):
    """A model was left out of (or shown untrained in) a figure because its weights cannot be had."""


@dataclass
class ModelInfo:
    """What `load_model` loaded: a label for titles, where the weights came from, the class names."""

    label: str
    weights: str  # "pretrained (timm/resnet18.a1_in1k)", "checkpoint <path>" or RANDOM_TITLE
    class_names: list[str]
    trained: bool  # False: random init, never to be presented as a trained model
    source: str = ""  # what was asked for


def imagenet_class_names(model: nn.Module) -> list[str] | None:
    """Short ImageNet class names ("tabby", "bull mastiff") for a timm ImageNet classifier, offline."""
    subset = timm.data.infer_imagenet_subset(model)
    if not subset:
        return None
    info = timm.data.ImageNetInfo(subset)
    return [info.index_to_description(i).split(",")[0].strip() for i in range(info.num_classes())]


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connect to the Hugging Face endpoint (instead of the hub client's minute of retries)."""
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def _hub_offline(offline: bool):
    """Make the hub client read only its local cache (HF_HUB_OFFLINE) for the duration."""
    try:
        from huggingface_hub import constants
    except ImportError:
        yield
        return
    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = before or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _create_pretrained(name: str, pretrained: bool | str | Path) -> tuple[nn.Module, str]:
    """timm model with real weights, from a weights file or the hub/its local cache; else WeightsUnavailableError."""
    if name in models.SPECS:
        raise WeightsUnavailableError(
            f"{name}: the report's models have no pretrained weights; train one (`lambdalib train --model "
            f"'{models.report_label(name)}'`) and pass its run folder or best.pt")
    if not isinstance(pretrained, bool):  # a weights file for this timm architecture
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise WeightsUnavailableError(f"{name}: weights file {str(path)!r} does not exist")
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
        return model, f"weights file {path.name}"
    cfg = timm.models.get_pretrained_cfg(name)
    cfg = cfg.to_dict() if cfg is not None else {}
    if not (cfg.get("hf_hub_id") or cfg.get("url") or cfg.get("file")):
        raise WeightsUnavailableError(f"{name}: timm has no pretrained weights for this model")
    offline = not _hub_reachable()
    try:
        with _hub_offline(offline):
            model = timm.create_model(name, pretrained=True)
    except Exception as err:  # noqa: BLE001  hub, cache and network misses come as many types
        where = "offline and not in the local Hugging Face cache" if offline else f"download failed ({err})"
        raise WeightsUnavailableError(
            f"{name}: pretrained weights unavailable ({where}); pass a weights file with "
            f"pretrained='path/to/weights.safetensors' or run where huggingface.co is reachable") from None
    return model, f"pretrained ({cfg.get('hf_hub_id') or cfg.get('url')})"


def _checkpoint_file(path: Path) -> Path:
    if path.is_dir():
        for candidate in ("best.pt", "last.pt"):
            if (path / candidate).is_file():
                return path / candidate
        raise FileNotFoundError(f"{path}: no best.pt or last.pt; is this a run folder (results/runs/<id>)?")
    return path


def _load_checkpoint(path: Path) -> tuple[nn.Module, ModelInfo]:
    file = _checkpoint_file(path)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001  safetensors, a zip, anything torch cannot unpickle
        state = None
    if not (isinstance(state, dict) and {"model", "config"} <= state.keys()):
        raise ValueError(f"{file}: not a lambdalib run checkpoint (expected keys 'model' and 'config'); for timm "
                         f"weights use load_model('<timm name>', pretrained='{file}')")
    config = state["config"]
    classes = state.get("classes")
    if not classes:  # last.pt has no class list; our runs are Imagenette's ten
        from .data import CLASS_NAMES

        classes = CLASS_NAMES
    classes = list(classes)
    model = models.create(config["model"], num_classes=len(classes), img_size=config["img_size"])
    model.load_state_dict(state["model"])
    run = file.parent.name
    epoch = f", epoch {state['epoch']}" if "epoch" in state else ""
    info = ModelInfo(models.report_label(config["model"]), f"checkpoint {run}/{file.name}{epoch}", classes,
                     trained=True, source=str(path))
    return model, info


def _looks_like_path(text: str) -> bool:
    return os.sep in text or "/" in text or text.endswith((".pt", ".pth", ".safetensors", ".bin"))


def load_model(name_or_checkpoint: str | Path, pretrained: bool | str | Path = True,
               allow_random: bool = False) -> tuple[nn.Module, ModelInfo]:
    """A model ready for `attention_map`, in eval mode, and what it is.

    name_or_checkpoint: a run folder (results/runs/<id>) or its best.pt/last.pt, a timm name
        ("resnet50", "lambda_resnet26t") or a report label ("LR18_L2(rpe)").
    pretrained: for names: True = timm's weights from the hub or its local cache (offline: cache only),
        a path = that weights file, False = random init (for counting layers, never for presenting maps).
    allow_random: when weights cannot be had, warn and return a random-init model (info.trained False)
        instead of raising WeightsUnavailableError.
    """
    path = Path(name_or_checkpoint).expanduser()
    if path.exists():
        model, info = _load_checkpoint(path)
    elif _looks_like_path(str(name_or_checkpoint)):
        raise FileNotFoundError(f"{str(name_or_checkpoint)!r}: no such run folder or checkpoint file")
    else:
        name = models.resolve_name(str(name_or_checkpoint))
        label = models.report_label(name)
        model, weights = None, RANDOM_TITLE
        if pretrained is not False:
            try:
                model, weights = _create_pretrained(name, pretrained)
            except WeightsUnavailableError as err:
                if not allow_random:
                    raise
                warnings.warn(f"{err}; using random init, titled {RANDOM_TITLE!r}", WeightsUnavailableWarning,
                              stacklevel=2)
        if model is None:
            model = timm.create_model(name, pretrained=False)
        names = imagenet_class_names(model) or [f"class {i}" for i in range(model.num_classes)]
        info = ModelInfo(label, weights, names, trained=weights != RANDOM_TITLE, source=str(name_or_checkpoint))
    model.class_names = info.class_names  # attention_map reads them from here
    return model.eval(), info


def run_records(root: str | Path | None = None) -> list[Path]:
    """Run folders with a best.pt under results/runs (or root), newest first."""
    runs = Path(root) if root else results_dir() / "runs"
    found = [p.parent for p in runs.glob("*/best.pt")] if runs.is_dir() else []
    return sorted(found, key=lambda run: (run / "best.pt").stat().st_mtime, reverse=True)


# -------------------------------------------------------------------------------------- maps
@dataclass
class AttentionMap:
    """One map: `cam` (H x W float32 in [0, 1], the image's size) explains class `index`."""

    cam: np.ndarray
    index: int  # the explained class (top-1 unless a target was given)
    name: str
    prob: float  # softmax probability of the explained class
    top_index: int
    top_name: str
    top_prob: float
    n_bias_layers: int | None  # bias terms summed (FullGrad methods), else None
    method: str
    target_layer: str | None = None  # the module Grad-CAM-style methods read (None for FullGrad)


def default_image() -> Path:
    """data/images/both.png of the project (paths.data_dir), else of the checkout lambdalib was installed from."""
    for root in (data_dir(), Path(__file__).resolve().parent.parent / "data"):
        if (root / DEFAULT_IMAGE).is_file():
            return root / DEFAULT_IMAGE
    return data_dir() / DEFAULT_IMAGE


def _open_image(image: str | Path | Image.Image | None) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    path = Path(image) if image is not None else default_image()
    if not path.is_file():
        raise FileNotFoundError(f"image {str(path)!r} does not exist" + (
            "; the default image ships in the repository's data/images/ (set LAMBDALIB_HOME or pass image=)"
            if image is None else ""))
    with Image.open(path) as opened:
        return opened.convert("RGB")


def preprocess(model: nn.Module, image: Image.Image) -> torch.Tensor:
    """(1, 3, h, w) input from the model's own timm data config (size, interpolation, mean, std).

    The crop is set to the whole image (squash, crop_pct 1): a centre crop would leave the borders
    unseen and the map could not cover the image.
    """
    config = timm.data.resolve_data_config(model=model)
    config.update(crop_pct=1.0, crop_mode="squash")
    return timm.data.create_transform(**config)(image).unsqueeze(0)


def _class_index(target: int | str, names: list[str]) -> int:
    if isinstance(target, str) and target.strip().isdigit():
        target = int(target)
    if isinstance(target, (int, np.integer)):
        if not 0 <= target < len(names):
            raise ValueError(f"target={target}: class index out of range 0..{len(names) - 1}")
        return int(target)
    wanted = str(target).strip().lower()
    for index, name in enumerate(names):
        if wanted == name.lower():
            return index
    close = difflib.get_close_matches(str(target), names, n=5, cutoff=0.5)
    raise ValueError(f"target={target!r} is not a class of this model" +
                     (f"; did you mean {', '.join(map(repr, close))}?" if close else
                      f"; classes are {', '.join(names[:10])}{', ...' if len(names) > 10 else ''} (or an index)"))


def attention_map(model: nn.Module, image: str | Path | Image.Image | None = None, method: str = "fullgrad",
                  target: int | str | None = None, class_names: list[str] | None = None,
                  target_layer: nn.Module | None = None) -> AttentionMap:
    """CAM of one image for one class, resized to the image's size.

    image: a path or PIL image (default data/images/both.png).
    method: "fullgrad" (every bias-carrying layer, see CompleteFullGrad), "fullgradstock" (pytorch-grad-cam's
        own), "gradcam", "gradcam++", "scorecam", ... (METHODS); the non-FullGrad ones use `target_layer`,
        by default the last block of the last conv stage.
    target: None = the top prediction, else a class index or name ("tabby", "English springer").
    class_names: default `model.class_names` (set by load_model), ImageNet names or "class i".
    """
    key = _method_key(method)
    picture = _open_image(image)
    names = class_names or getattr(model, "class_names", None) or imagenet_class_names(model) \
        or [f"class {i}" for i in range(getattr(model, "num_classes", 0) or 1000)]
    index = None if target is None else _class_index(target, names)
    model.eval()
    device = next(model.parameters()).device
    x = preprocess(model, picture).to(device)
    cam_class, needs_layer = METHODS[key]
    layer_name = None
    if needs_layer:
        target_layer = target_layer or last_conv_stage(model)
        layer_name = next((name for name, module in model.named_modules() if module is target_layer), "?")
        cam = cam_class(model, [target_layer])
    else:
        cam = cam_class(model)
    try:  # not `with cam:`, whose __exit__ swallows IndexErrors
        targets = None if index is None else [ClassifierOutputTarget(index)]
        grayscale = cam(input_tensor=x, targets=targets)[0]
        logits = cam.outputs.detach().float()[0]
        used = getattr(cam, "layers_used", None)
    finally:
        cam.activations_and_grads.release()
        model.zero_grad(set_to_none=True)
    probs = logits.softmax(-1)
    top = int(probs.argmax())
    index = top if index is None else index
    resized = F.interpolate(torch.from_numpy(np.ascontiguousarray(grayscale, dtype=np.float32))[None, None],
                            size=(picture.height, picture.width), mode="bilinear", align_corners=False)[0, 0]
    cam_map = np.nan_to_num(resized.numpy().astype(np.float32))
    low, high = float(cam_map.min()), float(cam_map.max())
    if high > low:  # rescale so every map spans [0, 1] at the image's size, as at the input's
        cam_map = (cam_map - low) / (high - low)
    cam_map = np.clip(cam_map, 0.0, 1.0)
    return AttentionMap(cam_map, index, names[index], float(probs[index]), top, names[top], float(probs[top]),
                        used, key, layer_name)


# ------------------------------------------------------------------------------------ figure
@dataclass
class AttentionFigure:
    """A saved figure: the PNG, its caption (also written beside it as .md) and the maps drawn."""

    path: Path
    caption: str
    caption_path: Path
    panels: list[tuple[ModelInfo, AttentionMap]] = field(default_factory=list)


_METHOD_TITLES = {"fullgrad": "FullGrad", "fullgradstock": "FullGrad (pytorch-grad-cam stock layers)",
                  "gradcam++": "Grad-CAM++", "gradcam": "Grad-CAM", "scorecam": "Score-CAM"}


def _caption(panels: list[tuple[ModelInfo, AttentionMap, int, int]], image_name: str, key: str,
             target) -> str:
    title = _METHOD_TITLES.get(key, key)
    explains = "the model's top-1 class" if target is None else f"class {target!r}"
    lines = [f"{title} attention maps on {image_name}. Each panel explains {explains}; its title gives the "
             f"model, the explained class and its softmax probability."]
    if key.startswith("fullgrad"):
        counts = "; ".join(f"{info.label}: {m.n_bias_layers} of {total} (stock FullGrad: {stock})"
                           for info, m, total, stock in panels)
        lines.append(
            "FullGrad sums |input x gradient| and, per layer, |bias x gradient of the layer's output|. Bias "
            f"layers summed per model: {counts}. Counted: every Conv/BatchNorm/GroupNorm/LayerNorm module with a "
            "bias (subclasses included, e.g. timm's BatchNormAct2d, read before its activation; BatchNorm's "
            "bias includes its running mean; the Conv3d in timm's lambda layers). The classifier's Linear bias "
            "has no spatial map and is not a term. 'Stock' is what pytorch-grad-cam 1.5.7's FullGrad (exact "
            "types Conv2d/BatchNorm2d) would have summed.")
    else:
        layers = "; ".join(f"{info.label}: {m.target_layer}" for info, m, *_ in panels)
        lines.append(f"Target layer (the last block of the last conv stage): {layers}.")
    lines.append("Weights: " + "; ".join(f"{info.label}: {info.weights}" for info, *_ in panels) + ".")
    return "\n\n".join(lines)


def figure(entries: list, image: str | Path | None = None, method: str = "fullgrad", out: str | Path | None = None,
           target: int | str | None = None, dpi: int = 200) -> AttentionFigure:
    """The report's layout: the image, then one overlay per model; saved with a caption beside it.

    entries: (model, ModelInfo) pairs from load_model, or names/run folders (loaded with pretrained weights,
        raising WeightsUnavailableError when there are none; `attention_figure` skips those instead).
    out: the PNG (default results/figures/attention_<method>.png); the caption goes to the same name .md.
    """
    key = _method_key(method)
    if not entries:
        raise ValueError("figure: no models to show")
    picture = _open_image(image)
    image_name = Path(image).name if image is not None else Path(DEFAULT_IMAGE).name
    panels = []
    for entry in entries:
        model, info = entry if isinstance(entry, tuple) else load_model(entry)
        result = attention_map(model, picture, key, target, info.class_names)
        panels.append((info, result, len(bias_layers(model)), len(grad_cam_default_layers(model))))

    from matplotlib.figure import Figure  # no pyplot: no global state, works under any backend

    fig = Figure(figsize=(2.6 * (len(panels) + 1), 3.1))
    axes = fig.subplots(1, len(panels) + 1, squeeze=False)
    axes = axes[0]
    rgb = np.asarray(picture)
    axes[0].imshow(rgb)
    axes[0].set_title(image_name, fontsize=9)
    for ax, (info, result, *_) in zip(axes[1:], panels):
        ax.imshow(rgb)
        ax.imshow(result.cam, cmap="jet", alpha=0.5, vmin=0, vmax=1)
        title = f"{info.label}\n{result.name} ({result.prob:.0%})"
        if target is not None:
            title += f"\ntop-1: {result.top_name} ({result.top_prob:.0%})"
        if not info.trained:
            title = f"{info.label}\n{RANDOM_TITLE}"
        ax.set_title(title, fontsize=9, color="black" if info.trained else "red")
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    path = Path(out) if out else results_dir() / "figures" / f"attention_{key.replace('+', 'pp')}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=max(dpi, 200), bbox_inches="tight")
    caption = _caption(panels, image_name, key, target)
    caption_path = path.with_suffix(".md")
    caption_path.write_text(f"![{path.stem}]({path.name})\n\n{caption}\n")
    return AttentionFigure(path, caption, caption_path, [(info, result) for info, result, *_ in panels])


def attention_figure(models: list[str], image: str | Path | None = None, *, method: str = "fullgrad",
                     out: str | Path | None = None, allow_random: bool = False, target: int | str | None = None,
                     fallback_runs: int = 4) -> AttentionFigure | None:
    """The CLI/notebook entry point: load what can be loaded, warn about the rest, save the figure.

    models: timm names, report labels, run folders or checkpoint files (default: figure 7's four).
    Models whose pretrained weights cannot be had are left out with a WeightsUnavailableWarning naming
    them, or, with allow_random=True, shown untrained under the title "random init (no weights available)".
    When nothing is left, the newest `fallback_runs` run records under results/runs are shown instead;
    returns None (after saying why) when there is nothing at all to show.
    """
    key = _method_key(method)
    _open_image(image)  # a missing image fails before any model is loaded
    loaded, missing = [], []
    for name in (list(models) if models else list(REPORT_MODELS)):
        try:
            loaded.append(load_model(name, allow_random=allow_random))
        except WeightsUnavailableError as err:
            missing.append(str(name))
            warnings.warn(f"{err}. Left out of the figure.", WeightsUnavailableWarning, stacklevel=2)
    if not loaded and fallback_runs:
        runs = run_records()[:fallback_runs]
        if runs:
            log.info(f"No pretrained weights for {', '.join(missing)}; showing our run records instead: "
                     + ", ".join(run.name for run in runs))
            loaded = [load_model(run) for run in runs]
    if not loaded:
        log.warning(f"Nothing to show: no pretrained weights for {', '.join(missing) or 'the requested models'} and "
                    f"no run records with best.pt under {results_dir() / 'runs'}. Run where huggingface.co is "
                    f"reachable, pass weights files, or train a model (`lambdalib train`).")
        return None
    return figure(loaded, image, key, out, target)
