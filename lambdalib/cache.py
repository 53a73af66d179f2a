"""Decode once, augment in batches: the decoded-image data path (no DataLoader workers).

The JPEG path (`data.make_loader`) decodes and augments every image again every epoch in worker
processes that, on a 2-core machine, compete with the model for the same cores. This path instead

1. decodes every image of a split ONCE into a memory-mapped uint8 array (`decoded_images`), cached on
   disk with a JSON manifest and keyed by the file list (paths, sizes, mtimes), the stored size, the
   resize rule and a format version, so a stale cache (a file changed, added or removed) is rebuilt
   and a partial one (an interrupted build leaves only a temporary file) is never used;
     * training images are stored whole, squashed to `store_size` x `store_size` (HWC), with each
       image's original height and width in the manifest: random-resized-crop parameters are drawn on
       the ORIGINAL size (exactly torchvision's distribution, for square and non-square images alike)
       and mapped onto the stored pixels;
     * evaluation images are stored as `data.val_transform` crops them (resize the short side to
       round(img_size / EVAL_CROP_FRACTION), centre-crop img_size, the same PIL calls), so an eval
       batch is a slice;
2. augments in batches in the training process (`CachedLoader`): per image a random-resized crop with
   torchvision's `RandomResizedCrop.get_params` distribution (scale (0.08, 1), ratio (3/4, 4/3), ten
   attempts, then the centre-crop fallback), antialiased bilinear, on uint8 (CPU: torch's vectorised
   uint8 kernel), a horizontal flip with probability 1/2, then uint8 goes to the device, where it is
   converted to float and normalised with the ImageNet mean/std (as ToTensor + Normalize do). All
   randomness comes from a caller-seeded `torch.Generator`: the same seed gives the same batches.

Typical use (the trainer: see `cached_loaders`):
    train_set = NoisyImagenette(root, "train", noise=0.25, check_images=False)
    val_set = NoisyImagenette(root, "val", check_images=False)
    data = cached_loaders(train_set, val_set, img_size=64, batch_size=64, device=device)
    for epoch in ...:
        for images, labels in data.train_loader(torch.Generator().manual_seed(epoch_seed)): ...
        for images, labels in data.val_loader: ...

Where the cache lives: see `cache_folder` (`<data root>/.lambdalib-cache` for a writable root outside
the checkout, else the git-ignored `data/.lambdalib-cache/<root>-<hash>`; $LAMBDALIB_CACHE_DIR or
cache_dir= override).
"""
from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import os
import sys
import time
import uuid
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import data as data_lib
from .files import pid_alive
from .imagenette import EVAL_CROP_FRACTION, MEAN, STD

FORMAT_VERSION = 1
CACHE_DIRNAME = ".lambdalib-cache"
TRAIN_STORE_FACTOR = 2.0  # training images are stored at up to 2 x img_size (see default_store_size)
SCALE = (0.08, 1.0)  # torchvision RandomResizedCrop's defaults
RATIO = (3.0 / 4.0, 4.0 / 3.0)
LOADERS = ("auto", "cached", "workers")
FUSED_FROM = 112  # CPU training batches from this size on are normalised image by image (normalised_crops)
MEMORY_FRACTION = 0.5  # "auto": cached when the decoded images take at most this share of the available RAM

DECODED = {"count": 0}  # images decoded by this process (tests: a reused cache decodes nothing)


# --------------------------------------------------------------------------- sizes and memory


def default_store_size(img_size: int) -> int:
    """The largest side training images are stored at: ceil(2 x img_size) (64 -> 128, 160 -> 320).

    A random-resized crop of area fraction a spans sqrt(a) of the image, so stored pixels are not
    upsampled for crops of area >= (img_size / store)^2 = 25 % (about 80 % of torchvision's crops; at
    img_size / EVAL_CROP_FRACTION it would be 77 %, a fifth of them). Measured on the real 224 px images
    at 64 px: the mean |difference| from torchvision's crop of the original JPEG (0-255 scale) is 3.6
    at store 128, 5.2 at 96, 6.7 at 74, 0 when stored at the original size. Pass store_size to trade
    memory for fidelity; `store_size_for` never stores larger than the originals.
    """
    return int(math.ceil(img_size * TRAIN_STORE_FACTOR))


def store_size_for(paths: Sequence[str], img_size: int, sample: int = 32) -> int:
    """The side to store training images at: `default_store_size(img_size)`, but no more than the
    longest side among `sample` evenly spaced originals (headers only), so small originals (the
    embedded 96 px set) are not stored upsampled. Deterministic for a file list."""
    cap = default_store_size(img_size)
    if not paths:
        return cap
    longest = 0
    for k in sorted({int(i) for i in np.linspace(0, len(paths) - 1, num=min(sample, len(paths)))}):
        try:
            with Image.open(paths[k]) as image:
                longest = max(longest, *image.size)
        except data_lib._DECODE_ERRORS:  # noqa: SLF001  (an unreadable sample says nothing about size)
            continue
    return min(cap, longest) if longest else cap


def eval_resize(img_size: int) -> int:
    """The short side `data.val_transform` resizes to before its centre crop."""
    return round(img_size / EVAL_CROP_FRACTION)


def cache_bytes(n_train: int, n_val: int, img_size: int, store_size: int | None = None) -> int:
    """Bytes of the decoded caches of n_train training and n_val evaluation images (training images at
    `store_size`, default `default_store_size(img_size)`: an upper bound)."""
    side = store_size or default_store_size(img_size)
    return 3 * (n_train * side * side + n_val * img_size * img_size)


def available_memory() -> int:
    """Bytes of RAM available now (Linux: MemAvailable; elsewhere: total physical memory)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def choose_loader(choice: str, n_train: int, n_val: int, img_size: int, store_size: int | None = None,
                  fraction: float = MEMORY_FRACTION) -> str:
    """'cached' or 'workers' for a RunConfig.loader value: 'auto' = 'cached' when the decoded images
    (`cache_bytes`) fit in `fraction` of the available RAM, else 'workers' (the JPEG DataLoader path)."""
    if choice not in LOADERS:
        raise ValueError(f"loader={choice!r}; use one of {list(LOADERS)}.")
    if choice != "auto":
        return choice
    return "cached" if cache_bytes(n_train, n_val, img_size, store_size) <= fraction * available_memory() \
        else "workers"


# --------------------------------------------------------------------------- where and under which key


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".probe-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        probe.write_bytes(b"")
        probe.unlink()
        return True
    except OSError:
        return False


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def _root_folder(base: Path, root: Path) -> Path:
    """One sub-folder of a shared cache folder per data root: <root's name>-<hash of its absolute path>."""
    resolved = Path(root).resolve()
    slug = "".join(c if c.isalnum() or c in "-." else "-" for c in resolved.name) or "data"
    return base / f"{slug}-{hashlib.sha1(str(resolved).encode()).hexdigest()[:8]}"


def cache_folder(root: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Where the caches of the images under data root `root` live (created when needed):

    1. `cache_dir`, else $LAMBDALIB_CACHE_DIR: a sub-folder per data root;
    2. `<root>/.lambdalib-cache` when the data root is writable and outside this project's checkout
       (the cache goes where the data goes);
    3. `paths.data_dir()/.lambdalib-cache/<root name>-<hash>`: git-ignored; for the embedded set (a
       tracked folder) and read-only roots (e.g. a shared copy);
    4. ~/.cache/lambdalib/<root name>-<hash>.
    """
    from .paths import data_dir, project_root

    chosen = cache_dir if cache_dir is not None else os.environ.get("LAMBDALIB_CACHE_DIR") or None
    if chosen is not None:
        return _root_folder(Path(chosen).expanduser(), root)
    root = Path(root)
    if not _inside(root, project_root()) and _writable(root / CACHE_DIRNAME):
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
    steps = " + ".join(" ".join(repr(op).split()) for op in _eval_ops(size))
    return f"eval: data.val_transform's PIL steps {steps} (img_size / {EVAL_CROP_FRACTION}), HWC uint8"


def cache_key(paths: Sequence[str], kind: str, size: int, root: Path | None = None) -> str:
    """sha256 over the format version, the rule, the size and every file's (path relative to `root`,
    bytes, mtime)."""
    digest = hashlib.sha256(json.dumps([FORMAT_VERSION, kind, size, _rule(kind, size)]).encode())
    for path in paths:
        st = os.stat(path)
        rel = os.path.relpath(path, root) if root is not None else path
        digest.update(f"\n{rel}\t{st.st_size}\t{st.st_mtime_ns}".encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------- decoding


def _decode_train(path: str, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    with Image.open(path) as image:
        width, height = image.size
        image.draft("RGB", (size, size))  # JPEG: decode at 1/2, 1/4, 1/8 scale when still >= size
        rgb = image.convert("RGB")
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8), (height, width)


@functools.lru_cache(maxsize=8)
def _eval_ops(size: int) -> tuple[Callable, ...]:
    """data.val_transform(size)'s steps before ToTensor (Resize, CenterCrop): the very same PIL calls."""
    from torchvision import transforms as T

    ops = []
    for op in data_lib.val_transform(size).transforms:
        if isinstance(op, T.ToTensor):
            return tuple(ops)
        ops.append(op)
    raise ValueError("data.val_transform has no ToTensor step; the eval cache cannot reproduce it.")


def _decode_eval(path: str, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    with Image.open(path) as image:
        width, height = image.size
        rgb = image.convert("RGB")
    for op in _eval_ops(size):
        rgb = op(rgb)
    return np.asarray(rgb, dtype=np.uint8), (height, width)


def _row_checksums(images: np.ndarray) -> dict[str, int]:
    """crc32 of a few rows spread over the array: a cheap check that the file holds what was written."""
    n = len(images)
    rows = sorted({int(r) for r in np.linspace(0, n - 1, num=min(n, 8))}) if n else []
    return {str(r): zlib.crc32(np.ascontiguousarray(images[r]).tobytes()) for r in rows}


@dataclass
class DecodedImages:
    """A split's decoded images: `images` (N, size, size, 3) uint8 memory-mapped read-only, row k =
    paths[k]; `sizes` (N, 2) original (height, width); `unreadable` {row: reason} (zero rows);
    `decoded`: images decoded by the call that returned this (0: the cache was reused)."""

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
        mask = np.ones(len(self.paths), dtype=bool)
        mask[list(self.unreadable)] = False
        return np.flatnonzero(mask)

    @property
    def nbytes(self) -> int:
        return int(self.images.nbytes)

    def __len__(self) -> int:
        return len(self.paths)


def _open_cached(target: Path, manifest_path: Path, key: str, count: int, *, kind: str, size: int,
                 paths: list[str]) -> DecodedImages | None:
    """The cache at `target` if its manifest matches `key` and the file checks out; None otherwise."""
    try:
        manifest = json.loads(manifest_path.read_text())
        if (manifest.get("format") != FORMAT_VERSION or manifest.get("key") != key or manifest.get("kind") != kind
                or manifest.get("size") != size or manifest.get("count") != count):
            return None
        if target.stat().st_size != manifest["file_bytes"]:
            return None
        images = np.load(target, mmap_mode="r")
        if images.shape != (count, size, size, 3) or images.dtype != np.uint8:
            return None
        if _row_checksums(images) != manifest["checksums"]:
            return None
        sizes = np.asarray(manifest["sizes"], dtype=np.int64).reshape(count, 2)
        unreadable = {int(k): v for k, v in manifest["unreadable"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return DecodedImages(target, kind, size, paths, images, sizes, unreadable, 0, manifest.get("build_s", 0.0))


def _clean(folder: Path, stem: str, keep: Path) -> None:
    """Remove stale caches of the same split/kind/size (other keys) and temporary files of dead builds."""
    for other in folder.glob(f"{stem}_*"):
        if other.name.startswith(keep.stem):
            continue
        try:
            other.unlink(missing_ok=True)
        except OSError:  # e.g. still mapped by another process on Windows: left for a later build
            pass
    for tmp in folder.glob(f".{stem}_*.tmp-*"):
        try:
            pid = int(tmp.name.split(".tmp-")[1].split("-")[0])
        except (IndexError, ValueError):
            pid = -1
        if pid != os.getpid() and not pid_alive(pid):
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass


def decoded_images(
    paths: Sequence[str],
    kind: str,
    size: int,
    *,
    root: str | Path | None = None,
    split: str = "images",
    cache_dir: str | Path | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> DecodedImages:
    """The decoded images of `paths`, from the cache, or decoded now (once, in `workers` threads; a tqdm bar
    on a terminal when `progress`) and cached.

    kind "train": whole images squashed to size x size (size = the store size, e.g.
    `default_store_size(img_size)`), originals' (height, width) kept; kind "eval": `data.val_transform`'s
    crop at img_size = size. Unreadable files become zero rows listed in `unreadable` (the caller
    decides: skip or fail). The file is `<cache folder>/<split>_<kind>_<size>px_<key[:16]>.npy` + `.json`;
    it is written to a temporary name and renamed when complete, the manifest last.
    """
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
    manifest_path = target.with_suffix(".json")
    found = _open_cached(target, manifest_path, key, len(paths), kind=kind, size=size, paths=paths)
    if found is not None:
        return found

    folder.mkdir(parents=True, exist_ok=True)
    _clean(folder, stem, target)
    token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = folder / f".{target.stem}.tmp-{token}.npy"
    tmp_manifest = folder / f".{target.stem}.tmp-{token}.json"
    decode = _decode_train if kind == "train" else _decode_eval
    sizes = np.zeros((len(paths), 2), dtype=np.int64)
    unreadable: dict[int, str] = {}
    start = time.perf_counter()
    from tqdm import tqdm

    # a live bar on a terminal only (like the trainer's): notebooks and logs get no bar debris; what was
    # built and how long it took is in the returned object and the manifest
    bar = tqdm(total=len(paths), unit="img", desc=f"decode {split} once ({size} px)", dynamic_ncols=True,
               disable=not (progress and sys.stderr.isatty()))
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, 3))

        def work(k: int) -> bool:
            try:
                pixels, sizes[k] = decode(paths[k], size)
            except data_lib._DECODE_ERRORS as err:  # noqa: SLF001  (data.py's list of what PIL raises)
                unreadable[k] = data_lib._reason(paths[k], err)  # noqa: SLF001
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
        manifest = dict(
            format=FORMAT_VERSION, key=key, kind=kind, size=size, count=len(paths), split=split,
            root=str(root), rule=_rule(kind, size), shape=[len(paths), size, size, 3],
            dtype="uint8", file_bytes=tmp.stat().st_size, checksums=checksums,
            unreadable={str(k): v for k, v in sorted(unreadable.items())},
            unreadable_paths=[paths[k] for k in sorted(unreadable)], sizes=sizes.ravel().tolist(),
            build_s=round(build_s, 3), pillow=Image.__version__,
        )
        tmp_manifest.write_text(json.dumps(manifest) + "\n")
        os.replace(tmp, target)
        os.replace(tmp_manifest, manifest_path)  # last: a manifest means a complete file
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


# --------------------------------------------------------------------------- batched augmentation


def sample_crop_params(heights: torch.Tensor, widths: torch.Tensor, generator: torch.Generator | None = None,
                       scale: tuple[float, float] = SCALE, ratio: tuple[float, float] = RATIO,
                       attempts: int = 10) -> torch.Tensor:
    """torchvision `RandomResizedCrop.get_params`, vectorised over images: (n, 4) int64 (top, left, h, w).

    Per image: up to `attempts` draws of area fraction ~ U(scale) and log aspect ~ U(log ratio); the
    first whose rounded w x h fits is kept, its top/left uniform over the valid positions; when none
    fits, the centre crop clamped to the ratio range. All draws come from `generator` (a fixed number
    per image: 2 x attempts + 2), so the same seed gives the same crops.
    """
    heights = torch.as_tensor(heights, dtype=torch.float64).reshape(-1)
    widths = torch.as_tensor(widths, dtype=torch.float64).reshape(-1)
    n = len(heights)
    area = (heights * widths)[:, None]
    target = area * torch.empty(n, attempts, dtype=torch.float64).uniform_(scale[0], scale[1], generator=generator)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(torch.empty(n, attempts, dtype=torch.float64).uniform_(log_lo, log_hi, generator=generator))
    w = torch.round(torch.sqrt(target * aspect))  # round half to even, like Python's round()
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= widths[:, None]) & (h > 0) & (h <= heights[:, None])
    first = fits.to(torch.int8).argmax(dim=1)
    found = fits.any(dim=1)
    pick = torch.arange(n)
    w, h = w[pick, first], h[pick, first]
    # fallback: torchvision's centre crop
    in_ratio = widths / heights
    fw = torch.where(in_ratio < min(ratio), widths,
                     torch.where(in_ratio > max(ratio), torch.round(heights * max(ratio)), widths))
    fh = torch.where(in_ratio < min(ratio), torch.round(widths / min(ratio)),
                     torch.where(in_ratio > max(ratio), heights, heights))
    w, h = torch.where(found, w, fw), torch.where(found, h, fh)
    u = torch.rand(n, 2, dtype=torch.float64, generator=generator)
    top = torch.where(found, torch.floor(u[:, 0] * (heights - h + 1)), torch.div(heights - h, 2, rounding_mode="floor"))
    left = torch.where(found, torch.floor(u[:, 1] * (widths - w + 1)), torch.div(widths - w, 2, rounding_mode="floor"))
    return torch.stack([top, left, h, w], dim=1).to(torch.int64)


def stored_boxes(params: torch.Tensor, sizes: torch.Tensor, store: int) -> torch.Tensor:
    """Crop boxes (top, left, h, w) on the original images -> the same regions on the squashed
    store x store images, rounded to whole stored pixels (at least one)."""
    params = params.to(torch.float64)
    sy = store / sizes[:, 0].to(torch.float64)
    sx = store / sizes[:, 1].to(torch.float64)
    y0 = torch.round(params[:, 0] * sy).clamp(0, store - 1)
    x0 = torch.round(params[:, 1] * sx).clamp(0, store - 1)
    y1 = torch.maximum(torch.round((params[:, 0] + params[:, 2]) * sy).clamp(max=store), y0 + 1)
    x1 = torch.maximum(torch.round((params[:, 1] + params[:, 3]) * sx).clamp(max=store), x0 + 1)
    return torch.stack([y0, x0, y1 - y0, x1 - x0], dim=1).to(torch.int64)


def resized_crop_batch(images: torch.Tensor, boxes: torch.Tensor, size: int,
                       flips: torch.Tensor | None = None) -> torch.Tensor:
    """Crop box k = (top, left, h, w) of images[k] (N, C, H, W), resize it to size x size (bilinear,
    antialiased: what PIL / torchvision's resize of a crop does), flip where `flips`; returns (N, C, size,
    size). uint8 on the CPU stays uint8 (torch's vectorised kernel, rounded; channels-last in, channels-last
    out); other dtypes / devices compute in float."""
    out = []
    cpu_uint8 = images.device.type == "cpu" and images.dtype == torch.uint8
    flip = [False] * len(boxes) if flips is None else flips.tolist()
    for k, (top, left, h, w) in enumerate(boxes.tolist()):
        region = images[k:k + 1, :, top:top + h, left:left + w]
        if not cpu_uint8 and not region.is_floating_point():
            region = region.float()
        crop = F.interpolate(region, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(crop.flip(-1) if flip[k] else crop)  # per image: far cheaper than a batched index-put
    return torch.cat(out)


def _affine(mean: Sequence[float], std: Sequence[float], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) of shape (C, 1, 1): (x / 255 - mean) / std = x * scale + shift."""
    std64 = torch.tensor(std, dtype=torch.float64).view(-1, 1, 1)
    scale = 1.0 / (255.0 * std64)
    shift = -torch.tensor(mean, dtype=torch.float64).view(-1, 1, 1) / std64
    return scale.to(device, torch.float32), shift.to(device, torch.float32)


def normalise(images: torch.Tensor, mean: Sequence[float] = MEAN,
              std: Sequence[float] = STD,
              memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """uint8 (or 0-255 float) NCHW -> float32 (x / 255 - mean) / std in `memory_format`: ToTensor +
    Normalize's result up to float rounding (<= 5e-7), as x * (1 / (255 std)) - mean / std in two passes
    after the conversion (30 % faster than their four on a 160 px batch)."""
    scale, shift = _affine(mean, std, images.device)
    # one pass converts dtype and layout (a channels-last uint8 batch -> contiguous float)
    floats = images.to(torch.float32, memory_format=memory_format, copy=True)
    return floats.mul_(scale).add_(shift)


def normalised_crops(images: torch.Tensor, boxes: torch.Tensor, size: int, flips: torch.Tensor | None = None,
                     *, mean: Sequence[float] = MEAN, std: Sequence[float] = STD,
                     memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """`normalise(resized_crop_batch(...))` with the same result, for uint8 images on the CPU, one image at
    a time: each crop is converted and normalised while it is in the cache, 10-20 % faster from 128 px on
    (5-15 % slower at 64-96 px, where the batched conversion wins: see FUSED_FROM)."""
    n, channels = images.shape[:2]
    out = torch.empty((n, channels, size, size), dtype=torch.float32).contiguous(memory_format=memory_format)
    scale, shift = _affine(mean, std, "cpu")
    flip = [False] * n if flips is None else flips.tolist()
    for k, (top, left, h, w) in enumerate(boxes.tolist()):
        crop = F.interpolate(images[k:k + 1, :, top:top + h, left:left + w], size=(size, size), mode="bilinear",
                             antialias=True, align_corners=False)[0]
        out[k].copy_(crop.flip(-1) if flip[k] else crop).mul_(scale).add_(shift)
    return out


# --------------------------------------------------------------------------- the loader


class CachedLoader:
    """Batches of decoded images, augmented and normalised in this process: no workers, no start-up.

    Args:
        images: a `DecodedImages` (or an (N, S, S, 3) uint8 array, with `sizes` for training).
        labels: (N,) int labels of the rows of `images`.
        batch_size, drop_last: as DataLoader's; `len(loader)` is the number of batches.
        indices: the rows to iterate (a subset; default all readable rows).
        shuffle: a new random order every pass, drawn from `generator` (or, with world_size > 1, from
            `order_seed`, the same on every rank: DistributedSampler's order and padding).
        train: random-resized crop to `img_size` + flip (needs the whole images, kind "train"); False:
            the stored images as they are (kind "eval": data.val_transform's crops).
        generator: the torch.Generator of the order and the augmentations; seed it per (seed, epoch, rank)
            and the batches repeat exactly. Each pass continues its stream.
        device: where the batches go; uint8 crosses to it (pinned on CUDA), normalisation runs there.
        channels_last: yield channels-last tensors.
        augment_on: "host" (default: crops on the CPU in uint8, then the smaller crops cross) or "device"
            (the stored images cross, crops are resized there in float).

    Yields (images float32 (B, 3, img_size, img_size) on `device`, labels int64 on `device`).
    """

    def __init__(self, images, labels, *, batch_size: int, indices: Sequence[int] | None = None,
                 shuffle: bool = False, train: bool = False, img_size: int | None = None,
                 generator: torch.Generator | None = None, drop_last: bool = False,
                 device: str | torch.device = "cpu", channels_last: bool = False, sizes=None,
                 rank: int = 0, world_size: int = 1, order_seed: int | None = None,
                 augment_on: str = "host", scale: tuple[float, float] = SCALE,
                 ratio: tuple[float, float] = RATIO, flip: bool = True) -> None:
        if isinstance(images, DecodedImages):
            store = images
            if train and store.kind != "train":
                raise ValueError("train=True needs whole stored images (kind 'train'); this cache holds centre "
                                 "crops (kind 'eval').")
            if not train and store.kind != "eval":
                raise ValueError("train=False yields the stored images as they are: give the 'eval' cache "
                                 "(data.val_transform's crops), not the whole 'train' images.")
            sizes = store.sizes if sizes is None else sizes
            if indices is None:
                indices = store.readable
            images = store.images
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be >= 1.")
        if augment_on not in ("host", "device"):
            raise ValueError(f"augment_on={augment_on!r}; use 'host' or 'device'.")
        self.images = images
        self.labels = torch.tensor(np.array(labels, dtype=np.int64))
        self.indices = np.asarray(range(len(images)) if indices is None else indices, dtype=np.int64)
        self.batch_size, self.shuffle, self.train, self.drop_last = batch_size, shuffle, train, drop_last
        self.img_size = img_size or images.shape[1]
        self.sizes = None if sizes is None else torch.as_tensor(np.asarray(sizes), dtype=torch.int64)
        if train and self.sizes is None:
            self.sizes = torch.full((len(images), 2), images.shape[1], dtype=torch.int64)
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.rank, self.world_size, self.order_seed = rank, world_size, order_seed
        self.augment_on, self.scale, self.ratio, self.flip = augment_on, scale, ratio, flip
        self.pin = self.device.type == "cuda"

    # -- epoch helpers
    def reseeded(self, generator: torch.Generator | int, order_seed: int | None = None) -> "CachedLoader":
        """A copy drawing from `generator` (or a Generator seeded with this int) and `order_seed`."""
        other = copy.copy(self)
        other.generator = generator if isinstance(generator, torch.Generator) else \
            torch.Generator().manual_seed(int(generator))
        if order_seed is not None:
            other.order_seed = order_seed
        return other

    def _per_rank(self) -> int:
        n = len(self.indices)
        return math.ceil(n / self.world_size) if self.world_size > 1 else n

    def __len__(self) -> int:
        n = self._per_rank()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _order(self) -> torch.Tensor:
        n = len(self.indices)
        if self.world_size > 1:  # DistributedSampler: same permutation everywhere, padded, strided
            if self.shuffle and self.order_seed is None:
                raise ValueError("world_size > 1 with shuffle needs order_seed (the same on every rank, e.g. "
                                 "seed + epoch): pass it to reseeded() / CachedData.train_loader().")
            order = (torch.randperm(n, generator=torch.Generator().manual_seed(self.order_seed))
                     if self.shuffle else torch.arange(n))
            total = self._per_rank() * self.world_size
            if total > n:
                order = torch.cat([order, order.repeat(math.ceil((total - n) / n))[: total - n]])
            return order[self.rank:total:self.world_size]
        return torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)

    def _to_device(self, batch: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cpu":
            return batch
        if self.pin:
            batch = batch.pin_memory()  # the caching host allocator keeps it until the copy has run
        return batch.to(self.device, non_blocking=self.pin)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._order()
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        bs = self.batch_size
        stop = (len(order) // bs) * bs if self.drop_last else len(order)
        for start in range(0, stop, bs):
            rows = self.indices[order[start:start + bs].numpy()]
            # (B, 3, S, S) viewed on the stored (B, S, S, 3) rows: channels-last strides, uint8 throughout
            pixels = torch.from_numpy(self.images[rows]).permute(0, 3, 1, 2)
            rows_t = torch.from_numpy(rows)
            labels = self.labels[rows_t]
            if self.train:
                sizes = self.sizes[rows_t]
                params = sample_crop_params(sizes[:, 0], sizes[:, 1], self.generator, self.scale, self.ratio)
                flips = (torch.rand(len(rows), generator=self.generator) < 0.5) if self.flip else None
                boxes = stored_boxes(params, sizes, pixels.shape[-1])
                if self.device.type == "cpu" and self.img_size >= FUSED_FROM:  # the same numbers, faster
                    yield normalised_crops(pixels, boxes, self.img_size, flips, memory_format=fmt), labels
                    continue
                if self.augment_on == "device":
                    pixels = resized_crop_batch(self._to_device(pixels), boxes, self.img_size, flips)
                else:
                    pixels = self._to_device(resized_crop_batch(pixels, boxes, self.img_size, flips))
            else:
                pixels = self._to_device(pixels)
            yield normalise(pixels, memory_format=fmt), self._to_device(labels)


# --------------------------------------------------------------------------- both splits, for the trainer


@dataclass
class CachedData:
    """What `cached_loaders` returns. `train_indices` / `val_indices`: the dataset indices used (val: all
    ranks'); `skipped`: unreadable paths left out (train, then val); `val_loader`: this rank's eval
    batches; `train_loader(generator, order_seed)`: one epoch's training batches."""

    train_images: DecodedImages
    val_images: DecodedImages
    train_indices: np.ndarray
    val_indices: np.ndarray
    skipped: list[str]
    val_loader: CachedLoader
    _train: CachedLoader

    def train_loader(self, generator: torch.Generator | int, order_seed: int | None = None) -> CachedLoader:
        """The training batches of one epoch, drawn from `generator` (seed it per (seed, epoch, rank));
        with several ranks `order_seed` (the same on all, e.g. seed + epoch) orders them."""
        return self._train.reseeded(generator, order_seed)

    @property
    def cache_bytes(self) -> int:
        return self.train_images.nbytes + self.val_images.nbytes

    @property
    def decoded(self) -> int:
        """Images decoded by the call that returned this (0: both caches were reused)."""
        return self.train_images.decoded + self.val_images.decoded

    @property
    def build_s(self) -> float:
        """Seconds the two caches took to build (when they were built)."""
        return self.train_images.build_s + self.val_images.build_s


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
        raise data_lib._unreadable(store.paths[row], reason,  # noqa: SLF001
                                   f"; {more} more {split} images are unreadable" if more else "")
    if len(chosen) == 0:
        raise data_lib.UnreadableImageError(f"no readable {split} image left ({len(store.unreadable)} unreadable, "
                                            f"e.g. {store.paths[next(iter(store.unreadable))]}); replace the files.")
    return chosen


def cached_loaders(train_set, val_set, *, img_size: int, batch_size: int, train_subset=None, val_subset=None,
                   device: str | torch.device = "cpu", channels_last: bool = False, on_error: str | None = None,
                   rank: int = 0, world_size: int = 1, drop_last: bool = False, store_size: int | None = None,
                   cache_dir: str | Path | None = None, workers: int | None = None, progress: bool = True,
                   augment_on: str = "host") -> CachedData:
    """Decoded caches (built once) and loaders for a `data.NoisyImagenette` train/val pair.

    train_subset / val_subset: None (every readable image), an int N (the first N readable images of each
    class by clean label: train.py's first_per_class over the readable images; 0 = all), or a list of
    dataset indices (unreadable ones are dropped). Unreadable images (found while decoding, remembered by
    the cache): on_error (default: the datasets') "fail" raises `data.UnreadableImageError` naming the
    first, "skip" leaves them out, warns once and lists them in `skipped`. Build the datasets with
    check_images=False: the cache decodes each image once anyway, and a warm cache decodes none.
    Training labels: train_set.targets (noisy); validation: val_set.clean_targets.
    """
    on_error = on_error or getattr(train_set, "on_error", "fail")
    common = dict(cache_dir=cache_dir, workers=workers, progress=progress)
    train_images = dataset_images(train_set, "train", img_size, store_size=store_size, **common)
    val_images = dataset_images(val_set, "eval", img_size, **common)
    train_idx = _select(train_images, np.asarray(train_set.clean_targets), train_subset, on_error, "train")
    val_idx = _select(val_images, np.asarray(val_set.clean_targets), val_subset, on_error, "val")
    skipped = [train_images.paths[k] for k in sorted(train_images.unreadable)] + \
              [val_images.paths[k] for k in sorted(val_images.unreadable)]
    if skipped:
        warnings.warn(f"skipping {len(skipped)} unreadable image(s), e.g. {skipped[0]}", RuntimeWarning, stacklevel=2)
    loader_args = dict(batch_size=batch_size, img_size=img_size, device=device, channels_last=channels_last)
    val_loader = CachedLoader(val_images, val_set.clean_targets, indices=val_idx[rank::world_size], shuffle=False,
                              train=False, **loader_args)
    train = CachedLoader(train_images, train_set.targets, indices=train_idx, shuffle=True, train=True,
                         drop_last=drop_last, rank=rank, world_size=world_size, augment_on=augment_on, **loader_args)
    return CachedData(train_images, val_images, train_idx, val_idx, skipped, val_loader, train)
