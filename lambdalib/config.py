"""RunConfig: the one object that flows from CLI flags / papermill parameters to the run record.

Defaults are the report's recipe (Adam with default betas, lr 1e-5, CosineAnnealingWarmRestarts with
T_0=5, T_mult=2, eta_min=0, batch 64, cross-entropy). The report does not state the epoch count or the
image size; our choices: 35 epochs (= three full restart cycles, 5 + 10 + 20, so the run ends at the
bottom of a cosine) and 160 px (imagenette2-160's short side).

Presets set several fields at once; fields given explicitly win over the preset:
  * "report": the recipe above.
  * "fast":   lr 1e-3, a learning rate at which a ResNet learns Imagenette in a few epochs, to separate
              the recipe's effect (lr 1e-5 barely moves a randomly initialised ResNet) from the
              architecture's.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

OFFICIAL_NOISE_LEVELS = (0.0, 0.01, 0.05, 0.25, 0.5)

PRESETS: dict[str, dict[str, Any]] = {
    "report": dict(lr=1e-5),
    "fast": dict(lr=1e-3),
}


@dataclass
class RunConfig:
    model: str = "LR18_L2(rpe)"  # report label or timm name
    noise: float = 0.0  # fraction of flipped training labels (official columns: 0, .01, .05, .25, .5)
    synthetic_noise: bool = False  # allow other noise rates, as seeded symmetric noise
    preset: str = "report"
    epochs: int = 35
    img_size: int = 160
    batch_size: int = 64
    lr: float = 1e-5
    weight_decay: float = 0.0
    t0: int = 5  # CosineAnnealingWarmRestarts, stepped once per epoch
    t_mult: int = 2
    eta_min: float = 0.0
    grad_clip: float = 0.0  # max total grad norm; 0 = off
    diverge_factor: float = 10.0  # train loss > factor x ln(classes), or val loss > factor x its start: diverged
    seed: int = 0
    data: str = "embedded"  # "embedded", "imagenette2-160" / "-320" / "imagenette2", a folder or an archive
    train_per_class: int = 0  # use only the first N training images of each class (0 = all); for smoke runs
    val_per_class: int = 0  # the same for validation
    results: str = ""  # results folder; "" = the repository's results/
    workers: int = -1  # data loader workers; -1 = a sensible default for this machine
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    amp: str = "auto"  # "auto" (on for CUDA: bf16 where supported, else fp16 + grad scaler), "off", "bf16", "fp16"
    channels_last: str = "auto"  # "auto" (on for CUDA), "on", "off"
    run_name: str = ""  # "" = derived from the fields that define the experiment
    checkpoints: str = "best"  # "best": best.pt (+ last.pt until complete); "best+last"; "none": last.pt until complete

    # fields that may differ when a run is resumed (they do not change what is computed on CPU)
    RESUMABLE_CHANGES = ("workers", "results", "run_name", "device", "checkpoints")

    @classmethod
    def from_params(cls, **params: Any) -> "RunConfig":
        """Build from user parameters: preset first, then explicit values; validated."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"unknown parameter(s) {unknown}; RunConfig fields are: {sorted(known)}")
        preset = params.get("preset", cls.preset)
        if preset not in PRESETS:
            raise ValueError(f"preset={preset!r}: expected one of {sorted(PRESETS)}")
        values = {**PRESETS[preset], **{k: v for k, v in params.items() if v is not None}}
        config = cls(**{k: _coerce(k, v) for k, v in values.items()})
        config.validate()
        return config

    def validate(self) -> None:
        from .models import resolve_name  # late: keeps config importable without torch for docs

        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"{name}={getattr(self, name)!r}: {why}")

        resolve_name(self.model)  # raises with the list of known models
        if not 0.0 <= self.noise < 1.0:
            raise bad("noise", "must be a fraction in [0, 1), e.g. 0.25 for 25 %")
        if not self.synthetic_noise and not any(math.isclose(self.noise, n) for n in OFFICIAL_NOISE_LEVELS):
            raise bad("noise", f"Imagenette's official noisy labels exist for {list(OFFICIAL_NOISE_LEVELS)}; "
                               "set synthetic_noise=True for seeded synthetic symmetric noise at other rates")
        for name in ("epochs", "img_size", "batch_size", "t0", "t_mult"):
            if getattr(self, name) < 1:
                raise bad(name, "must be a positive integer")
        for name in ("train_per_class", "val_per_class"):
            if getattr(self, name) < 0:
                raise bad(name, "must be >= 0 (0 = every image)")
        if self.img_size < 32:
            raise bad("img_size", "must be at least 32 px (the ResNet stem downsamples by 32)")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise bad("lr", "must be a positive number")
        for name in ("weight_decay", "eta_min", "grad_clip"):
            if getattr(self, name) < 0:
                raise bad(name, "must be >= 0")
        if not self.diverge_factor > 1:  # also rejects nan
            raise bad("diverge_factor", "must be > 1")
        if self.amp not in ("auto", "off", "bf16", "fp16"):
            raise bad("amp", "expected 'auto', 'off', 'bf16' or 'fp16'")
        if self.channels_last not in ("auto", "on", "off"):
            raise bad("channels_last", "expected 'auto', 'on' or 'off'")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", self.device):
            raise bad("device", "expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
        if self.checkpoints not in ("best", "best+last", "none"):
            raise bad("checkpoints", "expected 'best', 'best+last' or 'none'")
        if self.preset not in PRESETS:
            raise bad("preset", f"expected one of {sorted(PRESETS)}")

    # ------------------------------------------------------------------------------ identity
    @property
    def run_id(self) -> str:
        """Folder name: the same experiment always maps to the same folder, so re-running resumes it."""
        if self.run_name:
            return self.run_name
        from .models import report_label

        model = re.sub(r"[^A-Za-z0-9]+", "-", report_label(self.model)).strip("-")
        data = re.sub(r"[^A-Za-z0-9.]+", "-", Path(self.data).name if "/" in self.data else self.data).strip("-")
        noise = f"{self.noise * 100:g}".replace(".", "p")
        extra = "" if self.lr == PRESETS[self.preset].get("lr") else f"-lr{self.lr:g}"
        if self.synthetic_noise:
            noise += "syn"
        if self.train_per_class or self.val_per_class:
            data += f"-{self.train_per_class}+{self.val_per_class}pc"
        return f"{model}_noise{noise}_{self.preset}{extra}_e{self.epochs}_{self.img_size}px_s{self.seed}_{data}"

    def results_dir(self) -> Path:
        from .paths import results_dir

        return Path(self.results).expanduser() if self.results else results_dir()

    def run_dir(self) -> Path:
        return self.results_dir() / "runs" / self.run_id

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: Path) -> None:
        """Write as JSON, atomically (a temporary file renamed over the target)."""
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> "RunConfig":
        data = json.loads(Path(path).read_text())
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def differences(self, other: "RunConfig") -> dict[str, tuple[Any, Any]]:
        """Fields that differ and would change what the run computes."""
        mine, theirs = self.to_dict(), other.to_dict()
        return {k: (mine[k], theirs[k]) for k in mine
                if mine[k] != theirs[k] and k not in self.RESUMABLE_CHANGES}


def _coerce(name: str, value: Any) -> Any:
    """papermill and the CLI hand over strings and ints; convert to the field's type, naming the field."""
    kind = {f.name: f.type for f in fields(RunConfig)}[name]
    try:
        if kind == "bool":
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if kind == "float":
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r}: expected {kind}") from None
