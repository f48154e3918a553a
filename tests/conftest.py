"""Shared fixtures: seeded RNG, the tiny ZFNet preset, a tiny ImageFolder, a tiny checkpoint."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.exists(), reason="../shared/data is not present")

# Debian's chromium, driven by Playwright (never a downloaded browser): the browser tests' one launch
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless=new", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tests run many tiny ops: one intra-op thread. On a shared 2-core machine a 2-thread OpenMP
    barrier costs ~15 ms per op (conv2d on 2x3x32x32: 15 ms with 2 threads, 0.1 ms with 1)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_model():
    from convlens.nets.convnet import build_model

    return build_model("zfnet-tiny", init="kaiming", seed=0).eval()


def make_image_folder(root: Path, classes=("a", "b"), per_class: int = 4, size: int = 36, corrupt: int = 0) -> Path:
    """An ImageFolder of random RGB PNGs (``corrupt`` extra unreadable files in the first class)."""
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i:03d}.png")
    for i in range(corrupt):
        (root / classes[0] / f"zz_corrupt_{i}.jpg").write_bytes(b"not an image at all")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "images")


@pytest.fixture
def tiny_checkpoint(tmp_path: Path, image_folder: Path) -> Path:
    """A zfnet-tiny convlens checkpoint with the paper's preprocessing of ``image_folder``."""
    from convlens.images.data import dataset_preprocessing
    from convlens.nets.checkpoint import save_checkpoint
    from convlens.nets.convnet import build_model

    model = build_model("zfnet-tiny", num_classes=2, init="kaiming", seed=0)
    pre = dataset_preprocessing(str(image_folder), crop=32)
    return save_checkpoint(tmp_path / "tiny.pt", model, preprocessing=pre, class_names=["a", "b"], epoch=1)


@pytest.fixture(scope="module")
def browser():
    """Chromium for one test module (skipped where /usr/bin/chromium or playwright is missing)."""
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is missing (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright for Python is not installed")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()
