"""Facts about Imagenette that every floor needs: classes, the official noise columns, names on disk.

No lambdalib imports and no torch: config, data, download, figures and claims all read these.
"""
from __future__ import annotations

import csv
import functools
import hashlib
import io
import math
import os
import re
from pathlib import Path

# Class index = position in this sorted tuple (what ImageFolder would give, too).
WNIDS: tuple[str, ...] = (
    "n01440764", "n02102040", "n02979186", "n03000684", "n03028079",
    "n03394916", "n03417042", "n03425413", "n03445777", "n03888257",
)
CLASS_NAMES: tuple[str, ...] = (
    "tench", "English springer", "cassette player", "chain saw", "church",
    "French horn", "garbage truck", "gas pump", "golf ball", "parachute",
)
CLASSES = len(WNIDS)  # chance accuracy is 1/10, chance loss ln 10
CHANCE_LOSS = math.log(CLASSES)
FULL_IMAGENETTE = (9469, 3925)  # train / val images of the official archives

OFFICIAL_NOISE_LEVELS = (0.0, 0.01, 0.05, 0.25, 0.5)  # the columns of Imagenette's noisy_imagenette.csv
NOISE_TOLERANCE = 1e-9  # how close a rate must be to an official level to use its column

CSV_NAME = "noisy_imagenette.csv"
CSV_COLUMNS = ("path", "noisy_labels_0", "noisy_labels_1", "noisy_labels_5", "noisy_labels_25", "noisy_labels_50",
               "is_valid")
SPLITS = ("train", "val")
EMBEDDED_NAME = "imagenette-mini"

# ImageNet normalisation (timm's IMAGENET_DEFAULT_MEAN / _STD, written here so no floor needs timm for them)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
EVAL_CROP_FRACTION = 0.875  # evaluation: resize to img_size / 0.875, then centre-crop img_size (ImageNet's usual)


def timm_crop_pct(img_size: int) -> float:
    """The crop_pct timm's eval transform (resize to floor(img_size / crop_pct)) needs to resize as lambdalib's
    does (round(img_size / 0.875)): half a pixel short of that size, so the floor lands on it at every size."""
    return round(img_size / (round(img_size / EVAL_CROP_FRACTION) + 0.5), 6)


def official_noise_level(noise: float) -> float | None:
    """The official level `noise` stands for (0.25 -> 0.25), or None when Imagenette has no such column."""
    for level in OFFICIAL_NOISE_LEVELS:
        if math.isclose(noise, level, rel_tol=0.0, abs_tol=NOISE_TOLERANCE):
            return level
    return None


def data_slug(data: str) -> str:
    """A data source as a short name: 'embedded', 'imagenette2-160', or a folder/archive's own name."""
    name = Path(data).name if ("/" in data or "\\" in data) else data
    return re.sub(r"[^A-Za-z0-9.]+", "-", name).strip("-") or "data"


KNOWN_DATA = ("embedded", "imagenette2", "imagenette2-160", "imagenette2-320")  # content known by the name


def listed_paths(labels: str) -> list[str]:
    """The `path` column of a noisy_imagenette.csv's text, empty cells left out (csv.Error when it is not a CSV)."""
    return [row["path"] for row in csv.DictReader(io.StringIO(labels)) if row.get("path")]


def file_digest(path: str | Path) -> bytes:
    """sha1 of a file's bytes; b"unreadable" when it cannot be read (the data set's on_error says what that means).
    Read once per process while its inode, size, mtime and ctime hold (a rewrite or chmod changes ctime): every
    data fingerprint and cache key of a process reads each file once, yet sees a file rewritten in place."""
    try:
        st = os.stat(path)
        return _read_digest(str(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    except OSError:
        return b"unreadable"


@functools.lru_cache(maxsize=1 << 16)
def _read_digest(path: str, *stat: int) -> bytes:
    digest = hashlib.sha1()
    with Path(path).open("rb") as handle:  # in pieces: an archive can be gigabytes
        while chunk := handle.read(16 << 20):
            digest.update(chunk)
    return digest.digest()


def data_fingerprint(data: str) -> str:
    """What a data source holds, as 12 hex digits; '' where the name says it (the embedded set, the official
    archives) or nothing can be read here (a URL, a missing path). A folder: its CSV and the bytes of every image
    it lists (worked out afresh each call: an image rewritten in place, even at its own size and time, in this
    process too, is another data set), not its unlisted (unused) files. An archive file: all its bytes."""
    path = Path(data).expanduser()
    if data in KNOWN_DATA or "://" in data or not path.exists():
        return ""
    if not path.is_dir():
        return file_digest(path).hex()[:12]
    digest = hashlib.sha1()
    labels = (path / CSV_NAME).read_bytes() if (path / CSV_NAME).is_file() else b""
    digest.update(labels)
    try:
        listed = listed_paths(labels.decode("utf-8", "replace"))
    except csv.Error:  # not a CSV: the data set says so in one line when it reads it
        listed = []
    for name in sorted(set(listed)):
        digest.update(f"{name}\n".encode())
        digest.update(file_digest(path / name))
    return digest.hexdigest()[:12]
