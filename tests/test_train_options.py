"""Training options beyond the defaults: experiment trackers and torch.compile."""
import os

import pytest
import torch

from lambdalib import device, record
from lambdalib.config import RunConfig
from lambdalib.record import read_history
from lambdalib.train import run


def tiny(data, results, **overrides) -> RunConfig:
    params = dict(model="R18", data=str(data), results=str(results), epochs=2, img_size=32, batch_size=8,
                  workers=0, preset="fast", noise=0.25)
    params.update(overrides)
    return RunConfig.from_params(**params)


def test_tensorboard_mirrors_every_epoch_of_the_record(tiny_imagenette, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = run(tiny(tiny_imagenette, tmp_path, logger="tensorboard"), progress=False)
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    history = read_history(run_dir)
    for column, tag in (("train_loss", "loss/train"), ("val_acc", "accuracy/val"), ("lr", "optim/lr")):
        logged = [(e.step, e.value) for e in events.Scalars(tag)]
        assert logged == [(r["epoch"], pytest.approx(r[column], rel=1e-6)) for r in history]
    assert "config/text_summary" in events.Tags()["tensors"]


def test_wandb_offline_gets_every_epoch(tiny_imagenette, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logged = []
    real_init = wandb.init

    def spying_init(*args, **kwargs):
        wandb_run = real_init(*args, **kwargs)
        real_log = wandb_run.log
        wandb_run.log = lambda data, step=None: (logged.append((step, data)), real_log(data, step=step))[1]
        return wandb_run

    monkeypatch.setattr(wandb, "init", spying_init)
    run_dir = run(tiny(tiny_imagenette, tmp_path, logger="wandb"), progress=False)
    history = read_history(run_dir)
    assert [step for step, _ in logged] == [1, 2]
    assert [d["loss/val"] for _, d in logged] == pytest.approx([r["val_loss"] for r in history])
    assert list(run_dir.glob("wandb/offline-run-*"))  # synced later with `wandb sync`


def test_compile_option_trains_through_torch_compile_and_says_so(tiny_imagenette, tmp_path, monkeypatch):
    compiled = []
    real = torch.compile

    def eager_compile(model, **kwargs):  # the plumbing, without minutes of Inductor codegen on 2 cores
        compiled.append(model)
        return real(model, backend="eager", **kwargs)

    monkeypatch.setattr(torch, "compile", eager_compile)
    # batches of 16 over 40 images: the last batch (8) is smaller, so a second shape reaches the compiled model
    plain = read_history(run(tiny(tiny_imagenette, tmp_path / "plain", batch_size=16), progress=False))
    run_dir = run(tiny(tiny_imagenette, tmp_path / "compiled", batch_size=16, compile=True), progress=False)
    assert len(compiled) == 1 and record.load_summary(run_dir)["compiled"] is True
    history = read_history(run_dir)
    for a, b in zip(plain, history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)


def test_compile_is_refused_politely_below_compute_capability_7(monkeypatch):
    config = RunConfig.from_params(compile=True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (6, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla P100-PCIE-16GB")
    with pytest.warns(UserWarning, match="P100.*training without compiling"):
        assert device.compiles(config.compile, torch.device("cuda", 0)) is False
    assert device.compiles(config.compile, torch.device("cpu")) is True


def test_reproduce_runs_jobs_concurrently_in_their_own_processes(tiny_imagenette, tmp_path):
    from lambdalib.sweep import Grid, reproduce

    params = dict(data=str(tiny_imagenette), results=str(tmp_path), epochs=1, img_size=32, batch_size=8,
                  workers=0, preset="fast")
    grid = Grid(models=["R18", "LR18_L3(lc)"], noise=[0.0], params=params)
    counts = reproduce(grid, inline=True, jobs=2, progress=False, report=False)
    assert (counts["ran"], counts["failed"]) == (2, 0), counts["failures"]
    pids = {record.load_summary(c.run_dir())["environment"]["pid"] for c in grid.configs()}
    assert len(pids) == 2 and os.getpid() not in pids
    assert reproduce(grid, inline=True, jobs=2, progress=False, report=False)["skipped"] == 2
