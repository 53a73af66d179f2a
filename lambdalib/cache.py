"""Decode once, augment in batches: the decoded-image data path, without DataLoader workers (whose JPEG decoding
every epoch competes with the model for a 2-core machine's cores).

`decoded_images` decodes each split ONCE into a memory-mapped uint8 cache keyed by every file's bytes, the stored
size, the resize rule and a format version (a stale cache is rebuilt, a partial one never used). `CachedLoader`
draws RandomResizedCrop + flip for whole batches from a caller-seeded generator, on the CPU in uint8 ("host") or
with the images in the device's memory ("device": no host work or sync per step). Entry point: `cached_loaders`.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import sys
import tempfile
import time
import uuid
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from . import data as data_lib
from . import device as dev
from .files import pid_alive
from .imagenette import EVAL_CROP_FRACTION, file_digest
from .paths import data_dir, project_root

FORMAT_VERSION = 1
CACHE_DIRNAME = ".lambdalib-cache"
TRAIN_STORE_FACTOR = 2.0  # training images are stored at up to 2 x img_size (see default_store_size)
SCALE = (0.08, 1.0)  # torchvision RandomResizedCrop's defaults
RATIO = (3.0 / 4.0, 4.0 / 3.0)
LOADERS = ("auto", "cached", "workers")
AUGMENT = ("auto", "host", "device")
MEMORY_FRACTION = 0.5  # "auto": cached when the decoded images take at most this share of the available RAM
DEVICE_FRACTION = 0.3  # augment "auto": on the GPU when the decoded images take at most this share of its free memory
PREFETCH = 3  # host path on a GPU: batches a thread prepares ahead

DECODED = {"count": 0}  # images decoded by this process (tests: a reused cache decodes nothing)


# --------------------------------------------------------------------------- sizes and memory
def default_store_size(img_size: int) -> int:
    """ceil(2 x img_size) (64 -> 128): a crop of area fraction a spans sqrt(a) of the image, so crops of area
    >= 25 % (about 80 % of torchvision's) are not upsampled; measured against other sizes in benchmarks/README.md."""
    return int(math.ceil(img_size * TRAIN_STORE_FACTOR))


def store_size_for(paths: Sequence[str], img_size: int, sample: int = 32) -> int:
    """`default_store_size(img_size)`, but no more than the longest side among `sample` evenly spaced originals
    (headers only), so small originals (the embedded 96 px set) are not stored upsampled."""
    cap, longest = default_store_size(img_size), 0
    for k in sorted({int(i) for i in np.linspace(0, len(paths) - 1, num=min(sample, len(paths)))}):
        try:
            with Image.open(paths[k]) as image:
                longest = max(longest, *image.size)
        except data_lib.DECODE_ERRORS:  # an unreadable sample says nothing about size
            continue
    return min(cap, longest) if longest else cap


def cache_bytes(n_train: int, n_val: int, img_size: int, store_size: int | None = None) -> int:
    """Bytes of the decoded caches of n_train training and n_val evaluation images (an upper bound)."""
    side = store_size or default_store_size(img_size)
    return 3 * (n_train * side * side + n_val * img_size * img_size)


def choose_loader(choice: str, n_train: int, n_val: int, img_size: int, *, store_size: int | None = None,
                  fraction: float = MEMORY_FRACTION, root: Path | None = None) -> str:
    """RunConfig.loader made concrete: 'auto' = 'cached' when the decoded images fit in `fraction` of the
    available RAM and a cache folder for `root` can be written, else 'workers' (JPEGs)."""
    if choice not in LOADERS:
        raise ValueError(f"loader={choice!r}; use one of {list(LOADERS)}.")
    if choice != "auto" or cache_bytes(n_train, n_val, img_size, store_size) > fraction * dev.available_memory():
        return "workers" if choice == "auto" else choice
    try:
        root is None or cache_folder(root)  # raises when no folder for the cache can be written
    except OSError as err:
        warnings.warn(f"{err} Using the JPEG loader (loader='workers') instead.", stacklevel=2)
        return "workers"
    return "cached"


def choose_augment(choice: str, device: torch.device, nbytes: int, fraction: float = DEVICE_FRACTION) -> str:
    """RunConfig.augment_on made concrete: 'auto' = 'device' on a GPU where the decoded images take at most
    `fraction` of its free memory (the rest is the model's), else 'host' (a CPU's uint8 kernels are faster)."""
    if choice not in AUGMENT:
        raise ValueError(f"augment_on={choice!r}; use one of {list(AUGMENT)}.")
    if choice != "auto":
        return choice
    return "device" if device.type == "cuda" and nbytes <= fraction * dev.free_memory(device) else "host"


# --------------------------------------------------------------------------- where and under which key
def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def _root_folder(base: Path, root: Path) -> Path:
    """One sub-folder of a shared cache folder per data root: <root's name>-<hash of its absolute path>."""
    resolved = Path(root).resolve()
    slug = "".join(c if c.isalnum() or c in "-." else "-" for c in resolved.name) or "data"
    return base / f"{slug}-{hashlib.sha1(str(resolved).encode()).hexdigest()[:8]}"


def cache_folder(root: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Where the caches of data root `root` live: `cache_dir` or $LAMBDALIB_CACHE_DIR; else beside the data
    when that is writable, outside this checkout and on a local disk (not Colab's Google Drive, where every read
    of a memory map would be a download); else git-ignored under data/ (the embedded set, read-only copies);
    else ~/.cache/lambdalib."""
    chosen = cache_dir if cache_dir is not None else os.environ.get("LAMBDALIB_CACHE_DIR") or None
    if chosen is not None:
        return _root_folder(Path(chosen).expanduser(), root)
    root = Path(root)
    outside = not root.resolve().is_relative_to(project_root().resolve())
    if outside and dev.network_mount(root) is None and _writable(root / CACHE_DIRNAME):
        return root / CACHE_DIRNAME
    for base in (data_dir() / CACHE_DIRNAME, Path.home() / ".cache" / "lambdalib"):
        if _writable(base):
            return _root_folder(base, root)
    raise OSError(f"no writable folder for the decoded-image cache of {root} ({root / CACHE_DIRNAME}, "
                  f"{data_dir() / CACHE_DIRNAME}, ~/.cache/lambdalib); set LAMBDALIB_CACHE_DIR or pass cache_dir.")


def _rule(kind: str, size: int) -> str:
    """The resize rule, in words; part of the key."""
    if kind == "train":
        return f"train: whole image, PIL draft + bilinear resize to {size}x{size} (aspect squashed), HWC uint8"
    steps = " + ".join(" ".join(repr(op).split()) for op in data_lib.eval_ops(size))
    return f"eval: data.val_transform's PIL steps {steps} (img_size / {EVAL_CROP_FRACTION}), HWC uint8"


def cache_key(paths: Sequence[str], kind: str, size: int, root: Path) -> str:
    """sha256 over the format version, the rule, the size and every file's path relative to `root` and bytes: an
    image rewritten in place, even at its own size and modification time, is decoded again."""
    digest = hashlib.sha256(json.dumps([FORMAT_VERSION, kind, size, _rule(kind, size)]).encode())
    for path in paths:
        digest.update(f"\n{os.path.relpath(path, root)}\t".encode())
        digest.update(file_digest(path))
    return digest.hexdigest()


# --------------------------------------------------------------------------- decoding
def _row_checksums(images: np.ndarray, block: int = 64) -> dict[str, int]:
    """crc32 of every block of rows, keyed by its first row: opening a cache reads all of it once (the pages
    training reads anyway), so any changed pixel is found, not only those of a few sampled rows."""
    return {str(r): zlib.crc32(np.ascontiguousarray(images[r:r + block])) for r in range(0, len(images), block)}


@dataclass
class DecodedImages:
    """A split's decoded images: `images` (N, size, size, 3) uint8, memory-mapped, row k = paths[k]; `sizes` the
    originals' (height, width); `unreadable` {row: reason}; `decoded`: images decoded now (0: cache reused)."""
    path: Path
    kind: str
    size: int
    paths: list[str]
    images: np.ndarray
    sizes: np.ndarray
    unreadable: dict[int, str] = field(default_factory=dict)
    decoded: int = 0
    build_s: float = 0.0

    @property
    def readable(self) -> np.ndarray:
        """Indices of the rows that hold an image."""
        return np.delete(np.arange(len(self.paths)), list(self.unreadable))

    @property
    def nbytes(self) -> int:
        return int(self.images.nbytes)

    def __len__(self) -> int:
        return len(self.paths)


def _open_cached(target: Path, key: str, kind: str, size: int, paths: list[str]) -> DecodedImages | None:
    """The cache at `target` if its manifest matches `key` and the file checks out; None otherwise."""
    count = len(paths)
    try:
        manifest = json.loads(target.with_suffix(".json").read_text())
        expected = dict(format=FORMAT_VERSION, key=key, kind=kind, size=size, count=count)
        if any(manifest.get(k) != v for k, v in expected.items()) or target.stat().st_size != manifest["file_bytes"]:
            return None
        images = np.load(target, mmap_mode="r")
        if images.shape != (count, size, size, 3) or images.dtype != np.uint8 or \
                _row_checksums(images) != manifest["checksums"]:
            return None
        sizes = np.asarray(manifest["sizes"], dtype=np.int64).reshape(count, 2)
        unreadable = {int(k): v for k, v in manifest["unreadable"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return DecodedImages(target, kind, size, paths, images, sizes, unreadable, 0, manifest.get("build_s", 0.0))


def _clean(folder: Path, stem: str, keep: Path) -> None:
    """Remove stale caches of the same split/kind/size (other keys) and temporary files of dead builds."""
    for other in folder.glob(f"{stem}_*"):
        if not other.name.startswith(keep.stem):
            with contextlib.suppress(OSError):  # e.g. still mapped by another process on Windows: a later build
                other.unlink(missing_ok=True)
    for tmp in folder.glob(f".{stem}_*.tmp-*"):
        try:
            pid = int(tmp.name.split(".tmp-")[1].split("-")[0])
        except (IndexError, ValueError):
            pid = -1
        if pid != os.getpid() and not pid_alive(pid):
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)


def decoded_images(paths: Sequence[str], kind: str, size: int, *, root: str | Path | None = None,
                   split: str = "images", cache_dir: str | Path | None = None, workers: int | None = None,
                   progress: bool = True) -> DecodedImages:
    """The decoded images of `paths`, from the cache or decoded now (in `workers` threads) and cached as
    `<split>_<kind>_<size>px_<key[:16]>.npy` + `.json` (written under temporary names, the manifest renamed last).
    kind "train": whole images squashed to size x size, the originals' (height, width) kept to draw crops on
    (as torchvision does); "eval": `data.val_transform`'s crop at img_size = size, so an eval batch is a slice.
    Unreadable files become zero rows listed in `unreadable`."""
    if kind not in ("train", "eval"):
        raise ValueError(f"kind={kind!r}; use 'train' (whole images, for random crops) or 'eval' (centre crops).")
    if size < 1:
        raise ValueError(f"size={size}: must be >= 1.")
    paths = [str(p) for p in paths]
    if not paths:
        raise ValueError("no image paths to decode.")
    root = Path(root) if root is not None else Path(os.path.commonpath([os.path.abspath(p) for p in paths]))
    if root.is_file():  # a single file
        root = root.parent
    folder = cache_folder(root, cache_dir)
    key = cache_key(paths, kind, size, root)
    stem = f"{split}_{kind}_{size}px"
    target = folder / f"{stem}_{key[:16]}.npy"
    found = _open_cached(target, key, kind, size, paths)
    if found is not None:
        return found

    folder.mkdir(parents=True, exist_ok=True)
    _clean(folder, stem, target)
    token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = folder / f".{target.stem}.tmp-{token}.npy"
    tmp_manifest = folder / f".{target.stem}.tmp-{token}.json"
    decode = data_lib.decode_whole if kind == "train" else data_lib.decode_eval
    sizes = np.zeros((len(paths), 2), dtype=np.int64)
    unreadable: dict[int, str] = {}
    start = time.perf_counter()
    # a live bar on a terminal only (like the trainer's): notebooks and logs get no bar debris
    bar = tqdm(total=len(paths), unit="img", desc=f"decode {split} once ({size} px)", dynamic_ncols=True,
               disable=not (progress and sys.stderr.isatty()))
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, 3))

        def work(k: int) -> bool:
            try:
                pixels, sizes[k] = decode(paths[k], size)
            except data_lib.DECODE_ERRORS as err:
                unreadable[k] = data_lib.unreadable_reason(paths[k], err)
                return False
            out[k] = pixels
            return True

        with ThreadPoolExecutor(max_workers=max(1, workers or data_lib.default_workers())) as pool:
            for ok in pool.map(work, range(len(paths))):  # PIL decodes and resizes without the GIL
                DECODED["count"] += ok
                bar.update(1)
        out.flush()
        checksums = _row_checksums(out)
        out = None  # unmapped before the rename (Windows cannot rename a mapped file)
        build_s = time.perf_counter() - start
        manifest = dict(format=FORMAT_VERSION, key=key, kind=kind, size=size, count=len(paths), split=split,
                        root=str(root), rule=_rule(kind, size), shape=[len(paths), size, size, 3], dtype="uint8",
                        file_bytes=tmp.stat().st_size, checksums=checksums,
                        unreadable={str(k): v for k, v in sorted(unreadable.items())},
                        unreadable_paths=[paths[k] for k in sorted(unreadable)], sizes=sizes.ravel().tolist(),
                        build_s=round(build_s, 3), pillow=Image.__version__)
        tmp_manifest.write_text(json.dumps(manifest) + "\n")
        os.replace(tmp, target)
        os.replace(tmp_manifest, target.with_suffix(".json"))  # last: a manifest means a complete file
    except BaseException:
        tmp.unlink(missing_ok=True)
        tmp_manifest.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    images = np.load(target, mmap_mode="r")
    return DecodedImages(target, kind, size, paths, images, sizes, unreadable, len(paths) - len(unreadable), build_s)


def dataset_images(dataset, kind: str, img_size: int, *, store_size: int | None = None, **kwargs) -> DecodedImages:
    """`decoded_images` of a `data.NoisyImagenette` (its `.paths`, under its `.root`, named by its split)."""
    size = (store_size or store_size_for(dataset.paths, img_size)) if kind == "train" else img_size
    return decoded_images(dataset.paths, kind, size, root=dataset.root, split=dataset.split, **kwargs)


# --------------------------------------------------------------------------- the loader
class CachedLoader:
    """Batches of decoded images, augmented and normalised in this process: no workers, no start-up.

    images: a `DecodedImages` (or an (N, S, S, 3) uint8 array, with `sizes` for training); labels: of its rows;
    indices: the rows used (default: the readable ones). shuffle: a new order every pass, from `generator`, or
    with world_size > 1 from `order_seed` (the same on every rank: DistributedSampler's order and padding).
    train: random-resized crop to `img_size` + flip of whole images (kind "train"); else the stored images as
    they are (kind "eval"). generator: draws the order and the augmentations where they are made (augment_on
    "device": on `device`, which then holds the rows used; "host": on the CPU); seeded per (seed, epoch, rank),
    the batches repeat exactly. prefetch: batches a thread prepares ahead on the host path."""

    def __init__(self, images, labels, *, batch_size: int, indices: Sequence[int] | None = None,
                 shuffle: bool = False, train: bool = False, img_size: int | None = None,
                 generator: torch.Generator | None = None, drop_last: bool = False,
                 device: str | torch.device = "cpu", channels_last: bool = False, sizes=None,
                 rank: int = 0, world_size: int = 1, order_seed: int | None = None,
                 augment_on: str = "host", prefetch: int = 0) -> None:
        if isinstance(images, DecodedImages):
            store = images
            if train and store.kind != "train":
                raise ValueError("train=True needs whole stored images (kind 'train'); this cache holds centre "
                                 "crops (kind 'eval').")
            if not train and store.kind != "eval":
                raise ValueError("train=False yields the stored images as they are: give the 'eval' cache "
                                 "(data.val_transform's crops), not the whole 'train' images.")
            sizes = store.sizes if sizes is None else sizes
            indices = store.readable if indices is None else indices
            images = store.images
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be >= 1.")
        if augment_on not in ("host", "device"):
            raise ValueError(f"augment_on={augment_on!r}; use 'host' or 'device'.")
        self.device = torch.device(device)
        self.img_size = img_size or images.shape[1]
        indices = np.asarray(range(len(images)) if indices is None else indices, dtype=np.int64)
        labels = torch.as_tensor(np.array(labels, dtype=np.int64))
        sizes = None if sizes is None else torch.as_tensor(np.asarray(sizes), dtype=torch.int64)
        if train and sizes is None:
            sizes = torch.full((len(images), 2), images.shape[1], dtype=torch.int64)
        if augment_on == "device":  # the rows used, once, in the device's memory: a batch is an index away
            rows = torch.from_numpy(indices)
            images = torch.from_numpy(np.ascontiguousarray(images[indices])).to(self.device)
            labels = labels[rows].to(self.device)
            sizes = None if sizes is None else sizes[rows].to(self.device)
            indices = np.arange(len(indices))
        self.images, self.labels, self.sizes, self.indices = images, labels, sizes, indices
        self.batch_size, self.shuffle, self.train, self.drop_last = batch_size, shuffle, train, drop_last
        self.rank, self.world_size, self.order_seed = rank, world_size, order_seed
        self.channels_last, self.augment_on, self.prefetch = channels_last, augment_on, prefetch
        self.pin = self.device.type == "cuda" and augment_on == "host"
        self.generator = generator if generator is not None else self._generator(0)

    def _generator(self, seed: int) -> torch.Generator:
        where = self.device if self.augment_on == "device" else torch.device("cpu")
        return torch.Generator(device=where).manual_seed(int(seed))

    def reseeded(self, generator: torch.Generator | int, order_seed: int | None = None) -> "CachedLoader":
        """A copy drawing from `generator` (or one seeded with this int, on the right device) and `order_seed`;
        it shares the images (on the device too)."""
        other = copy.copy(self)
        other.generator = generator if isinstance(generator, torch.Generator) else self._generator(generator)
        if order_seed is not None:
            other.order_seed = order_seed
        return other

    def _per_rank(self) -> int:
        return math.ceil(len(self.indices) / self.world_size)

    def __len__(self) -> int:
        n = self._per_rank()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _order(self) -> torch.Tensor | None:
        """This pass's order of positions in `indices` (None: as they are), where the batches are gathered."""
        n, where = len(self.indices), self.generator.device
        if self.world_size > 1:  # DistributedSampler: same permutation everywhere, padded, strided
            if self.shuffle and self.order_seed is None:
                raise ValueError("world_size > 1 with shuffle needs order_seed (the same on every rank, e.g. "
                                 "seed + epoch): pass it to reseeded() / CachedData.train_loader().")
            order = (torch.randperm(n, generator=torch.Generator().manual_seed(self.order_seed))
                     if self.shuffle else torch.arange(n))
            total = self._per_rank() * self.world_size
            if total > n:
                order = torch.cat([order, order.repeat(math.ceil((total - n) / n))[: total - n]])
            return order[self.rank:total:self.world_size].to(where)
        return torch.randperm(n, generator=self.generator, device=where) if self.shuffle else None

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(uint8 or 0-255 float NCHW pixels, labels) where they are made: on the CPU ("host") or the device."""
        order, bs, host = self._order(), self.batch_size, self.augment_on == "host"
        n = self._per_rank()
        for start in range(0, (n // bs) * bs if self.drop_last else n, bs):
            rows = slice(start, start + bs) if order is None else order[start:start + bs]
            if host:  # the stored rows, gathered from the memory map on the CPU
                rows = torch.from_numpy(self.indices[rows if order is None else rows.numpy()])
            # (B, 3, S, S) viewed on the stored (B, S, S, 3) rows: channels-last strides, uint8 throughout
            pixels = (torch.from_numpy(self.images[rows.numpy()]) if host else self.images[rows]).permute(0, 3, 1, 2)
            labels = self.labels[rows]
            if self.train:
                sizes = self.sizes[rows]
                params = data_lib.sample_crop_params(sizes[:, 0], sizes[:, 1], self.generator, SCALE, RATIO)
                flips = torch.rand(len(labels), generator=self.generator, device=self.generator.device) < 0.5
                boxes = data_lib.stored_boxes(params, sizes, pixels.shape[-1])
                crop = dev.resized_crop_batch if host else dev.resized_crops
                pixels = crop(pixels, boxes, self.img_size, flips)
            if self.pin:  # the caching host allocator keeps it until the copy has run
                pixels, labels = pixels.pin_memory(), labels.pin_memory()
            yield pixels, labels

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        batches = self._batches()
        if self.prefetch > 0 and self.augment_on == "host":
            batches = dev.prefetched(batches, self.prefetch)
        for pixels, labels in batches:
            if pixels.device != self.device:
                pixels = pixels.to(self.device, non_blocking=self.pin)
                labels = labels.to(self.device, non_blocking=self.pin)
            yield dev.normalise(pixels, memory_format=fmt), labels


# --------------------------------------------------------------------------- both splits, for the trainer
@dataclass
class CachedData:
    """What `cached_loaders` returns: the dataset indices used (val: all ranks'), the unreadable paths left out
    (`skipped`), this rank's `val_loader`, and `train_loader` for each epoch."""
    train_images: DecodedImages
    val_images: DecodedImages
    train_indices: np.ndarray
    val_indices: np.ndarray
    skipped: list[str]
    val_loader: CachedLoader
    _train: CachedLoader
    augment_on: str = "host"
    _eval: dict = field(default_factory=dict)

    def train_loader(self, generator: torch.Generator | int, order_seed: int | None = None) -> CachedLoader:
        """One epoch's training batches from `generator` (seed it per (seed, epoch, rank)); with several ranks
        `order_seed` (the same on all, e.g. seed + epoch) orders them."""
        return self._train.reseeded(generator, order_seed)

    def eval_loader(self, indices: Sequence[int], batch_size: int | None = None) -> CachedLoader:
        """Evaluation batches of these validation dataset indices, in this order (e.g. a class-mixed subset)."""
        args = {**self._eval, **({"batch_size": batch_size} if batch_size else {})}
        return CachedLoader(self.val_images, indices=list(indices), shuffle=False, train=False, **args)

    @property
    def cache_bytes(self) -> int:
        return self.train_images.nbytes + self.val_images.nbytes


def _select(store: DecodedImages, targets: np.ndarray, subset, on_error: str, split: str) -> np.ndarray:
    readable = store.readable
    if subset is None or isinstance(subset, (int, np.integer)):
        chosen = readable[data_lib.first_per_class(targets[readable], int(subset or 0))]
    else:
        wanted = np.asarray(subset, dtype=np.int64)
        chosen = wanted[np.isin(wanted, readable)]
    if store.unreadable and on_error == "fail":
        row, reason = next(iter(sorted(store.unreadable.items())))
        more = len(store.unreadable) - 1
        raise data_lib.unreadable_error(store.paths[row], reason,
                                        f"; {more} more {split} images are unreadable" if more else "")
    if len(chosen) == 0:
        raise data_lib.UnreadableImageError(f"no readable {split} image left ({len(store.unreadable)} unreadable, "
                                            f"e.g. {store.paths[next(iter(store.unreadable))]}); replace the files.")
    return chosen


def cached_loaders(train_set, val_set, *, img_size: int, batch_size: int, train_subset=None, val_subset=None,
                   device: str | torch.device = "cpu", channels_last: bool = False, on_error: str | None = None,
                   rank: int = 0, world_size: int = 1, drop_last: bool = False, store_size: int | None = None,
                   cache_dir: str | Path | None = None, workers: int | None = None, progress: bool = True,
                   augment_on: str = "host", prefetch: int = 0) -> CachedData:
    """Decoded caches (built once) and loaders for a `data.NoisyImagenette` train/val pair (build them with
    check_images=False: the cache decodes each image once anyway). Training labels are the noisy targets,
    validation ones the clean targets. train_subset / val_subset: None (every readable image), an int N (the
    first N readable images of each class by clean label; 0 = all) or dataset indices. Unreadable images:
    on_error "fail" raises `data.UnreadableImageError` naming the first, "skip" warns once and lists them in
    `skipped`. augment_on: "host", "device" or "auto" (`choose_augment` on the images used)."""
    on_error = on_error or getattr(train_set, "on_error", "fail")
    common = dict(cache_dir=cache_dir, workers=workers, progress=progress)
    train_images = dataset_images(train_set, "train", img_size, store_size=store_size, **common)
    val_images = dataset_images(val_set, "eval", img_size, **common)
    train_idx = _select(train_images, np.asarray(train_set.clean_targets), train_subset, on_error, "train")
    val_idx = _select(val_images, np.asarray(val_set.clean_targets), val_subset, on_error, "val")
    skipped = [store.paths[k] for store in (train_images, val_images) for k in sorted(store.unreadable)]
    if skipped:
        warnings.warn(f"skipping {len(skipped)} unreadable image(s), e.g. {skipped[0]}", RuntimeWarning, stacklevel=2)
    used = cache_bytes(len(train_idx), len(val_idx), img_size, train_images.size)
    augment_on = choose_augment(augment_on, torch.device(device), used)
    args = dict(batch_size=batch_size, img_size=img_size, device=device, channels_last=channels_last,
                augment_on=augment_on)
    val_loader = CachedLoader(val_images, val_set.clean_targets, indices=val_idx[rank::world_size], **args)
    train = CachedLoader(train_images, train_set.targets, indices=train_idx, shuffle=True, train=True,
                         drop_last=drop_last, rank=rank, world_size=world_size, prefetch=prefetch, **args)
    return CachedData(train_images, val_images, train_idx, val_idx, skipped, val_loader, train, augment_on,
                      dict(labels=val_set.clean_targets, **args))
