"""The decoded-image data path (lambdalib.cache): cache keyed, verified and built once; crops drawn like
torchvision's RandomResizedCrop; batches repeat with the generator; eval crops equal data.val_transform's."""
import io
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from lambdalib import cache as C
from lambdalib import data as D
from lambdalib import device as dev
from lambdalib.data import first_per_class
from lambdalib.imagenette import MEAN, STD


def copy_of(tiny_imagenette, tmp_path, odd_sizes: bool = False):
    """A private copy of the tiny set (tests change files); odd_sizes: some images non-square."""
    root = tmp_path / "data"
    shutil.copytree(tiny_imagenette, root)
    if odd_sizes:
        rng = np.random.default_rng(1)
        for k, path in enumerate(sorted(root.glob("*/*/*.JPEG"))):
            if k % 3:
                h, w = (30, 47) if k % 2 else (52, 33)
                Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path, quality=90)
    return root


def splits(root, **kwargs):
    return (D.NoisyImagenette(root, "train", noise=0.25, img_size=32, **kwargs),
            D.NoisyImagenette(root, "val", img_size=32, **kwargs))


def ks_statistic(a, b) -> float:
    """Two-sample Kolmogorov-Smirnov statistic (max distance of the empirical CDFs)."""
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    return float(np.abs(np.searchsorted(a, grid, "right") / len(a) - np.searchsorted(b, grid, "right") / len(b)).max())


# --------------------------------------------------------------------------- the cache


def test_cache_is_built_once_then_reused_without_decoding(tiny_imagenette, tmp_path):
    train_set, _ = splits(tiny_imagenette)
    first = C.dataset_images(train_set, "train", 32, cache_dir=tmp_path, progress=False)
    # stored no larger than the originals (36 px) though 2 x 32 = 64
    assert first.decoded == len(train_set) == 40 and first.images.shape == (40, 36, 36, 3)
    assert first.kind == "train" and first.path.is_file() and first.path.with_suffix(".json").is_file()
    stamp, count = first.path.stat().st_mtime_ns, C.DECODED["count"]
    again = C.dataset_images(train_set, "train", 32, cache_dir=tmp_path, progress=False)
    assert again.decoded == 0 and C.DECODED["count"] == count  # nothing decoded
    assert again.path == first.path and again.path.stat().st_mtime_ns == stamp
    assert np.array_equal(np.asarray(again.images), np.asarray(first.images))
    assert (again.sizes == [36, 36]).all() and isinstance(again.images, np.memmap)
    # every image is the PIL-decoded file (resized to the store size when one is given)
    assert np.array_equal(again.images[5], np.asarray(Image.open(train_set.paths[5]).convert("RGB")))
    big = C.dataset_images(train_set, "train", 32, store_size=48, cache_dir=tmp_path, progress=False)
    pil = np.asarray(Image.open(train_set.paths[5]).convert("RGB").resize((48, 48), Image.BILINEAR))
    assert big.decoded == 40 and big.images.shape == (40, 48, 48, 3) and np.array_equal(big.images[5], pil)
    assert C.dataset_images(train_set, "train", 32, cache_dir=tmp_path, progress=False).decoded == 0  # both kept


def test_a_changed_or_added_file_rebuilds_the_cache(tiny_imagenette, tmp_path):
    root = copy_of(tiny_imagenette, tmp_path)
    train_set, _ = splits(root)
    cache_dir = tmp_path / "cache"
    old = C.dataset_images(train_set, "train", 32, cache_dir=cache_dir, progress=False)
    Image.fromarray(np.full((36, 36, 3), 7, np.uint8)).save(train_set.paths[3], quality=95)
    changed = C.dataset_images(train_set, "train", 32, cache_dir=cache_dir, progress=False)
    assert changed.decoded == 40 and changed.path != old.path
    assert np.abs(changed.images[3].astype(int) - 7).max() <= 2 and not old.path.exists()  # stale one removed
    added = C.decoded_images(train_set.paths + [train_set.paths[0]], "train", 36, root=root, split="train",
                             cache_dir=cache_dir, progress=False)
    assert added.decoded == 41 and added.path != changed.path


def test_an_image_rewritten_at_its_own_size_and_time_rebuilds_the_cache(tiny_imagenette, tmp_path):
    """The key reads every image's bytes: a copy tool that keeps sizes and modification times cannot hand a run
    the old pixels under the new data set's identity."""
    root = copy_of(tiny_imagenette, tmp_path)
    train_set, _ = splits(root)
    cache_dir, image = tmp_path / "cache", Path(train_set.paths[3])
    old = C.dataset_images(train_set, "train", 32, cache_dir=cache_dir, progress=False)
    stat, buffer = image.stat(), io.BytesIO()
    Image.new("RGB", (36, 36), "white").save(buffer, format="JPEG", quality=90)
    image.write_bytes(buffer.getvalue() + bytes(stat.st_size - len(buffer.getvalue())))
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (image.stat().st_size, image.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    again = C.dataset_images(train_set, "train", 32, cache_dir=cache_dir, progress=False)
    assert again.decoded == 40 and again.path != old.path and again.images[3].min() >= 250


def test_the_identity_and_the_cache_key_read_each_image_once(tiny_imagenette, tmp_path, monkeypatch):
    from lambdalib.imagenette import data_fingerprint

    root = copy_of(tiny_imagenette, tmp_path)
    train_set, _ = splits(root)
    reads, open_file = [], Path.open
    monkeypatch.setattr(Path, "open", lambda self, *args, **kwargs: reads.append(str(self)) or open_file(self, *args,
                                                                                                      **kwargs))
    data_fingerprint(str(root))  # what a run's identity reads
    C.dataset_images(train_set, "train", 32, cache_dir=tmp_path / "cache", progress=False)  # then its cache key
    images = [name for name in reads if name.endswith(".JPEG")]
    assert len(images) == len(set(images)) == 60  # 40 train + 20 val images, each read once


def test_an_interrupted_build_is_never_used(tiny_imagenette, tmp_path, monkeypatch):
    train_set, _ = splits(tiny_imagenette)
    calls = {"n": 0}
    real = D.decode_whole

    def dies_after_five(path, size):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt
        return real(path, size)

    monkeypatch.setattr(D, "decode_whole", dies_after_five)
    with pytest.raises(KeyboardInterrupt):
        C.dataset_images(train_set, "train", 32, cache_dir=tmp_path, workers=1, progress=False)
    folder = next(tmp_path.iterdir())
    assert list(folder.iterdir()) == []  # no final file, no manifest, no temporary left
    # a build killed hard leaves its temporary file (here: of a process that no longer exists)
    monkeypatch.setattr(D, "decode_whole", real)
    dead = folder / ".train_train_36px_0123456789abcdef.tmp-999999999-deadbeef.npy"
    dead.write_bytes(b"\x93NUMPY partial")
    built = C.dataset_images(train_set, "train", 32, cache_dir=tmp_path, progress=False)
    assert built.decoded == 40 and not dead.exists()
    # a final file cut short (or changed) after its manifest was written is rebuilt, not used
    with open(built.path, "r+b") as f:
        f.truncate(built.path.stat().st_size - 100)
    assert C.dataset_images(train_set, "train", 32, cache_dir=tmp_path, progress=False).decoded == 40
    target = C.dataset_images(train_set, "train", 32, cache_dir=tmp_path, progress=False).path
    with open(target, "r+b") as f:  # same length, other bytes in a checked row
        f.seek(target.stat().st_size - 10)
        f.write(b"\x01" * 10)
    assert C.dataset_images(train_set, "train", 32, cache_dir=tmp_path, progress=False).decoded == 40
    manifest = json.loads(target.with_suffix(".json").read_text())
    assert manifest["format"] == C.FORMAT_VERSION and manifest["count"] == 40


def test_unreadable_images_are_skipped_and_listed_or_fail_naming_the_file(tiny_imagenette, tmp_path):
    root = copy_of(tiny_imagenette, tmp_path)
    train_set, val_set = splits(root, on_error="skip")
    bad_train, bad_val = train_set.paths[2], val_set.paths[0]
    with open(bad_train, "r+b") as f:
        f.truncate(100)
    open(bad_val, "wb").close()
    with pytest.warns(RuntimeWarning, match="skipping 2 unreadable"):
        data = C.cached_loaders(train_set, val_set, img_size=32, batch_size=8, cache_dir=tmp_path / "c",
                                progress=False)
    assert data.skipped == [bad_train, bad_val]
    assert 2 not in data.train_indices and 0 not in data.val_indices
    assert len(data.train_indices) == 39 and len(data.val_indices) == 19
    # the reasons data.find_unreadable_images gives
    assert D.find_unreadable_images([bad_train, bad_val]) == {bad_train: data.train_images.unreadable[2],
                                                             bad_val: data.val_images.unreadable[0]}
    assert data.val_images.unreadable == {0: "empty file"}
    # per-class subsets are chosen among the readable images, as check_images=True + first_per_class would
    with pytest.warns(RuntimeWarning):
        sub = C.cached_loaders(train_set, val_set, img_size=32, batch_size=8, train_subset=2, val_subset=1,
                               cache_dir=tmp_path / "c", progress=False)
    readable = np.array([i for i in range(40) if i != 2])
    assert list(sub.train_indices) == list(readable[first_per_class(train_set.clean_targets[readable], 2)])
    assert sub.train_images.decoded == 0 and len(sub.val_indices) == 10
    with pytest.raises(D.UnreadableImageError, match=r"n01440764_2.JPEG is not a readable image \(Truncated") as err:
        C.cached_loaders(train_set, val_set, img_size=32, batch_size=8, cache_dir=tmp_path / "c", on_error="fail",
                         progress=False)
    assert err.value.path == bad_train


# --------------------------------------------------------------------------- crops


@pytest.mark.parametrize("height,width", [(96, 96), (160, 213), (40, 200)])
def test_crop_parameters_follow_torchvision_random_resized_crop(height, width):
    n = 20_000
    torch.manual_seed(0)
    ref = np.array([T.RandomResizedCrop.get_params(torch.empty(1, height, width), [0.08, 1.0], [3 / 4, 4 / 3])
                    for _ in range(n)], dtype=float)
    ours = D.sample_crop_params(torch.full((n,), height), torch.full((n,), width),
                                torch.Generator().manual_seed(1)).numpy().astype(float)
    assert ours.shape == (n, 4) and (ours[:, 2] >= 1).all() and (ours[:, 3] >= 1).all()
    assert (ours[:, 0] + ours[:, 2] <= height).all() and (ours[:, 1] + ours[:, 3] <= width).all()
    limit = 1.95 * math.sqrt(2 / n)  # KS critical value at alpha = 0.001
    features = {
        "area": lambda p: p[:, 2] * p[:, 3] / (height * width),
        "aspect": lambda p: p[:, 3] / p[:, 2],
        "centre_y": lambda p: (p[:, 0] + p[:, 2] / 2) / height,
        "centre_x": lambda p: (p[:, 1] + p[:, 3] / 2) / width,
    }
    for name, feature in features.items():
        assert ks_statistic(feature(ours), feature(ref)) < limit, name
    # the centre-crop fallback, taken as often
    full = lambda p: np.mean(p[:, 0] == (height - p[:, 2]) // 2)  # noqa: E731
    assert abs(full(ours) - full(ref)) < 0.02


def test_resized_crop_matches_torchvision_on_the_same_box():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (3, 40, 40, 3), dtype=np.uint8)
    pixels = np.stack([np.asarray(Image.fromarray(p).resize((40, 40))) for p in pixels])  # some smoothness
    boxes = torch.tensor([[0, 0, 40, 40], [5, 3, 12, 30], [20, 10, 17, 9]])
    flips = torch.tensor([False, True, False])
    batch = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    ours = dev.resized_crop_batch(batch, boxes, 24, flips)
    assert ours.dtype == torch.uint8 and ours.shape == (3, 3, 24, 24)
    for k, (top, left, h, w) in enumerate(boxes.tolist()):
        ref = TF.resized_crop(Image.fromarray(pixels[k]), top, left, h, w, [24, 24])  # PIL, as the JPEG path
        ref = torch.from_numpy(np.array(ref)).permute(2, 0, 1).int()
        if flips[k]:
            ref = ref.flip(-1)
        assert (ours[k].int() - ref).abs().float().mean() < 1.0 and (ours[k].int() - ref).abs().max() <= 8
    # the float path agrees with the uint8 one up to rounding
    floats = dev.resized_crop_batch(batch.float(), boxes, 24, flips)
    assert floats.dtype == torch.float32 and (floats - ours.float()).abs().max() < 1.01


def test_boxes_on_the_original_size_map_onto_the_stored_pixels():
    params = torch.tensor([[0, 0, 160, 213], [40, 100, 80, 60]])
    sizes = torch.tensor([[160, 213], [160, 213]])
    boxes = D.stored_boxes(params, sizes, 96)
    assert boxes[0].tolist() == [0, 0, 96, 96]
    assert boxes[1].tolist() == [24, round(100 * 96 / 213), 48, round(160 * 96 / 213) - round(100 * 96 / 213)]


# --------------------------------------------------------------------------- loaders


def test_the_same_generator_seed_gives_identical_batches(tiny_imagenette, tmp_path):
    data = C.cached_loaders(*splits(tiny_imagenette), img_size=32, batch_size=16, cache_dir=tmp_path, progress=False)

    def epoch(generator):
        return [(x.clone(), y.clone()) for x, y in data.train_loader(generator)]

    a, b = epoch(torch.Generator().manual_seed(7)), epoch(7)
    c = epoch(torch.Generator().manual_seed(8))
    assert len(a) == 3 and [len(y) for _, y in a] == [16, 16, 8]
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert not torch.equal(a[0][0], c[0][0])
    x, y = a[0]
    assert x.dtype == torch.float32 and x.shape == (16, 3, 32, 32) and x.is_contiguous() and y.dtype == torch.int64
    # one generator continues its stream across passes (epochs differ), like make_loader's
    loader = data.train_loader(torch.Generator().manual_seed(7))
    first, second = next(iter(loader))[0], next(iter(loader))[0]
    assert not torch.equal(first, second)
    # every image of an epoch once, with its noisy label
    seen = torch.cat([y for _, y in a]).sort().values
    assert torch.equal(seen, torch.as_tensor(np.sort(data.train_loader(0).labels.numpy())))


def test_eval_batches_equal_val_transform(tiny_imagenette, tmp_path):
    root = copy_of(tiny_imagenette, tmp_path, odd_sizes=True)
    train_set, val_set = splits(root)
    data = C.cached_loaders(train_set, val_set, img_size=32, batch_size=6, cache_dir=tmp_path / "c", progress=False)
    images = torch.cat([x for x, _ in data.val_loader])
    labels = torch.cat([y for _, y in data.val_loader])
    reference = torch.stack([val_set[i][0] for i in range(len(val_set))])
    assert images.shape == reference.shape == (20, 3, 32, 32)
    assert torch.allclose(images, reference, atol=1e-6)  # the same PIL steps, the same arithmetic
    assert torch.equal(labels, torch.tensor(np.array(val_set.clean_targets)))
    assert len(data.val_loader) == 4
    # training images keep their original size for the crop parameters
    assert {tuple(s) for s in data.train_images.sizes.tolist()} == {(36, 36), (30, 47), (52, 33)}


def test_loader_length_drop_last_subset_and_ranks(tiny_imagenette, tmp_path):
    train_set, val_set = splits(tiny_imagenette)
    data = C.cached_loaders(train_set, val_set, img_size=32, batch_size=16, train_subset=[1, 2, 3, 5, 8, 13],
                            cache_dir=tmp_path, progress=False)
    loader = data.train_loader(0)
    assert len(loader) == 1 and sum(len(y) for _, y in loader) == 6
    rows = set()
    for shuffled in (data.train_loader(0), data.train_loader(1)):
        shuffled.batch_size = 2
        rows |= {int(v) for _, y in shuffled for v in y}
    assert rows <= {int(train_set.targets[i]) for i in (1, 2, 3, 5, 8, 13)}
    full = C.cached_loaders(train_set, val_set, img_size=32, batch_size=16, drop_last=True, cache_dir=tmp_path,
                            progress=False)
    assert len(full.train_loader(0)) == 2 and sum(len(y) for _, y in full.train_loader(0)) == 32
    # two ranks: DistributedSampler's order and padding, the val split strided like train.py's
    store = full.train_images
    for rank in (0, 1):
        ranked = C.CachedLoader(store, train_set.targets, batch_size=7, shuffle=True, train=True, img_size=32,
                                indices=np.arange(0, 39), rank=rank, world_size=2, order_seed=12)
        sampler = torch.utils.data.DistributedSampler(range(39), num_replicas=2, rank=rank, shuffle=True, seed=10)
        sampler.set_epoch(2)
        assert len(ranked) == 3
        assert torch.equal(torch.cat([y for _, y in ranked]), torch.as_tensor(train_set.targets[list(sampler)]))
    with pytest.raises(ValueError, match="order_seed"):
        next(iter(C.CachedLoader(store, train_set.targets, batch_size=4, shuffle=True, train=True, world_size=2)))
    shard = C.cached_loaders(train_set, val_set, img_size=32, batch_size=4, rank=1, world_size=2, cache_dir=tmp_path,
                             progress=False)
    assert list(shard.val_loader.indices) == list(range(20))[1::2]
    with pytest.raises(ValueError, match="kind 'eval'"):
        C.CachedLoader(full.val_images, val_set.targets, batch_size=4, train=True)


def test_choose_loader_auto_follows_the_available_memory(monkeypatch):
    monkeypatch.setattr(dev, "available_memory", lambda: 8 * 2**30)
    assert C.cache_bytes(9469, 3925, 160) == 3 * (9469 * 320 * 320 + 3925 * 160 * 160)
    assert C.choose_loader("auto", 9469, 3925, 160) == "cached"  # 3.0 GiB <= half of 8 GiB
    assert C.choose_loader("auto", 9469, 3925, 224) == "workers"  # 5.9 GiB
    assert C.choose_loader("auto", 9469, 3925, 224, store_size=224) == "cached"
    assert C.choose_loader("workers", 10, 10, 32) == "workers" and C.choose_loader("cached", 10**9, 0, 320) == "cached"
    with pytest.raises(ValueError, match="loader="):
        C.choose_loader("fast", 1, 1, 32)


def test_cache_folder_beside_writable_data_else_git_ignored_data(tiny_imagenette, tmp_path, monkeypatch):
    monkeypatch.delenv("LAMBDALIB_CACHE_DIR", raising=False)
    monkeypatch.setenv("LAMBDALIB_HOME", str(tmp_path / "project"))
    (tmp_path / "project" / "data").mkdir(parents=True)
    root = copy_of(tiny_imagenette, tmp_path)
    assert C.cache_folder(root) == root / C.CACHE_DIRNAME  # a writable root outside the checkout
    train_set, _ = splits(root)
    images = C.dataset_images(train_set, "train", 32, progress=False)
    assert images.path.parent == root / C.CACHE_DIRNAME
    assert D.NoisyImagenette(root, "train").paths == train_set.paths  # the data folder still reads the same
    # inside the checkout (the embedded set is a tracked folder) or read-only: the git-ignored data/ folder
    inside = tmp_path / "project" / "data" / "imagenette-mini"
    assert C.cache_folder(inside).parent == tmp_path / "project" / "data" / C.CACHE_DIRNAME
    real = C._writable
    monkeypatch.setattr(C, "_writable", lambda folder: not str(folder).startswith(str(root)) and real(folder))
    read_only = C.cache_folder(root)
    assert read_only.parent == tmp_path / "project" / "data" / C.CACHE_DIRNAME
    assert read_only.name.startswith("data-") and read_only != C.cache_folder(inside)
    monkeypatch.setenv("LAMBDALIB_CACHE_DIR", str(tmp_path / "env"))
    assert C.cache_folder(root).parent == tmp_path / "env"


def test_store_size_is_twice_the_image_size_but_never_above_the_originals(tiny_imagenette, tmp_path):
    root = copy_of(tiny_imagenette, tmp_path, odd_sizes=True)  # 36x36, 30x47 and 52x33 images
    train_set, _ = splits(root)
    assert C.default_store_size(64) == 128 and C.default_store_size(160) == 320
    assert C.store_size_for(train_set.paths, 16) == 32
    assert C.store_size_for(train_set.paths, 32) == 52  # the longest side among the originals
    data = C.cached_loaders(*splits(root), img_size=32, batch_size=8, channels_last=True, cache_dir=tmp_path / "c",
                            progress=False)
    assert data.train_images.size == 52
    x, _ = next(iter(data.train_loader(0)))
    assert x.shape == (8, 3, 32, 32) and x.is_contiguous(memory_format=torch.channels_last)


# --------------------------------------------------------------------------- the device path (#23)


def test_the_device_resize_is_the_host_kernel_to_within_one_level():
    """augment_on="device" resizes a whole batch by two matrix products: exactly torch's antialiased bilinear
    (PIL's filter) before rounding, shrinking and enlarging, flipped or not; rounded, within one 0-255 level
    of the host path's uint8 kernel (whose fixed-point weights round one pixel in ten the other way)."""
    images = torch.randint(0, 256, (6, 3, 50, 70), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    boxes = torch.tensor([[0, 0, 50, 70], [5, 3, 12, 30], [20, 10, 30, 9], [0, 40, 50, 30], [49, 69, 1, 1],
                          [10, 10, 24, 24]])
    flips = torch.tensor([False, True, False, True, False, True])
    for size in (16, 24, 40):
        exact = dev.resized_crop_batch(images.float(), boxes, size, flips)  # per image, float
        host = dev.resized_crop_batch(images, boxes, size, flips).int()  # per image, uint8
        ours = dev.resized_crops(images.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2), boxes, size, flips)
        assert ours.dtype == torch.float32 and ours.shape == (6, 3, size, size)
        assert torch.equal(ours, exact.round().clamp(0, 255)) or (ours - exact).abs().max() <= 0.5 + 1e-3
        assert (ours.int() - host).abs().max() <= 1 and (ours.int() - host).abs().float().mean() < 0.2


def test_device_path_batches_repeat_with_the_seed_and_evaluate_as_the_host_path(tiny_imagenette, tmp_path):
    sets = splits(tiny_imagenette)
    host = C.cached_loaders(*sets, img_size=32, batch_size=16, cache_dir=tmp_path, progress=False)
    ours = C.cached_loaders(*sets, img_size=32, batch_size=16, cache_dir=tmp_path, progress=False,
                            augment_on="device")
    assert (host.augment_on, ours.augment_on) == ("host", "device")
    assert isinstance(ours.train_loader(0).images, torch.Tensor)  # the decoded images, where the batches are made

    def epoch(seed):
        return [(x.clone(), y.clone()) for x, y in ours.train_loader(seed)]

    a, b, c = epoch(7), epoch(7), epoch(8)
    assert [len(y) for _, y in a] == [16, 16, 8] and a[0][0].shape == (16, 3, 32, 32) and a[0][0].dtype == torch.float32
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert not torch.equal(a[0][0], c[0][0])
    # every image once a pass, with its noisy label
    assert torch.equal(torch.cat([y for _, y in a]).sort().values,
                       torch.cat([y for _, y in host.train_loader(7)]).sort().values)
    # evaluation batches are slices of the device copy: bit for bit the host path's
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(ours.val_loader,
                                                                                           host.val_loader))
    subset = ours.eval_loader([3, 1, 2], batch_size=2)  # a chosen order (train.py's class-mixed subset)
    host_images = torch.cat([x for x, _ in host.val_loader])
    assert [len(y) for _, y in subset] == [2, 1] and torch.equal(torch.cat([x for x, _ in subset]),
                                                                 host_images[[3, 1, 2]])


@pytest.mark.parametrize("augment_on", ["host", "device"])
def test_train_loader_crops_cover_the_image_like_random_resized_crop(tmp_path, augment_on):
    """A known image (left half black, right half white): the mean brightness of our crops and of
    torchvision's RandomResizedCrop + flip agree in distribution, on either path."""
    pixels = np.zeros((48, 64, 3), np.uint8)
    pixels[:, 32:] = 255
    stored = np.asarray(Image.fromarray(pixels).resize((64, 64), Image.BILINEAR))[None].repeat(2000, 0)
    loader = C.CachedLoader(stored, np.zeros(2000), batch_size=500, train=True, img_size=16,
                            sizes=np.tile([48, 64], (2000, 1)), generator=torch.Generator().manual_seed(0),
                            augment_on=augment_on)
    ours = torch.cat([x for x, _ in loader])
    assert ours.shape == (2000, 3, 16, 16)
    ours_left = (ours[:, 0, :, :8].mean((1, 2)) * STD[0] + MEAN[0]).numpy()
    torch.manual_seed(0)
    ref_t = T.Compose([T.RandomResizedCrop(16), T.RandomHorizontalFlip(), T.ToTensor()])
    image = Image.fromarray(pixels)
    ref_left = np.array([float(ref_t(image)[0, :, :8].mean()) for _ in range(2000)])
    # rounded: both have atoms at 0 and 1 (crops inside one half), ours a float epsilon off them
    assert ks_statistic(ours_left.round(3), ref_left.round(3)) < 1.95 * math.sqrt(2 / 2000)


def test_prefetching_gives_the_same_batches_raises_errors_and_stops_when_left(tiny_imagenette, tmp_path,
                                                                              monkeypatch):
    import threading

    sets = splits(tiny_imagenette)
    plain = C.cached_loaders(*sets, img_size=32, batch_size=8, cache_dir=tmp_path, progress=False)
    ahead = C.cached_loaders(*sets, img_size=32, batch_size=8, cache_dir=tmp_path, progress=False, prefetch=2)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2)
               for (x1, y1), (x2, y2) in zip(plain.train_loader(3), ahead.train_loader(3)))
    for _ in ahead.train_loader(3):
        break  # left after one batch: the thread stops
    assert not [t for t in threading.enumerate() if t.name == "lambdalib-prefetch"]

    def broken(*args, **kwargs):
        raise RuntimeError("a crop went wrong")

    monkeypatch.setattr(D, "sample_crop_params", broken)
    with pytest.raises(RuntimeError, match="a crop went wrong"):
        list(ahead.train_loader(3))


def test_augment_auto_puts_the_images_on_a_gpu_that_holds_them(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert C.choose_augment("auto", cpu, 1) == "host"  # the CPU's uint8 kernels are the faster ones there
    monkeypatch.setattr(dev, "free_memory", lambda device: 10 * 2**30)
    assert C.choose_augment("auto", cuda, 3 * 2**30) == "device"  # 3 GiB <= 30 % of 10 GiB free
    assert C.choose_augment("auto", cuda, 4 * 2**30) == "host"
    assert C.choose_augment("device", cpu, 10**12) == "device" and C.choose_augment("host", cuda, 1) == "host"
    with pytest.raises(ValueError, match="augment_on="):
        C.choose_augment("gpu", cuda, 1)


def test_a_data_root_on_a_network_drive_keeps_its_cache_on_local_disk(tiny_imagenette, tmp_path, monkeypatch):
    monkeypatch.delenv("LAMBDALIB_CACHE_DIR", raising=False)
    monkeypatch.setenv("LAMBDALIB_HOME", str(tmp_path / "project"))
    (tmp_path / "project" / "data").mkdir(parents=True)
    root = copy_of(tiny_imagenette, tmp_path)
    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/vda / ext4 rw 0 0\ndrive {root} fuse.drive rw,nosuid 0 0\n"
                      f"fuse-overlayfs {tmp_path / 'project'} fuse.fuse-overlayfs rw 0 0\n")
    monkeypatch.setattr(dev, "MOUNTS", str(mounts))
    assert dev.network_mount(root / "train") == "fuse.drive" and dev.network_mount(f"{root}x") is None
    assert dev.network_mount(tmp_path / "project" / "data") is None  # a local overlay is a local disk
    assert C.cache_folder(root).parent == tmp_path / "project" / "data" / C.CACHE_DIRNAME  # not on the drive
    mounts.write_text("/dev/vda / ext4 rw 0 0\n")
    assert C.cache_folder(root) == root / C.CACHE_DIRNAME


def test_a_cache_changed_on_disk_anywhere_is_rebuilt(tiny_imagenette, tmp_path):
    """Every row is checked on open (#24), not a sample: one overwritten row the old sampled check never read."""
    train_set, _ = splits(tiny_imagenette)
    first = C.dataset_images(train_set, "train", 32, cache_dir=tmp_path, progress=False)
    first_pixels = np.array(first.images)
    stored = np.lib.format.open_memmap(first.path, mode="r+")
    stored[13] = 255  # row 13: between the rows the old eight-row sample read (0, 5, 11, 16, ...)
    stored.flush()
    del stored
    again = C.dataset_images(train_set, "train", 32, cache_dir=tmp_path, progress=False)
    assert again.decoded == len(train_set)  # found and rebuilt from the JPEGs
    assert np.array_equal(np.asarray(again.images), first_pixels)


def test_a_data_folder_copied_with_its_cache_beside_it_decodes_nothing(tiny_imagenette, tmp_path, monkeypatch):
    """The key hashes each image's path relative to the data root, not its absolute path: a data folder copied or
    moved with its .lambdalib-cache beside it (to another disk, a Colab VM) reuses the decoded images."""
    monkeypatch.delenv("LAMBDALIB_CACHE_DIR", raising=False)
    monkeypatch.setenv("LAMBDALIB_HOME", str(tmp_path / "project"))
    (tmp_path / "project" / "data").mkdir(parents=True)
    root = copy_of(tiny_imagenette, tmp_path)
    shutil.rmtree(root / C.CACHE_DIRNAME, ignore_errors=True)  # an earlier test's cache in the shared tiny set
    first = C.dataset_images(splits(root)[0], "train", 32, progress=False)
    assert first.decoded == 40 and first.path.parent == root / C.CACHE_DIRNAME
    moved = tmp_path / "elsewhere" / "data"
    shutil.copytree(root, moved)  # the data and its cache folder, as `cp -r` or a sync tool copies them
    count = C.DECODED["count"]
    again = C.dataset_images(splits(moved)[0], "train", 32, progress=False)
    assert again.path.parent == moved / C.CACHE_DIRNAME and again.path.name == first.path.name
    assert again.decoded == 0 and C.DECODED["count"] == count  # nothing decoded
    assert np.array_equal(np.asarray(again.images), np.asarray(first.images))


def test_a_changed_eval_crop_rule_decodes_the_eval_cache_again(tiny_imagenette, tmp_path, monkeypatch):
    """The resize rule is part of the key: when the evaluation crop changes (a new EVAL_CROP_FRACTION), the eval
    cache is decoded again with the new crop instead of handing back stale centre crops."""
    _, val_set = splits(tiny_imagenette)
    old = C.dataset_images(val_set, "eval", 32, cache_dir=tmp_path, progress=False)
    assert old.decoded == 20
    monkeypatch.setattr(D, "EVAL_CROP_FRACTION", 0.5)  # what data.eval_ops (and so val_transform) reads
    monkeypatch.setattr(D, "eval_ops", D.eval_ops.__wrapped__)  # not its lru_cache of the old rule
    new = C.dataset_images(val_set, "eval", 32, cache_dir=tmp_path, progress=False)
    assert new.decoded == 20 and new.path != old.path  # decoded again, under another key
    pil = np.asarray(T.CenterCrop(32)(T.Resize(64)(Image.open(val_set.paths[3]).convert("RGB"))))
    assert np.array_equal(new.images[3], pil)  # the new rule's crop
