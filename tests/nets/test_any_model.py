"""Smoke test of the front door: project, occlude, mine and summary run through the CLI on every kind of
model spec (convlens checkpoint, torchvision, timm, a user's file.py:factory with a state_dict), at 64 px
on 4 images; and on the real MobileNetV2 weights when ../shared/data is present."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import SHARED, make_image_folder, needs_shared
from convlens.cli import main

NET = '''
from torch import nn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU6(),
            nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
            nn.Conv2d(12, 16, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))
'''


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("any")
    (d / "net.py").write_text(NET)
    from convlens.nets.loading import load_model

    net = load_model(f"{d / 'net.py'}:Net").model
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    torch.save(net.state_dict(), d / "net.pt")
    data = make_image_folder(d / "data", classes=("a", "b"), per_class=2, size=72)
    return {"d": d, "data": data, "image": next((data / "a").glob("*.png"))}


def _model_args(kind: str, files: dict[str, Path], tiny_checkpoint: Path) -> list[str]:
    if kind == "checkpoint":
        return ["--checkpoint", str(tiny_checkpoint)]
    if kind == "file":
        return ["--arch", f"{files['d'] / 'net.py'}:Net", "--weights", str(files["d"] / "net.pt"), "--input-size", "64"]
    if kind.startswith("timm:"):
        pytest.importorskip("timm")
    return ["--arch", kind, "--input-size", "64"]


KINDS = ["checkpoint", "file", "torchvision:mobilenet_v2",
         pytest.param("torchvision:resnet18", marks=pytest.mark.slow),
         pytest.param("torchvision:vgg11", marks=pytest.mark.slow),
         pytest.param("timm:resnet10t", marks=pytest.mark.slow)]


@pytest.mark.parametrize("kind", KINDS)
def test_commands_on_every_model_kind(kind: str, files: dict[str, Path], tiny_checkpoint: Path,
                                      tmp_path: Path) -> None:
    model = _model_args(kind, files, tiny_checkpoint)
    image = str(files["image"])
    assert main(["project", *model, "--image", image, "--top", "2", "--out", str(tmp_path / "p")]) == 0
    proj = json.loads((tmp_path / "p" / "result.json").read_text())
    assert len(proj["data"]["units"]) == 2 and proj["data"]["values"][0] > 0
    assert main(["occlude", *model, "--image", image, "--window", "24", "--stride", "16",
                 "--out", str(tmp_path / "o")]) == 0
    occ = json.loads((tmp_path / "o" / "result.json").read_text())
    assert occ["kind"] == "occlusion" and (tmp_path / "o" / "occlusion.png").is_file()
    expected_rule = "deconvnet" if kind == "checkpoint" else "guided"  # max pooling right below conv5 vs none
    if kind in ("checkpoint", "torchvision:mobilenet_v2"):
        assert occ["data"]["rule"] == expected_rule, occ["data"]["rule_reason"]
    if kind == "torchvision:mobilenet_v2":
        assert main(["occlude", *model, "--image", image, "--window", "24", "--stride", "8", "--approximate",
                     "--quality", "--out", str(tmp_path / "oa")]) == 0
        quality = json.loads((tmp_path / "oa" / "result.json").read_text())["data"]["quality"]
        assert 0 < quality["computed_fraction"] <= 1 and -1 <= quality["ssim_prob"] <= 1, quality
    assert main(["mine", *model, "--dataset", str(files["data"]), "--split", "train", "--limit", "4", "--k", "2",
                 "--maps", "2", "--project", "grid", "--workers", "0", "--device", "cpu",
                 "--out", str(tmp_path / "m")]) == 0
    mined = json.loads((tmp_path / "m" / "result.json").read_text())
    assert mined["kind"] == "mine" and mined["data"]["images"] == 4 and mined["figures"]
    summary_model = [a for a in model if a != "--checkpoint"] if kind == "checkpoint" else model
    if kind == "checkpoint":
        summary_model = ["--arch", "zfnet-tiny"]
    assert main(["summary", *summary_model]) == 0


@needs_shared
@pytest.mark.slow
def test_commands_on_real_mobilenet(tmp_path: Path) -> None:
    folder = SHARED / "models" / "mobilenet_v2_imagenet"
    model = ["--arch", "torchvision:mobilenet_v2", "--weights", str(folder / "mobilenet_v2_imagenet.pt")]
    sample = SHARED / "imagenet-sample"
    image = next((sample / "n01443537").iterdir())  # a goldfish
    assert main(["project", *model, "--image", str(image), "--layer", "features.14", "--top", "2",
                 "--out", str(tmp_path / "p")]) == 0
    assert main(["occlude", *model, "--image", str(image), "--window", "112", "--stride", "56",
                 "--out", str(tmp_path / "o")]) == 0
    occ = json.loads((tmp_path / "o" / "result.json").read_text())
    assert occ["data"]["target"] == 1  # predicted class of the clean image: goldfish
    assert main(["mine", *model, "--dataset", str(sample), "--split", "train", "--limit", "4", "--k", "2",
                 "--maps", "2", "--layers", "features.3", "--project", "grid", "--workers", "0",
                 "--out", str(tmp_path / "m")]) == 0
    assert main(["summary", *model]) == 0
