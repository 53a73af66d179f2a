"""What a careless or unlucky user types (#24): nothing outside the tool's own files is touched, and no wrong
result comes back with exit 0. Each case goes through the command a user runs."""
import shutil

import pytest
from conftest import make_tiny_imagenette  # noqa: I001

from lambdalib.cli import main
from lambdalib.config import RunConfig


def train_args(data, results, *extra):
    return ["train", "--model", "R18", "--data", str(data), "--results", str(results), "--epochs", "1",
            "--img-size", "32", "--batch-size", "8", "--workers", "0", "--preset", "fast", "--no-progress", *extra]


@pytest.mark.parametrize("name", ["../..", "..", "a/b", "/abs", ".hidden", "x/../y"])
def test_a_run_name_that_leaves_the_runs_folder_is_refused(tiny_imagenette, tmp_path, capsys, name):
    results = tmp_path / "deep" / "results"
    (tmp_path / "history.csv").write_text("mine\n")
    assert main(train_args(tiny_imagenette, results, "--run-name", name)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "run_name" in err and "one folder name" in err
    assert (tmp_path / "history.csv").read_text() == "mine\n" and not results.exists()


def test_a_plain_run_name_is_used(tiny_imagenette, tmp_path):
    assert main(train_args(tiny_imagenette, tmp_path, "--run-name", "my-run_1.b")) == 0
    assert (tmp_path / "runs" / "my-run_1.b" / "summary.json").is_file()


def test_two_data_folders_of_one_name_are_two_experiments(tmp_path, capsys):
    first = make_tiny_imagenette(tmp_path / "some" / "mydata", train_per_class=2, val_per_class=1)
    second = make_tiny_imagenette(tmp_path / "other" / "mydata", train_per_class=3, val_per_class=1)
    assert main(train_args(first, tmp_path / "results")) == 0
    capsys.readouterr()
    assert main(train_args(second, tmp_path / "results")) == 0
    out = capsys.readouterr().out
    assert "already complete" not in out
    runs = sorted((tmp_path / "results" / "runs").iterdir())
    assert len(runs) == 2 and all(r.name.split("_")[5] == "mydata" for r in runs)  # same slug, other digest
    assert main(train_args(first, tmp_path / "results")) == 0  # the first data again: finished, nothing to do
    assert "nothing to do" in capsys.readouterr().out


def test_a_data_folder_changed_in_place_is_another_experiment(tmp_path):
    data = make_tiny_imagenette(tmp_path / "mydata", train_per_class=2, val_per_class=1)
    before = RunConfig.from_params(model="R18", data=str(data)).run_id
    shutil.rmtree(data / "train" / sorted(p.name for p in (data / "train").iterdir())[0])
    assert RunConfig.from_params(model="R18", data=str(data)).run_id != before


def _white_at_the_same_size(image):
    """Overwrite a JPEG with a white one padded to the old file size (a JPEG decoder ignores bytes after its end)."""
    import io

    from PIL import Image

    size, buffer = image.stat().st_size, io.BytesIO()
    Image.new("RGB", Image.open(image).size, "white").save(buffer, format="JPEG", quality=90)
    white = buffer.getvalue()
    assert len(white) < size
    image.write_bytes(white + bytes(size - len(white)))
    assert image.stat().st_size == size and Image.open(image).convert("L").getextrema() == (255, 255)


def test_an_image_rewritten_in_place_at_its_own_size_is_another_experiment(tmp_path, capsys):
    """In one process, as in a notebook: the identity is read afresh for every run, not remembered."""
    data = make_tiny_imagenette(tmp_path / "mydata", train_per_class=2, val_per_class=1)
    assert main(train_args(data, tmp_path / "results")) == 0
    _white_at_the_same_size(next((data / "train").rglob("*.JPEG")))
    capsys.readouterr()
    assert main(train_args(data, tmp_path / "results")) == 0
    assert "already complete" not in capsys.readouterr().out
    assert len(list((tmp_path / "results" / "runs").iterdir())) == 2


def test_a_training_run_reads_the_data_folders_bytes_once(tmp_path, monkeypatch):
    """Its identity is asked for up to three run folders and the record; the fingerprint behind it is read once."""
    from lambdalib import config as config_module

    data = make_tiny_imagenette(tmp_path / "mydata", train_per_class=2, val_per_class=1)
    reads, fingerprint = [], config_module.data_fingerprint
    monkeypatch.setattr(config_module, "data_fingerprint", lambda source: reads.append(source) or fingerprint(source))
    assert main(train_args(data, tmp_path / "results", "--amp", "auto")) == 0
    assert reads == [str(data)]


def test_an_image_that_cannot_be_read_still_gives_the_folder_an_identity(tmp_path, monkeypatch):
    """Reading every image for the digest must not turn a permission problem into a traceback before the data
    set's own on_error handling (a one-line error, or skip) sees it."""
    from pathlib import Path

    from lambdalib.imagenette import data_fingerprint

    # two copies with the same bytes (the content, not the place, names a folder), the second's digest not yet read
    copy = make_tiny_imagenette(tmp_path / "a" / "mydata", train_per_class=2, val_per_class=1)
    readable = data_fingerprint(str(copy))
    assert data_fingerprint(str(make_tiny_imagenette(tmp_path / "c" / "mydata", train_per_class=2,
                                                     val_per_class=1))) == readable
    data = make_tiny_imagenette(tmp_path / "b" / "mydata", train_per_class=2, val_per_class=1)
    locked, open_file = next((data / "train").rglob("*.JPEG")), Path.open

    def refuse(self, *args, **kwargs):
        if self == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return open_file(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refuse)
    assert data_fingerprint(str(data)) not in ("", readable)


def test_an_archive_changed_past_its_first_16_mib_is_another_data_set(tmp_path):
    from lambdalib.imagenette import data_fingerprint

    archive = tmp_path / "mydata.tgz"
    archive.write_bytes(bytes(17 << 20))
    before = data_fingerprint(str(archive))
    with archive.open("r+b") as handle:  # same size, one byte changed near the end
        handle.seek(-1, 2)
        handle.write(b"\x01")
    assert data_fingerprint(str(archive)) not in ("", before)


def test_a_file_the_csv_does_not_list_leaves_the_identity_alone(tmp_path):
    from lambdalib.imagenette import data_fingerprint

    data = make_tiny_imagenette(tmp_path / "mydata", train_per_class=2, val_per_class=1)
    before = data_fingerprint(str(data))
    (data / "train" / ".DS_Store").write_bytes(b"finder")  # unused: the runs train on what the CSV lists
    shutil.copy(next((data / "train").rglob("*.JPEG")), next((data / "val").iterdir()) / "spare.JPEG")
    assert data_fingerprint(str(data)) == before


def test_images_the_csv_does_not_list_are_named_in_a_warning(tmp_path):
    data = make_tiny_imagenette(tmp_path / "mydata", train_per_class=2, val_per_class=1)
    extra = next((data / "train").iterdir()) / "added_by_hand.JPEG"
    shutil.copy(next((data / "train").rglob("*.JPEG")), extra)
    with pytest.warns(RuntimeWarning, match=r"1 files under .*train are not listed in .* e.g. .*added_by_hand"):
        assert main(train_args(data, tmp_path / "results")) == 0


def test_a_csv_that_lists_an_image_twice_is_one_line(tmp_path, capsys):
    data = make_tiny_imagenette(tmp_path / "mydata", train_per_class=2, val_per_class=1)
    csv = data / "noisy_imagenette.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join([*lines, lines[1]]) + "\n")
    assert main(train_args(data, tmp_path / "results")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "more than once" in err and lines[1].split(",")[0] in err
    assert "(and" not in err  # one repeated row: no "(and 0 more)"
    assert not (tmp_path / "results").exists() or not list((tmp_path / "results").rglob("*.json"))


def test_the_embedded_set_keeps_its_committed_name():
    config = RunConfig.from_params(model="R18", data="embedded")
    assert config.resolved().data_digest == "" and "data_digest" not in config.identity()


def test_a_device_this_machine_lacks_is_one_line_and_leaves_no_folder(tiny_imagenette, tmp_path, capsys):
    import torch

    if torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    assert main(train_args(tiny_imagenette, tmp_path, "--device", "mps")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "device='mps'" in err and "no Apple GPU" in err
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_wandb_without_a_key_is_one_line_and_leaves_no_folder(tiny_imagenette, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc with a key
    assert main(train_args(tiny_imagenette, tmp_path / "results", "--logger", "wandb")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "wandb login" in err and "WANDB_MODE=offline" in err
    assert not (tmp_path / "results").exists() or not list((tmp_path / "results").rglob("*.json"))


def test_read_only_data_without_a_writable_cache_folder_trains_on_the_jpeg_loader(tmp_path, monkeypatch, capsys):
    from lambdalib import cache

    data = make_tiny_imagenette(tmp_path / "data", train_per_class=2, val_per_class=1)

    def nowhere(root, cache_dir=None):
        raise OSError(f"no writable folder for the decoded-image cache of {root}.")

    monkeypatch.setattr(cache, "cache_folder", nowhere)  # read-only data, data/ and ~/.cache alike
    with pytest.warns(UserWarning, match="JPEG loader"):
        assert main(train_args(data, tmp_path / "results")) == 0
    assert "complete" in capsys.readouterr().out


def test_running_out_of_memory_is_one_line(tiny_imagenette, tmp_path, capsys, monkeypatch):
    from lambdalib import train

    def huge(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory: you tried "
                           "to allocate 824633720832 bytes.")

    monkeypatch.setattr(train, "_train", huge)
    assert main(train_args(tiny_imagenette, tmp_path, "--img-size", "4096")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "out of memory" in err and "--img-size" in err
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())  # no folder left


def test_a_results_folder_removed_mid_run_gets_a_whole_record_back(tiny_imagenette, tmp_path, monkeypatch, capsys):
    from lambdalib import runs, train

    results, real = tmp_path / "results", train._run_epoch

    def epoch_then_remove(*args, **kwargs):
        row = real(*args, **kwargs)
        shutil.rmtree(results, ignore_errors=True)  # the user (or a cleaner) deletes it while training
        return row

    monkeypatch.setattr(train, "_run_epoch", epoch_then_remove)
    assert main(train_args(tiny_imagenette, results, "--epochs", "2")) == 0
    found = runs.collect(results)
    assert list(found["status"]) == ["complete"] and list(found["epochs_done"]) == [2]


def test_jobs_find_the_decoded_cache_built_once_before_they_start(tmp_path, monkeypatch):
    """reproduce --jobs N decodes each data set once in the parent, not N times at once in N processes (#23)."""
    from lambdalib import sweep

    data = make_tiny_imagenette(tmp_path / "data", train_per_class=2, val_per_class=1)
    params = dict(data=str(data), results=str(tmp_path / "results"), epochs=1, img_size=32, batch_size=8,
                  workers=0, preset="fast")
    seen = []

    def fake_run(config, inline, slot, jobs):
        seen.append(sorted(p.name for p in (data / ".lambdalib-cache").rglob("*.npy")))

    monkeypatch.setattr(sweep, "_run_in_subprocess", fake_run)
    counts = sweep.reproduce(sweep.Grid(models=["R18", "LR18_L2(rpe)"], noise=[0.0], params=params), inline=True,
                             jobs=2, progress=False, report=False)
    assert counts["failed"] == 0 and len(seen) == 2
    assert all(len(names) == 2 for names in seen)  # the train and val caches were there before any run began


def test_reproduce_jobs_take_a_free_gpu_and_honour_cuda_visible_devices(tmp_path, monkeypatch):
    """A run gets a GPU when a worker frees one (never one still busy), among the inherited visible ones (#23)."""
    import threading
    import time

    from lambdalib import sweep

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert sweep.visible_gpus() == ["3", "5"]
    busy, clashes, lock = set(), [], threading.Lock()

    def fake_run(config, inline, slot, jobs):
        with lock:
            clashes.extend([slot] if slot in busy else [])
            busy.add(slot)
        time.sleep(0.4 if config.model == "R18" else 0.05)  # the first run holds its GPU longest
        with lock:
            busy.discard(slot)

    monkeypatch.setattr(sweep, "_run_in_subprocess", fake_run)
    monkeypatch.setattr(sweep, "warm_caches", lambda configs: None)
    grid = sweep.Grid(models=["R18", "LR18_L2(rpe)", "LR18_L2(lc)", "LR18_L3(rpe)"], noise=[0.0],
                      params=dict(results=str(tmp_path)))
    counts = sweep.reproduce(grid, inline=True, jobs=2, progress=False, report=False)
    assert counts["failed"] == 0 and clashes == []


def test_a_figure_path_names_a_png_or_a_folder_and_never_the_users_files(tmp_path):
    from lambdalib import files

    default = tmp_path / "results" / "figures" / "attention_fullgrad.png"
    assert files.figure_target(None, default) == default
    (tmp_path / "mine").mkdir()
    assert files.figure_target(tmp_path / "mine", default) == tmp_path / "mine" / default.name
    assert files.figure_target(f"{tmp_path}/new/", default) == tmp_path / "new" / default.name
    assert files.figure_target(tmp_path / "fig.PNG", default) == tmp_path / "fig.PNG"
    with pytest.raises(ValueError, match=r"--out .*fig\.txt: a figure is written as \.png"):
        files.figure_target(tmp_path / "fig.txt", default)
    start = {".md": "![{path.stem}]({path.name})"}
    (tmp_path / "README.md").write_text("# my notes\n")
    with pytest.raises(ValueError, match="README.md exists and is not a file lambdalib wrote"):
        files.figure_target(tmp_path / "README.png", default, companions=start)
    (tmp_path / "fig.md").write_text("![fig](fig.png)\n\nan earlier caption\n")  # our own: written over
    assert files.figure_target(tmp_path / "fig.png", default, companions=start) == tmp_path / "fig.png"
    (tmp_path / "plot.md").mkdir()  # a folder where the caption goes is someone's: refused before any work
    with pytest.raises(ValueError, match="plot.md exists and is not a file lambdalib wrote"):
        files.figure_target(tmp_path / "plot.png", default, companions=start)


def test_attention_out_never_overwrites_a_users_file(tmp_path, capsys):
    (tmp_path / "README.md").write_text("# my notes\n")
    assert main(["attention", "--allow-random", "R18", "--out", str(tmp_path / "README.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "README.md exists and is not a file lambdalib wrote" in err
    assert (tmp_path / "README.md").read_text() == "# my notes\n" and not (tmp_path / "README.png").exists()
    (tmp_path / "notes.txt").write_text("mine\n")
    assert main(["attention", "--trained", "--results", str(tmp_path), "--out", str(tmp_path / "notes.txt")]) == 2
    assert "not a file" in capsys.readouterr().err and (tmp_path / "notes.txt").read_text() == "mine\n"
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "attention_trained.png").write_text("my own picture\n")
    assert main(["attention", "--trained", "--results", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "attention_trained.png exists and is not a file lambdalib wrote" in capsys.readouterr().err
    assert (tmp_path / "figures" / "attention_trained.png").read_text() == "my own picture\n"
    (tmp_path / "figures" / "attention_trained.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # an earlier figure 7: ours
    from lambdalib import attention

    assert attention.trained_targets(tmp_path)[0] == tmp_path / "figures" / "attention_trained.png"


def test_data_out_takes_a_folder_or_a_png(tiny_imagenette, tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine\n")
    assert main(["data", "--data", str(tiny_imagenette), "--out", str(tmp_path / "keep.txt")]) == 2
    assert "a figure is written as .png" in capsys.readouterr().err and (tmp_path / "keep.txt").read_text() == "mine\n"
    assert main(["data", "--data", str(tiny_imagenette), "--out", str(tmp_path), "--samples", "2"]) == 0
    assert [p.name for p in tmp_path.glob("*.png")] == ["samples_noise25.png"]  # the default --noise 0.25


def test_without_lambda_networks_the_lucidrains_runs_fail_in_one_line_and_the_grid_goes_on(tiny_imagenette, tmp_path,
                                                                                          monkeypatch, capsys):
    import sys

    from lambdalib import sweep

    monkeypatch.setitem(sys.modules, "lambda_networks", None)  # as if the optional package were not installed
    params = dict(data=str(tiny_imagenette), results=str(tmp_path), epochs=1, img_size=32, batch_size=8, workers=0,
                  preset="fast", checkpoints="none")
    grid = sweep.Grid(models=["LR18_L2(rpe)"], noise=[0.0], impls=["lucidrains", "ours"], params=params)
    counts = sweep.reproduce(grid, inline=True, progress=False, report=False)
    assert counts["failed"] == 1 and counts["ran"] == 1
    (failure,) = counts["failures"]
    assert "pip install lambda-networks==0.4.0" in failure and len(failure.splitlines()) == 1
    done = [p.name for p in (tmp_path / "runs").iterdir() if (p / "summary.json").is_file()]
    assert len(done) == 1 and "lucidrains" not in done[0]


@pytest.mark.parametrize("command", [["reproduce", "--quick"], ["attention", "--trained"]])
def test_a_noise_list_that_is_not_numbers_names_the_flag(tmp_path, capsys, command):
    assert main([*command, "--noise", "abc", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--noise 'abc': expected comma-separated fractions" in err
    assert not list(tmp_path.iterdir())
