"""ResNet18/34 and the eight Lambda-ResNets of the report, registered with timm.

    import lambdalib  # registers the models
    timm.create_model("lambda_resnet18_l2_rpe", num_classes=10, img_size=160)
    lambdalib.models.create("LR18_L2(rpe)", num_classes=10)      # the report's labels work too

Architecture: torchvision's ResNet exactly (basic blocks), with one 3x3 convolution replaced by a
LambdaLayer. The report says "stage 2 or 3" but not which block; we replace ``conv2`` of the *last*
basic block of the stage (block index 1 in ResNet18's stage, 3 or 5 in ResNet34's), where the stride is
1 and the map size is the stage's. ``lambda_block`` / ``lambda_conv`` choose another site.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

import timm
import torch
import torchvision
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import register_model
from torch import nn

from .data import EVAL_CROP_FRACTION
from .layers import LambdaLayer

DEFAULT_IMG_SIZE = 160


@dataclass(frozen=True)
class ModelSpec:
    name: str  # timm registry name
    label: str  # the report's label
    depth: int
    stage: int | None = None  # 2 or 3 for Lambda-ResNets
    position: str | None = None  # "rpe" or "lc"


SPECS: dict[str, ModelSpec] = {}
for _depth in (18, 34):
    SPECS[f"lambdalib_resnet{_depth}"] = ModelSpec(f"lambdalib_resnet{_depth}", f"R{_depth}", _depth)
for _depth in (18, 34):
    for _position in ("rpe", "lc"):
        for _stage in (2, 3):
            _name = f"lambda_resnet{_depth}_l{_stage}_{_position}"
            SPECS[_name] = ModelSpec(_name, f"LR{_depth}_L{_stage}({_position})", _depth, _stage, _position)
MODEL_NAMES = list(SPECS)  # the report's ten, baselines first
_BY_LABEL = {spec.label.lower(): name for name, spec in SPECS.items()}


def resolve_name(name: str) -> str:
    """Report label ("LR18_L2(rpe)", "R34", "ResNet18") or registry name -> timm registry name.

    timm's own models (e.g. "resnet50", "lambda_resnet26t") pass through unchanged.
    """
    key = name.strip()
    low = key.lower()
    if key in SPECS:
        return key
    if low in _BY_LABEL:
        return _BY_LABEL[low]
    match = re.fullmatch(r"resnet(18|34)", low)
    if match and key != low:  # "ResNet18" as the report writes it; lowercase "resnet18" is timm's
        return f"lambdalib_resnet{match.group(1)}"
    if timm.is_model(key):
        return key
    close = difflib.get_close_matches(key, [s.label for s in SPECS.values()] + MODEL_NAMES, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(
        f"Unknown model {name!r}.{hint} The report's models are: "
        + ", ".join(f"{s.label} ({n})" for n, s in SPECS.items())
        + "; any timm model name works too."
    )


def family_label(position: str | None, depth: int, stage: int | None = None) -> str:
    """The report label for a notebook's (family, depth, stage): ("rpe", 18, 2) -> "LR18_L2(rpe)"."""
    if depth not in (18, 34):
        raise ValueError(f"depth={depth!r}: the report's ResNets are 18 or 34")
    if position is None:
        return f"R{depth}"
    if position not in ("rpe", "lc"):
        raise ValueError(f"position={position!r}: expected 'rpe' or 'lc'")
    if stage not in (2, 3):
        raise ValueError(f"stage={stage!r}: the report puts the lambda layer in stage 2 or 3")
    return f"LR{depth}_L{stage}({position})"


def report_label(name: str) -> str:
    name = resolve_name(name)
    return SPECS[name].label if name in SPECS else name


def create(name: str, **kwargs) -> nn.Module:
    """timm.create_model for a report label or registry name."""
    return timm.create_model(resolve_name(name), **kwargs)


def feature_size(img_size: int, stage: int) -> int:
    """Map side at a torchvision ResNet stage (each stride-2 step with padding rounds up)."""
    side = img_size
    for _ in range(stage + 1):  # stem conv, max-pool, then one stride-2 per stage after the first
        side = (side + 1) // 2
    return side


def build_resnet(
    depth: int,
    *,
    num_classes: int = 1000,
    img_size: int = DEFAULT_IMG_SIZE,
    in_chans: int = 3,
    lambda_stage: int | None = None,
    position: str = "rpe",
    lambda_block: int = -1,
    lambda_conv: str = "conv2",
    scope: int = 23,
    dim_k: int = 16,
    heads: int = 4,
    dim_u: int = 1,
    **layer_kwargs,
) -> nn.Module:
    """torchvision ResNet18/34, optionally with one 3x3 conv of stage ``lambda_stage`` a LambdaLayer."""
    if depth not in (18, 34):
        raise ValueError(f"depth={depth}; the report's ResNets are 18 or 34")
    net = getattr(torchvision.models, f"resnet{depth}")(num_classes=num_classes)
    if in_chans != 3:
        net.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
    net.lambda_site = None
    if lambda_stage is not None:
        if lambda_stage not in (1, 2, 3, 4):
            raise ValueError(f"lambda_stage={lambda_stage}; a ResNet has stages 1-4")
        stage = getattr(net, f"layer{lambda_stage}")
        block_index = lambda_block % len(stage)
        conv = getattr(stage[block_index], lambda_conv, None)
        if not isinstance(conv, nn.Conv2d) or conv.kernel_size != (3, 3):
            raise ValueError(f"layer{lambda_stage}[{block_index}].{lambda_conv} is not a 3x3 convolution")
        if conv.stride != (1, 1):
            raise ValueError(
                f"layer{lambda_stage}[{block_index}].{lambda_conv} has stride {conv.stride}; the lambda layer "
                f"replaces a stride-1 conv (use lambda_block=-1 or lambda_conv='conv2')"
            )
        side = feature_size(img_size, lambda_stage)
        layer = LambdaLayer(
            conv.in_channels, conv.out_channels, position=position, feat_size=side, scope=scope,
            dim_k=dim_k, heads=heads, dim_u=dim_u, **layer_kwargs,
        )
        setattr(stage[block_index], lambda_conv, layer)
        net.lambda_site = f"layer{lambda_stage}.{block_index}.{lambda_conv} ({position}, {side}x{side} map)"
    # what timm.data.resolve_data_config and timm tooling read
    net.pretrained_cfg = net.default_cfg = dict(
        num_classes=num_classes, input_size=(in_chans, img_size, img_size), mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
        interpolation="bilinear", crop_pct=EVAL_CROP_FRACTION, first_conv="conv1", classifier="fc",
    )
    return net


def _entrypoint(spec: ModelSpec):
    def create_fn(pretrained: bool = False, **kwargs) -> nn.Module:
        if pretrained:
            raise ValueError(
                f"{spec.name}: no pretrained weights exist for the report's models; train one with "
                f"`lambdalib train --model '{spec.label}'` and load its checkpoint (checkpoint_path=...)"
            )
        for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(key, None)
        if spec.stage is not None:
            kwargs.setdefault("lambda_stage", spec.stage)
            kwargs.setdefault("position", spec.position)
        return build_resnet(spec.depth, **kwargs)

    create_fn.__name__ = spec.name
    create_fn.__qualname__ = spec.name
    create_fn.__doc__ = f"{spec.label} of the report" + (
        f": ResNet{spec.depth}, last block of stage {spec.stage} with a {spec.position} lambda layer"
        if spec.stage else f": torchvision ResNet{spec.depth}"
    )
    create_fn.__module__ = __name__
    return create_fn


for _spec in SPECS.values():
    globals()[_spec.name] = register_model(_entrypoint(_spec))


def count_flops(model: nn.Module, img_size: int) -> int:
    """Forward FLOPs (2 x multiply-adds) of one image, from torch's own flop counter."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, img_size, img_size))
    return counter.get_total_flops()


def summary_table(img_size: int = DEFAULT_IMG_SIZE, num_classes: int = 10) -> list[dict]:
    """One row per model of the report: parameters, forward GFLOPs, where the lambda layer sits."""
    rows = []
    for name, spec in SPECS.items():
        model = create(name, num_classes=num_classes, img_size=img_size)
        rows.append(dict(
            label=spec.label, name=name, params=sum(p.numel() for p in model.parameters()),
            gflops=count_flops(model, img_size) / 1e9, lambda_site=model.lambda_site or "-",
        ))
    return rows
