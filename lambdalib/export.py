"""Share a run's weights: `export(run_dir)` writes the folder the Hugging Face hub expects of a timm model.

    lambdalib export results/runs/<run id>          # -> results/runs/<run id>/export/

    <out>/model.safetensors   best.pt's weights (the epoch of the best validation loss), contiguous tensors
    <out>/config.json         timm's hub config: architecture, num_classes, label_names, model_args, pretrained_cfg
    <out>/README.md           the model card: architecture, data, noise, recipe, results, provenance, usage

Load it back with timm (after `import lambdalib`, which registers the architecture):

    timm.create_model("local-dir:<out>", pretrained=True)         # timm >= 1.0.16 reads config.json
    timm.create_model("<architecture>", pretrained=True, **model_args,  # config.json's: num_classes, img_size, ...
                      pretrained_cfg_overlay=dict(file="<out>/model.safetensors", num_classes=10))
    timm.create_model("hf-hub:<user>/<repo>", pretrained=True)    # once uploaded (huggingface_hub.upload_folder)

Every number in config.json and the card comes from the run record or lambdalib's preprocessing (imagenette.py).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import timm
import yaml
from safetensors.torch import save

from . import files, fmt, record, runs
from .imagenette import MEAN, STD, data_slug, official_noise_level, timm_crop_pct
from .layers import LambdaLayer
from .registry import resolve_name

LICENSE = "mit"  # the weights' licence: the package's (pyproject.toml: MIT)
HUB_DATASET = "frgfm/imagenette"  # Imagenette on the Hugging Face hub
# pretrained_cfg keys that describe the architecture (kept from the model's own cfg); the rest (where weights
# came from, licence, paper, notes of another checkpoint, test-time sizes) does not describe this export
_ARCHITECTURE_KEYS = ("input_size", "fixed_input_size", "min_input_size", "pool_size", "first_conv", "classifier",
                      "description")


def export(run_dir: str | Path, out: str | Path | None = None, *, allow_unfinished: bool = False) -> Path:
    """Write model.safetensors, config.json and README.md for the run in `run_dir` (or its best.pt) to `out`
    (default <run_dir>/export/); refusals are one line saying what to do. Returns `out`."""
    rec = runs.read_record(_run_folder(Path(run_dir)))
    run_dir, summary, config = rec.path, rec.summary, rec.config
    if rec.status not in record.FINISHED and not allow_unfinished:
        raise ValueError(f"{run_dir}: the run is {rec.status} ({summary.get('epochs_done', 0)} of {config.epochs} "
                         f"epochs); finish it first (the same `lambdalib train` command resumes it) or export it as "
                         f"it stands (--allow-unfinished, allow_unfinished=True)")
    best = _load_best(run_dir, summary, config)
    name, classes = summary["model"], list(best["classes"])
    args = config.model_kwargs()  # what train.py built it with (img_size; the lc scope)
    model, weights = _fitted_model(run_dir / "best.pt", name, classes, args, best["model"])

    out = Path(out) if out is not None else run_dir / "export"
    theirs = [p.name for p in out.glob("*")] if out.is_dir() and not (out / "model.safetensors").exists() else []
    if theirs:  # a folder of the user's, not an earlier export: its README.md would be overwritten
        raise FileExistsError(f"{out} holds files export did not write ({', '.join(sorted(theirs)[:3])}); choose "
                              "a new or empty --out folder")
    files.make_dir(out)
    files.atomic_write_bytes(out / "model.safetensors", save(weights, metadata={"format": "pt"}))
    hub = hub_config(model, name, classes, args, config.img_size)
    files.atomic_write_text(out / "config.json", json.dumps(hub, indent=2) + "\n")
    files.atomic_write_text(out / "README.md", model_card(summary, config, best, rec.history, hub))
    return out


# ------------------------------------------------------------------------------------- checks
def _run_folder(path: Path) -> Path:
    if path.is_file() and path.name == "best.pt":
        path = path.parent
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such run folder; pass results/runs/<run id>")
    if not path.is_dir() or not (path / "summary.json").is_file() or not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a run folder (it needs summary.json and config.json); "
                                f"pass results/runs/<run id>")
    return path


def _load_best(run_dir: Path, summary: dict, config) -> dict:
    path = run_dir / "best.pt"
    if not path.is_file():
        if config.checkpoints == "none":
            why = "it was trained with checkpoints='none', which keeps no weights; train it again with " \
                  "--checkpoints best"
        elif not summary.get("epochs_done"):
            why = "no epoch finished, so there are no weights to export"
        else:
            why = "best.pt is missing (moved or deleted?)"
        raise FileNotFoundError(f"{run_dir}: no best.pt: {why}")
    best = record.load_checkpoint(
        path, refusal="{path} is not a lambdalib best.pt (expected keys 'model', 'config', 'classes')",
        unreadable="{path} is unreadable ({reason}); train the run again to rewrite it", also=("classes",))
    saved = best["config"]
    if saved.get("img_size") != config.img_size or _timm_name(saved.get("model", "")) != summary["model"]:
        raise ValueError(f"{path} holds {saved.get('model')!r} at {saved.get('img_size')} px, but the run record "
                         f"says {summary['model']!r} at {config.img_size} px; this folder mixes two runs")
    return best


def _timm_name(name: str) -> str:
    try:
        return resolve_name(name)
    except ValueError:
        return name


def _fitted_model(path: Path, name: str, classes: list[str], args: dict, state: dict):
    """The architecture built as config.json says to build it, with best.pt's weights loaded strictly: what the
    export holds is exactly what `timm.create_model(name, **args)` accepts."""
    weights = {key: value.detach().cpu().contiguous() for key, value in state.items()}
    model = timm.create_model(name, num_classes=len(classes), **args)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:200]
        raise ValueError(f"{path}: its weights do not fit timm.create_model({name!r}, num_classes={len(classes)}"
                         + "".join(f", {k}={v!r}" for k, v in args.items()) + f") ({detail}); was it trained by "
                         f"another version of lambdalib's models?") from None
    return model.eval(), weights


# ---------------------------------------------------------------------------------- hub config
def hub_config(model, name: str, classes: list[str], args: dict, img_size: int) -> dict[str, Any]:
    """config.json as timm's `save_for_hf` writes it and `create_model("hf-hub:...")` reads it."""
    base = dict(getattr(model, "pretrained_cfg", None) or {})
    cfg = {k: base[k] for k in _ARCHITECTURE_KEYS if base.get(k) is not None}
    if tuple(base.get("input_size", ()))[1:] != (img_size, img_size):
        cfg.pop("pool_size", None)  # the default cfg's, for another input size
    # the preprocessing the run was evaluated with (lambdalib.data.val_transform)
    cfg.update(input_size=[3, img_size, img_size], interpolation="bilinear", crop_pct=timm_crop_pct(img_size),
               crop_mode="center", mean=list(MEAN), std=list(STD), num_classes=len(classes), license=LICENSE)
    # an rpe lambda layer's position table is sized to the map it was built for: the input size is fixed
    cfg.setdefault("fixed_input_size", any(isinstance(m, LambdaLayer) and m.position == "rpe"
                                           for m in model.modules()))
    cfg.setdefault("first_conv", "conv1")
    cfg.setdefault("classifier", "fc")
    features = getattr(model, "num_features", None) or getattr(getattr(model, "fc", None), "in_features", None)
    # model_args are create_model's defaults for `hf-hub:` loading: num_classes too, so the head fits the weights
    return dict(architecture=name, num_classes=len(classes), **({"num_features": int(features)} if features else {}),
                label_names=list(classes), model_args=dict(num_classes=len(classes), **args),
                pretrained_cfg={k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()})


# ---------------------------------------------------------------------------------- model card
def _architecture(name: str, label: str | None, description: str | None) -> str:
    text = f"`{name}`" + (f" (the report's {label})" if label and label != name else "")
    if description:  # lambdalib's cfgs say "<label> (<name>): what it is"
        text += ": " + description.removeprefix(f"{label} ({name}): ").removeprefix(f"{name}: ")
    return text


def _description(name: str, hub: dict) -> str | None:
    """The model's pretrained_cfg description, else the first line of its timm entry point's docstring."""
    if hub["pretrained_cfg"].get("description"):
        return hub["pretrained_cfg"]["description"]
    try:
        doc = (timm.models.model_entrypoint(name).__doc__ or "").strip()
    except (RuntimeError, KeyError):
        return None
    return doc.splitlines()[0].strip().rstrip(".") if doc else None


def _front_matter(summary: dict, config, row: dict | None, epoch: int) -> str:
    meta: dict[str, Any] = dict(library_name="timm", license=LICENSE, pipeline_tag="image-classification",
                                tags=["image-classification", "timm", "lambdalib", "lambda-networks", "imagenette",
                                      "noisy-labels"], datasets=[HUB_DATASET], metrics=["accuracy"])
    if row is not None and all(isinstance(row[k], float) and math.isfinite(row[k]) for k in ("val_acc", "val_loss")):
        meta["model-index"] = [dict(name=summary["run_id"], results=[dict(
            task=dict(type="image-classification", name="Image Classification"),
            dataset=dict(name=f"Imagenette ({data_slug(config.data)}, validation)", type=HUB_DATASET,
                         split="validation"),
            metrics=[dict(type="accuracy", value=row["val_acc"], name=f"val accuracy (clean labels), epoch {epoch}"),
                     dict(type="loss", value=row["val_loss"], name=f"val cross-entropy (clean labels), epoch {epoch}")],
        )])]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def model_card(summary: dict, config, best: dict, history: list[dict], hub: dict) -> str:
    """README.md: YAML front matter for the hub, then what was trained, on what, how, how well, from which code."""
    name, epoch, classes = summary["model"], int(best["epoch"]), list(best["classes"])
    row = next((r for r in history if r["epoch"] == epoch), None)
    env = summary.get("environment") or {}
    world = config.world_size or env.get("world_size") or 1
    img, cfg, n = config.img_size, hub["pretrained_cfg"], len(classes)
    status = summary["status"]
    if summary.get("diverged_at"):
        status += f" at epoch {summary['diverged_at']} ({summary.get('diverged_reason', 'see summary.json')})"
    noise = f"{config.noise:.0%} of training labels flipped: "
    if config.synthetic_noise or official_noise_level(config.noise) is None:
        noise += f"seeded synthetic symmetric noise (seed {config.seed})"
    else:
        noise += f"Imagenette's official `noisy_labels_{config.noise * 100:g}` column"
    realised = summary.get("realised_noise")
    subset = f", the first {config.train_per_class} per class" if config.train_per_class else ""
    val_subset = f", the first {config.val_per_class} per class" if config.val_per_class else ""
    args = "".join(f", {k}={v!r}" for k, v in hub.get("model_args", {}).items() if k != "num_classes")

    tables = {
        "Model": [
            f"| architecture | {_architecture(name, summary.get('label'), _description(name, hub))} |",
            f"| parameters | {summary['params']:,} |" if summary.get("params") is not None else None,
            f"| GFLOPs (forward, one {img} px image) | {summary['gflops']} |" if summary.get("gflops") is not None
            else None,
            f"| input | 3 x {img} x {img}" + (" (fixed: the lambda layer's position table is sized to it)"
                                              if cfg.get("fixed_input_size") else "") + " |",
            f"| preprocessing (evaluation) | resize to {math.floor(img / cfg['crop_pct'])} ({cfg['interpolation']}), "
            f"centre-crop {img}, ImageNet mean {cfg['mean']} / std {cfg['std']} |",
            f"| classes | {n}: " + ", ".join(classes) + " |"],
        "Data": [
            f"| data | Imagenette, `{data_slug(config.data)}`: {summary.get('train_images')} training images"
            f"{subset}, {summary.get('val_images')} validation images{val_subset} |",
            f"| training labels | {noise}" + (f"; realised rate {realised:.2%}" if realised is not None else "") + " |",
            "| validation labels | clean |",
            f"| augmentation | lambdalib.data.train_transform({img}) |"],
        "Recipe": [
            f"| preset | `{config.preset}` |",
            f"| optimizer | Adam (default betas), lr {config.lr:g}, weight decay {config.weight_decay:g} |",
            f"| schedule | CosineAnnealingWarmRestarts(T_0={config.t0}, T_mult={config.t_mult}, "
            f"eta_min={config.eta_min:g}), stepped once per epoch |",
            f"| epochs | {config.epochs} ({summary.get('epochs_done')} done) |",
            "| batch | " + (f"{config.batch_size}" if world == 1 else f"{config.batch_size} per process x {world} "
                            f"processes = {config.batch_size * world}") + " |",
            "| loss | cross-entropy; gradient clipping: "
            + (f"max norm {config.grad_clip:g}" if config.grad_clip else "none") + " |",
            f"| precision | {summary.get('precision', config.amp)} |",
            f"| seed | {config.seed} |"],
        "Results (validation set, clean labels)": [
            f"| status | {status} |",
            f"| best val accuracy | {fmt.percent(summary.get('best_val_acc'), 2)} "
            f"(epoch {summary.get('best_val_acc_epoch')}) |",
            f"| best val loss | {fmt.number(summary.get('best_val_loss'), 4)} "
            f"(epoch {summary.get('best_val_loss_epoch')}) |",
            f"| best train loss | {fmt.number(summary.get('best_train_loss'), 4)} "
            f"(epoch {summary.get('best_train_loss_epoch')}, noisy labels) |",
            f"| these weights | epoch {epoch}: val loss {fmt.number(row['val_loss'], 4)}, val accuracy "
            f"{fmt.percent(row['val_acc'], 2)} |" if row is not None else f"| these weights | epoch {epoch} |",
            f"| training time | {summary['train_time_s']:.0f} s on {env.get('device', 'n/a')} |"
            if summary.get("train_time_s") is not None else None],
        "Provenance": [
            f"| run id | `{summary['run_id']}` |",
            f"| experiment id | `{summary.get('experiment_id')}` |",
            f"| git commit | `{env.get('git_commit', 'unknown')}` |",
            f"| torch / timm | {env.get('torch', 'n/a')} / {env.get('timm', 'n/a')} |"],
    }
    lines = [
        _front_matter(summary, config, row, epoch),
        f"# {summary.get('label') or name} on Imagenette, {config.noise:.0%} noisy labels",
        "",
        f"Weights of the lambdalib run `{summary['run_id']}`: the epoch with the best validation loss "
        f"(epoch {epoch} of {summary.get('epochs_done')}). lambdalib reproduces *Report and analysis of lambda "
        f"network performance on small data sets* (Li, Feng, Huang, Wei), which trains ResNet18/34 and "
        f"Lambda-ResNets (Bello, ICLR 2021) on Imagenette with noisy labels.",
        "",
    ]
    for title, rows in tables.items():  # a row that does not apply (None) is left out
        lines += [f"## {title}", "", "| | |", "|---|---|", *(row for row in rows if row is not None), ""]
    lines += [
        "## Usage", "",
        "The architecture is lambdalib's: install it from its repository (`pip install -e .` in a clone) and import it "
        "before creating the model.",
        "",
        "```python",
        "import timm",
        "import lambdalib  # registers the architecture with timm",
        "from timm.data import create_transform, resolve_data_config",
        "",
        "# from this folder",
        f'model = timm.create_model("{name}", pretrained=True, num_classes={n}{args},',
        f'                          pretrained_cfg_overlay=dict(file="model.safetensors", num_classes={n})).eval()',
        "# or from the hub, once uploaded: huggingface_hub.upload_folder(repo_id=\"<user>/<repo>\", folder_path=\".\")",
        'model = timm.create_model("hf-hub:<user>/<repo>", pretrained=True).eval()',
        "",
        "transform = create_transform(**resolve_data_config({}, model=model))",
        "logits = model(transform(image).unsqueeze(0))  # image: a PIL image",
        f"classes = {classes!r}",
        "print(classes[logits.argmax()])",
        "```", "", "## Citation", "",
        "The report reproduced: Xuan Li, Xiao Feng, Changran Huang, Xiangying Wei, *Report and analysis of lambda "
        "network performance on small data sets*, University of Southampton. Lambda layers: Irwan Bello, "
        "*LambdaNetworks: Modeling Long-Range Interactions Without Attention*, ICLR 2021. See lambdalib's "
        "CITATION.cff.",
        "",
    ]
    return "\n".join(lines)
