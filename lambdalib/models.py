"""ResNet18/34 and the report's Lambda-ResNets (and LR18_L3x4(rpe), four lambda layers), timm-native and registered
with timm.

    import lambdalib  # registers the models
    timm.create_model("lambda_resnet18_l2_rpe", num_classes=10, img_size=160)
    lambdalib.models.create("LR18_L2(rpe)", num_classes=10)      # the report's labels work too

Architecture: torchvision's ResNet18/34 exactly, with ``conv2`` of the *last* basic block of a stage (stride 1, the
stage's map size; the report says "stage 2 or 3" but not which block) replaced by a LambdaLayer; ``lambda_layers=n``
puts one in each of the n blocks counted backward from there (``lambda_sites``). Built as timm's own ``ResNet``
through ``build_model_with_cfg``, so the models behave like any timm model (features_only, forward_intermediates,
a ``pretrained_cfg`` that ``timm.data.resolve_data_config`` reads, ...), with torchvision's module names (its
state_dicts load unchanged; only the parameter-free ``relu`` is ``act1``) and torchvision's initialisation, bit for
bit at the same seed (``zero_init_last=False``; the lambda layer replaces its conv after the ResNet's init).

Name trap: lowercase ``resnet18`` / ``resnet34`` are *timm's* models (timm's init, data config and weights); the
report's baselines are ``R18`` / ``ResNet18`` / ``lambdalib_resnet18``. ``create`` warns (``LookalikeWarning``).
"""
from __future__ import annotations

import warnings

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model, register_notrace_module
from timm.models.resnet import BasicBlock, ResNet
from torch import nn

from .imagenette import EVAL_CROP_FRACTION, timm_crop_pct
from .layers import LambdaLayer, _pair, refuses_larger_maps
from .registry import LAMBDA_LAYERS, LOOKALIKES, SPECS, ModelSpec, resolve_name

register_notrace_module(LambdaLayer)  # timm's fx feature extraction keeps the layer whole (a leaf module)

DEFAULT_IMG_SIZE = 160
STAGE_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}  # basic blocks per stage, as torchvision's resnet18/34


class LookalikeWarning(UserWarning):
    """A timm model whose name reads like one of the report's (timm's resnet18 is not the report's R18)."""


def lookalike_note(name: str) -> str | None:
    """For a timm model that reads like a report baseline (timm's "resnet18"): what it is and is not; else None."""
    name = resolve_name(name)
    ours = LOOKALIKES.get(name.split(".")[0])  # "resnet18.a1_in1k" too
    if ours is None:
        return None
    depth = SPECS[ours].depth
    cfg = timm.models.get_pretrained_cfg(name)
    data = ""
    if cfg is not None:
        data = (f", timm's data config ({cfg.input_size[-1]} px, {cfg.interpolation}, crop {cfg.crop_pct:g})"
                + (f" and, with pretrained=True, weights {cfg.hf_hub_id}" if cfg.hf_hub_id else ""))
    return (f"'{name}' is timm's resnet{depth}, NOT the report's R{depth}: same layers, but timm's initialisation "
            f"(last BatchNorm of every residual block zero-initialised){data}. The report's baseline is "
            f"'R{depth}' ('ResNet{depth}', {ours}): torchvision's ResNet{depth} exactly.")


def describe(name: str) -> str:
    """One line naming what ``name`` builds, e.g. for a training log or a run record."""
    name = resolve_name(name)
    spec = SPECS.get(name)
    if spec is None:
        return lookalike_note(name) or f"{name}: timm's {name} (timm's architecture and init, not one of the report's)"
    if spec.stage is None:
        return f"{spec.label} ({name}): torchvision's ResNet{spec.depth} exactly (layout, parameters, initialisation)"
    if spec.lambda_layers == 1:
        return (f"{spec.label} ({name}): torchvision's ResNet{spec.depth} with conv2 of the last block of stage "
                f"{spec.stage} a LambdaLayer ({spec.position})")
    blocks = ", ".join(f"layer{s}.{b}" for s, b in lambda_sites(spec.depth, spec.stage, spec.lambda_layers))
    return (f"{spec.label} ({name}): torchvision's ResNet{spec.depth} with conv2 of {spec.lambda_layers} blocks "
            f"({blocks}) LambdaLayers ({spec.position})")


# ------------------------------------------------------------------------------------------ model
def feature_size(img_size: int, stage: int, output_stride: int = 32) -> int:
    """Map side after ResNet stage ``stage`` (0 = stem conv, 1-4 = layer1-4) for an ``img_size`` input: each
    stride-2 step with padding rounds up; stages past ``output_stride`` are dilated instead (as timm)."""
    side = (img_size + 1) // 2  # stem conv
    if stage >= 1:
        side = (side + 1) // 2  # max-pool
    net_stride = 4
    for _ in range(2, stage + 1):
        if net_stride < output_stride:
            side = (side + 1) // 2
            net_stride *= 2
    return side


def lambda_sites(depth: int, stage: int, lambda_layers: int = 1, block: int = -1) -> list[tuple[int, int]]:
    """The (stage, block index) pairs that get a lambda layer, in network order: ``lambda_layers`` basic blocks
    counted backward from block ``block`` of ``stage``, across stage boundaries (ResNet18, stage 3, 4 layers ->
    layer2.0, layer2.1, layer3.0, layer3.1)."""
    blocks = STAGE_BLOCKS[depth]
    if not -blocks[stage - 1] <= block < blocks[stage - 1]:
        raise ValueError(f"lambda_block={block}: stage {stage} of ResNet{depth} has {blocks[stage - 1]} blocks")
    everything = [(s, b) for s in range(1, stage + 1) for b in range(blocks[s - 1])]  # network order
    upto = everything[:sum(blocks[:stage - 1]) + block % blocks[stage - 1] + 1]
    if not 1 <= lambda_layers <= len(upto):
        raise ValueError(f"lambda_layers={lambda_layers}: expected 1 to {len(upto)}, the basic blocks of ResNet{depth} "
                         f"up to layer{stage}.{upto[-1][1]}")
    return upto[-lambda_layers:]


class ReportResNet(ResNet):
    """The report's ResNet18/34: timm's ``ResNet`` of ``BasicBlock``s as torchvision's, optionally with lambda layers.

    ``lambda_stage`` (1-4, None for none), ``lambda_block``, ``lambda_conv`` and ``lambda_layers`` choose the sites
    (``lambda_sites``); ``position``, ``scope``, ``dim_k``, ``heads``, ``dim_u`` and ``impl`` go to each LambdaLayer,
    sized for its stage's map at ``img_size`` (int or (H, W)); the rest goes to timm's ``ResNet`` (``device`` and
    ``dtype`` reach the lambda layers too). ``zero_init_last=False`` is torchvision's init (True: timm's).
    ``pretrained_cfg["fixed_input_size"]`` is True whenever the model refuses larger inputs, whatever cfg it is given.
    """

    __jit_unused_properties__ = ["pretrained_cfg"]  # a dict of anything: not for TorchScript

    def __init__(self, depth: int = 18, *, img_size: int | tuple[int, int] = DEFAULT_IMG_SIZE,
                 lambda_stage: int | None = None, position: str = "rpe", lambda_block: int = -1,
                 lambda_conv: str = "conv2", lambda_layers: int = 1, scope: int = 23, dim_k: int = 16, heads: int = 4,
                 dim_u: int = 1, impl: str = "auto", lambda_layer: str = "ours", zero_init_last: bool = False,
                 **kwargs):
        if depth not in STAGE_BLOCKS:
            raise ValueError(f"depth={depth}; the report's ResNets are 18 or 34")
        if lambda_stage is not None and lambda_stage not in (1, 2, 3, 4):
            raise ValueError(f"lambda_stage={lambda_stage}; a ResNet has stages 1-4")
        if lambda_layer not in LAMBDA_LAYERS:
            raise ValueError(f"lambda_layer={lambda_layer!r}: expected one of {', '.join(LAMBDA_LAYERS)}")
        super().__init__(BasicBlock, STAGE_BLOCKS[depth], zero_init_last=zero_init_last, **kwargs)
        self.depth, self.lambda_layer = depth, lambda_layer
        self.img_size = _pair(img_size)
        self.lambda_site: str | None = None  # "layer2.1.conv2 (rpe, 8x8 map)"; several joined by "; "
        if lambda_stage is not None:  # after the ResNet's init: the same random draws as torchvision + layers
            output_stride = kwargs.get("output_stride", 32)
            layer_args = dict(position=position, scope=scope, dim_k=dim_k, heads=heads, dim_u=dim_u, impl=impl,
                              device=kwargs.get("device"), dtype=kwargs.get("dtype"))
            sites = []
            for stage_index, block_index in lambda_sites(depth, lambda_stage, lambda_layers, lambda_block):
                side = tuple(feature_size(s, stage_index, output_stride) for s in self.img_size)  # its stage's map
                sites.append(self._insert_lambda(stage_index, block_index, lambda_conv, side, layer_args))
            self.lambda_site = "; ".join(sites)

    def refuses_larger_inputs(self) -> bool:
        """True when an input larger than the model was built for is refused (see layers.refuses_larger_maps)."""
        return any(refuses_larger_maps(m.position, m.feat_size, m.scope) for m in self.modules()
                   if isinstance(m, LambdaLayer))

    @property
    def pretrained_cfg(self) -> dict | None:
        return self.__dict__.get("_pretrained_cfg")

    @pretrained_cfg.setter
    def pretrained_cfg(self, cfg: dict | None) -> None:
        # timm's builder assigns the cfg it resolved (then copies it for a features_only wrapper): corrected in place
        if isinstance(cfg, dict):
            cfg["fixed_input_size"] = bool(cfg.get("fixed_input_size")) or self.refuses_larger_inputs()
        self.__dict__["_pretrained_cfg"] = cfg

    def _insert_lambda(self, stage_index: int, block_index: int, conv_name: str, side: tuple[int, int],
                       layer_args: dict) -> str:
        """Replace one conv by a lambda layer; returns the site as lambda_site names it."""
        stage = getattr(self, f"layer{stage_index}")
        conv = getattr(stage[block_index], conv_name, None)
        if not isinstance(conv, nn.Conv2d) or conv.kernel_size != (3, 3):
            raise ValueError(f"layer{stage_index}[{block_index}].{conv_name} is not a 3x3 convolution")
        if conv.stride != (1, 1):
            raise ValueError(f"layer{stage_index}[{block_index}].{conv_name} has stride {conv.stride}; the lambda "
                             f"layer replaces a stride-1 conv (use lambda_block=-1 or lambda_conv='conv2')")
        layer = report_impl_layer(conv, side, layer_args) if self.lambda_layer == "lucidrains" else \
            LambdaLayer(conv.in_channels, conv.out_channels, feat_size=side, **layer_args)
        if self.lambda_layer == "ours-n01":  # the position table as lucidrains draws it: N(0, 1)
            nn.init.normal_(layer.pos_emb, std=1.0)
        setattr(stage[block_index], conv_name, layer)
        return f"layer{stage_index}.{block_index}.{conv_name} ({layer_args['position']}, {side[0]}x{side[1]} map)"


def report_impl_layer(conv: nn.Conv2d, side: tuple[int, int], args: dict) -> nn.Module:
    """The report's own lambda layer: lucidrains' lambda-networks (rpe: an N(0, 1) table over the side x side map;
    lc: an r x r Conv3d context with PyTorch's default init). Square maps only, as that package."""
    try:
        from lambda_networks import LambdaLayer as LucidrainsLambda
    except ImportError:
        raise ValueError("lambda_layer='lucidrains' needs the lambda-networks package: pip install "
                         "lambda-networks==0.4.0") from None
    if side[0] != side[1]:
        raise ValueError(f"lambda_layer='lucidrains' takes square maps only, not {side[0]}x{side[1]}")
    where = dict(r=args["scope"]) if args["position"] == "lc" else dict(n=side[0])
    return LucidrainsLambda(dim=conv.in_channels, dim_out=conv.out_channels, dim_k=args["dim_k"], heads=args["heads"],
                            dim_u=args["dim_u"], **where)


def _cfg(spec: ModelSpec, **kwargs) -> dict:
    # fixed when any lambda layer at the default size and scope refuses larger maps: rpe always, lc when its map is
    # smaller than its window (stage 3 at 160 px: 10x10, a 19x19 table of the 23x23 window)
    scope = ReportResNet.__init__.__kwdefaults__["scope"]
    fixed = spec.position is not None and any(
        refuses_larger_maps(spec.position, (feature_size(DEFAULT_IMG_SIZE, stage),) * 2, scope)
        for stage, _ in lambda_sites(spec.depth, spec.stage, spec.lambda_layers))
    return dict(url="", num_classes=1000, input_size=(3, DEFAULT_IMG_SIZE, DEFAULT_IMG_SIZE),
                pool_size=(feature_size(DEFAULT_IMG_SIZE, 4),) * 2, fixed_input_size=fixed,
                crop_pct=timm_crop_pct(DEFAULT_IMG_SIZE), interpolation="bilinear", mean=IMAGENET_DEFAULT_MEAN,
                std=IMAGENET_DEFAULT_STD, first_conv="conv1", classifier="fc", description=describe(spec.name),
                notes=("no pretrained weights; input_size follows the model's img_size",), **kwargs)


default_cfgs: dict = {}  # timm's register_model reads this module's default_cfgs; _register fills it


def _build(variant: str, depth: int, pretrained: bool = False, **kwargs) -> nn.Module:
    """build_model_with_cfg(ReportResNet, ...) with a pretrained_cfg describing the model as built."""
    pretrained_cfg = kwargs.pop("pretrained_cfg", None)
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    given = pretrained_cfg if isinstance(pretrained_cfg, dict) else {}
    if pretrained and not any(overlay.get(k) or given.get(k) for k in ("file", "url", "hf_hub_id", "state_dict")):
        label = SPECS[variant].label if variant in SPECS else variant
        raise ValueError(f"{variant}: no pretrained weights exist for the report's models; train one with "
                         f"`lambdalib train --model '{label}'` and load its checkpoint (checkpoint_path=..., or "
                         f"pretrained=True with pretrained_cfg_overlay=dict(file=...))")
    img = _pair(kwargs.setdefault("img_size", DEFAULT_IMG_SIZE))
    # what timm.data.resolve_data_config and the builder read: this model, not a default
    current = dict(input_size=(kwargs.get("in_chans", 3), *img),
                   crop_pct=timm_crop_pct(img[0]) if img[0] == img[1] else EVAL_CROP_FRACTION,
                   pool_size=tuple(feature_size(s, 4, kwargs.get("output_stride", 32)) for s in img),
                   num_classes=kwargs.get("num_classes", 1000),
                   fixed_input_size=kwargs.get("lambda_stage") is not None and kwargs.get("position", "rpe") == "rpe")
    return build_model_with_cfg(ReportResNet, variant, pretrained, pretrained_cfg=pretrained_cfg,
                                pretrained_cfg_overlay={**current, **overlay}, depth=depth, **kwargs)


def build_resnet(depth: int, **kwargs) -> nn.Module:
    """The report's ResNet``depth`` (18 or 34) with lambda layers at any site (see ``ReportResNet``), built as the
    registered entry points are (timm-native, with a pretrained_cfg)."""
    if depth not in STAGE_BLOCKS:
        raise ValueError(f"depth={depth}; the report's ResNets are 18 or 34")
    stage, position, n = kwargs.get("lambda_stage"), kwargs.get("position", "rpe"), kwargs.get("lambda_layers", 1)
    variant = next((s.name for s in SPECS.values() if (s.depth, s.stage, s.lambda_layers) == (depth, stage, n)
                    and s.position == (position if stage is not None else None)), None)
    if variant is None:  # a site outside the report's ten: built on the baseline's cfg, described as it is
        overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
        layers = f"a {position} lambda layer in" if n == 1 else f"{n} {position} lambda layers up to"
        overlay.setdefault("description", f"ResNet{depth} with {layers} stage {stage} (not one of the report's ten)")
        kwargs["pretrained_cfg_overlay"], variant = overlay, f"lambdalib_resnet{depth}"
    return _build(variant, depth, **kwargs)


def _entrypoint(spec: ModelSpec):
    def create_fn(pretrained: bool = False, **kwargs) -> nn.Module:
        kwargs.pop("cache_dir", None)  # no hub weights to cache
        if spec.stage is not None:
            kwargs.setdefault("lambda_stage", spec.stage)
            kwargs.setdefault("position", spec.position)
            kwargs.setdefault("lambda_layers", spec.lambda_layers)
        return _build(spec.name, spec.depth, pretrained, **kwargs)

    create_fn.__name__ = create_fn.__qualname__ = spec.name
    create_fn.__doc__ = f"{spec.label} of the report: {describe(spec.name)}"
    create_fn.__module__ = __name__
    return create_fn


def _register(spec: ModelSpec) -> None:
    """Register a spec's entry point with timm (its default cfg first: register_model reads default_cfgs)."""
    default_cfgs.update(generate_default_cfgs({spec.name: _cfg(spec)}))
    globals()[spec.name] = register_model(_entrypoint(spec))


for _spec in SPECS.values():
    _register(_spec)


def create(name: str, **kwargs) -> nn.Module:
    """timm.create_model for a report label or registry name; warns when the name is a lookalike (timm's resnet18)."""
    resolved = resolve_name(name)
    if resolved in SPECS and not timm.is_model(resolved):  # a family registered after this module was imported
        _register(SPECS[resolved])
    note = lookalike_note(resolved)
    if note:
        warnings.warn(note, LookalikeWarning, stacklevel=2)
    return timm.create_model(resolved, **kwargs)


# ----------------------------------------------------------------------------------------- tables
def scope_covers_map(model: nn.Module) -> str | None:
    """Why an lc model is global rpe in disguise ("scope 23 covers the whole 8x8 map"), or None: a window of
    side r >= 2 x side - 1 reaches every position from every query, so lc sees what rpe sees."""
    for module in model.modules():
        if isinstance(module, LambdaLayer) and module.position == "lc" and module.feat_size is not None:
            height, width = module.feat_size
            if module.scope >= 2 * max(height, width) - 1:
                return f"lc scope {module.scope} covers the whole {height}x{width} map (lc = global rpe here)"
    return None


def count_flops(model: nn.Module, img_size: int) -> int:
    """Forward FLOPs (2 x multiply-adds) of one image, from torch's own flop counter."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, getattr(model, "in_chans", 3), img_size, img_size))
    return counter.get_total_flops()


def summary_table(img_size: int = DEFAULT_IMG_SIZE, num_classes: int = 10) -> list[dict]:
    """One row per registered model: parameters, forward GFLOPs, where the lambda layer sits."""
    rows = []
    for name, spec in SPECS.items():
        model = create(name, num_classes=num_classes, img_size=img_size)
        rows.append(dict(label=spec.label, name=name, params=sum(p.numel() for p in model.parameters()),
                         gflops=count_flops(model, img_size) / 1e9, lambda_site=model.lambda_site or "-"))
    return rows
