"""lambdalib export: a run folder -> model.safetensors + config.json + model card, which timm loads back
(from the file, from the folder, from an offline Hugging Face cache) to identical outputs."""
import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml

import lambdalib
from lambdalib import models, record, registry
from lambdalib.config import RunConfig
from lambdalib.export import LICENSE, export
from lambdalib.train import run

ROOT = Path(__file__).resolve().parents[1]
# timm's own ResNet18 (always loadable through timm's pretrained machinery) and one of the report's models
MODELS = ["resnet18", "LR18_L3(lc)"]


def pyproject_license() -> str:
    """pyproject.toml's `license = { text = "..." }` (tomllib is Python 3.11+; the package supports 3.10)."""
    found = re.search(r'^license\s*=\s*\{\s*text\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert found, "pyproject.toml names no license text"
    return found.group(1)


def tiny_config(data: Path, results: Path, **overrides) -> RunConfig:
    params = dict(model="LR18_L3(lc)", data=str(data), results=str(results), epochs=1, img_size=32,
                  batch_size=8, workers=0, preset="fast", noise=0.25)
    params.update(overrides)
    return RunConfig.from_params(**params)


@pytest.fixture(autouse=True)
def hub_offline(monkeypatch):
    """No network: huggingface_hub reads HF_HUB_OFFLINE at import, so set the constant as well."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module", params=MODELS)
def exported(request, tiny_imagenette, tmp_path_factory):
    """(run folder, export folder) of a finished tiny run; resnet18 trains 2 epochs so the best may be either."""
    results = tmp_path_factory.mktemp("export_runs")
    epochs = 2 if request.param == "resnet18" else 1
    with warnings.catch_warnings():  # timm's resnet18 on purpose: "not the report's R18" is known here
        warnings.simplefilter("ignore", getattr(models, "LookalikeWarning", UserWarning))
        run_dir = run(tiny_config(tiny_imagenette, results, model=request.param, epochs=epochs), progress=False)
    return run_dir, export(run_dir)


def reference_outputs(run_dir: Path, x: torch.Tensor) -> torch.Tensor:
    """The best.pt model, built as the trainer builds it, in eval mode."""
    best = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True)
    summary = record.load_summary(run_dir)
    model = timm.create_model(summary["model"], num_classes=len(best["classes"]), **size_args(summary))
    model.load_state_dict(best["model"])
    with torch.no_grad():
        return model.eval()(x)


def size_args(summary: dict) -> dict:
    """What rebuilds the run's model: the image size for ours, and an lc model's scope (the default 23)."""
    if summary["model"] not in registry.SPECS:
        return {}
    return {"img_size": 32, **({"scope": 23} if summary["model"].endswith("_lc") else {})}


def outputs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def probe() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_export_writes_the_three_files_with_best_pt_weights(exported):
    run_dir, out = exported
    assert out == run_dir / "export"
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    from safetensors import safe_open
    from safetensors.torch import load_file

    best = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True)["model"]
    saved = load_file(out / "model.safetensors")
    assert saved.keys() == best.keys()
    assert all(torch.equal(saved[k], best[k]) and saved[k].is_contiguous() for k in best)
    with safe_open(out / "model.safetensors", "pt") as handle:
        assert handle.metadata() == {"format": "pt"}


def test_timm_loads_the_file_to_identical_outputs(exported):
    """The issue's contract: create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=...))."""
    run_dir, out = exported
    summary, x = record.load_summary(run_dir), probe()
    expected = reference_outputs(run_dir, x)
    overlay = dict(file=str(out / "model.safetensors"))
    if summary["model"] not in registry.SPECS:  # timm's own default cfg is ImageNet's 1000 classes
        overlay["num_classes"] = 10
    model = timm.create_model(summary["model"], pretrained=True, num_classes=10, **size_args(summary),
                              pretrained_cfg_overlay=overlay)
    assert torch.equal(outputs(model, x), expected)
    # the model card's form (num_classes in the overlay too) works for every model
    model = timm.create_model(summary["model"], pretrained=True, num_classes=10, **size_args(summary),
                              pretrained_cfg_overlay=dict(file=str(out / "model.safetensors"), num_classes=10))
    assert torch.equal(outputs(model, x), expected)


def fake_hub_cache(out: Path, cache: Path, repo: str) -> None:
    """The export folder as huggingface_hub's cache holds a downloaded repo (refs/main -> snapshots/<commit>/)."""
    commit = "0" * 40
    folder = cache / ("models--" + repo.replace("/", "--"))
    shutil.copytree(out, folder / "snapshots" / commit)
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)


def test_the_folder_loads_as_a_hub_repo_offline(exported, tmp_path, monkeypatch):
    """As uploaded to the hub (read back from an offline cache): config.json carries everything else,
    architecture, classes, input size and model_args."""
    import huggingface_hub.constants

    run_dir, out = exported
    x = probe()
    expected = reference_outputs(run_dir, x)
    best = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True)
    fake_hub_cache(out, tmp_path / "hub", "lambdalib/test-export")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # the default cache
    sources = ["hf-hub:lambdalib/test-export"]
    if "local-dir" in getattr(timm.models._factory, "_MODEL_SOURCES", ()):  # timm >= 1.0.16
        sources.append(f"local-dir:{out}")
    for name in sources:
        model = timm.create_model(name, pretrained=True)
        assert torch.equal(outputs(model, x), expected), name
        assert list(model.pretrained_cfg["label_names"]) == list(best["classes"])
        assert tuple(model.pretrained_cfg["input_size"]) == (3, 32, 32)


def front_matter(card: str) -> tuple[dict, str]:
    match = re.match(r"---\n(.*?)\n---\n(.*)", card, re.S)
    assert match, "README.md must open with YAML front matter"
    return yaml.safe_load(match.group(1)), match.group(2)


def test_config_and_model_card_numbers_come_from_the_record(exported):
    run_dir, out = exported
    summary, config = record.load_summary(run_dir), record.load_config(run_dir)
    history = record.read_history(run_dir)
    best = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True)

    hub = json.loads((out / "config.json").read_text())
    assert hub["architecture"] == summary["model"] and hub["num_classes"] == 10
    assert hub["label_names"] == list(best["classes"])
    assert hub["pretrained_cfg"]["input_size"] == [3, config.img_size, config.img_size]
    assert hub["pretrained_cfg"]["num_classes"] == 10
    assert hub["model_args"] == dict(num_classes=10, **size_args(summary))
    built = timm.create_model(summary["model"], num_classes=10, **size_args(summary))
    assert hub["pretrained_cfg"]["fixed_input_size"] == built.pretrained_cfg.get("fixed_input_size", False)

    meta, body = front_matter((out / "README.md").read_text())
    assert meta["library_name"] == "timm" and meta["license"] == LICENSE == pyproject_license().lower()
    assert "frgfm/imagenette" in meta["datasets"] and "timm" in meta["tags"]
    row = history[best["epoch"] - 1]
    assert best["epoch"] == summary["best_val_loss_epoch"]
    metrics = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert metrics == {"accuracy": row["val_acc"], "loss": row["val_loss"]}
    assert metrics["loss"] == summary["best_val_loss"]
    assert meta["model-index"][0]["name"] == summary["run_id"]

    def cell(label: str) -> str:
        found = re.search(rf"^\| {re.escape(label)} \| (.*) \|$", body, re.M)
        assert found, label
        return found.group(1)

    assert cell("best val accuracy") == f"{summary['best_val_acc']:.2%} (epoch {summary['best_val_acc_epoch']})"
    assert cell("best val loss") == f"{summary['best_val_loss']:.4f} (epoch {summary['best_val_loss_epoch']})"
    assert cell("epochs") == f"{config.epochs} ({summary['epochs_done']} done)"
    assert cell("preset") == f"`{config.preset}`"
    assert f"lr {config.lr:g}" in cell("optimizer")
    assert cell("batch") == f"{config.batch_size}"  # one process
    assert f"T_0={config.t0}, T_mult={config.t_mult}" in cell("schedule")
    assert f"{config.noise:.0%}" in cell("training labels") and f"{summary['realised_noise']:.2%}" in cell(
        "training labels")
    assert cell("parameters") == f"{summary['params']:,}"
    assert cell("run id") == f"`{summary['run_id']}`"
    assert cell("git commit") == f"`{summary['environment']['git_commit']}`"
    assert cell("status") == summary["status"]
    assert f"`{summary['model']}`" in cell("architecture")
    assert "```python" in body and summary["model"] in body


def test_config_json_gives_timm_the_preprocessing_the_run_was_evaluated_with(exported, tmp_path, monkeypatch):
    """A user who preprocesses as timm's data config says (resolve_data_config + create_transform, the model
    card's usage) feeds the model exactly what lambdalib.data.val_transform fed it in evaluation: bilinear resize
    to round(img_size / 0.875), centre crop, ImageNet mean / std."""
    import huggingface_hub.constants
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    from lambdalib import data, imagenette

    run_dir, out = exported
    img = record.load_config(run_dir).img_size
    cfg = json.loads((out / "config.json").read_text())["pretrained_cfg"]
    assert cfg["interpolation"] == "bilinear" and cfg["crop_mode"] == "center" and cfg["input_size"] == [3, img, img]
    assert cfg["mean"] == list(imagenette.MEAN) and cfg["std"] == list(imagenette.STD)
    # what timm itself makes of it, read back as a hub repo
    fake_hub_cache(out, tmp_path / "hub", "lambdalib/test-preprocessing")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    resolved = resolve_data_config({}, model=timm.create_model("hf-hub:lambdalib/test-preprocessing",
                                                               pretrained=True))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (57, 71, 3), dtype=np.uint8))
    assert torch.equal(create_transform(**resolved)(image), data.val_transform(img)(image))
    card = (out / "README.md").read_text()
    assert f"| preprocessing (evaluation) | resize to {round(img / 0.875)} (bilinear)" in card


def record_copy(run_dir: Path, dest: Path, best: str | None = None, **summary_changes) -> Path:
    """A copy of a run's record files; best: 'link' (best.pt symlinked), 'garbage', or None (no best.pt)."""
    dest.mkdir()
    for name in ("config.json", "summary.json", "history.csv"):
        shutil.copy(run_dir / name, dest / name)
    if best == "link":
        (dest / "best.pt").symlink_to(run_dir / "best.pt")
    elif best == "garbage":
        (dest / "best.pt").write_bytes(b"not a checkpoint" * 10)
    if summary_changes:
        record.write_summary(dest, {**record.load_summary(dest), **summary_changes})
    return dest


def refused(kind: type, match: str, *args, **kwargs) -> None:
    with pytest.raises(kind, match=match) as info:
        export(*args, **kwargs)
    assert "\n" not in str(info.value)  # one line: the CLI prints it as is


@pytest.mark.parametrize("exported", MODELS[:1], indirect=True)
def test_refusals_are_one_clear_line(exported, tmp_path):
    run_dir, _ = exported
    refused(FileNotFoundError, "no such run folder", tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    refused(FileNotFoundError, "not a run folder", tmp_path / "empty")
    none = record_copy(run_dir, tmp_path / "none")
    config = json.loads((none / "config.json").read_text())
    (none / "config.json").write_text(json.dumps({**config, "checkpoints": "none"}))
    refused(FileNotFoundError, "no best.pt.*checkpoints='none'", none)
    refused(ValueError, "best.pt is unreadable", record_copy(run_dir, tmp_path / "garbage", best="garbage"))
    unfinished = record_copy(run_dir, tmp_path / "interrupted", best="link", status="interrupted")
    refused(ValueError, "interrupted.*allow-unfinished", unfinished)
    assert not (unfinished / "export").exists()
    out = export(unfinished, tmp_path / "elsewhere", allow_unfinished=True)
    assert (out / "model.safetensors").is_file()
    assert export(run_dir / "best.pt", tmp_path / "from_file") == tmp_path / "from_file"  # best.pt: its folder


@pytest.mark.parametrize("exported", MODELS[:1], indirect=True)
def test_a_best_pt_of_another_image_size_is_refused(exported, tmp_path):
    """A folder whose best.pt was trained at another image size than its record says (two runs mixed by hand)
    is refused, even when the model is the same and the weights would load: the export would describe the
    weights with the wrong input size."""
    run_dir, _ = exported
    mixed = record_copy(run_dir, tmp_path / "mixed", best="link")
    config = json.loads((mixed / "config.json").read_text())
    assert config["img_size"] == 32
    (mixed / "config.json").write_text(json.dumps({**config, "img_size": 64}))
    refused(ValueError, r"at 32 px.*at 64 px; this folder mixes two runs", mixed, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("exported", MODELS[:1], indirect=True)
def test_a_diverged_run_exports_its_best_weights(exported, tmp_path):
    """A diverged run is finished (record.FINISHED): its best.pt, from an epoch before the divergence, exports
    without allow_unfinished, and the card says it diverged."""
    run_dir, _ = exported
    diverged = record_copy(run_dir, tmp_path / "diverged", best="link", status="diverged", diverged_at=2,
                           diverged_reason="non-finite loss")
    out = export(diverged, tmp_path / "out")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert "| status | diverged at epoch 2 (non-finite loss) |" in (out / "README.md").read_text()


@pytest.mark.parametrize("exported", MODELS[:1], indirect=True)
def test_cli_export(exported, tmp_path, capsys):
    from lambdalib import cli

    if not hasattr(cli, "_cmd_export"):
        pytest.skip("lambdalib.cli has no `export` subcommand yet")
    run_dir, _ = exported
    assert cli.main(["export", str(run_dir), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file() and str(tmp_path / "out") in capsys.readouterr().out
    assert cli.main(["export", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.count("\n") == 1  # one line, no traceback
    mine = tmp_path / "mine"  # a folder of the user's: its README.md is never overwritten (#24)
    mine.mkdir()
    (mine / "README.md").write_text("my notes\n")
    assert cli.main(["export", str(run_dir), "--out", str(mine)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did not write" in err and (mine / "README.md").read_text() == "my notes\n"
    assert sorted(p.name for p in mine.iterdir()) == ["README.md"]
    assert cli.main(["export", str(run_dir), "--out", str(tmp_path / "out")]) == 0  # an earlier export: rewritten


def test_license_and_citation_files():
    assert pyproject_license() == "MIT"
    licence = (ROOT / "LICENSE").read_text()
    assert licence.startswith("MIT License") and "the lambdalib authors" in licence
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software" and cff["title"] == "lambdalib"
    assert {"message", "authors", "title"} <= cff.keys() and cff["license"] == "MIT"
    assert cff["version"] == lambdalib.__version__
    titles = [ref["title"] for ref in cff["references"]]
    assert any("lambda network performance on small data sets" in t for t in titles)
    assert "LambdaNetworks: Modeling Long-Range Interactions Without Attention" in titles
    bello = next(r for r in cff["references"] if r["title"].startswith("LambdaNetworks"))
    assert bello["year"] == 2021 and bello["authors"] == [{"family-names": "Bello", "given-names": "Irwan"}]
