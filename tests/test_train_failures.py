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
