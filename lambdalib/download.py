"""Where the images come from: `resolve_root(data)` turns a `data` argument into a verified imagenette2 folder.

Nothing half-done is ever used: a fetch goes to a temporary name, renamed only once its md5 matches; an
extraction goes to a temporary folder, moved into place only once every image its CSV lists is there; what a
failed (or killed) attempt wrote is removed. Every error is one line naming the user's value and what to do.
"""
from __future__ import annotations

import csv
import difflib
import glob
import gzip
import json
import logging
import os
import shutil
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import Iterable
from urllib.parse import urlparse
from urllib.request import url2pathname

from torchvision.datasets.utils import calculate_md5, check_integrity, download_url

from . import paths
from .files import pid_alive
from .imagenette import CSV_NAME, EMBEDDED_NAME, SPLITS, data_slug, listed_paths

log = logging.getLogger(__name__)

# The official archives: URLs and md5s exactly as torchvision.datasets.Imagenette lists them.
_S3 = "https://s3.amazonaws.com/fast-ai-imageclas"
ARCHIVES: dict[str, tuple[str, str]] = {
    "imagenette2": (f"{_S3}/imagenette2.tgz", "fe2fc210e6bb7c5664d602c3cd71e612"),
    "imagenette2-320": (f"{_S3}/imagenette2-320.tgz", "3df6f0d01a2c9592104656642f5e78a3"),
    "imagenette2-160": (f"{_S3}/imagenette2-160.tgz", "e793b78cc4c9e9a4ccc0c1155377a412"),
}
_MARKER = ".lambdalib-verified.json"  # written into an extracted folder once its archive passed md5
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
# What a truncated or foreign archive raises while being read (gzip.BadGzipFile is an OSError: listed
# by name so that a full disk or a permission error is not blamed on the archive).
_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, zipfile.BadZipFile)


class DataUnavailableError(FileNotFoundError):
    """An archive could not be fetched; the message says which file to place where."""


class IntegrityError(ValueError):
    """An archive does not match its md5 or cannot be extracted; nothing of it is left behind."""


# --------------------------------------------------------------------------- layout
def image_files(root: str | Path, splits: Iterable[str] = SPLITS) -> set[str]:
    """The relative 'split/wnid/file' paths of the files under `root`'s split folders (one scan per folder)."""
    root, found = Path(root), set()
    for split in splits:
        if (root / split).is_dir():
            for wnid_dir in os.scandir(root / split):
                if wnid_dir.is_dir():
                    found.update(f"{split}/{wnid_dir.name}/{f.name}" for f in os.scandir(wnid_dir.path))
    return found


def check_root(root: str | Path) -> Path:
    """Return `root` if it has the imagenette2 layout, else raise FileNotFoundError saying what is missing."""
    root = Path(root).expanduser()
    missing = [name for name in (*SPLITS, CSV_NAME) if not (root / name).exists()]
    if not missing:
        return root
    hint = ""
    if root.is_dir():
        inner = [p for p in sorted(root.iterdir()) if p.is_dir() and (p / CSV_NAME).is_file()]
        if inner:
            hint = f" Did you mean {inner[0]}?"
        elif CSV_NAME in missing and len(missing) == 1:
            hint = f" {CSV_NAME} ships inside every imagenette2 archive (and in the fastai/imagenette repository)."
    raise FileNotFoundError(
        f"{root} is not an Imagenette folder: missing {', '.join(missing)}. Expected {root}/train/<wnid>/*.JPEG, "
        f"{root}/val/<wnid>/*.JPEG and {root}/{CSV_NAME} (the layout of the imagenette2 archives).{hint}")


def _find_layout(folder: Path) -> Path | None:
    """The folder (itself or a direct child) holding train/, val/ and noisy_imagenette.csv."""
    for candidate in (folder, *sorted(p for p in folder.iterdir() if p.is_dir())):
        if (candidate / CSV_NAME).is_file() and all((candidate / s).is_dir() for s in SPLITS):
            return candidate
    return None


# --------------------------------------------------------------------------- fetch / verify / extract
def _archive_stem(name: str) -> str | None:
    """'imagenette2-160.tgz' -> 'imagenette2-160'; None when the name is not an archive's."""
    for suffix in _ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


def _local_path(url: str) -> Path | None:
    parts = urlparse(url)
    return Path(url2pathname(parts.path)) if parts.scheme == "file" else None


def _is_verified(folder: Path, md5: str) -> bool:
    try:
        return json.loads((folder / _MARKER).read_text()).get("md5") == md5
    except (OSError, ValueError):
        return False


def _remove_leftovers(root: Path, name: str, stem: str) -> None:
    """Delete the temporary download/extraction of `name` that a killed process left (its pid is gone)."""
    name, stem = glob.escape(name), glob.escape(stem)
    for pattern, marker in ((f"{name}.part*", ".part"), (f".{stem}.extracting*", ".extracting")):
        for path in root.glob(pattern):
            pid = path.name.rsplit(marker, 1)[-1]
            if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
                log.info("removing %s, left by an interrupted run", path)
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)


def _fetch(url: str, archive: Path, md5: str) -> None:
    """Download `url` to `archive` through a temporary name, so a partial file never has the final name."""
    part = archive.with_name(f"{archive.name}.part{os.getpid()}")
    local = _local_path(url)
    log.info("fetching %s -> %s", url, archive)
    try:
        if local is not None:  # torchvision's download_url cannot read file:// URLs (no response length)
            shutil.copyfile(local, part)
        else:  # torchvision: follows redirects, retries https over http
            download_url(url, str(archive.parent), filename=part.name)
        got = calculate_md5(part)
        if got != md5:
            if local is not None:
                raise IntegrityError(f"{local}: md5 {got} does not match the expected {md5}; it is incomplete or "
                                     "another archive (or that md5 is wrong). Nothing was kept under "
                                     f"{archive.parent}; replace the file with a complete copy.")
            raise IntegrityError(f"{url}: md5 {got} does not match the expected {md5}; the download was discarded. "
                                 "Check the URL and md5 (an incomplete transfer also gives this), then run again.")
        os.replace(part, archive)
    except IntegrityError:
        raise
    except (OSError, ValueError, RuntimeError) as err:  # URLError is an OSError; a bad scheme a ValueError
        raise DataUnavailableError(
            f"Could not fetch {url} ({_one_line(err)}). Without network access, download that file elsewhere and "
            f"place it at {archive} (md5 {md5}); it is then verified and used without downloading.") from err
    finally:  # also on Ctrl-C: a partial download never stays
        part.unlink(missing_ok=True)


def _unpack(archive: Path, dest: Path) -> None:
    """Extract a tar (any compression) or zip archive into `dest`; tar members may not leave `dest`."""
    if archive.name.lower().endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(dest)
        return
    with tarfile.open(archive, "r:*") as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4: no absolute paths, links out, ...
            tar.extractall(dest, filter="data")
        else:  # pragma: no cover
            tar.extractall(dest)


def _extract(archive: Path, folder: Path, md5: str, url: str) -> None:
    """Extract into a temporary folder, check the layout and that every listed image is there, mark it
    verified, then move it into place. Raises IntegrityError with a short reason (the caller names the file)."""
    tmp = folder.parent / f".{folder.name}.extracting{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("extracting %s -> %s", archive, folder)
    try:
        try:
            _unpack(archive, tmp)
        except _ARCHIVE_ERRORS as err:
            raise IntegrityError("empty file" if archive.stat().st_size == 0 else _archive_reason(err)) from err
        top = _find_layout(tmp)
        if top is None:
            raise IntegrityError(f"no <top>/train/, <top>/val/ and <top>/{CSV_NAME} inside")
        try:
            listed = listed_paths((top / CSV_NAME).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, csv.Error) as err:
            raise IntegrityError(f"its {CSV_NAME} is not the official label file ({_one_line(err)})") from err
        if not listed:
            raise IntegrityError(f"its {CSV_NAME} lists no images")
        found = image_files(top)
        lost = [p for p in listed if p not in found]
        if lost:
            raise IntegrityError(f"truncated? {len(lost)} of the {len(listed)} images its {CSV_NAME} lists are "
                                 f"missing, e.g. {lost[0]}")
        (top / _MARKER).write_text(json.dumps({"archive": archive.name, "md5": md5, "source": url}))
        if _is_verified(folder, md5):  # another process finished first
            return
        if folder.exists():  # an older verified extract of a different archive under the same name
            shutil.rmtree(folder)
        os.replace(top, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _archive_reason(err: BaseException) -> str:
    text = _one_line(err)
    if isinstance(err, EOFError) or "unexpected end" in text or "ended before" in text:
        return f"truncated: {text}"
    if "could not be opened successfully" in text:  # tarfile tried every compression
        return "not a tar or zip archive"
    return text


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


def prepare_archive(source: str | Path, md5: str | None = None, *, download_root: str | Path | None = None,
                    keep_archive: bool = True) -> Path:
    """Fetch, md5-verify and extract an Imagenette archive (an official name, an http(s)/file:// URL or a local
    path) once into `download_root/<slug>/` (default `paths.data_dir()`); return that folder.

    A marker with the same md5 means done. A copy with a wrong md5 is fetched again; a fetch that fails says
    where to place the file by hand (`DataUnavailableError`). Remote URLs need `md5`; a local file named like
    an official archive must match its md5; any other local file vouches for itself.
    """
    if str(source) in ARCHIVES:
        url, official_md5 = ARCHIVES[str(source)]
        md5 = md5 or official_md5
    elif "://" in str(source):
        url = str(source)
    else:
        url = Path(source).expanduser().resolve().as_uri()
    name = Path(urlparse(url).path).name
    stem = _archive_stem(name)
    if stem is None:
        raise ValueError(f"{source!r} is not an archive: expected a name ending in {', '.join(_ARCHIVE_SUFFIXES)}.")
    local = _local_path(url)
    if md5 is None:
        if local is None:
            raise ValueError(f"{url}: a remote archive needs its md5 to be verified. Download it and pass the local "
                             "file (its md5 is then computed), or call prepare_archive/resolve_root with md5=...")
        if not local.is_file():
            raise DataUnavailableError(f"Archive {local} not found.")
        md5 = ARCHIVES[stem][1] if stem in ARCHIVES else calculate_md5(local)

    root = Path(download_root).expanduser() if download_root is not None else paths.data_dir()
    folder, archive = root / data_slug(stem), root / name
    if _is_verified(folder, md5):
        return folder
    if folder.exists() and not (folder / _MARKER).exists():
        raise ValueError(f"{folder} exists but was not extracted and verified by lambdalib. Pass data='{folder}' to "
                         f"use it as it is, or delete it to fetch {name} again.")
    root.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(root, name, folder.name)
    is_source = local is not None and local.resolve() == archive.resolve()  # never delete the user's file
    if archive.exists() and not check_integrity(archive, md5):
        if is_source:
            raise IntegrityError(f"{archive}: md5 {calculate_md5(archive)} does not match the expected {md5}; "
                                 "it is incomplete or another archive. Replace it with a complete copy.")
        log.warning("%s is incomplete or corrupt (md5 mismatch): fetching it again", archive)
        archive.unlink()
    if not archive.exists():
        _fetch(url, archive, md5)
    try:
        _extract(archive, folder, md5, url)
    except IntegrityError as err:
        if is_source:
            raise IntegrityError(f"{archive} is not a readable imagenette2 archive ({err}); replace or delete it, "
                                 "then run again.") from err
        archive.unlink(missing_ok=True)  # the copy is as bad as its source: keeping it would only mislead
        what = local if local is not None else f"{url} (md5 {md5})"
        raise IntegrityError(f"{what} is not a readable imagenette2 archive ({err}); nothing of it was kept "
                             f"under {root}. Replace it with a complete copy, then run again.") from err
    if not keep_archive and not is_source:
        archive.unlink()
    return folder


# --------------------------------------------------------------------------- the data argument
def embedded_root() -> Path:
    """The small real Imagenette subset tracked in the repository (data/imagenette-mini/)."""
    candidates = [paths.data_dir() / EMBEDDED_NAME, Path(__file__).resolve().parents[1] / "data" / EMBEDDED_NAME]
    for folder in candidates:
        if (folder / CSV_NAME).is_file():
            return folder
    raise FileNotFoundError(
        f"The embedded Imagenette subset is missing (looked in {', '.join(map(str, candidates))}). It is tracked "
        f"in the repository as data/{EMBEDDED_NAME}/; rebuild it with `python scripts/build_embedded_subset.py`, "
        "or use data='imagenette2-160' to download the full set.")


def resolve_root(data: str | Path | None = None, variant: str = "imagenette2-160", *, md5: str | None = None,
                 download_root: str | Path | None = None) -> Path:
    """Turn a `data` argument into a folder holding train/, val/ and noisy_imagenette.csv: None/"embedded" (the
    subset in the repository), an official archive name ("download": the one named by `variant`), a folder used
    as it is, or an archive path or URL (`prepare_archive`). Anything else is one line naming what is accepted.
    """
    if data is None or str(data) == "embedded":
        return embedded_root()
    text = str(data)
    if text == "download":
        if variant not in ARCHIVES:
            raise ValueError(f"variant={variant!r} is not an official archive; use one of {', '.join(ARCHIVES)}.")
        text = variant
    if text in ARCHIVES or "://" in text:
        return check_root(prepare_archive(text, md5, download_root=download_root))
    path = Path(text).expanduser()
    if text.strip() and path.is_dir():
        return check_root(path)
    if path.is_file():
        if _archive_stem(path.name):
            return check_root(prepare_archive(path, md5, download_root=download_root))
        raise ValueError(f"data={text!r} is a file but not an archive (expected a name ending in "
                         f"{', '.join(_ARCHIVE_SUFFIXES)}) nor a folder. {_accepted()}")
    close = difflib.get_close_matches(text, ["embedded", *ARCHIVES], n=1, cutoff=0.75)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise FileNotFoundError(f"data={text!r}: no such folder, archive or dataset name.{hint} {_accepted()}")


def _accepted() -> str:
    return (f"Use 'embedded' (the subset in the repository), one of {', '.join(map(repr, ARCHIVES))} (downloaded "
            f"into {paths.data_dir()}), a folder with train/, val/ and {CSV_NAME}, or an imagenette2 archive "
            "(.tgz path or file:// / https:// URL).")
