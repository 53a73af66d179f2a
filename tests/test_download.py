"""download.py: bad archives and bad data arguments give one line naming the user's value, and leave nothing."""
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import make_tiny_imagenette

from lambdalib import data as D
from lambdalib import download


@pytest.fixture(scope="module")
def tiny_tgz(tmp_path_factory):
    """imagenette2-small.tgz (top folder imagenette2-small/, 10 classes x 2 + 1 images) and its md5."""
    base = tmp_path_factory.mktemp("small")
    make_tiny_imagenette(base / "imagenette2-small", train_per_class=2, val_per_class=1, size=24)
    archive = base / "src" / "imagenette2-small.tgz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(base / "imagenette2-small", arcname="imagenette2-small")
    return archive, download.calculate_md5(archive)


def one_line_naming(err: pytest.ExceptionInfo, *names) -> str:
    message = str(err.value)
    assert "\n" not in message
    for name in names:
        assert str(name) in message
    return message


def test_verified_copy_is_reused(tiny_tgz, tmp_path, monkeypatch):
    archive, md5 = tiny_tgz
    folder = download.prepare_archive(archive, download_root=tmp_path)
    assert folder == tmp_path / "imagenette2-small" and download.check_root(folder) == folder
    monkeypatch.setattr(download, "_fetch", lambda *a: pytest.fail("fetched again"))
    monkeypatch.setattr(download, "_extract", lambda *a: pytest.fail("extracted again"))
    assert download.resolve_root(archive.as_uri(), md5=md5, download_root=tmp_path) == folder


@pytest.mark.parametrize("kind", ["random", "truncated", "empty"])
def test_bad_local_archive_names_the_users_file_and_leaves_nothing(kind, tiny_tgz, tmp_path):
    good, _ = tiny_tgz
    bad = tmp_path / "mine" / "my-imagenette.tgz"
    bad.parent.mkdir()
    bad.write_bytes({"random": os.urandom(20_000), "truncated": good.read_bytes()[:3000], "empty": b""}[kind])
    before = bad.read_bytes()
    root = tmp_path / "data"
    with pytest.raises(download.IntegrityError) as err:
        download.resolve_root(str(bad), download_root=root)
    message = one_line_naming(err, bad)
    assert {"random": "not a tar or zip archive", "truncated": "truncated", "empty": "empty file"}[kind] in message
    assert "delete" not in message  # the user's file is the one to replace; nothing of ours is left to delete
    assert bad.read_bytes() == before  # the user's file is never touched
    assert list(root.iterdir()) == []  # no copy, no partial extraction


def test_local_file_named_like_an_official_archive_must_be_it(tmp_path):
    fake = tmp_path / "imagenette2-160.tgz"
    fake.write_bytes(os.urandom(5000))
    with pytest.raises(download.IntegrityError) as err:
        download.resolve_root(fake, download_root=tmp_path / "data")
    one_line_naming(err, fake, download.ARCHIVES["imagenette2-160"][1])
    assert list((tmp_path / "data").iterdir()) == []


def test_tar_cut_at_a_member_boundary_is_never_used(tmp_path):
    """tarfile reads such a file without complaint: the CSV's list of images catches it."""
    make_tiny_imagenette(tmp_path / "imagenette2-cut", train_per_class=2, val_per_class=1, size=24)
    whole = tmp_path / "whole.tar"
    with tarfile.open(whole, "w") as tar:
        tar.add(tmp_path / "imagenette2-cut", arcname="imagenette2-cut")
    with tarfile.open(whole) as tar:
        members = [m for m in tar.getmembers() if m.name.endswith(".JPEG")]
    cut = tmp_path / "imagenette2-cut.tar"
    cut.write_bytes(whole.read_bytes()[: members[-3].offset])  # the last three images are gone
    with pytest.raises(download.IntegrityError, match=r"truncated\? 3 of the 30 images") as err:
        download.resolve_root(cut, download_root=tmp_path / "data")
    one_line_naming(err, cut)
    assert list((tmp_path / "data").iterdir()) == []


def test_a_bad_archive_placed_in_data_is_named_and_kept(tmp_path):
    placed = tmp_path / "data" / "mine.tgz"
    placed.parent.mkdir()
    placed.write_bytes(os.urandom(5000))
    with pytest.raises(download.IntegrityError, match="replace or delete it") as err:
        download.resolve_root(placed, download_root=tmp_path / "data")
    one_line_naming(err, placed)
    assert placed.exists() and sorted(p.name for p in placed.parent.iterdir()) == ["mine.tgz"]


def test_interrupted_fetch_leaves_nothing_and_the_next_run_works(tiny_tgz, tmp_path, monkeypatch):
    archive, md5 = tiny_tgz
    root = tmp_path / "data"

    def half_then_ctrl_c(src, dst):
        Path(dst).write_bytes(Path(src).read_bytes()[:1000])
        raise KeyboardInterrupt

    monkeypatch.setattr(download.shutil, "copyfile", half_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        download.prepare_archive(archive.as_uri(), md5, download_root=root)
    assert list(root.iterdir()) == []
    monkeypatch.undo()
    folder = download.prepare_archive(archive.as_uri(), md5, download_root=root)
    assert len(D.NoisyImagenette(folder, "val")) == 10


def test_leftovers_of_a_killed_run_are_removed(tiny_tgz, tmp_path):
    archive, md5 = tiny_tgz
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    part = tmp_path / f"{archive.name}.part{dead}"
    part.write_bytes(b"half a download")
    extracting = tmp_path / f".imagenette2-small.extracting{dead}"
    (extracting / "train").mkdir(parents=True)
    download.prepare_archive(archive, md5, download_root=tmp_path)
    assert not part.exists() and not extracting.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imagenette2-small", "imagenette2-small.tgz"]


def test_temporaries_of_a_live_run_are_left_alone(tiny_tgz, tmp_path):
    """Two runs may share a download root: only a dead process's leftovers go, a running one's stay."""
    archive, md5 = tiny_tgz
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live_part = tmp_path / f"{archive.name}.part{live.pid}"
        live_part.write_bytes(b"a download under way")
        live_extracting = tmp_path / f".imagenette2-small.extracting{live.pid}"
        (live_extracting / "train").mkdir(parents=True)
        dead_part = tmp_path / f"{archive.name}.part{dead}"
        dead_part.write_bytes(b"half a download")
        download.prepare_archive(archive, md5, download_root=tmp_path)
        assert live.poll() is None  # still running while its files were looked at
    finally:
        live.kill()
        live.wait()
    assert live_part.read_bytes() == b"a download under way"
    assert (live_extracting / "train").is_dir()
    assert not dead_part.exists()


def test_a_folder_not_extracted_by_lambdalib_is_refused_and_kept(tiny_tgz, tmp_path):
    """A folder of the user's own under the archive's name is never deleted to make room for the extract."""
    archive, _ = tiny_tgz
    root = tmp_path / "data"
    mine = root / "imagenette2-small"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("my own work")
    with pytest.raises(ValueError, match="exists but was not extracted and verified by lambdalib") as err:
        download.prepare_archive(archive, download_root=root)
    one_line_naming(err, mine, f"data='{mine}'", archive.name)
    assert (mine / "notes.txt").read_text() == "my own work"
    assert [p.name for p in root.iterdir()] == ["imagenette2-small"]  # no copy of the archive either
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def _tgz_with_extra_member(tmp_path: Path, name: str, member: str) -> Path:
    """A complete imagenette2 archive `name`.tgz with one more file stored under the member name `member`."""
    make_tiny_imagenette(tmp_path / "build" / name, train_per_class=1, val_per_class=1, size=16)
    archive = tmp_path / "src" / f"{name}.tgz"
    archive.parent.mkdir()
    payload = b"written by the archive"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "build" / name, arcname=name)
        info = tarfile.TarInfo(member)
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    return archive


def test_member_climbing_out_of_the_destination_is_refused(tmp_path):
    """A '../' member is an error naming the archive; nothing is written beside (or in) the download root."""
    archive = _tgz_with_extra_member(tmp_path, "imagenette2-evil", "../evil.txt")
    root = tmp_path / "data"
    with pytest.raises(download.IntegrityError, match="outside the destination") as err:
        download.prepare_archive(archive, download_root=root)
    one_line_naming(err, archive, "not a readable imagenette2 archive")
    assert not (root / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert list(root.iterdir()) == []  # neither the copy nor a partial extraction is kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build", "data", "src"]


def test_absolute_member_lands_inside_the_destination(tmp_path):
    """An absolute member name is taken relative to the extraction folder: the file it names is never written."""
    target = tmp_path / "outside" / "evil.txt"
    target.parent.mkdir()
    archive = _tgz_with_extra_member(tmp_path, "imagenette2-abs", str(target))
    folder = download.prepare_archive(archive, download_root=tmp_path / "data")
    assert not target.exists() and list(target.parent.iterdir()) == []
    assert download.check_root(folder) == folder


@pytest.mark.parametrize("value, expected", [
    ("imagenette2-999", "Did you mean 'imagenette2"),
    ("imagenette-160", "Did you mean 'imagenette2-160'"),
    ("", "imagenette2-160"),
    ("{tmp}/no/such/folder", "imagenette2-160"),
    ("{tmp}/notes.txt", "not an archive"),
    ("{tmp}", "Expected {tmp}/train/<wnid>/*.JPEG"),
])
def test_bad_data_argument_is_one_line_naming_it(value, expected, tmp_path):
    (tmp_path / "notes.txt").write_text("not data")
    value, expected = value.format(tmp=tmp_path), expected.format(tmp=tmp_path)
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        download.resolve_root(value)
    message = one_line_naming(err, expected, repr(value) if value != str(tmp_path) else value)
    assert "Traceback" not in message


def test_remote_archive_without_md5_says_what_to_do():
    with pytest.raises(ValueError, match="needs its md5.*pass the local file") as err:
        download.resolve_root("https://example.invalid/imagenette2-x.tgz")
    one_line_naming(err, "https://example.invalid/imagenette2-x.tgz")
