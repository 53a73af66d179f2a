"""Imagenette with the official noisy labels: labels and noise, transforms, the dataset, a seeded loader.

The columns `noisy_labels_{0,1,5,25,50}` of the official `noisy_imagenette.csv` are used as they are
(validation labels are never flipped); other rates only on request (`synthetic=True`), seeded. Where the
images come from is download.py. Typical use:
    train = NoisyImagenette(resolve_root(None), "train", noise=0.25, img_size=160)
    loader = make_loader(train, batch_size=64, shuffle=True, seed=0)
"""
from __future__ import annotations

import collections
import functools
import math
import os
import random
import struct
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import transforms as T

from .download import CSV_NAME, SPLITS, check_root, image_files, resolve_root
from .imagenette import CLASS_NAMES, CSV_COLUMNS, EVAL_CROP_FRACTION, MEAN, STD, WNIDS, official_noise_level
from .imagenette import OFFICIAL_NOISE_LEVELS as NOISE_LEVELS


class UnreadableImageError(ValueError):
    """An image file cannot be decoded; `str(err)` is one line naming the file (`path`) and what to do, also when
    torch re-raises it from a DataLoader worker ("Caught ... Original Traceback", kept in `worker_report`)."""

    def __init__(self, message: str = "", path: str | None = None) -> None:
        report = None
        if message.startswith("Caught ") and "\nOriginal " in message:
            report, tag = message, f"{type(self).__name__}: "
            lines = [line for line in message.splitlines() if tag in line]
            message = lines[-1].split(tag, 1)[1].strip() if lines else " ".join(message.split())
        super().__init__(message)
        self.path = path or (message.partition(" is not a readable image")[0] if " is not a readable image" in message
                             else None)
        self.worker_report = report


CorruptImageError = UnreadableImageError  # the former name


# --------------------------------------------------------------------------- labels and noise
def read_labels(root_or_csv: str | Path) -> pd.DataFrame:
    """Read noisy_imagenette.csv (from a folder or the CSV path) and check its columns and classes."""
    csv = Path(root_or_csv)
    if csv.is_dir():
        csv = csv / CSV_NAME
    if not csv.is_file():
        raise FileNotFoundError(f"{csv} not found. The official noisy labels ship as {CSV_NAME} inside every "
                                "imagenette2 archive; place it beside train/ and val/.")
    try:
        labels = pd.read_csv(csv)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"{csv} is not a readable CSV ({' '.join(str(err).split())}); {CSV_NAME} ships inside "
                         "every imagenette2 archive: replace it with that file.") from err
    missing = [c for c in CSV_COLUMNS if c not in labels.columns]
    if missing:
        raise ValueError(f"{csv} lacks the columns {missing}; expected {list(CSV_COLUMNS)}.")
    repeated = labels["path"][labels["path"].duplicated()]
    if not repeated.empty:  # a repeated row would be trained on twice an epoch, or once under two labels
        more = f" (and {len(repeated) - 1} more)" * (len(repeated) > 1)
        raise ValueError(f"{csv} lists {repeated.iloc[0]}{more} more than once; each image must have one row.")
    labels["is_valid"] = labels["is_valid"].astype(str).str.lower().eq("true")
    unknown = sorted(set(labels[list(CSV_COLUMNS[1:6])].to_numpy().ravel()) - set(WNIDS), key=str)
    if unknown:
        raise ValueError(f"{csv} has labels {unknown[:5]} that are not Imagenette classes {list(WNIDS)}.")
    return labels


def noise_column(noise: float, *, synthetic_hint: bool = True) -> str:
    """The official CSV column for a noise level: 0.25 -> 'noisy_labels_25'. Other values raise ValueError
    listing the official levels (and, with `synthetic_hint`, naming the synthetic=True argument)."""
    level = official_noise_level(float(noise))
    if level is not None:
        return f"noisy_labels_{round(level * 100)}"
    hint = f" (noise is a fraction: {noise} % would be {float(noise) / 100:g})" if float(noise) > 1 else ""
    other = "; other rates exist only as seeded synthetic symmetric noise (synthetic=True)" if synthetic_hint else ""
    raise ValueError(f"noise={noise!r} is not an official Imagenette noise level; the official noisy labels exist for "
                     f"{list(NOISE_LEVELS)}{hint}{other}.")


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
                      T.Normalize(MEAN, STD)])


def val_transform(img_size: int = 160) -> Callable:
    """Resize(img_size / EVAL_CROP_FRACTION) + CenterCrop(img_size) + ToTensor + ImageNet normalisation."""
    return T.Compose([*eval_ops.__wrapped__(img_size), T.ToTensor(), T.Normalize(MEAN, STD)])  # fresh objects


@functools.lru_cache(maxsize=8)
def eval_ops(size: int) -> tuple[Callable, ...]:
    """val_transform(size)'s PIL steps before ToTensor (Resize, CenterCrop): the eval cache applies the same ones."""
    return T.Resize(round(size / EVAL_CROP_FRACTION)), T.CenterCrop(size)


def sample_crop_params(heights: torch.Tensor, widths: torch.Tensor, generator: torch.Generator | None = None,
                       scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                       attempts: int = 10) -> torch.Tensor:
    """torchvision `RandomResizedCrop.get_params`, vectorised over images: (n, 4) int64 (top, left, h, w), on
    the device of `heights`. Always `attempts` draws per image (the first that fits is kept, else torchvision's
    centre crop), so the same seed gives the same crops whatever fits."""
    device = heights.device if torch.is_tensor(heights) else torch.device("cpu")
    draw = dict(dtype=torch.float64, device=device)
    heights, widths = torch.as_tensor(heights, **draw).reshape(-1), torch.as_tensor(widths, **draw).reshape(-1)
    n = len(heights)
    target = (heights * widths)[:, None] * torch.empty(n, attempts, **draw).uniform_(*scale, generator=generator)
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    aspect = torch.exp(torch.empty(n, attempts, **draw).uniform_(*log_ratio, generator=generator))
    w = torch.round(torch.sqrt(target * aspect))  # round half to even, like Python's round()
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= widths[:, None]) & (h > 0) & (h <= heights[:, None])
    first, found = fits.to(torch.int8).argmax(dim=1), fits.any(dim=1)
    pick = torch.arange(n, device=device)
    w, h = w[pick, first], h[pick, first]
    in_ratio = widths / heights  # fallback: torchvision's centre crop
    fw = torch.where(in_ratio > max(ratio), torch.round(heights * max(ratio)), widths)
    fh = torch.where(in_ratio < min(ratio), torch.round(widths / min(ratio)), heights)
    w, h = torch.where(found, w, fw), torch.where(found, h, fh)
    u = torch.rand(n, 2, generator=generator, **draw)
    top = torch.where(found, torch.floor(u[:, 0] * (heights - h + 1)), torch.div(heights - h, 2, rounding_mode="floor"))
    left = torch.where(found, torch.floor(u[:, 1] * (widths - w + 1)), torch.div(widths - w, 2, rounding_mode="floor"))
    return torch.stack([top, left, h, w], dim=1).to(torch.int64)


def stored_boxes(params: torch.Tensor, sizes: torch.Tensor, store: int) -> torch.Tensor:
    """Crop boxes (top, left, h, w) on the original images -> the same regions on the squashed store x store
    images, rounded to whole stored pixels (at least one)."""
    params, scale = params.to(torch.float64), store / sizes.to(torch.float64)  # (height, width): y then x, as in params
    start = torch.round(params[:, :2] * scale).clamp(0, store - 1)
    end = torch.maximum(torch.round((params[:, :2] + params[:, 2:]) * scale).clamp(max=store), start + 1)
    return torch.cat([start, end - start], dim=1).to(torch.int64)


# what decoding a broken file raises (PIL's plugins differ; a decompression bomb is not an OSError)
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError)


def _open_rgb(path: str) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")  # convert() decodes fully, so truncated files fail here


def unreadable_reason(path: str, err: BaseException) -> str:
    """Why `path` could not be read, in a few words."""
    text = " ".join(str(err).split())
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        return "empty file"
    if isinstance(err, UnidentifiedImageError):
        return "not an image format PIL recognises"
    if "truncated" in text.lower():
        return text
    if isinstance(err, EOFError):
        return f"truncated? {text}"
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def unreadable_error(path: str, reason: str, more: str = "") -> UnreadableImageError:
    return UnreadableImageError(
        f"{path} is not a readable image ({reason}){more}; replace it with a readable copy (e.g. extract the "
        "archive again), or set on_error='skip' to leave unreadable images out.", path)


def decode_whole(path: str, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """The whole image squashed to size x size (the decoded cache's training rows) and its (height, width)."""
    with Image.open(path) as image:
        width, height = image.size
        image.draft("RGB", (size, size))  # JPEG: decode at 1/2, 1/4, 1/8 scale when still >= size
        rgb = image.convert("RGB")
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8), (height, width)


def decode_eval(path: str, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """val_transform(size)'s crop as uint8 HWC (the cache's evaluation rows) and the original (height, width)."""
    rgb = _open_rgb(path)
    width, height = rgb.size
    return np.asarray(T.Compose(eval_ops(size))(rgb), dtype=np.uint8), (height, width)


def find_unreadable_images(paths: Sequence[str], workers: int | None = None) -> dict[str, str]:
    """Decode every image as training would (threads: `workers`, default `default_workers()`); return
    {path: reason} for those that fail, in the order given."""

    def check(path: str) -> str | None:
        try:
            _open_rgb(path)
        except DECODE_ERRORS as err:
            return unreadable_reason(path, err)
        return None

    with ThreadPoolExecutor(max_workers=max(1, workers or default_workers())) as pool:  # PIL decodes without the GIL
        reasons = list(pool.map(check, paths))
    return {path: reason for path, reason in zip(paths, reasons) if reason is not None}


class NoisyImagenette(Dataset):
    """Imagenette images with the official noisy labels (or seeded synthetic ones); yields (image, label).

    `root`: anything `resolve_root` accepts. `noise`: an official level (NOISE_LEVELS) read from the CSV;
    `synthetic=True` flips round(noise * n) train labels drawn with `seed` instead. Validation labels are
    always clean. `transform`: "default" (train_transform / val_transform), None (PIL images) or a callable.
    `on_error`: an unreadable image raises one line naming it ("fail"; "raise" is the former name) or is left
    out ("skip"). `check_images` decodes every image now: "skip" then drops them before any index exists
    (listed in `skipped`), "fail" raises now rather than mid-epoch; without it "skip" is lazy (`__getitem__`
    warns once, records the file in this process's `bad_files` and returns the next readable sample).
    """

    def __init__(self, root: str | Path | None = None, split: str = "train", noise: float = 0.0, *,
                 synthetic: bool = False, seed: int = 0, img_size: int = 160,
                 transform: Callable | str | None = "default", on_error: str = "fail",
                 check_images: bool = False) -> None:
        if split not in SPLITS:
            raise ValueError(f"split={split!r}; use one of {list(SPLITS)}.")
        if on_error not in ("fail", "skip", "raise"):  # "raise": the former name of "fail"
            raise ValueError(f"on_error={on_error!r}; use 'fail' (stop, naming the file) or 'skip' (leave it out).")
        # Validate before touching any file.
        if synthetic and not 0.0 <= float(noise) <= 1.0:
            raise ValueError(f"noise={noise!r}: synthetic noise is a fraction of flipped labels in [0, 1].")
        column = None if synthetic else noise_column(noise)
        self.root = resolve_root(root)
        self.split, self.noise, self.synthetic, self.seed = split, float(noise), synthetic, seed
        self.on_error = "fail" if on_error == "raise" else on_error
        self.wnids, self.classes = list(WNIDS), list(CLASS_NAMES)
        self.class_to_idx = {wnid: i for i, wnid in enumerate(WNIDS)}

        labels = read_labels(self.root)
        rows = labels[labels.is_valid == (split == "val")]
        if rows.empty:
            raise ValueError(f"{self.root / CSV_NAME} lists no {split} images (no row has is_valid="
                             f"{split == 'val'}); use the official {CSV_NAME}.")
        self._check_files(rows["path"])
        self.skipped: list[str] = []
        if check_images:
            rows = self._drop_unreadable(rows)
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
        found = image_files(self.root, [self.split])
        missing = [p for p in listed if p not in found]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of {len(listed)} {self.split} images listed in {self.root / CSV_NAME} are missing "
                f"under {folder}, e.g. {self.root / missing[0]}. The folder must hold every file its CSV lists "
                "(delete an extracted folder to extract its archive again; rebuild the embedded subset with "
                "scripts/build_embedded_subset.py).")
        unlisted = sorted(found.difference(listed))
        if unlisted:  # a user who added images expecting them to be trained on would otherwise never know
            warnings.warn(f"{len(unlisted)} files under {folder} are not listed in {self.root / CSV_NAME} and are "
                          f"not used, e.g. {self.root / unlisted[0]}", RuntimeWarning, stacklevel=3)

    def _drop_unreadable(self, rows: pd.DataFrame) -> pd.DataFrame:
        bad = find_unreadable_images([str(self.root / p) for p in rows["path"]])
        if not bad:
            return rows
        first, reason = next(iter(bad.items()))
        more = f"; {len(bad) - 1} more {self.split} images are unreadable" if len(bad) > 1 else ""
        if self.on_error == "fail" or len(bad) == len(rows):
            raise unreadable_error(first, reason, more if self.on_error == "fail" else
                                   f"; all {len(bad)} {self.split} images are unreadable")
        self.skipped = list(bad)
        warnings.warn(f"skipping {len(bad)} unreadable {self.split} image(s) of {len(rows)}, e.g. {first} "
                      f"({reason})", RuntimeWarning, stacklevel=3)
        keep = [str(self.root / p) not in bad for p in rows["path"]]
        return rows[keep]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        for offset in range(len(self)):
            i = (index + offset) % len(self)
            path = self.paths[i]
            try:
                image = _open_rgb(path)
            except DECODE_ERRORS as err:
                if self.on_error == "fail":
                    raise unreadable_error(path, unreadable_reason(path, err)) from err
                if path not in self.bad_files:
                    self.bad_files.add(path)
                    warnings.warn(f"skipping unreadable image {path}: {unreadable_reason(path, err)}",
                                  RuntimeWarning, stacklevel=2)
                continue
            if self.transform is not None:
                image = self.transform(image)
            return image, int(self.noisy_targets[i])
        raise UnreadableImageError(f"No readable image in {self.root / self.split} ({len(self.bad_files)} "
                                   "unreadable); replace the files, or check that the folder is the right one.")

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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    return (seed * 1_000_003 + epoch * 9_973 + rank * 101) % 2**31


def _seed_worker(worker_id: int) -> None:
    # torch already seeds each worker with base_seed + worker_id (base_seed drawn from the loader's
    # generator); numpy and python `random` get the same seed so every augmentation library is covered.
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def _swap_rng(state: tuple | None = None) -> tuple:
    """The global torch, random and numpy RNG states; replaced by `state` when one is given."""
    old = torch.get_rng_state(), random.getstate(), np.random.get_state()
    if state is not None:
        torch.set_rng_state(state[0])
        random.setstate(state[1])
        np.random.set_state(state[2])
    return old


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
        outer = _swap_rng()
        seed_everything(seed)
        state = _swap_rng(outer)
        while True:
            outer = _swap_rng(state)
            try:
                batch = next(batches)
            except StopIteration:
                return
            finally:
                state = _swap_rng(outer)
            yield batch


def make_loader(dataset: Dataset, *, batch_size: int, shuffle: bool, seed: int, workers: int | None = None,
                sampler: Sampler | None = None, drop_last: bool = False) -> DataLoader:
    """A DataLoader whose order and augmentations are fully determined by `seed` (and the worker count): a
    generator seeded with `seed` shuffles (a `sampler`, e.g. DistributedSampler, replaces `shuffle`) and seeds
    the augmentations (SeededLoader). Each epoch continues the stream, so epochs differ but runs repeat."""
    workers = default_workers() if workers is None else workers
    return SeededLoader(dataset, batch_size=batch_size, shuffle=shuffle if sampler is None else None, sampler=sampler,
                        num_workers=workers, worker_init_fn=_seed_worker, generator=torch.Generator().manual_seed(seed),
                        pin_memory=torch.cuda.is_available(), drop_last=drop_last, persistent_workers=False)


# --------------------------------------------------------------------------- overview
def overview(root: str | Path | None = None, noise_levels: Iterable[float] = NOISE_LEVELS) -> dict:
    """{"root", "classes": class_table, "noise": noise_table} from the CSV only (fast); unknown noise levels
    raise ValueError listing the official ones before any file is read."""
    levels = list(noise_levels)
    if not levels:
        raise ValueError(f"noise_levels is empty; give at least one of the official levels {list(NOISE_LEVELS)}.")
    for level in levels:
        noise_column(level, synthetic_hint=False)  # fail before touching the data
    folder = resolve_root(root)
    labels = read_labels(folder)
    return {"root": folder, "classes": class_table(labels), "noise": noise_table(labels, levels)}


def first_per_class(targets, per_class: int) -> list[int]:
    """Indices of the first `per_class` items of each class (all items when per_class is 0)."""
    if per_class <= 0:
        return list(range(len(targets)))
    seen: collections.Counter = collections.Counter()
    keep = []
    for index, target in enumerate(map(int, targets)):
        seen[target] += 1
        if seen[target] <= per_class:
            keep.append(index)
    return keep


def batch_stats_order(n: int, batch_size: int, batches: int = 10) -> list[int]:
    """Positions, among the n validation images, of val_loss_batch_stats' images: a fixed shuffle (seed 0, so
    every run uses the same images) cut to `batches` whole batches (never a last batch of one). Shuffled because
    the CSV lists images class by class, and train-mode BatchNorm on one-class batches removes the class signal.
    Every epoch, because curves.find_spikes compares a spike with the column's earlier values."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0)).tolist()
    keep = min(n, batches * batch_size)
    return order[:keep - 1] if keep % batch_size == 1 else order[:keep]
