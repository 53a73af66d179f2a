import copy
import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lambdalib
from lambdalib.config import RunConfig
from lambdalib.record import FINISHED, HISTORY_COLUMNS, TIMING_COLUMNS, load_summary, read_history
from lambdalib.train import run


def tiny_config(data: Path, results: Path, **overrides) -> RunConfig:
    params = dict(model="LR18_L3(lc)", data=str(data), results=str(results), epochs=3, img_size=32,
                  batch_size=8, workers=0, preset="fast", noise=0.25)
    params.update(overrides)
    return RunConfig.from_params(**params)


def without_timings(history):
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in history]


def test_same_seed_same_history_and_complete_record(tiny_imagenette, tmp_path):
    a = run(tiny_config(tiny_imagenette, tmp_path / "a"), progress=False)
    b = run(tiny_config(tiny_imagenette, tmp_path / "b"), progress=False)
    history_a, history_b = read_history(a), read_history(b)
    assert len(history_a) == 3
    assert without_timings(history_a) == without_timings(history_b)
    assert list(history_a[0]) == HISTORY_COLUMNS
    summary = json.loads((a / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["diverged_at"] is None
    assert summary["best_val_loss"] == min(r["val_loss"] for r in history_a)
    assert history_a[summary["best_val_loss_epoch"] - 1]["val_loss"] == summary["best_val_loss"]
    assert summary["best_train_loss"] == min(r["train_loss"] for r in history_a)
    assert summary["best_val_acc"] == max(r["val_acc"] for r in history_a)
    assert summary["train_time_s"] == pytest.approx(sum(r["epoch_time_s"] for r in history_a))
    model = lambdalib.create("LR18_L3(lc)", num_classes=10, img_size=32)
    assert summary["params"] == sum(p.numel() for p in model.parameters())
    assert summary["label"] == "LR18_L3(lc)" and summary["noise"] == 0.25
    assert summary["realised_noise"] == pytest.approx(0.25)  # one of four labels flipped per class
    for key in ("torch", "device", "git_commit", "world_size"):
        assert key in summary["environment"]
    assert RunConfig.load(a / "config.json") == tiny_config(tiny_imagenette, tmp_path / "a").resolved()
    # the learning rate follows the restarts schedule, stepped per epoch
    assert history_a[0]["lr"] == 1e-3 and history_a[1]["lr"] < history_a[0]["lr"]
    assert all(r["finite"] and r["grad_norm_max"] >= r["grad_norm_mean"] > 0 for r in history_a)
    assert not list(a.glob("*.tmp"))
    assert (a / "best.pt").exists() and not (a / "last.pt").exists()  # a complete run never resumes
    none = run(tiny_config(tiny_imagenette, tmp_path / "c", epochs=1, checkpoints="none"), progress=False)
    assert not list(none.glob("*.pt"))


def test_interrupted_then_resumed_equals_uninterrupted(tiny_imagenette, tmp_path):
    full = read_history(run(tiny_config(tiny_imagenette, tmp_path / "full", epochs=4), progress=False))
    config = tiny_config(tiny_imagenette, tmp_path / "cut", epochs=4)
    with pytest.raises(KeyboardInterrupt):
        run(config, progress=False, stop_after_epoch=2)
    summary = json.loads((config.run_dir() / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["epochs_done"] == 2
    resumed = read_history(run(config, progress=False))
    assert without_timings(resumed) == without_timings(full)


def test_finished_run_is_not_rerun_and_other_config_is_refused(tiny_imagenette, tmp_path):
    config = tiny_config(tiny_imagenette, tmp_path, epochs=1)
    run_dir = run(config, progress=False)
    stamp = (run_dir / "history.csv").stat().st_mtime_ns
    run(config, progress=False)
    assert (run_dir / "history.csv").stat().st_mtime_ns == stamp
    clash = tiny_config(tiny_imagenette, tmp_path, epochs=1, lr=0.5, run_name=run_dir.name)
    with pytest.raises(ValueError, match="another config.*lr"):
        run(clash, progress=False)


def test_divergence_is_detected_and_last_good_checkpoint_kept(tiny_imagenette, tmp_path):
    config = tiny_config(tiny_imagenette, tmp_path, model="R18", lr=1e4, epochs=4)
    run_dir = run(config, progress=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "diverged"
    n = summary["diverged_at"]
    history = read_history(run_dir)
    limit = config.diverge_factor * math.log(10)
    assert len(history) == n
    assert not history[-1]["finite"] or history[-1]["train_loss"] > limit
    assert summary["diverged_reason"]
    # lr 1e4 blows up in epoch 1, before any checkpoint (a later epoch's: test_nan_in_a_later_epoch_keeps_...)
    assert n == 1 and not (run_dir / "last.pt").exists()
    assert run(config, progress=False) == run_dir  # a diverged run is finished, not retried


def test_a_running_statistics_spike_does_not_end_the_run(tiny_imagenette, tmp_path, monkeypatch):
    """An epoch-2 val loss 1000x the first with the batch-statistics loss normal (BatchNorm's running statistics,
    not the weights) is recorded and the run goes on; the same spike on batch statistics too ends it there."""
    from lambdalib import train

    real = train.evaluate

    def spiking(on_batch_stats_too: bool):
        epoch = 0  # counted by the eval-mode pass, which comes first each epoch

        def evaluate(model, loader, *args, batch_stats=False, **kwargs):
            nonlocal epoch
            epoch += not batch_stats
            loss, acc = real(model, loader, *args, batch_stats=batch_stats, **kwargs)
            return (loss * 1000 if epoch == 2 and (on_batch_stats_too or not batch_stats) else loss), acc
        return evaluate

    monkeypatch.setattr(train, "evaluate", spiking(False))
    went_on = run(tiny_config(tiny_imagenette, tmp_path / "a", model="R18"), progress=False)
    summary, history = json.loads((went_on / "summary.json").read_text()), read_history(went_on)
    assert (summary["status"], len(history)) == ("complete", 3)
    assert history[1]["val_loss"] > 100 * history[0]["val_loss"] and history[1]["val_loss_batch_stats"] < 10
    monkeypatch.setattr(train, "evaluate", spiking(True))
    ended = run(tiny_config(tiny_imagenette, tmp_path / "b", model="R18"), progress=False)
    summary = json.loads((ended / "summary.json").read_text())
    assert (summary["status"], summary["diverged_at"]) == ("diverged", 2)
    assert "on batch statistics" in summary["diverged_reason"]


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(tiny_imagenette, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", "29517", "-m", "lambdalib.cli", "train",
           "--model", "R18", "--data", str(tiny_imagenette), "--results", str(tmp_path), "--epochs", "2",
           "--img-size", "32", "--batch-size", "8", "--workers", "0", "--preset", "fast", "--no-progress",
           "--checkpoints", "best+last"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["status"] in FINISHED and summary["environment"]["world_size"] == 2
    history = read_history(runs[0])
    assert len(history) == 2
    # the recorded val loss covers both ranks' shards, with rank 0's weights and BN statistics
    from lambdalib import data
    from lambdalib.train import evaluate

    model = lambdalib.create("R18", num_classes=10, img_size=32)
    model.load_state_dict(torch.load(runs[0] / "last.pt", weights_only=True)["model"])
    val = data.NoisyImagenette(tiny_imagenette, "val", transform=data.val_transform(32))
    loader = data.make_loader(val, batch_size=8, shuffle=False, seed=0, workers=0)
    loss, acc = evaluate(model, loader, torch.device("cpu"))
    assert loss == pytest.approx(history[-1]["val_loss"], rel=1e-4)
    assert acc == pytest.approx(history[-1]["val_acc"])


def test_divergence_rule():
    from lambdalib.train import divergence

    ok = dict(finite=True, train_loss=2.2, val_loss=2.3)
    assert divergence(ok, [], 10, 10) == ""
    assert "non-finite" in divergence({**ok, "finite": False}, [], 10, 10)
    assert "train loss" in divergence({**ok, "train_loss": 4.8e10}, [], 10, 10)
    # the report's LR34_L3(lc)(25%): val 71622.614 after a start near ln 10 counts (no batch-statistics loss to ask)
    assert "val loss" in divergence({**ok, "val_loss": 71622.614}, [ok], 10, 10)
    assert divergence({**ok, "val_loss": 3.815}, [ok], 10, 10) == ""
    # a first-epoch val loss of 1780 (BatchNorm running statistics after a few steps) is the start, not a blow-up
    early = {**ok, "val_loss": 1780.0}
    assert divergence(early, [], 10, 10) == "" and divergence({**ok, "val_loss": 40.0}, [early], 10, 10) == ""
    # the start is the first epoch's, not the last one's: a climb past 10x it diverges however gradual
    climbing = [{**ok, "val_loss": 2.5}, {**ok, "val_loss": 20.0}]
    assert "its start 2.5" in divergence({**ok, "val_loss": 30.0}, climbing, 10, 10)
    # a spike of BatchNorm's running statistics alone (the same weights on batch statistics stay low) goes on;
    # one the batch statistics share, or one without that diagnostic, does not
    spike = {**ok, "val_loss": 623.1}
    assert divergence({**spike, "val_loss_batch_stats": 1.9}, climbing, 10, 10) == ""
    assert "batch statistics 40" in divergence({**spike, "val_loss_batch_stats": 40.0}, climbing, 10, 10)
    assert "val loss" in divergence({**spike, "val_loss_batch_stats": math.nan}, climbing, 10, 10)


COMMITTED_RUNS = sorted((Path(__file__).resolve().parents[1] / "results" / "runs").glob("*/summary.json"))


@pytest.mark.skipif(not COMMITTED_RUNS, reason="no committed run records")
def test_every_committed_stop_is_the_current_rules():
    """Each committed record ends where today's divergence rule ends it: a complete run has no epoch the rule
    stops, a diverged one stops at its diverged_at. A rule change that disagrees must rerun those runs (or bump
    PIPELINE), else the records are not what the code computes."""
    from lambdalib.train import divergence

    for path in COMMITTED_RUNS:
        summary, history = load_summary(path.parent), read_history(path.parent)
        factor = RunConfig.load(path.parent / "config.json").diverge_factor
        stops = [row["epoch"] for k, row in enumerate(history) if divergence(row, history[:k], factor, 10)]
        assert stops[:1] == ([summary["diverged_at"]] if summary["diverged_at"] else []), path.parent.name


def test_nan_in_a_later_epoch_keeps_the_last_good_checkpoint(tiny_imagenette, tmp_path, monkeypatch):
    from lambdalib import train

    real, calls = train._train_one_epoch, []

    def nan_on_second_epoch(*args, **kwargs):
        calls.append(1)
        stats = real(*args, **kwargs)
        return {**stats, "train_loss": math.nan, "finite": False} if len(calls) == 2 else stats

    monkeypatch.setattr(train, "_train_one_epoch", nan_on_second_epoch)
    run_dir = run(tiny_config(tiny_imagenette, tmp_path, model="R18", epochs=3), progress=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["status"], summary["diverged_at"], summary["epochs_done"]) == ("diverged", 2, 2)
    assert len(calls) == 2  # stopped at once, epoch 3 never ran
    history = read_history(run_dir)
    assert history[0]["finite"] and not history[1]["finite"]
    assert len(torch.load(run_dir / "last.pt", weights_only=True)["history"]) == 1
    assert torch.load(run_dir / "best.pt", weights_only=True)["epoch"] == 1


def test_best_pt_holds_the_epoch_of_the_best_val_loss(tiny_imagenette, tmp_path, monkeypatch):
    from lambdalib import train

    real, scripted = train._run_epoch, {1: 2.0, 2: 1.0, 3: 1.5}  # the best is epoch 2, not the last

    def scripted_val_loss(ctx, data, trainee, epoch, bar):
        return {**real(ctx, data, trainee, epoch, bar), "val_loss": scripted[epoch]}

    monkeypatch.setattr(train, "_run_epoch", scripted_val_loss)
    run_dir = run(tiny_config(tiny_imagenette, tmp_path, model="R18", epochs=3), progress=False)
    assert load_summary(run_dir)["best_val_loss_epoch"] == 2
    assert torch.load(run_dir / "best.pt", weights_only=True)["epoch"] == 2


def test_an_fp16_run_resumed_computes_what_an_uninterrupted_one_does(tiny_imagenette, tmp_path):
    """The grad scaler's state (its scale, lowered by overflows) is part of last.pt; a fresh one would differ."""
    full = read_history(run(tiny_config(tiny_imagenette, tmp_path / "full", model="R18", amp="fp16", epochs=2),
                            progress=False))
    assert full[0]["loss_scale"] < 65536.0  # torch's start: overflows moved it in epoch 1, so restoring it matters
    config = tiny_config(tiny_imagenette, tmp_path / "cut", model="R18", amp="fp16", epochs=2)
    with pytest.raises(KeyboardInterrupt):
        run(config, progress=False, stop_after_epoch=1)
    assert without_timings(read_history(run(config, progress=False))) == without_timings(full)


def test_a_timm_model_name_trains_too(tiny_imagenette, tmp_path):
    run_dir = run(tiny_config(tiny_imagenette, tmp_path, model="resnet10t", epochs=1), progress=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["label"] == "resnet10t"


def test_one_trainer_per_run_folder(tiny_imagenette, tmp_path):
    from lambdalib.record import RunBusyError

    config = tiny_config(tiny_imagenette, tmp_path, model="R18", epochs=1)
    lock = config.run_dir() / ".lock"
    lock.parent.mkdir(parents=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(json.dumps({"pid": other.pid, "host": platform.node()}))
        with pytest.raises(RunBusyError, match=f"process {other.pid}"):
            run(config, progress=False)
    finally:
        other.kill()
        other.wait()
    # the owner is gone: its lock is stale and taken over; a finished run leaves no lock behind
    assert read_history(run(config, progress=False)) and not lock.exists()


def test_batch_statistics_loss_ignores_running_averages_and_leaves_them_as_they_were():
    from lambdalib.train import batch_statistics, evaluate

    torch.manual_seed(0)
    model = lambdalib.create("R18", num_classes=10, img_size=32).eval()
    images, labels = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    loader = [(images[:8], labels[:8]), (images[8:], labels[8:])]
    with torch.no_grad():  # running statistics far off what the weights produce: an eval-mode loss spike
        model.bn1.running_var.fill_(1e-4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    eval_loss = evaluate(model, loader, torch.device("cpu"))[0]
    batch_loss = evaluate(model, loader, torch.device("cpu"), batch_stats=True)[0]
    # what the same weights give when every batch is normalised by itself (train-mode BN on a copy)
    reference = copy.deepcopy(model).train()
    with torch.no_grad():
        expected = sum(float(torch.nn.functional.cross_entropy(reference(x), y, reduction="sum"))
                       for x, y in loader) / 16
    assert batch_loss == pytest.approx(expected, rel=1e-5) and eval_loss > 10 * batch_loss
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before) and not model.training
    with batch_statistics(model):
        assert all(m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not any(m.training for m in model.modules())


def test_every_epoch_records_the_batch_statistics_val_loss(tiny_imagenette, tmp_path):
    history = read_history(run(tiny_config(tiny_imagenette, tmp_path, epochs=1), progress=False))
    assert math.isfinite(history[0]["val_loss_batch_stats"]) and history[0]["val_loss_batch_stats"] > 0


def test_bf16_on_a_cpu_without_native_bf16_is_called_slow(monkeypatch):
    from lambdalib.device import precision_note

    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert "without native bf16" in precision_note("bf16", cpu)
    assert precision_note("off", cpu) is None and precision_note("fp16", cpu) is None
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert precision_note("bf16", cpu) is None


# ------------------------------------------------------------------------------ host syncs (#23)
def count_syncs_per_epoch(data, results, monkeypatch, **overrides) -> list[tuple[int, int]]:
    """(training steps, host syncs) of each epoch's training pass, the data path included."""
    from lambdalib import train
    from lambdalib.device import HostSyncs

    real, seen = train._train_one_epoch, []

    def counted(ctx, model, loader, *args):
        steps = []

        def stepping():
            for batch in loader:
                steps.append(1)
                yield batch

        with HostSyncs() as syncs:
            stats = real(ctx, model, stepping(), *args)
        seen.append((len(steps), syncs.count))
        return stats

    monkeypatch.setattr(train, "_train_one_epoch", counted)
    run(tiny_config(data, results, model="R18", epochs=1, augment_on="device", **overrides), progress=False)
    return seen


def test_a_training_step_makes_the_host_wait_for_nothing(tiny_imagenette, tmp_path, monkeypatch):
    """aten._local_scalar_dense (behind .item(), bool(), float() of a tensor) is where a GPU run waits for
    the device. Counted on the CPU around a whole training pass: the count must not grow with the steps
    (the epoch's statistics are read once at its end; non-finite losses are judged on the device)."""
    few = count_syncs_per_epoch(tiny_imagenette, tmp_path / "few", monkeypatch, batch_size=8, train_per_class=2)
    many = count_syncs_per_epoch(tiny_imagenette, tmp_path / "many", monkeypatch, batch_size=4, train_per_class=4)
    (few_steps, few_syncs), (many_steps, many_syncs) = few[0], many[0]
    assert (few_steps, many_steps) == (3, 10)
    assert many_syncs == few_syncs <= 8  # per epoch, not per step


def test_evaluation_reads_the_device_once_a_pass():
    from lambdalib.device import HostSyncs
    from lambdalib.train import evaluate

    model = lambdalib.create("R18", num_classes=10, img_size=32)
    batches = [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))) for _ in range(6)]
    counts = []
    for loader in (batches[:2], batches):
        with HostSyncs() as syncs:
            evaluate(model, loader, torch.device("cpu"))
        counts.append(syncs.count)
    assert counts[0] == counts[1] <= 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_a_training_pass_never_synchronises(tiny_imagenette, tmp_path, monkeypatch):
    """torch.cuda.set_sync_debug_mode('error') raises at any synchronising CUDA call during the steps."""
    from lambdalib import train

    real = train._train_one_epoch

    def strict(ctx, model, loader, *args):
        def batches():
            torch.cuda.set_sync_debug_mode("error")
            try:
                yield from loader
            finally:
                torch.cuda.set_sync_debug_mode("default")

        return real(ctx, model, batches(), *args)

    monkeypatch.setattr(train, "_train_one_epoch", strict)
    for amp in ("bf16", "fp16"):
        config = tiny_config(tiny_imagenette, tmp_path / amp, model="R18", epochs=1, device="cuda", amp=amp,
                             augment_on="device")
        assert read_history(run(config, progress=False))[0]["finite"]


# ------------------------------------------------------------------------------ batch statistics (#25)
def test_batch_statistics_val_loss_is_the_train_mode_loss_on_class_mixed_batches(tmp_path):
    """val_loss_batch_stats = the train-mode-BatchNorm loss of the recorded weights on the fixed class-mixed
    subset (data.batch_stats_order), computed here independently; batches in the CSV's order (one class each
    here) would give another, higher number."""
    from conftest import make_tiny_imagenette

    from lambdalib import data as D

    root = make_tiny_imagenette(tmp_path / "data", train_per_class=8, val_per_class=8)
    config = tiny_config(root, tmp_path / "results", model="R18", epochs=3, checkpoints="best+last", noise=0.0)
    history = read_history(run(config, progress=False))
    model = lambdalib.create("R18", num_classes=10, img_size=32)
    model.load_state_dict(torch.load(config.run_dir() / "last.pt", weights_only=True)["model"])
    model.train()
    val = D.NoisyImagenette(root, "val", transform=D.val_transform(32))
    order = D.batch_stats_order(len(val), 8)
    assert len(order) == 80 and sorted(order) == list(range(80))

    def train_mode_loss(indices):
        total = 0.0
        with torch.no_grad():
            for start in range(0, len(indices), 8):
                batch = [val[i] for i in indices[start:start + 8]]
                x, y = torch.stack([b[0] for b in batch]), torch.tensor([b[1] for b in batch])
                total += float(torch.nn.functional.cross_entropy(model(x), y, reduction="sum"))
        return total / len(indices)

    mixed = train_mode_loss(order)
    assert history[-1]["val_loss_batch_stats"] == pytest.approx(mixed, rel=1e-4)
    assert train_mode_loss(list(range(80))) > mixed + 0.1  # one class a batch: BatchNorm removes the signal


# ------------------------------------------------------------------------------ a batch of one (#24)
@pytest.mark.parametrize("loader", ["cached", "workers"])
def test_a_last_training_batch_of_one_image_is_left_out(tiny_imagenette, tmp_path, loader):
    # 40 training images at batch 13: 13 + 13 + 13 + 1
    run_dir = run(tiny_config(tiny_imagenette, tmp_path, model="R18", epochs=1, batch_size=13, loader=loader),
                  progress=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and read_history(run_dir)[0]["finite"]


def test_batch_size_one_is_refused_in_one_line(tiny_imagenette, tmp_path, capsys):
    from lambdalib.cli import main

    assert main(["train", "--model", "R18", "--data", str(tiny_imagenette), "--results", str(tmp_path),
                 "--epochs", "1", "--img-size", "32", "--batch-size", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "batch_size=1" in err and "--batch-size 2" in err
    assert not (tmp_path / "runs").exists()
