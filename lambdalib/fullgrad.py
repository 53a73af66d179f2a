"""FullGrad maps (and other CAMs) of one image, the models they explain, and the measures of a map.

    model, info = fullgrad.load_model("lambda_resnet26t")            # pretrained; raises if unavailable
    result = fullgrad.attention_map(model, "data/images/both.png")   # explains the top-1 class

pytorch-grad-cam's FullGrad takes only layers of type *exactly* Conv2d or BatchNorm2d, so it misses most of
lambda_resnet26t's bias terms (timm's BatchNormAct2d is a subclass). `CompleteFullGrad` keeps its arithmetic over
every conv/norm layer with a bias, reading each norm+act layer's gradient *before* its activation, where the bias acts.
"""
from __future__ import annotations

import difflib
import json
import os
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from unittest import mock
from urllib.parse import urlparse

import numpy as np
import pytorch_grad_cam as cams
import timm
import timm.data
import torch
import torch.nn.functional as F
from huggingface_hub import constants  # timm's own dependency
from PIL import Image
from pytorch_grad_cam.activations_and_gradients import ActivationsAndGradients
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from . import models, record, registry
from .config import RunConfig
from .imagenette import CLASS_NAMES
from .paths import data_dir

DEFAULT_IMAGE = "images/both.png"  # under data/
RANDOM_TITLE = "random init (no weights available)"
TOP_FRACTION = 0.10  # concentration: the share of a map's mass in its top 10 % of pixels
BOXES_SUFFIX = ".boxes.json"  # both.png -> both.boxes.json beside it
Box = tuple[int, int, int, int]  # left, top, right, bottom in pixels of the image; right and bottom exclusive

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


def _as_nchw(layer: nn.Module, grad: torch.Tensor) -> torch.Tensor | None:
    """The gradient as (B, C, H, W) with C the bias's channels, or None when it has no such layout."""
    if grad.ndim == 5 and isinstance(layer, nn.Conv3d) and layer.kernel_size[-1] == layer.stride[-1] == 1:
        # timm's lambda layers: a 2-D conv over (H, W) batched along the last (value) axis, output
        # (B, K, H, W, V). FullGrad takes |bias x grad| per element, so sum |grad| over V (bias is per K).
        grad = grad.abs().sum(-1)
    if grad.ndim != 4:
        return None
    if grad.shape[1] == layer.bias.numel():
        return grad
    if grad.shape[-1] == layer.bias.numel():  # channels-last norms (timm's LayerNorm in ConvNeXt blocks)
        return grad.permute(0, 3, 1, 2)
    return None


class _BiasGradients(ActivationsAndGradients):
    """Gradient w.r.t. each bias layer's affine output, stored by layer index (pytorch-grad-cam zips the order
    backward happens to reach layers with the layer list, not guaranteed on branched networks)."""

    def __init__(self, model: nn.Module, layers: list[nn.Module]):
        self.model, self.reshape_transform, self.detach = model, None, True
        self.layers, self.activations = layers, []
        self.gradients: list[torch.Tensor | None] = [None] * len(layers)
        self.handles = [self._hook(index, layer) for index, layer in enumerate(layers)]

    def _hook(self, index: int, layer: nn.Module):
        """Watch where the layer's affine output (bias included, activation not yet) flows. timm's norm+act
        layers run norm -> self.drop -> self.act in one forward: there, the input of drop (or act)."""
        children = [getattr(layer, name, None) for name in ("drop", "act")] if isinstance(layer, _NORM) else []
        child = next((c for c in children if isinstance(c, nn.Module)), None)
        if child is not None:
            return child.register_forward_pre_hook(lambda module, args: self._watch(index, args[0]))
        return layer.register_forward_hook(lambda module, args, out: self._watch(index, out))

    def _watch(self, index: int, tensor: torch.Tensor) -> None:
        if not isinstance(tensor, torch.Tensor) or not tensor.requires_grad:
            return

        def store(grad: torch.Tensor) -> None:
            # a hook registered before an in-place activation still gets the pre-activation gradient
            grad = _as_nchw(self.layers[index], grad.detach())
            if grad is not None:
                old = self.gradients[index]
                self.gradients[index] = grad if old is None or old.shape != grad.shape else old + grad

        tensor.register_hook(store)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.gradients = [None] * len(self.layers)
        return self.model(x)


class CompleteFullGrad(cams.FullGrad):
    """pytorch-grad-cam's FullGrad arithmetic summed over *every* bias layer (`bias_layers`), each gradient
    read where its bias acts. After a call, `layers_used`: the bias terms that reached the target."""

    def __init__(self, model: nn.Module):
        # BaseCAM's set-up without FullGrad's exact-type layer search (and its target_layers warning)
        BaseCAM.__init__(self, model, [], reshape_transform=None, compute_input_gradient=True)
        self.activations_and_grads.release()
        self.target_layers = [layer for _, layer in bias_layers(model)]
        self.activations_and_grads = _BiasGradients(model, self.target_layers)
        self.bias_data = [_effective_bias(layer).cpu().numpy() for layer in self.target_layers]
        self.layers_used = 0

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


class _StockFullGrad(cams.FullGrad):
    """pytorch-grad-cam's FullGrad as shipped (exact-type layers); `layers_used` for the caption."""

    def __init__(self, model: nn.Module):
        super().__init__(model, [])
        self.layers_used = len(self.bias_data)


# names are matched lower-case without "-", "_" and spaces; all but the FullGrad ones read a target layer
METHODS = {
    "fullgrad": CompleteFullGrad, "fullgradstock": _StockFullGrad, "gradcam": cams.GradCAM,
    "gradcam++": cams.GradCAMPlusPlus, "hirescam": cams.HiResCAM, "xgradcam": cams.XGradCAM, "layercam": cams.LayerCAM,
    "eigencam": cams.EigenCAM, "eigengradcam": cams.EigenGradCAM, "gradcamelementwise": cams.GradCAMElementWise,
    "scorecam": cams.ScoreCAM,  # one forward per channel of the target layer: slow on CPU
    "ablationcam": cams.AblationCAM,
}
METHOD_TITLES = {"fullgrad": "FullGrad", "fullgradstock": "FullGrad (pytorch-grad-cam stock layers)",
                 "gradcam++": "Grad-CAM++", "gradcam": "Grad-CAM", "scorecam": "Score-CAM"}


def method_key(method: str) -> str:
    """'Grad-CAM++' -> 'gradcam++'; an unknown name raises ValueError listing METHODS."""
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
    weights: str  # "pretrained (timm/resnet18.a1_in1k)", "checkpoint <run>/best.pt, epoch 15" or RANDOM_TITLE
    class_names: list[str]
    trained: bool  # False: random init, never to be presented as a trained model
    epoch: int | None = None  # the checkpoint's epoch, when it records one


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
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))), \
            f"weights file {path.name}"
    cfg = timm.models.get_pretrained_cfg(name)
    cfg = cfg.to_dict() if cfg is not None else {}
    if not (cfg.get("hf_hub_id") or cfg.get("url") or cfg.get("file")):
        raise WeightsUnavailableError(f"{name}: timm has no pretrained weights for this model")
    offline = not _hub_reachable()
    try:  # unreachable: read only the local cache, at once (no minute of retries)
        with mock.patch.object(constants, "HF_HUB_OFFLINE", constants.HF_HUB_OFFLINE or offline):
            model = timm.create_model(name, pretrained=True)
    except Exception as err:  # noqa: BLE001  hub, cache and network misses come as many types
        where = "offline and not in the local Hugging Face cache" if offline else f"download failed ({err})"
        raise WeightsUnavailableError(
            f"{name}: pretrained weights unavailable ({where}); pass a weights file with "
            f"pretrained='path/to/weights.safetensors' or run where huggingface.co is reachable") from None
    return model, f"pretrained ({cfg.get('hf_hub_id') or cfg.get('url')})"


def _load_checkpoint(path: Path) -> tuple[nn.Module, ModelInfo]:
    file = next((path / n for n in ("best.pt", "last.pt") if (path / n).is_file()), None) if path.is_dir() else path
    if file is None:
        raise FileNotFoundError(f"{path}: no best.pt or last.pt; is this a run folder (results/runs/<id>)?")
    state = record.load_checkpoint(
        file, refusal="{path}: not a lambdalib run checkpoint (expected keys 'model' and 'config'); for timm "
                      "weights use load_model('<timm name>', pretrained='{path}')")
    config = state["config"]
    classes = list(state.get("classes") or CLASS_NAMES)  # last.pt has no class list; our runs are Imagenette's
    # built as train.py built it (image size, the lc scope); configs from before a field read its default
    model = models.create(config["model"], num_classes=len(classes), **RunConfig.from_dict(config).model_kwargs())
    model.load_state_dict(state["model"])
    epoch = f", epoch {state['epoch']}" if "epoch" in state else ""
    return model, ModelInfo(registry.report_label(config["model"]), f"checkpoint {file.parent.name}/{file.name}{epoch}",
                            classes, trained=True, epoch=state.get("epoch"))


def load_model(name_or_checkpoint: str | Path, pretrained: bool | str | Path = True,
               allow_random: bool = False) -> tuple[nn.Module, ModelInfo]:
    """A model ready for `attention_map`, in eval mode, and what it is: from a run folder or its best.pt/last.pt,
    or a timm name or report label with `pretrained` weights (True: the hub or its cache; a path: that file;
    False: random init, for counting layers only). allow_random: warn and use random init (info.trained False)
    where the weights cannot be had, instead of raising WeightsUnavailableError."""
    text = str(name_or_checkpoint)
    path = Path(name_or_checkpoint).expanduser()
    if path.exists():
        model, info = _load_checkpoint(path)
    elif os.sep in text or "/" in text or text.endswith((".pt", ".pth", ".safetensors", ".bin")):
        raise FileNotFoundError(f"{text!r}: no such run folder or checkpoint file")
    else:
        name = registry.resolve_name(text)
        model, weights = None, RANDOM_TITLE
        if pretrained is not False:
            try:
                model, weights = _create_pretrained(name, pretrained)
            except WeightsUnavailableError as err:
                if not allow_random:
                    raise
                warnings.warn(f"{err}; using random init, titled {RANDOM_TITLE!r}", WeightsUnavailableWarning,
                              stacklevel=2)
        model = model or timm.create_model(name, pretrained=False)
        names = imagenet_class_names(model) or [f"class {i}" for i in range(model.num_classes)]
        info = ModelInfo(registry.report_label(name), weights, names, trained=weights != RANDOM_TITLE)
    model.class_names = info.class_names  # attention_map reads them from here
    return model.eval(), info


# -------------------------------------------------------------------------------------- maps
@dataclass
class AttentionMap:
    """One map: `cam` (H x W float32 in [0, 1], the image's size) explains class `index`."""

    cam: np.ndarray
    index: int  # the explained class (top-1 unless a target was given)
    name: str
    prob: float  # softmax probability of the explained class
    top_index: int
    top_name: str  # what the model predicts (top-1)
    top_prob: float
    n_bias_layers: int | None  # bias terms summed (FullGrad methods), else None
    target_layer: str | None = None  # the module Grad-CAM-style methods read (None for FullGrad)


def default_image() -> Path:
    """data/images/both.png of the project (paths.data_dir), else of the checkout lambdalib was installed from."""
    for root in (data_dir(), Path(__file__).resolve().parent.parent / "data"):
        if (root / DEFAULT_IMAGE).is_file():
            return root / DEFAULT_IMAGE
    return data_dir() / DEFAULT_IMAGE


def open_image(image: str | Path | Image.Image | None) -> Image.Image:
    """An RGB PIL image from a path (None: `default_image()`), or FileNotFoundError saying where it should be."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    path = Path(image) if image is not None else default_image()
    if not path.is_file():
        raise FileNotFoundError(f"image {str(path)!r} does not exist" + (
            "; the default image ships in the repository's data/images/ (set LAMBDALIB_HOME or pass image=)"
            if image is None else ""))
    with Image.open(path) as opened:
        return opened.convert("RGB")


def _class_index(target: int | str, names: list[str]) -> int:
    if isinstance(target, str) and target.strip().isdigit():
        target = int(target)
    if isinstance(target, (int, np.integer)):
        if not 0 <= target < len(names):
            raise ValueError(f"target={target}: class index out of range 0..{len(names) - 1}")
        return int(target)
    lower = [name.lower() for name in names]
    if str(target).strip().lower() in lower:
        return lower.index(str(target).strip().lower())
    close = difflib.get_close_matches(str(target), names, n=5, cutoff=0.5)
    raise ValueError(f"target={target!r} is not a class of this model" +
                     (f"; did you mean {', '.join(map(repr, close))}?" if close else
                      f"; classes are {', '.join(names[:10])}{', ...' if len(names) > 10 else ''} (or an index)"))


def attention_map(model: nn.Module, image: str | Path | Image.Image | None = None, method: str = "fullgrad",
                  target: int | str | None = None, class_names: list[str] | None = None,
                  target_layer: nn.Module | None = None) -> AttentionMap:
    """CAM of one image (default both.png) for one class, resized to the image's size and min-max scaled to
    [0, 1]. method: one of METHODS; all but the FullGrad ones read `target_layer` (default `last_conv_stage`).
    target: None = the top prediction, else a class index or name ("tabby", "English springer")."""
    key = method_key(method)
    picture = open_image(image)
    names = class_names or getattr(model, "class_names", None) or imagenet_class_names(model) \
        or [f"class {i}" for i in range(getattr(model, "num_classes", 0) or 1000)]
    index = None if target is None else _class_index(target, names)
    model.eval()
    # the model's own timm data config, with the whole image squashed to the input (crop_pct 1): a centre crop
    # would leave borders the map cannot cover
    config = timm.data.resolve_data_config(model=model)
    config.update(crop_pct=1.0, crop_mode="squash")
    x = timm.data.create_transform(**config)(picture).unsqueeze(0).to(next(model.parameters()).device)
    layer_name = None
    if key.startswith("fullgrad"):
        cam = METHODS[key](model)
    else:
        target_layer = target_layer or last_conv_stage(model)
        layer_name = next((name for name, module in model.named_modules() if module is target_layer), "?")
        cam = METHODS[key](model, [target_layer])
    try:  # not `with cam:`, whose __exit__ swallows IndexErrors
        grayscale = cam(input_tensor=x, targets=None if index is None else [ClassifierOutputTarget(index)])[0]
        probs = cam.outputs.detach().float()[0].softmax(-1)
        used = getattr(cam, "layers_used", None)
    finally:
        cam.activations_and_grads.release()
        model.zero_grad(set_to_none=True)
    top = int(probs.argmax())
    index = top if index is None else index
    resized = F.interpolate(torch.from_numpy(np.ascontiguousarray(grayscale, dtype=np.float32))[None, None],
                            size=(picture.height, picture.width), mode="bilinear", align_corners=False)[0, 0]
    cam_map = np.nan_to_num(resized.numpy().astype(np.float32))
    low, high = float(cam_map.min()), float(cam_map.max())
    if high > low:  # rescale so every map spans [0, 1] at the image's size, as at the input's
        cam_map = (cam_map - low) / (high - low)
    return AttentionMap(np.clip(cam_map, 0.0, 1.0), index, names[index], float(probs[index]), top, names[top],
                        float(probs[top]), used, layer_name)


# ---------------------------------------------------------------------------------- measures
def _mass(cam: np.ndarray) -> tuple[np.ndarray, float]:
    values = np.asarray(cam, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"a map is 2-D (height x width); got shape {values.shape}")
    if not np.isfinite(values).all() or (values < 0).any():
        raise ValueError("a map's values must be finite and non-negative")
    return values, float(values.sum())


def concentration(cam: np.ndarray, fraction: float = TOP_FRACTION) -> float:
    """The share of the map's total mass held by its highest `fraction` of pixels (at least one): `fraction`
    for a uniform map, 1 for a map whose mass sits on that share of the image or less; NaN for an all-zero map."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction}: must be in (0, 1]")
    values, total = _mass(cam)
    if total <= 0:
        return float("nan")
    flat = values.ravel()
    k = max(1, int(round(fraction * flat.size)))
    return float(np.partition(flat, flat.size - k)[flat.size - k:].sum() / total)


def normalised_entropy(cam: np.ndarray) -> float:
    """Entropy of the map as a distribution over pixels / log(pixels): 1 uniform, 0 on one pixel, NaN all zero."""
    values, total = _mass(cam)
    if total <= 0 or values.size < 2:
        return float("nan")
    p = values.ravel() / total
    p = p[p > 0]
    return float(-(p * np.log(p)).sum() / np.log(values.size))


def mass_in_boxes(cam: np.ndarray, boxes) -> float:
    """The share of the map's total mass inside the union of `boxes` ((left, top, right, bottom) in the map's
    pixels, right/bottom exclusive); NaN for an all-zero map or no boxes."""
    values, total = _mass(cam)
    boxes = list(boxes)
    if total <= 0 or not boxes:
        return float("nan")
    mask = np.zeros(values.shape, dtype=bool)
    for left, top, right, bottom in boxes:
        mask[max(int(top), 0):max(int(bottom), 0), max(int(left), 0):max(int(right), 0)] = True
    return float(values[mask].sum() / total)


def area_share(shape: tuple[int, int], boxes) -> float:
    """The union of `boxes` as a share of a (height, width) image: the uniform baseline of an on-object share."""
    return mass_in_boxes(np.ones(shape), boxes)


def boxes_file(image: str | Path) -> Path:
    """Where an image's object boxes live: `<stem>.boxes.json` beside it (both.png -> both.boxes.json)."""
    image = Path(image)
    return image.with_name(image.stem + BOXES_SUFFIX)


def load_boxes(image: str | Path) -> dict[str, Box]:
    """The named object boxes of an image from its boxes file ({} when it has none): {"size": [width, height],
    "boxes": {"dog": [left, top, right, bottom], ...}} in the image's pixels, right and bottom exclusive."""
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
    """What the table reports for one map: concentration, normalised entropy, and per box (and for 'either',
    their union) the mass share `mass_<name>` with its uniform baseline `area_<name>`."""
    measures = {"concentration_top10": concentration(cam), "normalised_entropy": normalised_entropy(cam)}
    boxes = boxes or {}
    groups = {name: [box] for name, box in boxes.items()} | ({"either": list(boxes.values())} if boxes else {})
    for name, group in groups.items():
        measures[f"mass_{name}"] = mass_in_boxes(cam, group)
        measures[f"area_{name}"] = area_share(np.shape(cam), group)
    return measures
