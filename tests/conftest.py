"""Shared fixtures: a tiny Imagenette-shaped folder made on the fly, and the optional ../shared data."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lambdalib.imagenette import WNIDS

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def make_tiny_imagenette(root: Path, train_per_class: int = 4, val_per_class: int = 2, size: int = 36) -> Path:
    """Official folder layout + noisy_imagenette.csv; each class has its own colour so models can learn."""
    rng = np.random.default_rng(0)
    rows = ["path,noisy_labels_0,noisy_labels_1,noisy_labels_5,noisy_labels_25,noisy_labels_50,is_valid"]
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for c, wnid in enumerate(WNIDS):
            (root / split / wnid).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                colour = np.array([(c * 25) % 256, (c * 70) % 256, (c * 140) % 256])
                pixels = np.clip(colour + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
                rel = f"{split}/{wnid}/{wnid}_{i}.JPEG"
                Image.fromarray(pixels).save(root / rel, quality=90)
                noisy = [wnid] * 5
                if split == "train" and i == 0:  # one flipped label per class at 25 % and 50 %
                    noisy[3] = noisy[4] = WNIDS[(c + 1) % 10]
                rows.append(",".join([rel, *noisy, str(split == "val")]))
    (root / "noisy_imagenette.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="session")
def tiny_imagenette(tmp_path_factory) -> Path:
    return make_tiny_imagenette(tmp_path_factory.mktemp("tiny_imagenette"))


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared (the full Imagenette copy) is not beside this checkout")
    return SHARED


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network and an empty Hugging Face cache, whatever this machine has."""
    from huggingface_hub import constants

    from lambdalib import fullgrad

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(fullgrad, "_hub_reachable", lambda timeout=3.0: False)
