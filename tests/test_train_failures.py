"""What a user sees when a run meets a bad input or a bad moment: one clear message, nothing lost."""
import errno
import math
import os

import pytest
import torch
from torch import nn

from lambdalib import device, files, record, train
from lambdalib.cli import main
from lambdalib.config import RunConfig
from lambdalib.record import read_history
from lambdalib.sweep import Grid, is_finished
from lambdalib.train import evaluate, existing_record, run


def tiny(data, results, **overrides) -> RunConfig:
    params = dict(model="R18", data=str(data), results=str(results), epochs=3, img_size=32, batch_size=8,
                  workers=0, preset="fast", noise=0.25)
    params.update(overrides)
    return RunConfig.from_params(**params)


def checkpoint_epochs(run_dir) -> int:
    return len(torch.load(run_dir / "last.pt", weights_only=True)["history"])


# ------------------------------------------------------------------------------ identity in use
def test_resume_with_another_world_size_or_precision_is_refused_with_what_to_do(tiny_imagenette, tmp_path):
    config = tiny(tiny_imagenette, tmp_path, epochs=1, run_name="mine")
    run(config, progress=False)
    with pytest.raises(ValueError, match=r"world_size: 1 -> 2.*nproc_per_node 1"):
        existing_record(RunConfig.from_params(**{**config.to_dict(), "world_size": 2}))
    with pytest.raises(ValueError, match=r"amp: 'off' -> 'fp16'.*amp='off'"):
        run(RunConfig.from_params(**{**config.to_dict(), "amp": "fp16"}), progress=False)


def test_sweep_never_skips_a_finished_run_of_another_batch_size(tiny_imagenette, tmp_path):
    done = tiny(tiny_imagenette, tmp_path, epochs=1)
    run(done, progress=False)
    grid = Grid(models=["R18"], noise=[0.25], params={k: v for k, v in done.to_dict().items()
                                                       if k not in ("model", "noise", "seed", "batch_size")})
    same, bigger = (Grid(models=grid.models, noise=grid.noise, params={**grid.params, "batch_size": b}).configs()[0]
                    for b in (8, 16))
    assert is_finished(same) and not is_finished(bigger)


# ------------------------------------------------------------------------------ mixed precision
class Huge(nn.Module):
    """Logits around 1e5: beyond fp16's 65504, well inside fp32."""
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 10)
        with torch.no_grad():
            self.fc.weight.fill_(0.0)
            self.fc.weight[0] = 4e4
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(x.mean((2, 3)))


def test_fp16_evaluation_of_activations_beyond_fp16_range_is_not_a_divergence():
    images, labels = torch.ones(6, 3, 8, 8), torch.tensor([0, 0, 0, 1, 1, 1])
    loader = [(images[:3], labels[:3]), (images[3:], labels[3:])]
    model = Huge()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        assert not torch.isfinite(model(images)).all()  # what plain fp16 evaluation would score
    fp32 = evaluate(model, loader, torch.device("cpu"))
    fp16 = evaluate(model, loader, torch.device("cpu"), amp_dtype=torch.float16)
    assert math.isfinite(fp16[0]) and fp16 == pytest.approx(fp32)


@pytest.mark.parametrize("amp,scaled", [("fp16", True), ("bf16", False)])
def test_cpu_mixed_precision_is_honoured_and_recorded(tiny_imagenette, tmp_path, amp, scaled):
    run_dir = run(tiny(tiny_imagenette, tmp_path, epochs=1, amp=amp), progress=False)
    history = read_history(run_dir)
    summary = record.load_summary(run_dir)
    assert summary["status"] == "complete" and summary["precision"] == amp == history[0]["precision"]
    assert all(r["skipped_steps"] >= 0 for r in history) and summary["skipped_steps"] == sum(
        r["skipped_steps"] for r in history)
    assert (history[-1]["loss_scale"] > 1) == scaled


# ------------------------------------------------------------------------------ bad moments
def test_ctrl_c_while_last_pt_is_written_never_leaves_a_record_ahead_of_it(tiny_imagenette, tmp_path, monkeypatch):
    real, calls = files.atomic_torch_save, []

    def interrupted_second_save(obj, path):
        if path.name == "last.pt":
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
        real(obj, path)

    monkeypatch.setattr(device, "atomic_torch_save", interrupted_second_save)
    config = tiny(tiny_imagenette, tmp_path, epochs=2, checkpoints="best+last")
    with pytest.raises(KeyboardInterrupt):
        run(config, progress=False)
    run_dir = config.run_dir()
    assert len(read_history(run_dir)) == checkpoint_epochs(run_dir) == 1
    assert record.load_summary(run_dir)["status"] == "interrupted"
    monkeypatch.setattr(device, "atomic_torch_save", real)
    assert len(read_history(run(config, progress=False))) == 2


def test_disk_full_while_saving_cleans_up_and_keeps_the_record_consistent(tiny_imagenette, tmp_path, monkeypatch,
                                                                          capsys):
    real, calls = torch.save, []

    def full_disk(obj, path, *args, **kwargs):
        if str(path).endswith("last.pt.tmp"):
            calls.append(1)
            if len(calls) == 2:
                with open(path, "wb") as handle:
                    handle.write(b"\0" * 1000)  # half a checkpoint, then the disk is full
                raise OSError(errno.ENOSPC, "No space left on device")
        real(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    config = tiny(tiny_imagenette, tmp_path, epochs=2, checkpoints="best+last")
    argv = ["train"] + [x for k, v in config.to_dict().items()
                        if v not in ("", None, False) and k not in ("world_size", "pipeline")
                        for x in (f"--{k.replace('_', '-')}", str(v))] + ["--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no space left on" in err and "epochs 1-1" in err
    run_dir = config.run_dir()
    assert not list(run_dir.glob("*.tmp"))
    assert len(read_history(run_dir)) == checkpoint_epochs(run_dir) == 1
    assert record.load_summary(run_dir)["status"] == "interrupted"


@pytest.mark.parametrize("damage", [b"", b"PK\x03\x04 not a checkpoint" * 10, "truncate"])
def test_unreadable_last_pt_is_kept_aside_and_the_run_restarts(tiny_imagenette, tmp_path, capsys, damage):
    config = tiny(tiny_imagenette, tmp_path, epochs=2, checkpoints="best+last")
    with pytest.raises(KeyboardInterrupt):
        run(config, progress=False, stop_after_epoch=1)
    last = config.run_dir() / "last.pt"
    good = last.read_bytes()
    last.write_bytes(good[: len(good) // 2] if damage == "truncate" else damage)
    run_dir = run(config, progress=False)
    out = capsys.readouterr().out
    assert "last.pt is unreadable" in out and "starting this run again from epoch 1" in out
    aside = list(run_dir.glob("last.unreadable-*.pt"))
    assert len(aside) == 1 and aside[0].stat().st_size == (len(good) // 2 if damage == "truncate" else len(damage))
    assert len(read_history(run_dir)) == 2 and record.load_summary(run_dir)["status"] == "complete"


# ------------------------------------------------------------------------------ bad inputs
def test_bad_data_is_one_line_and_leaves_no_run_folder(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--results", str(tmp_path / "results"),
                 "--epochs", "1", "--img-size", "32", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nowhere" in err
    assert not list((tmp_path / "results").glob("runs/*"))


def test_results_under_a_file_or_read_only_is_one_line(tiny_imagenette, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    args = ["train", "--data", str(tiny_imagenette), "--epochs", "1", "--img-size", "32", "--workers", "0",
            "--no-progress", "--results"]
    assert main(args + [str(blocker / "results")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "a file stands where a folder should be" in err

    def read_only(self, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr("pathlib.Path.mkdir", read_only)  # root ignores chmod: simulate the mount
    assert main(args + [str(tmp_path / "ro")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "read-only file system" in err and "--results" in err


def test_a_run_killed_mid_way_reads_as_crashed(tiny_imagenette, tmp_path):
    config = tiny(tiny_imagenette, tmp_path, epochs=2, checkpoints="best+last")
    with pytest.raises(KeyboardInterrupt):
        run(config, progress=False, stop_after_epoch=1)
    run_dir = config.run_dir()
    summary = record.load_summary(run_dir)
    summary["status"] = "running"  # what a SIGKILL leaves behind
    record.write_summary(run_dir, summary)
    (run_dir / ".lock").write_text('{"pid": 999999999, "host": "%s"}' % os.uname().nodename)
    assert record.status(run_dir) == "crashed"
    (run_dir / ".lock").write_text('{"pid": %d, "host": "%s"}' % (os.getpid(), os.uname().nodename))
    assert record.status(run_dir) == "running"


def test_a_lock_is_judged_by_its_owner(tmp_path, monkeypatch):
    """Another machine's lock reads as a live run (its pid means nothing here); an empty or garbled lock (a trainer
    killed between creating and writing it) and one holding this process's own pid (a restarted container) are
    stale and taken over; another user's live process (kill says EPERM) is alive, and its lock refused."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    record.write_summary(run_dir, {"status": "running"})
    lock, host = run_dir / ".lock", os.uname().nodename
    lock.write_text('{"pid": 999999999, "host": "colab-vm-7"}')
    assert record.status(run_dir) == "running"
    for stale in ("", "{not json", '{"pid": %d, "host": "%s"}' % (os.getpid(), host)):
        lock.write_text(stale)
        assert record.acquire_run_lock(run_dir) == lock and record.lock_owner(run_dir)["pid"] == os.getpid(), stale

    def someone_elses(pid, signal):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "kill", someone_elses)
    assert files.pid_alive(4242)
    lock.write_text('{"pid": 4242, "host": "%s"}' % host)
    assert record.status(run_dir) == "running"
    with pytest.raises(record.RunBusyError, match="process 4242"):
        record.acquire_run_lock(run_dir)


def test_ctrl_c_or_a_refused_write_leaves_no_temporary_and_says_what_to_do(tmp_path):
    target = tmp_path / "last.pt"
    target.write_bytes(b"the previous checkpoint")

    def interrupted(tmp):
        tmp.write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        files.atomic_write(target, interrupted)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    assert target.read_bytes() == b"the previous checkpoint"

    def denied(tmp):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp))

    with pytest.raises(record.RecordError, match=r"permission denied; choose a writable results folder \(--results\)"):
        files.atomic_write(target, denied)


def test_a_diverged_epochs_values_are_never_a_best():
    """A run stopped for its train loss can still show a low val loss or high accuracy in that epoch: the bests
    come from the epochs before it, while the epoch counts as done and its time as spent."""
    def row(epoch, train, val, acc):
        return dict(epoch=epoch, train_loss=train, val_loss=val, val_acc=acc, epoch_time_s=2.0,
                    train_images_per_s=100.0, skipped_steps=0)

    history = [row(1, 2.2, 2.0, 0.2), row(2, 1.9, 1.5, 0.3), row(3, 50.0, 1.0, 0.9)]
    summary = record.summarize(history, "diverged", 3, {})
    assert (summary["best_val_loss"], summary["best_val_loss_epoch"], summary["best_val_acc"]) == (1.5, 2, 0.3)
    assert (summary["best_train_loss"], summary["epochs_done"], summary["train_time_s"]) == (1.9, 3, 6.0)


def test_divergence_in_the_first_epoch_says_there_is_no_checkpoint(tiny_imagenette, tmp_path, monkeypatch, capsys):
    real = train._train_one_epoch
    monkeypatch.setattr(train, "_train_one_epoch",
                        lambda *a, **k: {**real(*a, **k), "train_loss": math.nan, "finite": False})
    config = tiny(tiny_imagenette, tmp_path)
    argv = ["train", "--model", "R18", "--data", str(tiny_imagenette), "--results", str(tmp_path), "--epochs", "3",
            "--img-size", "32", "--batch-size", "8", "--workers", "0", "--preset", "fast", "--noise", "0.25",
            "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "diverged at epoch 1" in out and "no epoch finished before it, so there is no checkpoint" in out
    assert "epoch 0" not in out and "None" not in out
    assert not (config.run_dir() / "best.pt").exists()


def test_train_help_describes_every_flag(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "{fail,skip}" in out and "{auto,off,bf16,fp16}" in out and "official columns" in out
    assert "(default 'LR18_L2(rpe)')" in out and "the preset's" in out


def test_an_unreadable_image_stops_the_run_with_its_name_or_is_skipped_and_counted(tiny_imagenette, tmp_path,
                                                                                   capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_imagenette, data)
    bad = sorted((data / "train").glob("*/*.JPEG"))[5]
    bad.write_bytes(bad.read_bytes()[:100])  # truncated mid-download
    args = ["train", "--model", "R18", "--data", str(data), "--results", str(tmp_path / "results"), "--epochs", "1",
            "--img-size", "32", "--batch-size", "8", "--workers", "0", "--preset", "fast", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and bad.name in err and "on_error='skip'" in err
    assert not list((tmp_path / "results").glob("runs/*"))  # a failed start leaves nothing
    assert main(args + ["--on-error", "skip"]) == 0
    assert "left out 1 unreadable image" in capsys.readouterr().out
    summary = record.load_summary(next((tmp_path / "results" / "runs").iterdir()))
    assert summary["status"] == "complete" and summary["skipped_images"] == 1
    assert summary["skipped_files"] == [str(bad.relative_to(data))] and summary["train_images"] == 39


# ------------------------------------------------------------------------------ fp16 overflow (#23)
class OverflowsOnCall(nn.Module):
    """The wrapped model's training forward returns infinite logits on the calls in `calls` (all when None)."""

    def __init__(self, inner, calls=None):
        super().__init__()
        self.inner, self.calls, self.seen = inner, calls, 0

    def forward(self, x):
        out = self.inner(x)
        if self.training:
            self.seen += 1
            if self.calls is None or self.seen in self.calls:
                out = out + float("inf")
        return out


def test_one_overflowing_fp16_forward_is_a_skipped_step_not_a_divergence(tiny_imagenette, tmp_path, monkeypatch):
    from lambdalib import models

    real = models.create
    monkeypatch.setattr(models, "create", lambda *a, **k: OverflowsOnCall(real(*a, **k), calls={2}))
    run_dir = run(tiny(tiny_imagenette, tmp_path / "once", epochs=1, amp="fp16"), progress=False)
    summary, history = record.load_summary(run_dir), read_history(run_dir)
    assert summary["status"] == "complete" and history[0]["finite"] and history[0]["skipped_steps"] >= 1
    assert math.isfinite(history[0]["train_loss"])
    # fp32 has no scaler to skip it: the epoch is non-finite, the run diverged
    assert record.load_summary(run(tiny(tiny_imagenette, tmp_path / "fp32", epochs=1, amp="off"),
                                   progress=False))["status"] == "diverged"
    # every forward overflowing: FP16_STREAK in a row end it
    monkeypatch.setattr(train, "FP16_STREAK", 3)
    monkeypatch.setattr(models, "create", lambda *a, **k: OverflowsOnCall(real(*a, **k)))
    summary = record.load_summary(run(tiny(tiny_imagenette, tmp_path / "always", epochs=1, amp="fp16"),
                                      progress=False))
    assert summary["status"] == "diverged" and summary["diverged_reason"] == "non-finite loss"


# ------------------------------------------------------------------------------ several processes (#23)
def as_rank_one(monkeypatch, rank0_says):
    """This process as rank 1 of 2, rank 0's broadcast answering `rank0_says` (no process group)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(device, "setup_distributed", lambda choice: device.Distributed(1, 2, 0))
    monkeypatch.setattr(device.torch_dist, "broadcast_object_list", lambda box, src: box.__setitem__(0, rank0_says))


def test_rank_zero_decides_for_every_rank_whether_a_run_is_finished(tiny_imagenette, tmp_path, monkeypatch, caplog):
    config = tiny(tiny_imagenette, tmp_path, epochs=1)  # nothing on this rank's disk
    as_rank_one(monkeypatch, ("answer", (config, "complete")))
    assert run(config, progress=False) == config.resolved().run_dir() and not (tmp_path / "runs").exists()
    as_rank_one(monkeypatch, ("error", "results/runs/x holds a run of another config"))
    with pytest.raises(ValueError, match="holds a run of another config"):
        run(config, progress=False)


# ------------------------------------------------------------------------------ checkpoints (#23, Colab)
def test_a_damaged_last_pt_resumes_from_the_one_before(tiny_imagenette, tmp_path, caplog):
    import logging

    full = read_history(run(tiny(tiny_imagenette, tmp_path / "full"), progress=False))
    config = tiny(tiny_imagenette, tmp_path / "cut", checkpoints="best+last")
    with pytest.raises(KeyboardInterrupt):
        run(config, progress=False, stop_after_epoch=2)
    last = config.run_dir() / "last.pt"
    assert checkpoint_epochs(config.run_dir()) == 2 and len(torch.load(last.with_name("last.pt.prev"),
                                                                       weights_only=True)["history"]) == 1
    last.write_bytes(last.read_bytes()[:1000])  # an upload cut off
    with caplog.at_level(logging.INFO, logger="lambdalib"):
        resumed = read_history(run(config, progress=False))
    assert "resuming from last.pt.prev" in caplog.text and "after epoch 1" in caplog.text
    assert [{k: v for k, v in r.items() if k not in record.TIMING_COLUMNS} for r in resumed] == \
        [{k: v for k, v in r.items() if k not in record.TIMING_COLUMNS} for r in full]


def test_a_run_folder_on_a_network_drive_gets_its_checkpoints_when_due_and_when_it_stops(tiny_imagenette, tmp_path,
                                                                                          monkeypatch):
    import tempfile

    drive = tmp_path / "drive"
    (tmp_path / "mounts").write_text(f"/dev/vda / ext4 rw 0 0\ndrive {drive} fuse.drive rw 0 0\n")
    monkeypatch.setattr(device, "MOUNTS", str(tmp_path / "mounts"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "local"))
    monkeypatch.setattr(train, "CHECKPOINT_COPY_S", 1e9)  # never due: copied only when the run stops
    written, real = [], record.write_history
    monkeypatch.setattr(record, "write_history", lambda folder, rows: (written.append(len(rows)), real(folder, rows)))
    config = tiny(tiny_imagenette, drive / "results")
    with pytest.raises(KeyboardInterrupt):
        run(config, progress=False, stop_after_epoch=2)
    run_dir, local = config.run_dir(), tmp_path / "local" / "lambdalib-checkpoints" / config.run_id
    assert written == [0, 2]  # no record of epoch 1 alone: the drive had no last.pt of it
    assert checkpoint_epochs(run_dir) == 2 == checkpoint_epochs(local) and (run_dir / "best.pt").exists()
    monkeypatch.setattr(train, "CHECKPOINT_COPY_S", 0.0)  # always due: every epoch
    assert len(read_history(run(config, progress=False))) == 3 and written[-2:] == [3, 3]
    assert not (run_dir / "last.pt").exists() and (run_dir / "best.pt").exists() and not local.exists()


# ------------------------------------------------------------------------------ amp='auto' elsewhere (#23, Colab)
def test_amp_auto_continues_a_record_in_the_precision_it_started_in(tiny_imagenette, tmp_path, caplog):
    """A runtime on another GPU class resolves amp='auto' differently; the run it started goes on in its
    precision (said) instead of a new run starting from epoch 1. Here: started in fp16, auto means fp32."""
    import logging

    started = tiny(tiny_imagenette, tmp_path, amp="fp16")
    with pytest.raises(KeyboardInterrupt):
        run(started, progress=False, stop_after_epoch=1)
    auto = tiny(tiny_imagenette, tmp_path, amp="auto")
    with caplog.at_level(logging.INFO, logger="lambdalib"):
        run_dir = run(auto, progress=False)
    assert run_dir == started.run_dir() and "was started in amp=fp16, so it continues in fp16" in caplog.text
    assert [r["precision"] for r in read_history(run_dir)] == ["fp16"] * 3
    assert len(list((tmp_path / "runs").iterdir())) == 1 and existing_record(auto)["status"] == "complete"


def test_a_drive_that_fails_a_copy_keeps_the_run_going_and_is_tried_again(tmp_path, monkeypatch):
    import tempfile

    run_dir = tmp_path / "drive" / "runs" / "r"
    run_dir.mkdir(parents=True)
    (tmp_path / "mounts").write_text(f"drive {tmp_path / 'drive'} fuse.drive rw 0 0\n")
    monkeypatch.setattr(device, "MOUNTS", str(tmp_path / "mounts"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "local"))
    store = device.Checkpoints(run_dir, every=0.0)
    store.save("last.pt", {"history": [1]})
    real, fails = device.atomic_write, [1]

    def flaky(path, write):
        if fails:
            fails.pop()
            raise files.RecordError(f"cannot write {path}: Transport endpoint is not connected")
        real(path, write)

    monkeypatch.setattr(device, "atomic_write", flaky)
    with pytest.warns(UserWarning, match="Transport endpoint.*trying again"):
        assert store.publish() is False and not (run_dir / "last.pt").exists()
    assert store.publish() is True and torch.load(run_dir / "last.pt", weights_only=True) == {"history": [1]}
    store.save("last.pt", {"history": [1, 2]})
    fails.append(1)
    with pytest.raises(files.RecordError):  # when the run stops, a failed copy is the run's error
        store.publish(force=True)
    assert torch.load(run_dir / "last.pt.prev", weights_only=True) == {"history": [1]}


# ------------------------------------------------------------------------------ the sweep and diverged runs
def test_reproduce_skips_a_diverged_run_as_finished(tiny_imagenette, tmp_path, monkeypatch):
    """A diverged run is finished (record.FINISHED): `lambdalib reproduce` counts it as skipped and never
    trains it again, so a grid resumed after a divergence does not spend its time on that run."""
    from lambdalib import sweep

    real = train._train_one_epoch
    monkeypatch.setattr(train, "_train_one_epoch",
                        lambda *a, **k: {**real(*a, **k), "train_loss": math.nan, "finite": False})
    config = tiny(tiny_imagenette, tmp_path, epochs=1)
    run_dir = run(config, progress=False)
    assert record.load_summary(run_dir)["status"] == "diverged"
    monkeypatch.setattr(train, "_train_one_epoch", lambda *a, **k: pytest.fail("reproduce trained a finished run"))
    before = (run_dir / "summary.json").read_text()
    grid = Grid(models=["R18"], noise=[0.25], params={k: v for k, v in config.to_dict().items()
                                                       if k not in ("model", "noise", "seed")})
    counts = sweep.reproduce(grid, inline=True, progress=False, report=False)
    assert counts == dict(total=1, skipped=1, ran=0, diverged=0, failed=0, failures=[])
    assert (run_dir / "summary.json").read_text() == before
