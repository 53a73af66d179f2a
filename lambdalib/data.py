"""Imagenette with the official noisy labels: download, verify, load, and a small embedded subset.

Imagenette is 10 easy ImageNet classes (9,469 train / 3,925 val images). Every imagenette2 archive
ships `noisy_imagenette.csv`, whose columns `noisy_labels_{0,1,5,25,50}` hold the official flipped
train labels; we use them as they are (validation labels are never flipped). Other noise rates are
only drawn on request (`synthetic=True`), seeded, with the realised rate recorded.

Where the images come from (`resolve_root`):
  - None / "embedded": the small real subset tracked in the repository at data/imagenette-mini/;
  - "imagenette2-160" / "imagenette2-320" / "imagenette2": the official archive, downloaded into
    `paths.data_dir()`, md5-verified and extracted once (a marker file records the verified copy);
  - a folder holding train/, val/ and noisy_imagenette.csv: used as it is;
  - an archive path (.tgz) or URL (file://, https://): verified and extracted like a download.

Typical use:
    root = resolve_root(None)
    train = NoisyImagenette(root, "train", noise=0.25, img_size=160)
    loader = make_loader(train, batch_size=64, shuffle=True, seed=0)
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import tarfile
import warnings
import zlib
from pathlib import Path
from typing import Callable, Iterable, Iterator
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision import transforms as T
from torchvision.datasets.utils import calculate_md5, check_integrity, download_url, extract_archive

from . import paths

log = logging.getLogger(__name__)

# The official archives: URLs and md5s exactly as torchvision.datasets.Imagenette lists them.
_S3 = "https://s3.amazonaws.com/fast-ai-imageclas"
ARCHIVES: dict[str, tuple[str, str]] = {
    "imagenette2": (f"{_S3}/imagenette2.tgz", "fe2fc210e6bb7c5664d602c3cd71e612"),
    "imagenette2-320": (f"{_S3}/imagenette2-320.tgz", "3df6f0d01a2c9592104656642f5e78a3"),
    "imagenette2-160": (f"{_S3}/imagenette2-160.tgz", "e793b78cc4c9e9a4ccc0c1155377a412"),
}
# Class index = position in this sorted tuple (what ImageFolder would give, too).
WNIDS: tuple[str, ...] = (
    "n01440764", "n02102040", "n02979186", "n03000684", "n03028079",
    "n03394916", "n03417042", "n03425413", "n03445777", "n03888257",
)
CLASS_NAMES: tuple[str, ...] = (
    "tench", "English springer", "cassette player", "chain saw", "church",
    "French horn", "garbage truck", "gas pump", "golf ball", "parachute",
)
NOISE_LEVELS: tuple[float, ...] = (0.0, 0.01, 0.05, 0.25, 0.5)  # the official columns, as fractions
CSV_NAME = "noisy_imagenette.csv"
CSV_COLUMNS = ("path", "noisy_labels_0", "noisy_labels_1", "noisy_labels_5", "noisy_labels_25", "noisy_labels_50",
               "is_valid")
EMBEDDED_NAME = "imagenette-mini"
SPLITS = ("train", "val")
_MARKER = ".lambdalib-verified.json"  # written into an extracted folder once its archive passed md5
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


class DataUnavailableError(FileNotFoundError):
    """An archive could not be fetched; the message says which file to place where."""


class IntegrityError(ValueError):
    """An archive does not match its md5 or cannot be extracted."""


class CorruptImageError(OSError):
    """An image file cannot be decoded; the message names its path."""


# --------------------------------------------------------------------------- download / verify / extract


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


def _fetch(url: str, archive: Path, md5: str) -> None:
    """Download `url` to `archive` through a temporary name, so a partial file never has the final name."""
    part = archive.with_name(f"{archive.name}.part{os.getpid()}")
    log.info("fetching %s -> %s", url, archive)
    try:
        local = _local_path(url)
        if local is not None:  # torchvision's download_url cannot read file:// URLs (no response length)
            shutil.copyfile(local, part)
        else:  # torchvision: follows redirects, retries https over http
            download_url(url, str(archive.parent), filename=part.name)
        got = calculate_md5(part)
        if got != md5:
            raise IntegrityError(
                f"{url}: md5 {got} does not match the expected {md5}; the download was discarded. "
                "Check the URL and md5 (an incomplete transfer also gives this), then run again."
            )
        os.replace(part, archive)
    except IntegrityError:
        raise
    except (OSError, ValueError, RuntimeError) as err:  # URLError is an OSError; a bad scheme a ValueError
        raise DataUnavailableError(
            f"Could not fetch {url} ({err}). Without network access, download that file elsewhere and place it "
            f"at {archive} (md5 {md5}); it is then verified and used without downloading."
        ) from err
    finally:
        part.unlink(missing_ok=True)


def _find_layout(folder: Path) -> Path | None:
    """The folder (itself or a direct child) holding train/, val/ and noisy_imagenette.csv."""
    for candidate in (folder, *sorted(p for p in folder.iterdir() if p.is_dir())):
        if (candidate / CSV_NAME).is_file() and all((candidate / s).is_dir() for s in SPLITS):
            return candidate
    return None


def _extract(archive: Path, folder: Path, md5: str, url: str) -> None:
    """Extract into a temporary folder, check the layout, mark it verified, then move it into place."""
    tmp = folder.parent / f".{folder.name}.extracting{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("extracting %s -> %s", archive, folder)
    try:
        extract_archive(str(archive), str(tmp))
        top = _find_layout(tmp)
        if top is None:
            raise IntegrityError(
                f"{archive} does not hold the imagenette2 layout: expected <top>/train/<wnid>/*.JPEG, "
                f"<top>/val/<wnid>/*.JPEG and <top>/{CSV_NAME}."
            )
        (top / _MARKER).write_text(json.dumps({"archive": archive.name, "md5": md5, "source": url}))
        if _is_verified(folder, md5):  # another process finished first
            return
        if folder.exists():  # an older verified extract of a different archive under the same name
            shutil.rmtree(folder)
        os.replace(top, folder)
    except (tarfile.TarError, EOFError, zlib.error) as err:
        raise IntegrityError(f"{archive} could not be extracted ({err}); delete it and run again.") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def prepare_archive(
    source: str | Path, md5: str | None = None, *, download_root: str | Path | None = None, keep_archive: bool = True
) -> Path:
    """Fetch, md5-verify and extract an Imagenette archive once; return the extracted folder.

    `source` is an official name ("imagenette2-160", "imagenette2-320", "imagenette2", using the URLs and
    md5s of torchvision's Imagenette), an http(s) or file:// URL, or a local archive path. All go the same
    way: the archive is fetched to `download_root/<name>.tgz` (default `paths.data_dir()`), its md5
    checked, and it is extracted to `download_root/<name>/` with a marker file. When that marker already
    records the same md5, nothing is fetched or extracted. An archive already in place with a wrong md5
    (partial or corrupt) is fetched again; a fetched file with a wrong md5 raises `IntegrityError`;
    a failed fetch (offline) raises `DataUnavailableError` saying where to place the file by hand.
    `md5` is required for remote URLs; a local file without one is trusted and its md5 computed.
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
            raise ValueError(f"md5=None for the remote archive {url}: pass its md5 so the download can be verified.")
        if not local.is_file():
            raise DataUnavailableError(f"Archive {local} not found.")
        md5 = calculate_md5(local)  # a local file vouches for itself

    root = Path(download_root).expanduser() if download_root is not None else paths.data_dir()
    folder, archive = root / stem, root / name
    if _is_verified(folder, md5):
        return folder
    if folder.exists() and not (folder / _MARKER).exists():
        raise ValueError(
            f"{folder} exists but was not extracted and verified by lambdalib. Pass data='{folder}' to use it "
            f"as it is, or delete it to fetch {name} again."
        )
    root.mkdir(parents=True, exist_ok=True)
    if archive.exists() and not check_integrity(archive, md5):
        if local is not None and local.resolve() == archive.resolve():  # never delete the source itself
            raise IntegrityError(f"{archive}: md5 {calculate_md5(archive)} does not match the expected {md5}.")
        log.warning("%s is incomplete or corrupt (md5 mismatch): fetching it again", archive)
        archive.unlink()
    if not archive.exists():
        _fetch(url, archive, md5)
    _extract(archive, folder, md5, url)
    if not keep_archive and not (local is not None and local.resolve() == archive.resolve()):
        archive.unlink()
    return folder


# --------------------------------------------------------------------------- where the data is


def embedded_root() -> Path:
    """The small real Imagenette subset tracked in the repository (data/imagenette-mini/)."""
    candidates = [paths.data_dir() / EMBEDDED_NAME, Path(__file__).resolve().parents[1] / "data" / EMBEDDED_NAME]
    for folder in candidates:
        if (folder / CSV_NAME).is_file():
            return folder
    raise FileNotFoundError(
        f"The embedded Imagenette subset is missing (looked in {', '.join(map(str, candidates))}). It is tracked "
        f"in the repository as data/{EMBEDDED_NAME}/; rebuild it with `python scripts/build_embedded_subset.py`, "
        "or use data='imagenette2-160' to download the full set."
    )


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
        f"{root}/val/<wnid>/*.JPEG and {root}/{CSV_NAME} (the layout of the imagenette2 archives).{hint}"
    )


def resolve_root(
    data: str | Path | None = None,
    variant: str = "imagenette2-160",
    *,
    md5: str | None = None,
    download_root: str | Path | None = None,
) -> Path:
    """Turn a `data` argument into a folder holding train/, val/ and noisy_imagenette.csv.

    - None or "embedded": the embedded subset (`embedded_root()`);
    - "imagenette2-160", "imagenette2-320", "imagenette2": that official archive, downloaded, verified and
      extracted under `download_root` (default `paths.data_dir()`) on first use;
    - "download": the official archive named by `variant`;
    - a folder with the imagenette2 layout: used as it is;
    - a .tgz/.tar.gz/.tar/.zip path or a file://, http(s):// URL: fetched, verified (`md5`) and extracted
      like the official archives (see `prepare_archive`).
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
    if path.is_dir():
        return check_root(path)
    if path.is_file() and _archive_stem(path.name):
        return check_root(prepare_archive(path, md5, download_root=download_root))
    raise FileNotFoundError(
        f"data={text!r} was not found. Use None or 'embedded' (the embedded subset), one of {', '.join(ARCHIVES)} "
        f"(downloaded into {paths.data_dir()}), a folder with train/, val/ and {CSV_NAME}, or an imagenette2 "
        "archive (.tgz path or file:// / https:// URL)."
    )


# --------------------------------------------------------------------------- labels and noise


def read_labels(root_or_csv: str | Path) -> pd.DataFrame:
    """Read noisy_imagenette.csv (from a folder or the CSV path) and check its columns and classes."""
    csv = Path(root_or_csv)
    if csv.is_dir():
        csv = csv / CSV_NAME
    if not csv.is_file():
        raise FileNotFoundError(
            f"{csv} not found. The official noisy labels ship as {CSV_NAME} inside every imagenette2 archive; "
            "place it beside train/ and val/."
        )
    labels = pd.read_csv(csv)
    missing = [c for c in CSV_COLUMNS if c not in labels.columns]
    if missing:
        raise ValueError(f"{csv} lacks the columns {missing}; expected {list(CSV_COLUMNS)}.")
    labels["is_valid"] = labels["is_valid"].astype(str).str.lower().eq("true")
    unknown = sorted(set(labels[list(CSV_COLUMNS[1:6])].to_numpy().ravel()) - set(WNIDS))
    if unknown:
        raise ValueError(f"{csv} has labels {unknown[:5]} that are not Imagenette classes {list(WNIDS)}.")
    return labels


def noise_column(noise: float) -> str:
    """The official CSV column for a noise level: 0.25 -> 'noisy_labels_25'. Other values raise ValueError."""
    for level in NOISE_LEVELS:
        if math.isclose(float(noise), level, abs_tol=1e-9):
            return f"noisy_labels_{round(level * 100)}"
    hint = f" (noise is a fraction: {noise} % would be {float(noise) / 100:g})" if float(noise) > 1 else ""
    raise ValueError(
        f"noise={noise!r} is not an official Imagenette noise level; use one of {list(NOISE_LEVELS)}{hint}, "
        "or pass synthetic=True for seeded synthetic symmetric noise at any rate in [0, 1]."
    )


def symmetric_noise(targets: Iterable[int], rate: float, num_classes: int = len(WNIDS), seed: int = 0) -> np.ndarray:
    """Flip exactly round(rate * n) labels, chosen with `seed`, each to a uniformly drawn *other* class."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"synthetic noise rate={rate!r} must lie in [0, 1].")
    clean = np.asarray(list(targets), dtype=np.int64)
    rng = np.random.default_rng(seed)
    flip = rng.choice(len(clean), size=round(rate * len(clean)), replace=False)
    noisy = clean.copy()
    # Adding 1..C-1 modulo C never gives back the clean class.
    noisy[flip] = (clean[flip] + rng.integers(1, num_classes, size=len(flip))) % num_classes
    return noisy


def noise_table(labels: pd.DataFrame, noise_levels: Iterable[float] = NOISE_LEVELS) -> pd.DataFrame:
    """Realised flip rate of each official noise column, per split, against noisy_labels_0."""
    rows = []
    for level in noise_levels:
        column = noise_column(level)
        row = {"noise": float(level), "column": column}
        for split, part in (("train", labels[~labels.is_valid]), ("val", labels[labels.is_valid])):
            flipped = int((part[column] != part["noisy_labels_0"]).sum())
            row.update({f"{split}_flipped": flipped, f"{split}_images": len(part),
                        f"{split}_rate": flipped / len(part) if len(part) else float("nan")})
        rows.append(row)
    return pd.DataFrame(rows).set_index("noise")


def class_table(labels: pd.DataFrame) -> pd.DataFrame:
    """Images per class and split (clean labels), indexed by wnid, with the human class names."""
    table = pd.DataFrame({"name": CLASS_NAMES}, index=pd.Index(WNIDS, name="wnid"))
    for split, part in (("train", labels[~labels.is_valid]), ("val", labels[labels.is_valid])):
        table[split] = part["noisy_labels_0"].value_counts().reindex(WNIDS, fill_value=0).astype(int)
    return table


# --------------------------------------------------------------------------- transforms and dataset


def train_transform(img_size: int = 160) -> Callable:
    """RandomResizedCrop + horizontal flip + ToTensor + ImageNet normalisation."""
    return T.Compose([T.RandomResizedCrop(img_size), T.RandomHorizontalFlip(), T.ToTensor(),
                      T.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)])


def val_transform(img_size: int = 160) -> Callable:
    """Resize(img_size / 0.875) + CenterCrop + ToTensor + ImageNet normalisation."""
    return T.Compose([T.Resize(round(img_size / 0.875)), T.CenterCrop(img_size), T.ToTensor(),
                      T.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)])


def _open_rgb(path: str) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")  # convert() decodes fully, so truncated files fail here


def _list_files(folder: Path) -> set[str]:
    """Relative 'split/wnid/file' paths under a split folder (one directory scan, not a stat per file)."""
    found = set()
    for wnid_dir in os.scandir(folder):
        if wnid_dir.is_dir():
            found.update(f"{folder.name}/{wnid_dir.name}/{f.name}" for f in os.scandir(wnid_dir.path))
    return found


class NoisyImagenette(Dataset):
    """Imagenette images with the official noisy labels (or seeded synthetic ones); yields (image, label).

    Args:
        root: anything `resolve_root` accepts (None: the embedded subset).
        split: "train" or "val". Validation labels are always the clean ones, whatever `noise` says.
        noise: fraction of flipped train labels, one of NOISE_LEVELS (0, 0.01, 0.05, 0.25, 0.5), read from
            the official columns of noisy_imagenette.csv. Other values need `synthetic=True`.
        synthetic: flip round(noise * n) train labels drawn with `seed` to a different class (symmetric
            noise) instead of the official column; only on this explicit request.
        seed: seed of the synthetic noise.
        img_size: side of the default transforms' output.
        transform: "default" (train_transform / val_transform for the split), None (PIL images) or a callable.
        on_error: what a corrupt or unreadable image does. "raise" (default): fail fast with
            CorruptImageError naming the file. "skip": warn once per file, record it in `bad_files`
            and return the next readable sample instead (its own label), so batches keep their size;
            `bad_files` is per process (DataLoader workers keep their own).

    Attributes: root, split, noise, synthetic, paths, clean_targets, noisy_targets, targets (= the labels
    returned, i.e. noisy_targets), flipped, flip_rate (realised), wnids, classes (human names),
    class_to_idx, bad_files; class_counts() gives per-class counts.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        split: str = "train",
        noise: float = 0.0,
        *,
        synthetic: bool = False,
        seed: int = 0,
        img_size: int = 160,
        transform: Callable | str | None = "default",
        on_error: str = "raise",
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split={split!r}; use one of {list(SPLITS)}.")
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error={on_error!r}; use 'raise' (fail fast) or 'skip' (substitute and count).")
        # Validate before touching any file.
        if synthetic and not 0.0 <= float(noise) <= 1.0:
            raise ValueError(f"noise={noise!r}: synthetic noise is a fraction of flipped labels in [0, 1].")
        column = None if synthetic else noise_column(noise)
        self.root = resolve_root(root)
        self.split, self.noise, self.synthetic, self.seed = split, float(noise), synthetic, seed
        self.on_error = on_error
        self.wnids, self.classes = list(WNIDS), list(CLASS_NAMES)
        self.class_to_idx = {wnid: i for i, wnid in enumerate(WNIDS)}

        labels = read_labels(self.root)
        rows = labels[labels.is_valid == (split == "val")]
        self._check_files(rows["path"])
        self.paths = [str(self.root / p) for p in rows["path"]]
        self.clean_targets = rows["noisy_labels_0"].map(self.class_to_idx).to_numpy(np.int64)
        if split == "val":
            self.noisy_targets = self.clean_targets.copy()
        elif synthetic:
            self.noisy_targets = symmetric_noise(self.clean_targets, self.noise, len(WNIDS), seed)
        else:
            self.noisy_targets = rows[column].map(self.class_to_idx).to_numpy(np.int64)
        self.targets = self.noisy_targets
        self.flipped = self.noisy_targets != self.clean_targets
        self.flip_rate = float(self.flipped.mean()) if len(self.flipped) else 0.0

        if isinstance(transform, str):
            if transform != "default":
                raise ValueError(f"transform={transform!r}; use 'default', None (PIL images) or a callable.")
            transform = train_transform(img_size) if split == "train" else val_transform(img_size)
        self.transform = transform
        self.bad_files: set[str] = set()

    def _check_files(self, listed: pd.Series) -> None:
        folder = self.root / self.split
        if not folder.is_dir():
            check_root(self.root)  # raises with the full layout explanation
        missing = sorted(set(listed) - _list_files(folder))
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of {len(listed)} {self.split} images listed in {self.root / CSV_NAME} are missing "
                f"under {folder}, e.g. {self.root / missing[0]}. The folder must hold every file its CSV lists "
                "(delete an extracted folder to extract its archive again; rebuild the embedded subset with "
                "scripts/build_embedded_subset.py)."
            )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        for offset in range(len(self)):
            i = (index + offset) % len(self)
            path = self.paths[i]
            try:
                image = _open_rgb(path)
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
                if self.on_error == "raise":
                    raise CorruptImageError(
                        f"Cannot read image {path}: {err}. Replace or delete it, or pass on_error='skip'."
                    ) from err
                if path not in self.bad_files:
                    self.bad_files.add(path)
                    warnings.warn(f"skipping unreadable image {path}: {err}", RuntimeWarning, stacklevel=2)
                continue
            if self.transform is not None:
                image = self.transform(image)
            return image, int(self.noisy_targets[i])
        raise CorruptImageError(f"No readable image in {self.root / self.split} ({len(self.bad_files)} unreadable).")

    def class_counts(self, noisy: bool = False) -> dict[str, int]:
        """Images per class name, by clean labels (or by the noisy labels returned when noisy=True)."""
        counts = np.bincount(self.noisy_targets if noisy else self.clean_targets, minlength=len(WNIDS))
        return {name: int(c) for name, c in zip(CLASS_NAMES, counts)}

    def __repr__(self) -> str:
        kind = "synthetic" if self.synthetic else "official"
        return (f"NoisyImagenette(root={str(self.root)!r}, split={self.split!r}, n={len(self)}, "
                f"noise={self.noise:g} ({kind}), realised flip rate={self.flip_rate:.4f})")


# --------------------------------------------------------------------------- loader


def default_workers() -> int:
    """DataLoader workers by default: min(usable CPU cores, 8)."""
    try:
        cores = len(os.sched_getaffinity(0))  # respects container/cgroup CPU pinning
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return min(cores, 8)


def _seed_worker(worker_id: int) -> None:
    # torch already seeds each worker with base_seed + worker_id (base_seed drawn from the loader's
    # generator); numpy and python `random` get the same seed so every augmentation library is covered.
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def _rng_state() -> tuple:
    return torch.get_rng_state(), random.getstate(), np.random.get_state()


def _set_rng_state(state: tuple) -> None:
    torch.set_rng_state(state[0])
    random.setstate(state[1])
    np.random.set_state(state[2])


class SeededLoader(DataLoader):
    """A DataLoader whose augmentation randomness comes from its own generator, also with workers=0.

    With workers, torch seeds every worker from `generator` (and `_seed_worker` seeds numpy/random).
    Without, the transforms would draw from the global RNGs, so each batch is produced with this loader's
    own RNG state swapped in (seeded from `generator` per epoch) and the caller's state swapped back out.
    """

    def __iter__(self) -> Iterator:
        batches = super().__iter__()
        return batches if self.num_workers > 0 else self._in_process(batches)

    def _in_process(self, batches: Iterator) -> Iterator:
        seed = int(torch.randint(2**62, (), generator=self.generator))
        outer = _rng_state()
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        state = _rng_state()
        _set_rng_state(outer)
        while True:
            outer = _rng_state()
            _set_rng_state(state)
            try:
                batch = next(batches)
            except StopIteration:
                return
            finally:
                state = _rng_state()
                _set_rng_state(outer)
            yield batch


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    workers: int | None = None,
    sampler: Sampler | None = None,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader whose order and augmentations are fully determined by `seed` (and the worker count).

    Order: a torch.Generator seeded with `seed` drives the shuffling (a custom `sampler`, e.g. a
    DistributedSampler, brings its own seed and replaces `shuffle`). Augmentations: workers are seeded
    from that generator (torch, numpy and python `random`); with workers=0 the loader keeps its own RNG
    stream (see SeededLoader). Each epoch continues the stream, so epochs differ but runs repeat.
    Defaults: workers=default_workers(), pin_memory when CUDA is available, no persistent workers.
    """
    workers = default_workers() if workers is None else workers
    return SeededLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else None,
        sampler=sampler,
        num_workers=workers,
        worker_init_fn=_seed_worker,
        generator=torch.Generator().manual_seed(seed),
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
        persistent_workers=False,
    )


# --------------------------------------------------------------------------- overview and sample grid


def overview(root: str | Path | None = None, noise_levels: Iterable[float] = NOISE_LEVELS) -> dict:
    """Class counts per split and the realised noise rate per official level, from the CSV only (fast).

    `root`: anything `resolve_root` accepts. Returns {"root": Path, "classes": DataFrame indexed by wnid
    with columns name, train, val; "noise": DataFrame indexed by noise level with columns column,
    train_flipped, train_images, train_rate, val_flipped, val_images, val_rate}. Print the frames with
    `.to_string()`. Unknown noise levels raise ValueError listing the official ones.
    """
    levels = list(noise_levels)
    for level in levels:
        noise_column(level)  # fail before touching the data
    folder = resolve_root(root)
    labels = read_labels(folder)
    return {"root": folder, "classes": class_table(labels), "noise": noise_table(labels, levels)}


def plot_samples(
    root: str | Path | None = None,
    noise: float = 0.25,
    n: int = 16,
    path: str | Path | None = None,
    *,
    split: str = "train",
    seed: int = 0,
    synthetic: bool = False,
):
    """A grid of `n` random train images (seeded) titled with their labels at `noise`; returns the Figure.

    Images whose label is flipped are titled "clean → noisy" in red; the others show the clean class in
    black. The figure title gives the realised flip rate. When `path` is given the figure is saved there
    (PNG/PDF/SVG by suffix, folders created). Built on matplotlib's Figure, so no GUI backend is needed.
    """
    from matplotlib.figure import Figure

    data = NoisyImagenette(root, split, noise, synthetic=synthetic, seed=seed, transform=None)
    rng = np.random.default_rng(seed)
    picks = sorted(rng.choice(len(data), size=min(n, len(data)), replace=False))
    cols = math.ceil(math.sqrt(len(picks)))
    rows = math.ceil(len(picks) / cols)
    fig = Figure(figsize=(2.0 * cols, 2.3 * rows), layout="constrained")
    for k, i in enumerate(picks):
        ax = fig.add_subplot(rows, cols, k + 1)
        image, noisy = data[i]
        clean = CLASS_NAMES[data.clean_targets[i]]
        flipped = bool(data.flipped[i])
        ax.imshow(image)
        ax.set_title(f"{clean} →\n{CLASS_NAMES[noisy]}" if flipped else clean, fontsize=8,
                     color="red" if flipped else "black")
        ax.axis("off")
    kind = "synthetic" if synthetic else "official"
    fig.suptitle(f"{data.root.name} {split}, {kind} noise {noise:g}: realised flip rate {data.flip_rate:.2%} "
                 "(red: clean → noisy label)", fontsize=9)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig
