"""RunConfig: the one object that flows from CLI flags / papermill parameters to the run record.

Defaults are the report's recipe (Adam, lr 1e-5, CosineAnnealingWarmRestarts T_0=5, T_mult=2, eta_min=0,
batch 64, cross-entropy) plus our choices where it is silent: 35 epochs (three whole restart cycles, 5 + 10 + 20,
ending at the bottom of a cosine) and 160 px (imagenette2-160's short side). Preset "fast" (lr 1e-3, at which a
ResNet learns Imagenette in a few epochs) separates the recipe's effect from the architecture's.
"""
from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .files import atomic_write_text
from .imagenette import OFFICIAL_NOISE_LEVELS, data_fingerprint, data_slug, official_noise_level
from .registry import LAMBDA_LAYERS, SPECS, report_label, resolve_name

# What a run computes beyond its fields (eval crop, augmentation, the layer's maths, ...). Bump it on purpose
# when such a thing changes: every run then gets a new identity, and the old records stop counting as
# finished runs of the new pipeline. Version 1 is the pipeline of the first committed records; 2 computes
# val_loss_batch_stats on a fixed class-mixed subset of 10 validation batches (1 used class-sorted batches).
PIPELINE = 2

# The experiment identity: every field that changes what is computed. The first group is the identity the
# first committed records were named by, always hashed; a field added later (ADDED_IDENTITY) joins a run's
# identity only where it differs from its default, so adding one renames no existing run.
BASE_IDENTITY = ("model", "noise", "synthetic_noise", "preset", "epochs", "img_size", "batch_size", "lr",
                 "weight_decay", "t0", "t_mult", "eta_min", "grad_clip", "diverge_factor", "lc_scope", "seed", "data",
                 "train_per_class", "val_per_class", "amp", "world_size")
ADDED_IDENTITY: tuple[str, ...] = ("data_digest", "lambda_layer")
FLOAT_FIELDS = ("noise", "lr", "weight_decay", "eta_min", "grad_clip", "diverge_factor")

# fields given explicitly win over a preset or a profile
PRESETS: dict[str, dict[str, Any]] = {"report": dict(lr=1e-5), "fast": dict(lr=1e-3)}
# the sweep's scales (`reproduce --quick` / `--study`)
PROFILES: dict[str, dict[str, Any]] = {
    # every model and noise level, so every table and figure has its rows, in minutes on a CPU: a smoke test, not
    # results (no checkpoints: those of 40 runs would take gigabytes)
    "quick": dict(epochs=3, img_size=64, batch_size=32, preset="fast", data="embedded", train_per_class=24,
                  val_per_class=16, checkpoints="none"),
    # the committed study: the whole embedded set at 64 px (an 8x8 stage-2 map: the lambda layer acts, and the
    # scaled lc scope r=5 differs from global rpe), 20 epochs (cycles 5 + 10, then 5 into the third: the last epoch
    # is not the best by construction), bf16 autocast, best.pt for figure 7. README.md says why and what it costs.
    "study": dict(epochs=20, img_size=64, batch_size=64, data="embedded", lc_scope=0, amp="bf16", checkpoints="best"),
}


def _field(default: Any, help: str, choices: tuple | None = None, identity: bool = True, internal: bool = False):
    """A RunConfig field with its one-line help, allowed values, whether it is part of the experiment, and
    whether lambdalib sets it itself (internal: no CLI flag, no notebook parameter)."""
    return field(default=default, metadata=dict(help=help, choices=choices, identity=identity, internal=internal))


@dataclass
class RunConfig:
    # -- what is computed: every field below with identity=True is part of the experiment (see identity())
    model: str = _field("LR18_L2(rpe)", "report label (R18, LR18_L2(rpe), ...) or timm model name")
    noise: float = _field(0.0, "fraction of flipped training labels; official columns: 0, 0.01, 0.05, 0.25, 0.5")
    synthetic_noise: bool = _field(False, "allow other noise rates, as seeded synthetic symmetric noise")
    preset: str = _field("report", "recipe preset: 'report' (Adam lr 1e-5, as published) or 'fast' (lr 1e-3)",
                         ("report", "fast"))
    epochs: int = _field(35, "training epochs (35 = three cosine restart cycles, 5 + 10 + 20)")
    img_size: int = _field(160, "training and evaluation image size in pixels (>= 32)")
    batch_size: int = _field(64, "images per step per process; the global batch is batch_size x world_size")
    lr: float = _field(1e-5, "Adam learning rate (the preset's unless given)")
    weight_decay: float = _field(0.0, "Adam weight decay")
    t0: int = _field(5, "CosineAnnealingWarmRestarts T_0, in epochs (stepped once per epoch)")
    t_mult: int = _field(2, "CosineAnnealingWarmRestarts T_mult")
    eta_min: float = _field(0.0, "CosineAnnealingWarmRestarts eta_min")
    grad_clip: float = _field(0.0, "max total gradient norm; 0 = no clipping")
    diverge_factor: float = _field(10.0, "diverged when train loss > factor x ln(classes) or val loss > factor x "
                                         "its first value (ln(classes) at the least) with BatchNorm on batch stats too")
    lc_scope: int = _field(23, "scope r of the lc (lambda convolution) models, odd; 0 = scaled with the image: the "
                               "largest odd r <= 23 x img_size / 224, the share of the image the report's r=23 "
                               "covers at 224 px (not part of a non-lc model's identity)")
    lambda_layer: str = _field("ours", "whose lambda layer a Lambda-ResNet uses: 'ours' (lambdalib.layers, position "
                                       "table scaled to unit output), 'ours-n01' (ours with an N(0, 1) position table, "
                                       "as lucidrains draws it), 'lucidrains' (the published lambda-networks package "
                                       "the report used; lc at the report's r=23; pip install "
                                       "lambda-networks, version 0.4.0)", LAMBDA_LAYERS)
    seed: int = _field(0, "seed of the weights, the noise draw (synthetic) and the data order")
    data: str = _field("embedded", "'embedded', 'imagenette2-160', 'imagenette2-320', 'imagenette2', a folder in "
                                   "the imagenette2 layout, or an archive path / URL")
    train_per_class: int = _field(0, "use only the first N training images of each class; 0 = all")
    val_per_class: int = _field(0, "use only the first N validation images of each class; 0 = all")
    amp: str = _field("auto", "mixed precision: 'auto' (CUDA: bf16 from compute capability 8, else fp16 + grad "
                              "scaler; CPU: off), 'off', 'bf16', 'fp16'", ("auto", "off", "bf16", "fp16"))
    world_size: int = _field(0, "processes training together; 0 = as many as torchrun started (1 without it)")
    # -- how and where it runs: not part of the experiment (a run may resume with other values)
    results: str = _field("", "results folder; '' = the repository's results/", identity=False)
    run_name: str = _field("", "run folder name; '' = derived from the experiment's identity", identity=False)
    workers: int = _field(-1, "data loader workers; -1 = a sensible default for this machine", identity=False)
    loader: str = _field("auto", "data path: 'cached' (decode every image once into a memory-mapped cache, augment "
                                 "in batches in the training process, no workers), 'workers' (JPEG DataLoader with "
                                 "worker processes), 'auto' (cached when the decoded images fit in half the "
                                 "available RAM)", ("auto", "cached", "workers"), identity=False)
    augment_on: str = _field("auto", "cached data path: where training batches are cropped, resized, flipped and "
                                     "normalised: 'device' (decoded images kept in GPU memory, whole batches there, "
                                     "no host work per step), 'host' (the CPU, a thread preparing batches ahead on "
                                     "a GPU), 'auto' (device on a GPU that holds the images in 30 % of its free "
                                     "memory, else host); the same resize either way", ("auto", "host", "device"),
                             identity=False)
    device: str = _field("auto", "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'", identity=False)
    channels_last: str = _field("auto", "channels-last memory format: 'auto' (CUDA with tensor cores), 'on', 'off'",
                                ("auto", "on", "off"), identity=False)
    deterministic: bool = _field(False, "torch's deterministic algorithms where it has them (slower); an op "
                                        "without one is named in the record; off = cudnn.benchmark", identity=False)
    checkpoints: str = _field("best", "'best': best.pt (+ last.pt until complete); 'best+last'; 'none': last.pt "
                                      "until complete", ("best", "best+last", "none"), identity=False)
    compile: bool = _field(False, "run the model through torch.compile (Inductor; CUDA needs compute capability "
                                  "7.0+: T4 yes, P100 no)", identity=False)
    logger: str = _field("none", "also log every epoch to 'tensorboard' (event files in the run folder) or 'wandb' "
                                 "(pip install wandb; with WANDB_MODE set to offline it works without network)",
                         ("none", "tensorboard", "wandb"), identity=False)
    on_error: str = _field("fail", "an unreadable image: 'fail' (stop, naming the file) or 'skip' (counted in the "
                                   "record)", ("fail", "skip"), identity=False)
    # -- set by lambdalib, not a parameter: the pipeline version that computed this run (see PIPELINE)
    pipeline: int = _field(PIPELINE, "pipeline version", identity=False, internal=True)
    # what a data folder or archive holds (imagenette.data_fingerprint; '' for the embedded set and the official
    # archives): two folders of one name are two experiments
    data_digest: str = _field("", "data fingerprint", internal=True)

    @classmethod
    def from_params(cls, **params: Any) -> "RunConfig":
        """Build from user parameters: preset first, then explicit values; validated."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise ValueError(f"unknown parameter(s) {unknown}; RunConfig fields are: {known}")
        preset = params.get("preset") or cls.preset
        if preset not in PRESETS:
            raise ValueError(f"preset={preset!r}: expected one of {sorted(PRESETS)}")
        values = {**PRESETS[preset], **{k: v for k, v in params.items() if v is not None}}
        config = cls(**{k: _coerce(cls, k, v) for k, v in values.items()})
        config.validate()
        return config

    def validate(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"{name}={getattr(self, name)!r}: {why}")

        resolve_name(self.model)  # raises with the list of known models
        for f in fields(self):  # a count given as 1.5 or True would pass the range checks below
            value = getattr(self, f.name)
            if f.type == "int" and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
                raise bad(f.name, "must be a whole number")
        if not 0.0 <= self.noise < 1.0:
            raise bad("noise", "must be a fraction in [0, 1), e.g. 0.25 for 25 %")
        if not self.synthetic_noise and official_noise_level(self.noise) is None:
            raise bad("noise", f"Imagenette's official noisy labels exist for {list(OFFICIAL_NOISE_LEVELS)}; "
                               "set synthetic_noise=True for seeded synthetic symmetric noise at other rates")
        for name in ("epochs", "img_size", "batch_size", "t0", "t_mult"):
            if getattr(self, name) < 1:
                raise bad(name, "must be a positive integer")
        for name in ("train_per_class", "val_per_class", "world_size"):
            if getattr(self, name) < 0:
                raise bad(name, "must be >= 0 (0 = " + ("every image)" if name != "world_size" else "from torchrun)"))
        if self.lc_scope < 0 or (self.lc_scope and self.lc_scope % 2 == 0):
            raise bad("lc_scope", "must be an odd number of positions (23 as in the report) or 0 (scaled with the "
                                  "image size)")
        if self.img_size < 32:
            raise bad("img_size", "must be at least 32 px (the ResNet downsamples by 32)")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise bad("lr", "must be a positive number")
        for name in ("weight_decay", "eta_min", "grad_clip"):
            if not getattr(self, name) >= 0:  # also rejects nan
                raise bad(name, "must be >= 0")
        if not self.diverge_factor > 1:  # also rejects nan
            raise bad("diverge_factor", "must be > 1")
        for f in fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise bad(f.name, "expected one of " + ", ".join(repr(c) for c in choices))
        if self.run_name and (not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", self.run_name) or ".." in self.run_name):
            raise bad("run_name", "must be one folder name of letters, digits and . _ + - (no / and no ..): the run "
                                  "folder goes under <results>/runs/")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", self.device):
            raise bad("device", "expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")

    # ------------------------------------------------------------------------------ identity
    def resolved(self) -> "RunConfig":
        """This config with every 'auto' / 0 made concrete (precision, world size, lc scope, data digest):
        what a run record holds."""
        amp = _auto_precision(self.device) if self.amp == "auto" else self.amp
        world_size = self.world_size or int(os.environ.get("WORLD_SIZE", "1"))
        return replace(self, amp=amp, world_size=world_size, lc_scope=self.lc_scope or scaled_scope(self.img_size),
                       data_digest=self.data_digest or data_fingerprint(self.data))

    def identity(self) -> dict[str, Any]:
        """The one definition of "the same experiment" (run folder name, resume check, the sweep's skip, the
        report's grouping), normalised: model -> timm name, data -> its short name, 'auto' -> what it means here."""
        config = self.resolved()
        defaults = {f.name: f.default for f in fields(config)}
        ident = {name: getattr(config, name) for name in BASE_IDENTITY}
        ident.update({name: getattr(config, name) for name in ADDED_IDENTITY
                      if getattr(config, name) != defaults[name]})
        ident["model"] = resolve_name(config.model)
        ident["data"] = data_slug(config.data)
        if config.position() != "lc" or config.lambda_layer == "lucidrains":
            ident.pop("lc_scope")  # computes nothing there: R18 or rpe runs keep their identity
        if config.position() is None:
            ident.pop("lambda_layer", None)  # a ResNet has no lambda layer
        ident.update({name: float(ident[name]) for name in FLOAT_FIELDS})
        if config.pipeline != 1:
            ident["pipeline"] = config.pipeline
        return ident

    @property
    def experiment_id(self) -> str:
        """Readable slug + a hash of the whole identity except the seed: runs that share it are seeds of
        one experiment (one table cell); runs that differ in any identity field never share it."""
        ident = self.identity()
        ident.pop("seed")
        digest = hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:8]
        model = re.sub(r"[^A-Za-z0-9]+", "-", report_label(self.model)).strip("-")
        if "lc_scope" in ident:
            model += f"-r{ident['lc_scope']}"
        if "lambda_layer" in ident:  # another implementation of the layer (lucidrains' lc: the report's r=23)
            lucidrains_lc = self.position() == "lc" and "lc_scope" not in ident
            model += f"-{ident['lambda_layer']}" + ("-r23" if lucidrains_lc else "")
        noise = f"{self.noise * 100:g}".replace(".", "p") + ("syn" if self.synthetic_noise else "")
        return f"{model}_noise{noise}_{self.preset}_e{self.epochs}_{self.img_size}px_{ident['data']}_{digest}"

    @property
    def run_id(self) -> str:
        """Folder name: the same experiment and seed always map to the same folder, so re-running resumes."""
        return self.run_name or f"{self.experiment_id}_s{self.seed}"

    def differences(self, other: "RunConfig") -> dict[str, tuple[Any, Any]]:
        """Identity fields that differ between two configs: {name: (mine, theirs)}."""
        mine, theirs = self.identity(), other.identity()
        keys = list(mine) + [k for k in theirs if k not in mine]  # a field at its default is absent from one
        return {k: (mine.get(k), theirs.get(k)) for k in keys if mine.get(k) != theirs.get(k)}

    def position(self) -> str | None:
        """'rpe' or 'lc' for the report's Lambda-ResNets, None for ResNets and other timm models."""
        spec = SPECS.get(resolve_name(self.model))
        return spec.position if spec else None

    def model_kwargs(self) -> dict[str, Any]:
        """What `models.create` needs besides num_classes: the one place that turns a config into a network."""
        if resolve_name(self.model) not in SPECS:
            return {}  # a timm model: its own defaults
        kwargs: dict[str, Any] = dict(img_size=self.img_size)
        if self.position() == "lc":
            kwargs["scope"] = 23 if self.lambda_layer == "lucidrains" else self.resolved().lc_scope
        if self.position() and self.lambda_layer != "ours":
            kwargs["lambda_layer"] = self.lambda_layer
        return kwargs

    # ---------------------------------------------------------------------------------- storage
    def results_dir(self) -> Path:
        from .paths import results_dir

        return Path(self.results).expanduser() if self.results else results_dir()

    def run_dir(self) -> Path:
        return self.results_dir() / "runs" / self.run_id

    def portable(self) -> "RunConfig":
        """This config with the results folder and a data path made absolute: a notebook or cluster job that
        trains it may start in another working directory."""
        data = Path(self.data).expanduser()
        return replace(self, results=str(self.results_dir().resolve()),
                       data=str(data.resolve()) if data.exists() else self.data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: Path) -> None:
        """Write as JSON, atomically (a temporary file renamed over the target)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "RunConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        """A saved config; fields added since it was written take their defaults, which are what such a run
        used (e.g. lc_scope 23)."""
        known = {f.name for f in fields(cls)}
        return cls(**{"pipeline": 1, **{k: v for k, v in data.items() if k in known}})  # before pipelines: 1


def _auto_precision(device: str) -> str:
    """amp='auto' on `device`: off on CPU/MPS; on CUDA bf16 from compute capability 8 (Ampere), else fp16 with
    a grad scaler (T4, P100, V100: their bf16 is emulated)."""
    if device in ("cpu", "mps"):
        return "off"
    import torch

    if not torch.cuda.is_available():
        return "off"
    index = int(device.split(":")[1]) if ":" in device else int(os.environ.get("LOCAL_RANK", "0"))
    return "bf16" if torch.cuda.get_device_capability(index)[0] >= 8 else "fp16"


def scaled_scope(img_size: int, report_scope: int = 23, report_size: int = 224) -> int:
    """The largest odd scope covering no more of an img_size image than r=23 covers at 224 px (64 px -> 5,
    96 -> 9, 160 -> 15, 224 -> 23). At small sizes r=23 spans every stage-2/3 map, and lc = global rpe."""
    scope = int(report_scope * img_size / report_size)
    return max(1, scope if scope % 2 else scope - 1)


def parameter_fields() -> list:
    """RunConfig's fields a user sets (CLI flags, notebook parameters); not the ones lambdalib sets itself."""
    return [f for f in fields(RunConfig) if not f.metadata.get("internal")]


def preset_fields() -> frozenset[str]:
    """Fields some preset sets (e.g. lr): a CLI flag or notebook parameter left unset takes the preset's value."""
    return frozenset(name for values in PRESETS.values() for name in values)


def _coerce(cls: type, name: str, value: Any) -> Any:
    """papermill and the CLI hand over strings and ints; convert to the field's type, naming the field."""
    kind = {f.name: f.type for f in fields(cls)}[name]
    try:
        if kind == "bool" and isinstance(value, str):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        if kind == "int" and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return {"bool": bool, "int": int, "float": float}.get(kind, str)(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r}: expected {kind}") from None
