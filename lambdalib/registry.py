"""The report's models as data: each family (which table, figure, colour, notebook and baseline it has) is one
row of FAMILIES, and every model is a depth of a family (report label LR18_L2(rpe) -> timm name
lambda_resnet18_l2_rpe). Adding a variant is a row here; models.py changes only for a new kind of network.
Like timm's _registry.py, this knows names, not networks: no torch import.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

# Okabe-Ito: distinguishable with the common colour-vision deficiencies
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
DEPTHS = (18, 34)
# whose lambda layer a Lambda-ResNet uses (RunConfig.lambda_layer); the first is the default, lambdalib.layers
LAMBDA_LAYERS = ("ours", "ours-n01", "lucidrains")


@dataclass(frozen=True)
class Family:
    """A row of the report: ResNets of some depths, with a lambda layer of `position` in `stage` (None: none)."""
    key: str  # file stems: tables/table{table}_{key}, figures/curves_{key}
    table: int  # the report's table number
    title: str  # the table's title, as in the report
    colour: str
    notebook: str  # the papermill notebook that trains it (under notebooks/)
    position: str | None = None  # "rpe" | "lc" | None (the baselines)
    stage: int | None = None  # 1-4: where the lambda layer sits
    depths: tuple[int, ...] = DEPTHS
    lambda_layers: int = 1  # conv2 of this many basic blocks, counted backward from the last of `stage` (lambda_sites)

    @property
    def table_stem(self) -> str:
        return f"table{self.table}_{self.key}"

    @property
    def figure_stem(self) -> str:
        return f"curves_{self.key}"

    @property
    def _layers(self) -> str:
        return f"x{self.lambda_layers}" if self.lambda_layers > 1 else ""  # one layer: the report's labels

    def label(self, depth: int) -> str:
        return f"R{depth}" if self.position is None else f"LR{depth}_L{self.stage}{self._layers}({self.position})"

    def name(self, depth: int) -> str:
        return (f"lambdalib_resnet{depth}" if self.position is None
                else f"lambda_resnet{depth}_l{self.stage}{self._layers}_{self.position}")


@dataclass(frozen=True)
class ModelSpec:
    name: str  # timm registry name
    label: str  # the report's label
    depth: int
    family: str = "baselines"
    stage: int | None = None  # where the lambda layer sits (None for ResNets)
    position: str | None = None  # "rpe" or "lc"
    lambda_layers: int = 1  # see Family.lambda_layers

    @property
    def baseline(self) -> str | None:
        """The ResNet a Lambda-ResNet is compared with (its own depth); None for a ResNet."""
        return None if self.position is None else f"R{self.depth}"


FAMILIES: dict[str, Family] = {}
SPECS: dict[str, ModelSpec] = {}  # timm name -> spec, baselines first, then by depth and table
_BY_LABEL: dict[str, str] = {}


def register_family(family: Family) -> Family:
    """Add a family and its models (models.py registers every spec with timm when it is imported, and any
    later one when it is first created)."""
    if family.key in FAMILIES:
        raise ValueError(f"model family {family.key!r} is already registered")
    FAMILIES[family.key] = family
    for depth in family.depths:
        spec = ModelSpec(family.name(depth), family.label(depth), depth, family.key, family.stage, family.position,
                         family.lambda_layers)
        SPECS[spec.name] = spec
        _BY_LABEL[spec.label.lower()] = spec.name
    # SPECS in the report's order: baselines first, then every depth's families in table order
    specs = sorted(SPECS.values(), key=lambda s: (s.position is not None, s.depth if s.position else 0,
                                                  FAMILIES[s.family].table, s.depth))
    SPECS.clear()
    SPECS.update((s.name, s) for s in specs)
    return family


for _family in (
    Family("baselines", 1, "Baseline performance", OKABE_ITO[7], "02_baselines.ipynb"),
    Family("L2_rpe", 2, "LambdaResNet Layer2 rpe", OKABE_ITO[0], "03_lambda_rpe.ipynb", "rpe", 2),
    Family("L3_rpe", 3, "LambdaResNet Layer3 rpe", OKABE_ITO[5], "03_lambda_rpe.ipynb", "rpe", 3),
    Family("L2_lc", 4, "LambdaResNet Layer2 lc", OKABE_ITO[3], "04_lambda_lc.ipynb", "lc", 2),
    Family("L3_lc", 5, "LambdaResNet Layer3 lc", OKABE_ITO[1], "04_lambda_lc.ipynb", "lc", 3),
    # not one of the report's tables: a model for its "more than two lambda layers explode" (Tol's wine colour)
    Family("L3x4_rpe", 6, "LambdaResNet 4 lambda layers (stages 2-3) rpe", "#882255", "03_lambda_rpe.ipynb", "rpe", 3,
           depths=(18,), lambda_layers=4),
):
    register_family(_family)

REPORT_MODELS = tuple(n for n, s in SPECS.items() if s.lambda_layers == 1)  # the report's ten, baselines first
# timm names that read like a report baseline but are timm's networks: timm name -> the report's model
LOOKALIKES = {"resnet18": "lambdalib_resnet18", "resnet34": "lambdalib_resnet34"}


def model_names() -> list[str]:
    """Every registered model's timm name: baselines, then each depth's families in table order (added ones last)."""
    return list(SPECS)


def family_of(name_or_label: str) -> Family | None:
    spec = SPECS.get(resolve_name(split_label(name_or_label)[0]))
    return FAMILIES[spec.family] if spec else None


def resolve_name(name: str) -> str:
    """Report label ("LR18_L2(rpe)", "R34", "ResNet18") or registry name -> timm registry name; timm's own models
    pass through, including lowercase "resnet18" (timm's), while "Resnet18" or "RESNET34" is refused as ambiguous.
    """
    key = name.strip()
    low = key.lower()
    if key in SPECS:
        return key
    if low in _BY_LABEL:
        return _BY_LABEL[low]
    match = re.fullmatch(r"resnet(18|34)", low)
    if match and key != low:
        depth = match.group(1)
        if key == f"ResNet{depth}":  # the report's spelling
            return f"lambdalib_resnet{depth}"
        raise ValueError(f"Ambiguous model name {name!r}: 'ResNet{depth}' (= 'R{depth}', lambdalib_resnet{depth}) is "
                         f"the report's torchvision ResNet{depth}; lowercase 'resnet{depth}' is timm's resnet{depth} "
                         f"(timm's init and data config). Write 'R{depth}' or 'resnet{depth}'.")
    import timm  # late: only a name that is not ours needs timm's registry

    if timm.is_model(key):
        return key
    close = difflib.get_close_matches(key, [s.label for s in SPECS.values()] + list(SPECS), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    models = ", ".join(f"{s.label} ({n})" for n, s in SPECS.items())
    raise ValueError(f"Unknown model {name!r}.{hint} The report's models are: {models}; any timm model name works too.")


def report_label(name: str) -> str:
    name = resolve_name(name)
    return SPECS[name].label if name in SPECS else name


def run_label(model: str, lambda_layer: str = LAMBDA_LAYERS[0]) -> str:
    """A run's label: the report label, with the lambda layer's implementation in brackets when it is not ours
    ('LR18_L2(lc)[lucidrains]'): runs of one model with two implementations are two rows of a table."""
    label, spec = report_label(model), SPECS.get(resolve_name(model))
    return f"{label}[{lambda_layer}]" if spec and spec.position and lambda_layer != LAMBDA_LAYERS[0] else label


def split_label(label: str) -> tuple[str, str]:
    """run_label's inverse: 'LR18_L2(lc)[lucidrains]' -> ('LR18_L2(lc)', 'lucidrains'); 'R18' -> ('R18', 'ours')."""
    match = re.fullmatch(r"(.+)\[([\w-]+)\]", label)
    return (match[1], match[2]) if match and match[2] in LAMBDA_LAYERS else (label, LAMBDA_LAYERS[0])


def family_label(position: str | None, depth: int, stage: int | None = None, lambda_layers: int = 1) -> str:
    """The report label for a notebook's (family, depth, stage, lambda_layers): ("rpe", 18, 2) -> "LR18_L2(rpe)",
    ("rpe", 18, 3, 4) -> "LR18_L3x4(rpe)"."""
    try:
        depth, lambda_layers = int(depth), int(lambda_layers)  # papermill's -r hands over strings
        stage = None if stage is None else int(stage)
    except (TypeError, ValueError):
        raise ValueError(f"depth={depth!r}, stage={stage!r}, lambda_layers={lambda_layers!r}: expected whole "
                         "numbers") from None
    same = [f for f in FAMILIES.values() if f.position == position and depth in f.depths]
    for family in same:
        if position is None or (family.stage, family.lambda_layers) == (stage, lambda_layers):
            return family.label(depth)
    if depth not in DEPTHS:
        raise ValueError(f"depth={depth!r}: the report's ResNets are 18 or 34")
    if position not in (None, "rpe", "lc"):
        raise ValueError(f"position={position!r}: expected 'rpe' or 'lc'")
    counts = sorted({f.lambda_layers for f in same})
    if lambda_layers not in counts:
        raise ValueError(f"lambda_layers={lambda_layers!r}: {position} ResNet{depth}s have "
                         f"{' or '.join(map(str, counts))} lambda layers")
    if lambda_layers > 1:
        models = [f.label(depth) for f in same if f.lambda_layers == lambda_layers]
        raise ValueError(f"stage={stage!r}, lambda_layers={lambda_layers}: the models with {lambda_layers} {position} "
                         f"lambda layers are {', '.join(models)}")
    raise ValueError(f"stage={stage!r}: the report puts the lambda layer in stage 2 or 3")


def model_rank(label: str) -> int:
    """A label's place in the report's order, each model's implementations in LAMBDA_LAYERS order (unknown last)."""
    labels, (base, impl) = [s.label for s in SPECS.values()], split_label(label)
    return (labels.index(base) if base in labels else len(labels)) * len(LAMBDA_LAYERS) + LAMBDA_LAYERS.index(impl)


def published():
    """The report's published numbers (lambdalib/published.csv); L3 rpe values are NaN (never published)."""
    from importlib import resources

    import pandas as pd

    with resources.files("lambdalib").joinpath("published.csv").open() as handle:
        return pd.read_csv(handle, dtype={"training_time": str, "note": str})
