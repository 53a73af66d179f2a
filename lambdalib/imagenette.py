"""Facts about Imagenette that every floor needs: classes, the official noise columns, names on disk.

No lambdalib imports and no torch: config, data, download, figures and claims all read these.
"""
from __future__ import annotations

import functools
import hashlib
import math
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


@functools.lru_cache(maxsize=32)
def data_fingerprint(data: str) -> str:
    """What a data source holds, as 12 hex digits; '' where the name says it (the embedded set, the official
    archives) or nothing can be read here (a URL, a missing path). A folder: its CSV and every image's path and
    bytes, so an image rewritten in place at the same size is another data set (0.4 s for 13,394 images, 162 MB,
    read from the page cache of a 2-core EPYC); an archive file: all its bytes. Two folders of one name never
    share it."""
    path = Path(data).expanduser()
    if data in KNOWN_DATA or "://" in data or not path.exists():
        return ""
    digest = hashlib.sha1()
    if path.is_dir():
        csv = path / CSV_NAME
        digest.update(csv.read_bytes() if csv.is_file() else b"")
        for split in SPLITS:
            for image in sorted((path / split).rglob("*")) if (path / split).is_dir() else []:
                if image.is_file():
                    digest.update(f"{image.relative_to(path).as_posix()}\n".encode())
                    try:
                        digest.update(hashlib.sha1(image.read_bytes()).digest())
                    except OSError:  # unreadable here: the data set's on_error says what that means, not this
                        digest.update(b"unreadable")
    else:
        with path.open("rb") as handle:
            while chunk := handle.read(16 << 20):
                digest.update(chunk)
    return digest.hexdigest()[:12]
