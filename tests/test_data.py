import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lambdalib import data as D
from lambdalib import download as DL
from lambdalib import figures

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imagenette"
SHARED_ARCHIVE = SHARED / "imagenette2-224.tgz"
SHARED_MD5 = "33fa28bcc2a9241a07415f68b658bf0c"


def need_shared(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not present (the shared data folder beside the repository)")
    return path


def make_two_class_set(folder: Path, per_split=(("train", 3), ("val", 2))) -> Path:
    """A real-layout Imagenette folder with two classes of small random JPEGs and its CSV."""
    rng = np.random.default_rng(0)
    rows = ["path,noisy_labels_0,noisy_labels_1,noisy_labels_5,noisy_labels_25,noisy_labels_50,is_valid"]
    for split, n in per_split:
        for wnid, other in ((D.WNIDS[0], D.WNIDS[1]), (D.WNIDS[1], D.WNIDS[0])):
            (folder / split / wnid).mkdir(parents=True, exist_ok=True)
            for k in range(n):
                rel = f"{split}/{wnid}/{wnid}_{k}.JPEG"
                Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / rel)
                noisy50 = other if (k == 0 and split == "train") else wnid
                rows.append(f"{rel},{wnid},{wnid},{wnid},{wnid},{noisy50},{split == 'val'}")
    (folder / D.CSV_NAME).write_text("\n".join(rows) + "\n")
    return folder


@pytest.fixture(scope="module")
def tiny_archive(tmp_path_factory):
    """imagenette2-tiny.tgz (top folder imagenette2-tiny/) and its md5."""
    base = tmp_path_factory.mktemp("tiny")
    make_two_class_set(base / "imagenette2-tiny")
    archive = base / "src" / "imagenette2-tiny.tgz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(base / "imagenette2-tiny", arcname="imagenette2-tiny")
    return archive, DL.calculate_md5(archive)


@pytest.fixture(scope="session")
def shared_extract(tmp_path_factory):
    """The shared 224 px archive, fetched through its file:// URL, verified and extracted once per session."""
    archive = need_shared(SHARED_ARCHIVE)
    root = tmp_path_factory.mktemp("downloads")
    folder = DL.prepare_archive(archive.as_uri(), SHARED_MD5, download_root=root)
    yield root, folder
    shutil.rmtree(root, ignore_errors=True)  # 280 MB: not worth keeping in pytest's retained tmp dirs


# ----------------------------------------------------------------------------- official labels


def test_official_counts_and_flip_rates():
    labels = D.read_labels(need_shared(SHARED / D.CSV_NAME))
    counts = D.class_table(labels)
    assert (counts["train"].sum(), counts["val"].sum()) == (9469, 3925)
    rates = D.noise_table(labels)
    assert [round(100 * r, 2) for r in rates["train_rate"]] == [0.0, 1.00, 5.01, 25.01, 50.01]
    assert (rates["val_flipped"] == 0).all()


def test_archive_table_is_torchvisions():
    from torchvision.datasets import Imagenette

    official = {Path(url).stem: (url, md5) for url, md5 in Imagenette._ARCHIVES.values()}
    assert DL.ARCHIVES == official


# ----------------------------------------------------------------------------- download / verify / extract


def test_shared_archive_through_file_url(shared_extract, monkeypatch):
    root, folder = shared_extract
    assert folder == root / "imagenette2-224" and DL.check_root(folder) == folder
    assert DL.calculate_md5(root / "imagenette2-224.tgz") == SHARED_MD5
    # A verified copy is reused: nothing is fetched or extracted again.
    monkeypatch.setattr(DL, "_fetch", lambda *a: pytest.fail("fetched again"))
    monkeypatch.setattr(DL, "_extract", lambda *a: pytest.fail("extracted again"))
    assert DL.resolve_root(SHARED_ARCHIVE.as_uri(), md5=SHARED_MD5, download_root=root) == folder


def test_full_set_labels_and_clean_val(shared_extract):
    _, folder = shared_extract
    train = D.NoisyImagenette(folder, "train", noise=0.25)
    assert len(train) == 9469 and round(100 * train.flip_rate, 2) == 25.01
    val = D.NoisyImagenette(folder, "val", noise=0.5)
    assert len(val) == 3925 and val.flip_rate == 0.0
    assert np.array_equal(val.targets, val.clean_targets)
    image, label = train[0]
    assert image.shape == (3, 160, 160) and label == train.noisy_targets[0]


def test_truncated_archive_is_fetched_again(tiny_archive, tmp_path):
    archive, md5 = tiny_archive
    (tmp_path / archive.name).write_bytes(archive.read_bytes()[:100])  # an interrupted download
    folder = DL.prepare_archive(archive.as_uri(), md5, download_root=tmp_path)
    assert DL.calculate_md5(tmp_path / archive.name) == md5
    assert len(D.NoisyImagenette(folder, "train")) == 6


def test_wrong_md5_raises_and_leaves_nothing(tiny_archive, tmp_path):
    archive, _ = tiny_archive
    with pytest.raises(DL.IntegrityError, match="does not match the expected 0{32}"):
        DL.prepare_archive(archive.as_uri(), "0" * 32, download_root=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_offline_says_where_to_place_the_file(tmp_path):
    url = (tmp_path / "elsewhere" / "imagenette2-160.tgz").as_uri()
    with pytest.raises(DL.DataUnavailableError) as err:
        DL.prepare_archive(url, "0" * 32, download_root=tmp_path / "data")
    assert url in str(err.value) and str(tmp_path / "data" / "imagenette2-160.tgz") in str(err.value)


@pytest.fixture
def http_server(tiny_archive):
    """Serves the tiny archive's folder over http on localhost (exercises torchvision's download_url)."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tiny_archive[0].parent))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_download_and_offline_message(tiny_archive, http_server, tmp_path, monkeypatch):
    archive, md5 = tiny_archive
    folder = DL.prepare_archive(f"{http_server}/{archive.name}", md5, download_root=tmp_path)
    assert len(D.NoisyImagenette(folder, "val")) == 4
    # An official name that cannot be fetched: the error names the URL and where to put the file.
    url = f"{http_server}/imagenette2-160.tgz"  # 404
    monkeypatch.setitem(DL.ARCHIVES, "imagenette2-160", (url, "0" * 32))
    with pytest.raises(DL.DataUnavailableError) as err:
        DL.resolve_root("imagenette2-160", download_root=tmp_path)
    assert url in str(err.value) and str(tmp_path / "imagenette2-160.tgz") in str(err.value)
    assert not (tmp_path / "imagenette2-160").exists()


def test_local_archive_path_without_md5(tiny_archive, tmp_path):
    archive, _ = tiny_archive
    folder = DL.resolve_root(str(archive), download_root=tmp_path)
    assert folder == tmp_path / "imagenette2-tiny"
    assert DL.resolve_root(folder) == folder  # the extracted folder is usable as is


# ----------------------------------------------------------------------------- labels, errors


def test_unknown_noise_level_errors():
    with pytest.raises(ValueError, match=r"noise=0.3 .*0.01, 0.05, 0.25, 0.5.*synthetic=True"):
        D.NoisyImagenette(None, "train", noise=0.3)
    with pytest.raises(ValueError, match="0.25"):
        D.NoisyImagenette(None, "train", noise=25)
    with pytest.raises(ValueError, match="noise=0.2"):
        D.overview(None, noise_levels=(0.0, 0.2))


def test_synthetic_noise_is_seeded_and_recorded():
    a = D.NoisyImagenette(None, "train", noise=0.3, synthetic=True, seed=1)
    b = D.NoisyImagenette(None, "train", noise=0.3, synthetic=True, seed=1)
    c = D.NoisyImagenette(None, "train", noise=0.3, synthetic=True, seed=2)
    assert np.array_equal(a.noisy_targets, b.noisy_targets)
    assert not np.array_equal(a.noisy_targets, c.noisy_targets)
    assert a.flip_rate == round(0.3 * len(a)) / len(a)
    assert a.flipped.sum() == round(0.3 * len(a))  # a flipped label never equals the clean one
    assert D.NoisyImagenette(None, "val", noise=0.3, synthetic=True).flip_rate == 0.0


def test_layout_errors_say_what_to_do(tmp_path):
    folder = make_two_class_set(tmp_path / "set")
    (folder / D.CSV_NAME).unlink()
    with pytest.raises(FileNotFoundError, match="missing noisy_imagenette.csv.*ships inside every imagenette2"):
        DL.resolve_root(folder)
    with pytest.raises(FileNotFoundError, match="Did you mean"):
        DL.resolve_root(make_two_class_set(tmp_path / "outer" / "inner").parent)
    with pytest.raises(FileNotFoundError, match="imagenette2-160"):
        DL.resolve_root(tmp_path / "no-such-thing")
    gone = make_two_class_set(tmp_path / "gone")
    (gone / "train" / D.WNIDS[0] / f"{D.WNIDS[0]}_1.JPEG").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of 6 train images .* are missing"):
        D.NoisyImagenette(gone, "train")


def test_corrupt_image_is_reported_by_path(tmp_path):
    folder = make_two_class_set(tmp_path / "set")
    bad = folder / "train" / D.WNIDS[0] / f"{D.WNIDS[0]}_1.JPEG"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG
    data = D.NoisyImagenette(folder, "train")
    index = data.paths.index(str(bad))
    with pytest.raises(D.CorruptImageError, match=str(bad)):
        data[index]
    skipping = D.NoisyImagenette(folder, "train", on_error="skip")
    with pytest.warns(RuntimeWarning, match=str(bad)):
        image, label = skipping[index]
    assert image.shape == (3, 160, 160) and label == skipping.noisy_targets[index + 1]
    assert skipping.bad_files == {str(bad)}


# ----------------------------------------------------------------------------- embedded subset, loader, overview


def test_embedded_subset_is_balanced_with_official_noise():
    train = D.NoisyImagenette(None, "train", noise=0.05)
    val = D.NoisyImagenette(None, "val")
    assert set(train.class_counts().values()) == {160} and set(val.class_counts().values()) == {70}
    assert list(train.class_counts()) == list(D.CLASS_NAMES)
    assert train.flip_rate == pytest.approx(0.05, abs=0.002)
    size = sum(f.stat().st_size for f in DL.embedded_root().rglob("*") if f.is_file())
    assert size < 9e6
    assert train[0][0].shape == (3, 160, 160)


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_is_determined_by_seed(workers):
    data = D.NoisyImagenette(None, "train", noise=0.25, img_size=64)

    def first_batch(seed):
        return next(iter(D.make_loader(data, batch_size=8, shuffle=True, seed=seed, workers=workers)))

    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    (x1, y1), (x2, y2), (x3, _) = first_batch(0), first_batch(0), first_batch(1)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.equal(x1, x3)
    assert torch.equal(torch.rand(1), expected)  # the caller's global RNG is left alone


def test_default_workers():
    assert 1 <= D.default_workers() <= 8


def test_overview_and_sample_grid(tmp_path):
    info = D.overview(None)
    assert info["classes"]["train"].sum() == 1600 and info["classes"].loc[D.WNIDS[0], "name"] == "tench"
    assert info["noise"].loc[0.25, "train_rate"] == pytest.approx(0.25, abs=0.002)
    target = tmp_path / "fig" / "samples.png"
    fig = figures.plot_samples(None, noise=0.5, n=4, path=target)
    assert target.stat().st_size > 0 and len(fig.axes) == 4


# ----------------------------------------------------------------------------- unreadable images (on_error)


def break_images(folder: Path) -> list[str]:
    """Make three train images unreadable: truncated, zero bytes, random bytes; return their paths."""
    paths = [folder / "train" / D.WNIDS[0] / f"{D.WNIDS[0]}_1.JPEG",
             folder / "train" / D.WNIDS[1] / f"{D.WNIDS[1]}_0.JPEG",
             folder / "train" / D.WNIDS[1] / f"{D.WNIDS[1]}_2.JPEG"]
    paths[0].write_bytes(paths[0].read_bytes()[: paths[0].stat().st_size // 2])
    paths[1].write_bytes(b"")
    paths[2].write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    return [str(p) for p in paths]


@pytest.mark.parametrize("which, reason", [(0, "truncated"), (1, "empty file"), (2, "not an image")])
def test_unreadable_image_fails_with_one_line(which, reason, tmp_path):
    folder = make_two_class_set(tmp_path / "set")
    bad = break_images(folder)[which]
    data = D.NoisyImagenette(folder, "train")
    with pytest.raises(D.UnreadableImageError) as err:
        data[data.paths.index(bad)]
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{bad} is not a readable image") and reason in message
    assert "on_error='skip'" in message and err.value.path == bad
    assert isinstance(err.value, ValueError)  # the CLI prints ValueErrors as one line


def test_unreadable_image_in_a_loader_worker_is_still_one_line(tmp_path):
    folder = make_two_class_set(tmp_path / "set")
    bad = break_images(folder)[0]
    data = D.NoisyImagenette(folder, "train", img_size=32)
    with pytest.raises(D.UnreadableImageError) as err:
        list(D.make_loader(data, batch_size=2, shuffle=False, seed=0, workers=1))
    assert str(err.value).startswith(f"{bad} is not a readable image") and "\n" not in str(err.value)
    assert err.value.path == bad and "DataLoader worker process" in err.value.worker_report


def test_check_images_drops_unreadable_ones_and_lists_them(tmp_path):
    folder = make_two_class_set(tmp_path / "set")
    bad = break_images(folder)
    with pytest.warns(RuntimeWarning, match="skipping 3 unreadable train image"):
        data = D.NoisyImagenette(folder, "train", noise=0.5, img_size=32, on_error="skip", check_images=True)
    assert data.skipped == bad and len(data) == 3 and not set(bad) & set(data.paths)
    assert len(data.clean_targets) == len(data.noisy_targets) == len(data.flipped) == 3
    assert data.class_counts() == {D.CLASS_NAMES[0]: 2, D.CLASS_NAMES[1]: 1, **{n: 0 for n in D.CLASS_NAMES[2:]}}
    images = torch.cat([x for x, _ in D.make_loader(data, batch_size=2, shuffle=False, seed=0, workers=1)])
    assert images.shape == (3, 3, 32, 32)
    # "fail" with check_images: raises at once, naming the first file and counting the others
    with pytest.raises(D.UnreadableImageError, match=r"2 more train images are unreadable") as err:
        D.NoisyImagenette(folder, "train", check_images=True)
    assert err.value.path == bad[0] and "\n" not in str(err.value)
    # a readable folder: nothing skipped, nothing warned
    clean = D.NoisyImagenette(make_two_class_set(tmp_path / "ok"), "train", on_error="skip", check_images=True)
    assert clean.skipped == [] and len(clean) == 6


def test_on_error_values(tmp_path):
    assert D.NoisyImagenette(None, "val", on_error="raise").on_error == "fail"  # the former name
    assert D.NoisyImagenette(None, "val").on_error == "fail"
    with pytest.raises(ValueError, match="on_error='ignore'.*'fail'.*'skip'"):
        D.NoisyImagenette(None, "val", on_error="ignore")


# ----------------------------------------------------------------------------- other user errors


def test_noise_level_errors_list_the_official_levels_and_no_cli_flag():
    for call in (lambda: D.overview(None, noise_levels=(0.3,)), lambda: D.NoisyImagenette(None, "train", noise=0.3),
                 lambda: figures.plot_samples(None, noise=0.3, n=1)):
        with pytest.raises(ValueError, match=r"noise=0.3 .*\[0.0, 0.01, 0.05, 0.25, 0.5\]") as err:
            call()
        assert "--" not in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError) as err:
        D.overview(None, noise_levels=(0.3,))
    assert "synthetic" not in str(err.value)  # overview has no synthetic option
    with pytest.raises(ValueError, match="at least one"):
        D.overview(None, noise_levels=())


def test_noise_levels_match_as_config_says():
    from lambdalib.imagenette import OFFICIAL_NOISE_LEVELS, official_noise_level

    assert D.NOISE_LEVELS == OFFICIAL_NOISE_LEVELS
    for noise in (0, 0.25, 0.25 + 1e-12, 0.25 + 1e-6, 0.05000000001, 0.3, 0.5):
        if official_noise_level(noise) is None:
            with pytest.raises(ValueError):
                D.noise_column(noise)
        else:
            assert D.noise_column(noise) == f"noisy_labels_{round(official_noise_level(noise) * 100)}"


@pytest.mark.parametrize("n", [0, -2])
def test_sample_grid_needs_a_sample(n):
    with pytest.raises(ValueError, match="samples must be >= 1"):
        figures.plot_samples(None, noise=0.25, n=n)


def test_eval_crop_fraction_is_the_val_transforms():
    resize, crop = D.val_transform(160).transforms[:2]
    assert resize.size == round(160 / D.EVAL_CROP_FRACTION) == 183 and tuple(crop.size) == (160, 160)


def test_val_transform_and_the_eval_cache_do_not_share_steps():
    """The eval cache's steps are cached objects; a caller changing its own val_transform must not change them."""
    mine = D.val_transform(160)
    mine.transforms[0].size = 10
    assert D.eval_ops(160)[0].size == D.val_transform(160).transforms[0].size == 183


def test_crop_params_take_plain_sequences():
    drawn = [D.sample_crop_params(h, w, torch.Generator().manual_seed(3))
             for h, w in (([100, 200], [150, 120]), (torch.tensor([100, 200]), torch.tensor([150, 120])))]
    assert torch.equal(*drawn)


def test_first_per_class_counts_whole_classes_of_any_sequence():
    targets = [0, 1, 0, 1, 0, 1, 2]
    assert D.first_per_class(targets, 1) == D.first_per_class(iter(targets), 1) == [0, 1, 6]
    assert D.first_per_class(torch.tensor(targets), 2) == [0, 1, 2, 3, 6]


def test_broken_label_files_are_one_line(tmp_path):
    folder = make_two_class_set(tmp_path / "set")
    csv = folder / D.CSV_NAME
    rows = csv.read_text().splitlines()
    csv.write_text("\n".join(r for r in rows if not r.endswith("True")) + "\n")  # no val rows
    with pytest.raises(ValueError, match="lists no val images"):
        D.NoisyImagenette(folder, "val")
    csv.write_text("")
    with pytest.raises(ValueError, match="not a readable CSV") as err:
        D.read_labels(folder)
    assert "\n" not in str(err.value)


def test_only_an_official_rate_itself_uses_its_column():
    from lambdalib.imagenette import official_noise_level

    assert [official_noise_level(x) for x in (0.0, 0.01, 0.05, 0.25, 0.5)] == [0.0, 0.01, 0.05, 0.25, 0.5]
    assert D.noise_column(0.25) == "noisy_labels_25"
    for near in (0.25 + 1e-6, 0.2501, 0.049, 0.3):  # close is not the same: those take seeded synthetic noise
        assert official_noise_level(near) is None


def test_synthetic_noise_flips_the_rounded_share_of_labels():
    """symmetric_noise flips round(rate * n) labels, not the truncated count: 29 % of 10 labels flips 3 of them,
    so the realised rate is the nearest one to the rate asked for."""
    clean = np.arange(10)
    assert (D.symmetric_noise(range(10), 0.29) != clean).sum() == 3
    assert (D.symmetric_noise(range(10), 0.31) != clean).sum() == 3
