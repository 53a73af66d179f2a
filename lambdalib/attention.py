"""Attention maps (FullGrad by default) for timm's pretrained models and our run records: the report's figure 7.

    from lambdalib import attention
    model, info = attention.load_model("lambda_resnet26t")          # pretrained; raises if unavailable
    result = attention.attention_map(model, "data/images/both.png")  # explains the top-1 class
    attention.attention_figure(["resnet18", "resnet50", "lambda_resnet26t", "lambda_resnet50ts"])
    attention.trained_figure()   # figure 7 from our own run records' best.pt, with its table (no download)

`trained_figure` is the figure a reader can see offline: R18, LR18_L2(rpe) and LR18_L2(lc) at noise 0 and 50 %,
one checkpoint each picked by a fixed rule (PICK_RULE), on both.png and three Imagenette validation images,
with per-map measures (`concentration`, `mass_in_boxes` over the hand-drawn boxes in both.boxes.json) in
tables/attention_trained.csv (`attention_table_markdown` renders it).

Why not pytorch-grad-cam's FullGrad as is: it collects the layers whose type is *exactly* nn.Conv2d or
nn.BatchNorm2d. timm's lambda models normalise with BatchNormAct2d (a BatchNorm2d subclass that also
applies the activation), so stock FullGrad sums 6 of lambda_resnet26t's 40 bias terms but all of
resnet18's 20: the report compared maps built from unlike sums. `CompleteFullGrad` keeps
pytorch-grad-cam's arithmetic and counts every conv/norm layer that carries a bias (isinstance, so
subclasses too), taking each norm+act layer's gradient *before* its activation, where the bias acts.
"""
from __future__ import annotations

import difflib
import json
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

from . import files, models, registry
from .config import RunConfig
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
    run_dir: Path | None = None  # the run folder, for a run-record checkpoint
    epoch: int | None = None  # the checkpoint's epoch, when it records one
    img_size: int | None = None  # the size it was trained at (run-record checkpoints)


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
    if name in registry.SPECS:
        raise WeightsUnavailableError(
            f"{name}: the report's models have no pretrained weights; train one (`lambdalib train --model "
            f"'{registry.report_label(name)}'`) and pass its run folder or best.pt")
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
        from .imagenette import CLASS_NAMES

        classes = CLASS_NAMES
    classes = list(classes)
    # built as train.py built it (image size, the lc scope); configs from before a field read its default
    model = models.create(config["model"], num_classes=len(classes), **RunConfig.from_dict(config).model_kwargs())
    model.load_state_dict(state["model"])
    run = file.parent.name
    epoch = f", epoch {state['epoch']}" if "epoch" in state else ""
    info = ModelInfo(registry.report_label(config["model"]), f"checkpoint {run}/{file.name}{epoch}", classes,
                     trained=True, source=str(path), run_dir=file.parent, epoch=state.get("epoch"),
                     img_size=config.get("img_size"))
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
        name = registry.resolve_name(str(name_or_checkpoint))
        label = registry.report_label(name)
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


# --------------------------------------------------------------- figure 7 from the models we train
TRAINED_LABELS = ("R18", "LR18_L2(rpe)", "LR18_L2(lc)")
TRAINED_NOISE = (0.0, 0.5)
# The Imagenette validation images shown beside both.png: the first file (by name) of
# data/imagenette-mini/val/<wnid> of a dog (like the one in both.png), a large object and a small one.
TRAINED_IMAGE_CLASSES = ("n02102040", "n03417042", "n03445777")  # English springer, garbage truck, golf ball
EMBEDDED_VAL = "imagenette-mini/val"  # under data/
TOP_FRACTION = 0.10  # concentration: the share of a map's mass in its top 10 % of pixels
TRAINED_NAME = "attention_trained"  # figures/<name>.png (+ .md caption), tables/<name>.csv (+ .md)
BOXES_SUFFIX = ".boxes.json"  # both.png -> both.boxes.json beside it
PICK_RULE = ("per model and noise level, among the run folders with a best.pt: preset 'fast' first, then status "
             "'complete', then official (not synthetic) noise, then the most epochs trained, then the lowest seed, "
             "then the run id (alphabetical)")
_IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
_BOX_COLOURS = ("red", "lime", "cyan", "magenta", "yellow")

Box = tuple[int, int, int, int]  # left, top, right, bottom in pixels of the image; right and bottom exclusive


class NoTrainedRunsError(FileNotFoundError):
    """No run record with a best.pt for any of the requested models and noise levels."""


# ---------------------------------------------------------------------------- map measurements
def _mass(cam: np.ndarray) -> tuple[np.ndarray, float]:
    values = np.asarray(cam, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"a map is 2-D (height x width); got shape {values.shape}")
    if not np.isfinite(values).all() or (values < 0).any():
        raise ValueError("a map's values must be finite and non-negative")
    return values, float(values.sum())


def concentration(cam: np.ndarray, fraction: float = TOP_FRACTION) -> float:
    """The share of the map's total mass held by its highest `fraction` of pixels (round(fraction x pixels),
    at least one). A uniform map gives `fraction` (0.10); a map whose mass sits on a tenth of the image or
    less gives 1. NaN for an all-zero map (no mass to share)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction}: must be in (0, 1]")
    values, total = _mass(cam)
    if total <= 0:
        return float("nan")
    flat = values.ravel()
    k = max(1, int(round(fraction * flat.size)))
    return float(np.partition(flat, flat.size - k)[flat.size - k:].sum() / total)


def normalised_entropy(cam: np.ndarray) -> float:
    """Entropy of the map taken as a distribution over pixels, divided by log(pixels): 1 for a uniform map,
    0 for all mass on one pixel. NaN for an all-zero map."""
    values, total = _mass(cam)
    if total <= 0 or values.size < 2:
        return float("nan")
    p = values.ravel() / total
    p = p[p > 0]
    return float(-(p * np.log(p)).sum() / np.log(values.size))


def box_mask(shape: tuple[int, int], boxes) -> np.ndarray:
    """Boolean (height, width) mask of the union of `boxes` ((left, top, right, bottom), right/bottom exclusive)."""
    mask = np.zeros(shape, dtype=bool)
    for left, top, right, bottom in boxes:
        mask[max(int(top), 0):max(int(bottom), 0), max(int(left), 0):max(int(right), 0)] = True
    return mask


def mass_in_boxes(cam: np.ndarray, boxes) -> float:
    """The share of the map's total mass inside the union of `boxes` (pixel coordinates of the map, which
    `attention_map` returns at the image's size). All mass inside gives 1; a uniform map gives the boxes'
    share of the image's area. NaN for an all-zero map or no boxes."""
    values, total = _mass(cam)
    boxes = list(boxes)
    if total <= 0 or not boxes:
        return float("nan")
    return float(values[box_mask(values.shape, boxes)].sum() / total)


def boxes_file(image: str | Path) -> Path:
    """Where an image's object boxes live: `<stem>.boxes.json` beside it (both.png -> both.boxes.json)."""
    image = Path(image)
    return image.with_name(image.stem + BOXES_SUFFIX)


def load_boxes(image: str | Path) -> dict[str, Box]:
    """The named object boxes of an image from its boxes file ({} when it has none).

    The file: {"size": [width, height], "boxes": {"dog": [left, top, right, bottom], ...}} in pixels of the
    image as stored, right and bottom exclusive; a size that is not the image's, or a box outside it, raises
    ValueError naming the file."""
    image = Path(image)
    path = boxes_file(image)
    if not path.is_file():
        return {}
    try:
        spec = json.loads(path.read_text())
        boxes = {str(name): tuple(int(v) for v in box) for name, box in spec["boxes"].items()}
        declared = tuple(int(v) for v in spec["size"])
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{path} is not a boxes file ({type(err).__name__}: {err}); expected "
                         '{"size": [width, height], "boxes": {"name": [left, top, right, bottom]}}') from None
    with Image.open(image) as opened:
        size = opened.size
    if declared != size:
        raise ValueError(f"{path}: its boxes are for a {declared[0]}x{declared[1]} image, {image.name} is "
                         f"{size[0]}x{size[1]}")
    for name, box in boxes.items():
        if len(box) != 4 or not (0 <= box[0] < box[2] <= size[0] and 0 <= box[1] < box[3] <= size[1]):
            raise ValueError(f"{path}: box {name!r} {list(box)} is not [left, top, right, bottom] inside the "
                             f"{size[0]}x{size[1]} image")
    return boxes


def map_measures(cam: np.ndarray, boxes: dict[str, Box] | None = None) -> dict[str, float]:
    """What the table reports for one map: concentration (top 10 % share), normalised entropy, and per box
    `mass_<name>` plus `mass_either` (the union of all boxes); box entries only when there are boxes."""
    measures = {"concentration_top10": concentration(cam), "normalised_entropy": normalised_entropy(cam)}
    if boxes:
        for name, box in boxes.items():
            measures[f"mass_{name}"] = mass_in_boxes(cam, [box])
        measures["mass_either"] = mass_in_boxes(cam, boxes.values())
    return measures


# ------------------------------------------------------------------------------- picking runs
@dataclass(frozen=True)
class PickedRun:
    """The run record one column of the trained-models figure comes from (see PICK_RULE)."""

    label: str
    noise: float
    run_dir: Path
    status: str
    preset: str
    seed: int
    epochs_done: int
    synthetic_noise: bool
    img_size: int
    data: str
    git_commit: str
    candidates: int = 1  # run folders with a best.pt for this model and noise, the picked one included

    @property
    def run_id(self) -> str:
        return self.run_dir.name

    @property
    def short_id(self) -> str:
        """The run id without the model and noise the panel title already gives: 'fast_e15_64px_embedded_<hash>_s0'."""
        parts = self.run_id.split("_")
        if len(parts) > 2 and parts[1].startswith("noise"):
            return "_".join(parts[2:])
        return self.run_id


def _runs_folder(results: str | Path | None) -> Path:
    return (Path(results).expanduser() if results else results_dir()) / "runs"


def _same_noise(a: float, b: float) -> bool:
    return abs(float(a) - float(b)) < 1e-9


def _noise_text(noise: float) -> str:
    return f"{float(noise) * 100:g} %"


def pick_runs(results: str | Path | None = None, labels=TRAINED_LABELS,
              noise=TRAINED_NOISE) -> dict[tuple[str, float], PickedRun]:
    """One run record with a best.pt per (model label, noise level), chosen by PICK_RULE.

    results: the folder holding runs/ (default: the project's results/, `paths.results_dir`).
    labels: report labels or timm names; noise: fractions. Cells without any such record are absent from the
    result, which is ordered as labels x noise. Records whose summary or config cannot be read are skipped
    with a warning on the 'lambdalib' logger. Only summary.json and config.json are read.
    """
    from . import record

    wanted = {registry.report_label(str(label)): str(label) for label in labels}
    found: dict[tuple[str, float], list[PickedRun]] = {}
    runs = _runs_folder(results)
    for run_dir in sorted(p.parent for p in runs.glob("*/best.pt")) if runs.is_dir() else []:
        try:
            summary = record.load_summary(run_dir)
            config = record.load_config(run_dir)
        except (record.RecordError, OSError) as err:
            log.warning(f"attention: skipped {run_dir.name}: {err}")
            continue
        if summary is None:
            log.warning(f"attention: skipped {run_dir.name}: no summary.json")
            continue
        label = summary.get("label") or registry.report_label(config.model)
        level = next((n for n in noise if _same_noise(config.noise, n)), None)
        if label not in wanted or level is None:
            continue
        env = summary.get("environment") or {}
        found.setdefault((label, float(level)), []).append(PickedRun(
            label=label, noise=float(level), run_dir=run_dir, status=record.status(run_dir, summary) or "?",
            preset=str(config.preset), seed=int(config.seed), epochs_done=int(summary.get("epochs_done") or 0),
            synthetic_noise=bool(config.synthetic_noise), img_size=int(config.img_size), data=str(config.data),
            git_commit=str(env.get("git_commit", "unknown"))))

    def preference(run: PickedRun) -> tuple:
        return (run.preset != "fast", run.status != "complete", run.synthetic_noise, -run.epochs_done, run.seed,
                run.run_id)

    picked = {}
    for label in wanted:
        for level in noise:
            cell = found.get((label, float(level)))
            if cell:
                best = min(cell, key=preference)
                picked[(label, float(level))] = PickedRun(**{**best.__dict__, "candidates": len(cell)})
    return picked


def _no_runs_message(results: str | Path | None, labels, noise) -> str:
    runs = _runs_folder(results)
    have = sorted(p.parent.name for p in runs.glob("*/best.pt")) if runs.is_dir() else []
    models_text = ",".join(registry.report_label(str(label)) for label in labels)
    noise_text = ",".join(f"{float(n):g}" for n in noise)
    seen = f"; best.pt found only in {', '.join(have[:4])}{', ...' if len(have) > 4 else ''}" if have else ""
    return (f"no run record with a best.pt under {runs} for {models_text} at noise {noise_text}{seen}. Train them "
            f"first: `lambdalib reproduce --study` (the committed study, best.pt kept; about 80 min on a 2-core CPU) "
            f"or one model, e.g. `lambdalib train --model R18 --noise 0 --preset fast --img-size 64` (the default "
            f"--checkpoints best keeps best.pt; `lambdalib demo`/--quick runs save none)")


# ------------------------------------------------------------------------------------ the figure
def trained_images() -> list[Path]:
    """The trained-models figure's rows: data/images/both.png, then the first validation image (by file name)
    of each class in TRAINED_IMAGE_CLASSES from the embedded data, data/imagenette-mini/val/<wnid>/."""
    both = default_image()
    _open_image(both)  # says where it should be when it is missing
    val = both.parent.parent / EMBEDDED_VAL  # the same data/ folder as both.png
    images = [both]
    for wnid in TRAINED_IMAGE_CLASSES:
        folder = val / wnid
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES) if folder.is_dir() else []
        if not files:
            raise FileNotFoundError(f"{folder}: no images; the embedded data ships in the repository's "
                                    f"data/imagenette-mini (set LAMBDALIB_HOME or pass images=)")
        images.append(files[0])
    return images


def _image_label(path: Path) -> tuple[str, str]:
    """(name for tables, true class or ''): 'both.png' / 'n02102040/n02102040_1011.JPEG', 'English springer'."""
    from .imagenette import CLASS_NAMES, WNIDS

    if path.parent.name in WNIDS:
        return f"{path.parent.name}/{path.name}", CLASS_NAMES[WNIDS.index(path.parent.name)]
    return path.name, ""


@dataclass
class TrainedPanel:
    """One map of the trained-models figure: which run, which image, the map and its measures."""

    run: PickedRun
    info: ModelInfo
    image: Path
    image_name: str
    true_class: str
    map: AttentionMap
    val_acc: float | None  # val top-1 of the checkpoint's epoch (history.csv)
    boxes: dict[str, Box]
    measures: dict[str, float]
    bias_layers: int  # bias-carrying conv/norm layers of the model (what CompleteFullGrad can count)
    stock_layers: int  # what pytorch-grad-cam's own FullGrad would have counted


@dataclass
class TrainedFigure:
    """What `trained_figure` wrote (PNG, caption .md, table .csv and .md) and everything drawn in it."""

    path: Path
    caption: str
    caption_path: Path
    table_path: Path
    table_markdown_path: Path
    rows: list[dict]  # the table's rows, numbers unrounded
    panels: list[TrainedPanel]
    picks: dict[tuple[str, float], PickedRun]
    missing: list[tuple[str, float]]  # (label, noise) cells that had no run with a best.pt

    @property
    def maps(self) -> dict[tuple[str, float, str], np.ndarray]:
        """(label, noise, image name) -> the map (H x W in [0, 1], the image's size)."""
        return {(p.run.label, p.run.noise, p.image_name): p.map.cam for p in self.panels}


_MEASURE_TITLES = {"concentration_top10": "top-10 % mass", "normalised_entropy": "entropy"}


def _table_rows(panels: list[TrainedPanel]) -> tuple[list[dict], list[str]]:
    box_columns = []
    for panel in panels:
        for name in panel.boxes:
            if f"mass_{name}" not in box_columns:
                box_columns.append(f"mass_{name}")
    columns = ["model", "noise", "image", "true_class", "predicted_class", "predicted_wnid", "probability",
               "concentration_top10", "normalised_entropy", *box_columns,
               *(["mass_either"] if box_columns else []), "run_id", "epoch", "val_acc", "bias_layers", "git_commit"]
    from .imagenette import CLASS_NAMES, WNIDS

    rows = []
    for p in panels:
        name = p.map.top_name
        rows.append({
            "model": p.run.label, "noise": p.run.noise, "image": p.image_name, "true_class": p.true_class,
            "predicted_class": name, "predicted_wnid": WNIDS[CLASS_NAMES.index(name)] if name in CLASS_NAMES else "",
            "probability": p.map.top_prob, **{c: p.measures.get(c, "") for c in columns if c.startswith("mass_")},
            "concentration_top10": p.measures["concentration_top10"],
            "normalised_entropy": p.measures["normalised_entropy"], "run_id": p.run.run_id, "epoch": p.info.epoch,
            "val_acc": p.val_acc, "bias_layers": p.map.n_bias_layers, "git_commit": p.run.git_commit})
    return rows, columns


def _csv_text(rows: list[dict], columns: list[str]) -> str:
    import csv
    import io

    def cell(value) -> str:
        if value is None:
            return ""
        if isinstance(value, float):
            return "" if not np.isfinite(value) else f"{value:.6f}"
        return str(value)

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([cell(row[c]) for c in columns])
    return out.getvalue()


def attention_table_markdown(csv_path: str | Path) -> str:
    """The trained-models attention table (tables/attention_trained.csv) as markdown, with a legend."""
    import csv

    with open(csv_path, newline="") as handle:
        reader = csv.DictReader(handle)
        columns, rows = list(reader.fieldnames or []), list(reader)
    if not rows:
        return "No attention maps of trained models yet (`lambdalib attention --trained`)."
    boxes = [c for c in columns if c.startswith("mass_") and c != "mass_either"]
    extra = ["mass_either"] if "mass_either" in columns else []

    def share(value: str) -> str:
        return f"{float(value):.2f}" if value not in ("", None) else "–"

    head = ["model", "noise", "image", "predicted (prob.)", "top-10 % mass", "entropy",
            *[f"on {c[5:]}" for c in boxes], *(["on either"] if extra else []), "checkpoint (epoch, val acc)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---"] + ["---:"] * (len(head) - 5)
                                                              + ["---"]) + "|"]
    for row in rows:
        image = row["image"] + (f" ({row['true_class']})" if row.get("true_class") else "")
        prob = f" ({float(row['probability']):.0%})" if row.get("probability") else ""
        acc = f", {float(row['val_acc']):.1%}" if row.get("val_acc") else ""
        epoch = f"epoch {row['epoch']}" if row.get("epoch") else "epoch ?"
        cells = [row["model"], _noise_text(float(row["noise"])), image, row["predicted_class"] + prob,
                 share(row["concentration_top10"]), share(row["normalised_entropy"]),
                 *[share(row[c]) for c in boxes + extra], f"`{row['run_id']}` ({epoch}{acc})"]
        lines.append("| " + " | ".join(cells) + " |")
    legend = ("top-10 % mass: the share of the map's mass in its 10 % highest pixels (a uniform map gives 0.10, "
              "all mass on a tenth of the image 1.00); entropy: the map's entropy over pixels / log(pixels) (1 = "
              "uniform)")
    if boxes:
        legend += ("; on <object>: the share of the map's mass inside that object's hand-drawn box "
                   "(data/images/<image>.boxes.json), on either: inside their union; – : the image has no boxes")
    return "\n".join(lines) + "\n\n" + legend + ". Maps are FullGrad's, min-max scaled to [0, 1] at the image's size.\n"


def _data_text(data: str) -> str:
    if data == "embedded":
        return "imagenette-mini (the embedded 10-class Imagenette subset, data/imagenette-mini)"
    return Path(data).name or data


def _join(items) -> str:
    items = list(dict.fromkeys(items))
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _identical_columns(panels: list[TrainedPanel], runs: list[PickedRun]) -> list[tuple[PickedRun, PickedRun]]:
    """Pairs of runs at the same noise whose maps are equal on every image (rpe/lc twins at small sizes)."""
    maps = {}
    for p in panels:
        maps.setdefault(p.run.run_id, []).append(p.map.cam)
    return [(a, b) for i, a in enumerate(runs) for b in runs[i + 1:]
            if a.noise == b.noise and all(np.array_equal(x, y) for x, y in zip(maps[a.run_id], maps[b.run_id]))]


def _trained_caption(panels: list[TrainedPanel], picks: dict, missing: list, images: list[Path], key: str) -> str:
    from . import __version__

    runs = list(picks.values())
    title = _METHOD_TITLES.get(key, key)
    labels = _join(run.label for run in runs)
    lines = [
        f"{title} attention maps of our own small-data models, {labels}, trained from scratch by lambdalib on "
        f"{_join(_data_text(run.data) for run in runs)} at {_join(f'{run.img_size} px' for run in runs)} "
        f"({_join(f'{run.epochs_done} epoch' + 's' * (run.epochs_done != 1) for run in runs)}, "
        f"preset {_join(run.preset for run in runs)}), "
        f"at label noise {_join(_noise_text(run.noise) for run in runs)}: not the report's ImageNet-pretrained "
        f"resnet18, resnet50, lambda_resnet26t and lambda_resnet50ts, so these maps show what the models trained "
        f"here attend to. Rows: {_join(_image_label(image)[0] for image in images)}; the first column is the "
        f"image as given, with the hand-drawn object boxes where it has them "
        f"({_join(boxes_file(image).name for image in images if load_boxes(image)) or 'none'}). Each panel explains "
        f"the model's top-1 class, squashing the whole image to the model's input size; its title: model and "
        f"noise, the run (its id without model and noise), the checkpoint's epoch and the val accuracy at that "
        f"epoch (history.csv), the predicted class and its probability, and the map's measures: top10 = the "
        f"share of the map's mass in its 10 % highest pixels (uniform: 0.10), <object> = the share inside "
        f"that object's box."]
    if key.startswith("fullgrad"):
        seen = {}
        for p in panels:
            seen.setdefault(p.run.label, f"{p.run.label}: {p.map.n_bias_layers} of {p.bias_layers} "
                                         f"(stock FullGrad: {p.stock_layers})")
        lines.append(f"Bias layers summed per model: {'; '.join(seen.values())}. Counted: every Conv/BatchNorm "
                     "module with a bias (BatchNorm's bias includes its running mean; the lambda layer's Conv3d), "
                     "plus |input x gradient|; the classifier's Linear bias has no spatial map.")
    lines.append(f"Checkpoints: best.pt (the epoch of lowest val loss), one run {PICK_RULE}. Runs: "
                 + "; ".join(f"{run.label} noise {_noise_text(run.noise)}: {run.run_id} ({run.status}, "
                             f"picked from {run.candidates} with a best.pt)" for run in runs)
                 + f". Trained at git commit {_join(run.git_commit for run in runs)}; drawn by lambdalib "
                   f"{__version__}.")
    same = _identical_columns(panels, runs)
    if same:
        lines.append("Identical maps on every image: " + "; ".join(
            f"{a.label} and {b.label} at noise {_noise_text(a.noise)}" for a, b in same) + " (as an lc model does when "
            "its scope covers the whole feature map: see the README).")
    if missing:
        lines.append("No run with a best.pt for: " + "; ".join(f"{label} at noise {_noise_text(n)}"
                                                              for label, n in missing) + " (left out).")
    return "\n\n".join(lines)


def _render_trained(panels: list[TrainedPanel], picks: dict, images: list[Path], caption: str, dpi: int,
                    metadata: dict[str, str]) -> bytes:
    import io
    import textwrap

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global state, works under any backend
    from matplotlib.patches import Rectangle
    from PIL.PngImagePlugin import PngInfo

    columns = list(picks.values())
    by_cell = {(p.run.label, p.run.noise, p.image): p for p in panels}
    side, title_h, gap, margin = 1.9, 0.62, 0.12, 0.15  # inches
    width = margin * 2 + (len(columns) + 1) * side + len(columns) * gap
    text_size = 7.0
    chars = int((width - 2 * margin) * 72 / (text_size * 0.62))
    wrapped = [textwrap.fill(part, chars) for part in caption.split("\n\n")]
    caption_text = "\n".join(wrapped)
    caption_h = (caption_text.count("\n") + 1) * text_size * 1.3 / 72 + 0.2
    head_h = 0.35
    row_h = side + title_h
    height = head_h + len(images) * row_h + caption_h + margin
    fig = Figure(figsize=(width, height), dpi=dpi)
    fig.text(0.5, 1 - 0.12 / height, metadata["Title"] + ", not the report's ImageNet-pretrained ones", ha="center",
             va="top", fontsize=10, weight="bold")
    for r, image in enumerate(images):
        picture = _open_image(image)
        rgb = np.asarray(picture)
        boxes = load_boxes(image)
        name, true_class = _image_label(image)
        bottom = 1 - (head_h + (r + 1) * row_h - 0.02) / height
        for c in range(len(columns) + 1):
            left = (margin + c * side + max(c - 0, 0) * gap) / width
            ax = fig.add_axes((left, bottom, side / width, side / height))
            ax.imshow(rgb)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c == 0:
                title = f"{true_class}\n{name}" if true_class else name
                if boxes:
                    title += "\nboxes: " + ", ".join(f"{n} ({_BOX_COLOURS[i % len(_BOX_COLOURS)]})"
                                                     for i, n in enumerate(boxes))
                ax.set_title(title, fontsize=6.5, loc="center")
            else:
                run = columns[c - 1]
                panel = by_cell[(run.label, run.noise, image)]
                ax.imshow(panel.map.cam, cmap="jet", alpha=0.5, vmin=0, vmax=1)
                acc = f"{panel.val_acc:.1%}" if panel.val_acc is not None else "?"
                measures = f"top10 {panel.measures['concentration_top10']:.2f}"
                measures += "".join(f"  {n} {panel.measures[f'mass_{n}']:.2f}" for n in boxes)
                ax.set_title(f"{run.label}, noise {_noise_text(run.noise)}\n{run.short_id}\n"
                             f"epoch {panel.info.epoch}, val acc {acc}\n"
                             f"pred: {panel.map.top_name} ({panel.map.top_prob:.0%})\n{measures}", fontsize=5.6)
            for i, (x0, y0, x1, y1) in enumerate(boxes.values()):
                ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                                       edgecolor=_BOX_COLOURS[i % len(_BOX_COLOURS)],
                                       linewidth=1.2 if c == 0 else 0.6, linestyle="-" if c == 0 else "--"))
    fig.text(margin / width, (caption_h - 0.05) / height, caption_text, ha="left", va="top", fontsize=text_size,
             wrap=False)
    # drawn here and saved through PIL: RGB on the white figure (no alpha channel: a tenth smaller), the
    # caption and provenance as PNG text chunks, and nothing that varies between runs (no time stamp)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgb = Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba(), "raw", "RGBA", 0, 1)
    info = PngInfo()
    for name, value in metadata.items():
        info.add_text(name, value)  # Latin-1 as tEXt, anything else as iTXt
    buffer = io.BytesIO()
    rgb.convert("RGB").save(buffer, format="png", pnginfo=info, dpi=(dpi, dpi))
    return buffer.getvalue()


def trained_figure(results: str | Path | None = None, out: str | Path | None = None, *, labels=TRAINED_LABELS,
                   noise=TRAINED_NOISE, images: list[str | Path] | None = None, method: str = "fullgrad",
                   dpi: int = 150) -> TrainedFigure:
    """Figure 7 from the models this package trains: FullGrad maps of our own checkpoints, with a table.

    results: the folder holding runs/ (default: the project's results/). One run with a best.pt is picked per
        model label and noise level (`pick_runs`, PICK_RULE); cells without one are left out and named in the
        caption; none at all raises NoTrainedRunsError saying how to train them.
    out: where figures/ and tables/ go (default: `results`). Writes figures/attention_trained.png (caption in
        the image and in its PNG text metadata with the run ids and commits), figures/attention_trained.md
        (the caption), tables/attention_trained.csv (one row per model, noise and image: run id, epoch, val
        acc, predicted class, concentration, mass on each object box and on either) and its markdown
        (`attention_table_markdown`). Every file is written atomically, and only after all maps are made.
    images: default `trained_images()`: both.png (boxes in data/images/both.boxes.json), then one Imagenette
        validation image of each of three classes. Same records and images give a byte-identical PNG.
    """
    from . import __version__, record

    key = _method_key(method)
    picks = pick_runs(results, labels, noise)
    if not picks:
        raise NoTrainedRunsError(_no_runs_message(results, labels, noise))
    wanted = [(registry.report_label(str(label)), float(n)) for label in labels for n in noise]
    missing = [cell for cell in wanted if cell not in picks]
    image_paths = [Path(p) for p in images] if images else trained_images()
    pictures = {image: _open_image(image) for image in image_paths}  # a missing image fails before any model
    boxes = {image: load_boxes(image) for image in image_paths}
    panels = []
    for run in picks.values():
        model, info = load_model(run.run_dir)
        history = {row["epoch"]: row for row in record.read_history(run.run_dir)}
        acc = history.get(info.epoch, {}).get("val_acc")
        acc = float(acc) if acc is not None and np.isfinite(acc) else None
        n_bias, n_stock = len(bias_layers(model)), len(grad_cam_default_layers(model))
        for image in image_paths:
            result = attention_map(model, pictures[image], key, None, info.class_names)
            name, true_class = _image_label(image)
            panels.append(TrainedPanel(run, info, image, name, true_class, result, acc, boxes[image],
                                       map_measures(result.cam, boxes[image]), n_bias, n_stock))
        log.info(f"attention: {run.label} noise {_noise_text(run.noise)}: {run.run_id} epoch {info.epoch} "
                 f"(1 of {run.candidates} with a best.pt)")
    caption = _trained_caption(panels, picks, missing, image_paths, key)
    rows, columns = _table_rows(panels)
    provenance = [dict(model=run.label, noise=run.noise, run_id=run.run_id, status=run.status,
                       epoch=next(p.info.epoch for p in panels if p.run is run), git_commit=run.git_commit)
                  for run in picks.values()]
    metadata = {"Title": f"Figure 7 from our own trained models ({_METHOD_TITLES.get(key, key)})",
                "Description": caption,
                "Source": " ".join(run.run_id for run in picks.values()),
                "Comment": json.dumps(dict(runs=provenance, images=[_image_label(p)[0] for p in image_paths],
                                           method=key, pick_rule=PICK_RULE), sort_keys=True),
                "Software": f"lambdalib {__version__}"}
    png = _render_trained(panels, picks, image_paths, caption, dpi, metadata)

    folder = Path(out).expanduser() if out else _runs_folder(results).parent
    path = folder / "figures" / f"{TRAINED_NAME}.png"
    table = folder / "tables" / f"{TRAINED_NAME}.csv"
    for parent in (path.parent, table.parent):
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise record.RecordError(files.describe_os_error(err, parent)) from err
    files.atomic_write_text(table, _csv_text(rows, columns))
    table_md = table.with_suffix(".md")
    files.atomic_write_text(table_md, attention_table_markdown(table))
    files.atomic_write_bytes(path, png)
    caption_path = path.with_suffix(".md")
    files.atomic_write_text(caption_path, f"![{path.stem}]({path.name})\n\n{caption}\n")
    return TrainedFigure(path, caption, caption_path, table, table_md, rows, panels, picks, missing)
