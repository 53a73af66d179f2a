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


# ------------------------------------------------------------------------------ the GPU (#23)
def fake_gpu(monkeypatch, capability, name, arch=("sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120")):
    """torch.cuda as it answers on a machine with this GPU and a torch built for `arch` (no kernel runs)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(arch))


def test_the_arch_list_decides_which_gpus_this_torch_runs_on():
    built = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]  # torch 2.14.1+cu130's list
    assert device.arch_supported((7, 5), built) and device.arch_supported((8, 9), built)  # sm_86 runs on 8.9
    assert not device.arch_supported((6, 0), built) and not device.arch_supported((7, 0), built)
    assert device.arch_supported((6, 0), ["sm_50", "sm_60", "sm_70"]) and device.arch_supported((12, 0), ["sm_120a"])
    assert not device.arch_supported((9, 0), ["sm_80"]) and device.arch_supported((9, 0), ["sm_80", "compute_80"])
    assert device.arch_supported((6, 0), [])  # not known: not refused


def test_a_gpu_this_torch_has_no_kernels_for_falls_back_to_the_cpu_naming_the_install(tiny_imagenette, tmp_path,
                                                                                         monkeypatch):
    """Kaggle's P100 under a build without sm_60: torch.cuda.is_available() is True and the first kernel
    would fail with 'no kernel image is available'. device='auto' trains on the CPU (in fp32: amp 'auto'
    follows the device) and says which build to install; device='cuda' is refused with the same words."""
    fake_gpu(monkeypatch, (6, 0), "Tesla P100-PCIE-16GB")
    with pytest.warns(UserWarning) as caught:
        assert device.pick_device("auto") == torch.device("cpu")
    message = str(caught[0].message)
    assert "Tesla P100-PCIE-16GB (compute capability 6.0)" in message and "sm_60" in message
    assert "pip install torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cu126" \
        in message and "whose arch list includes sm_60" in message
    with pytest.raises(ValueError, match="device='cuda': Tesla P100.*cu126"):
        device.pick_device("cuda")
    real_pick = device.pick_device

    def on_the_p100(*args, **kwargs):  # the trainer asks for its device; the rest of this box has no driver
        with monkeypatch.context() as there:
            there.setattr(torch.cuda, "is_available", lambda: True)
            return real_pick(*args, **kwargs)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device, "pick_device", on_the_p100)
    with pytest.warns(UserWarning, match="no kernels in this torch"):
        run_dir = run(tiny(tiny_imagenette, tmp_path, epochs=1), progress=False)
    monkeypatch.setattr(device, "pick_device", real_pick)
    summary = record.load_summary(run_dir)
    assert summary["status"] == "complete" and summary["precision"] == "fp32"
    assert summary["environment"]["device"].startswith("CPU")
    fake_gpu(monkeypatch, (6, 0), "Tesla P100-PCIE-16GB", arch=("sm_60", "sm_70", "sm_75"))
    assert device.pick_device("auto") == torch.device("cuda", 0)


def test_bf16_on_a_gpu_without_native_bf16_is_called_slow(monkeypatch):
    fake_gpu(monkeypatch, (7, 5), "Tesla T4")
    cuda = torch.device("cuda", 0)
    assert "Tesla T4 (compute capability 7.5, no native bf16): emulated" in device.precision_note("bf16", cuda)
    assert device.precision_note("fp16", cuda) is None
    fake_gpu(monkeypatch, (8, 0), "NVIDIA A100-SXM4-40GB")
    assert device.precision_note("bf16", cuda) is None


class PutsInForward(torch.nn.Module):
    """A model whose forward runs an op without a deterministic implementation on the CPU (put_)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        x.new_zeros(4).put_(torch.tensor([1, 1]), torch.ones(2, dtype=x.dtype))
        return self.inner(x)


def test_deterministic_runs_name_the_ops_that_have_no_deterministic_implementation(tiny_imagenette, tmp_path,
                                                                                   monkeypatch):
    """deterministic=True keeps warn_only (an op without a deterministic kernel still runs), so the record
    says which ran: bit-repeatable exactly when nondeterministic_ops is empty."""
    from lambdalib import models

    plain = run(tiny(tiny_imagenette, tmp_path / "plain", epochs=1, deterministic=True), progress=False)
    assert record.load_summary(plain)["nondeterministic_ops"] == [] and torch.are_deterministic_algorithms_enabled()
    real = models.create
    monkeypatch.setattr(models, "create", lambda *a, **k: PutsInForward(real(*a, **k)))
    put = run(tiny(tiny_imagenette, tmp_path / "put", epochs=2, deterministic=True), progress=False)
    assert record.load_summary(put)["nondeterministic_ops"] == ["put_"]
    run(tiny(tiny_imagenette, tmp_path / "off", epochs=1), progress=False)
    assert not torch.are_deterministic_algorithms_enabled()  # the next run in this process is not held to it


def test_the_device_data_path_trains_and_is_recorded(tiny_imagenette, tmp_path):
    host = read_history(run(tiny(tiny_imagenette, tmp_path / "host", augment_on="host"), progress=False))
    run_dir = run(tiny(tiny_imagenette, tmp_path / "device", augment_on="device"), progress=False)
    summary, history = record.load_summary(run_dir), read_history(run_dir)
    assert summary["status"] == "complete" and summary["augment_on"] == "device" and summary["loader"] == "cached"
    assert all(r["finite"] for r in history) and history[0]["val_loss"] != host[0]["val_loss"]  # other crops
    with pytest.raises(ValueError, match="augment_on='device' works on the decoded-image cache"):
        run(tiny(tiny_imagenette, tmp_path / "no", augment_on="device", loader="workers"), progress=False)


def test_the_workers_loader_trains_on_the_first_images_of_each_clean_class(tiny_imagenette, tmp_path, monkeypatch):
    """train_per_class picks the first N images of each CLEAN class on the JPEG loader too (as on the cached
    one): a noisy-label run trains on the same images as the clean run, only their labels differ."""
    from lambdalib import data as data_lib
    from lambdalib import train

    prepared, real = [], train._prepare_data
    monkeypatch.setattr(train, "_prepare_data", lambda ctx: prepared.append(real(ctx)) or prepared[-1])
    run_dir = run(tiny(tiny_imagenette, tmp_path, loader="workers", train_per_class=2, epochs=1), progress=False)
    (data,) = prepared
    assert data.cached is None and record.load_summary(run_dir)["loader"] == "workers"
    train_set = data.train.dataset
    clean = data_lib.first_per_class(train_set.clean_targets, 2)
    assert list(data.train.indices) == clean and len(clean) == 20
    # image 0 of each class has a flipped label at 25 %: half the chosen ones, not the 9 in 20 of the noisy pick
    summary = record.load_summary(run_dir)
    assert summary["train_images"] == 20 and summary["realised_noise"] == pytest.approx(0.5)
