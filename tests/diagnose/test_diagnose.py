"""Tests for convlens.diagnose.analysis (Fig. 6 diagnostics as numbers)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from convlens.diagnose.analysis import comparison_table, diagnose, filter_rms, frequency_bands, lattice_energy
from convlens.nets.convnet import ConvNet, ConvNetConfig, ConvSpec, PoolSpec, build_model, init_weights


def _grid(k: int) -> tuple[torch.Tensor, torch.Tensor]:
    c = (k - 1) / 2
    return torch.meshgrid(torch.arange(k) - c, torch.arange(k) - c, indexing="ij")


def _filters(k: int = 11) -> torch.Tensor:
    yy, xx = _grid(k)
    blob = torch.exp(-(xx**2 + yy**2) / (2 * 2.0**2))  # low: a smooth Gaussian blob
    checker = ((-1.0) ** (xx + yy + 2 * k)).float()  # high: the Nyquist checkerboard
    sinus = torch.cos(2 * math.pi * 0.25 * xx)  # mid: 0.25 cycles/px = half of Nyquist
    return torch.stack([f[None].repeat(3, 1, 1) for f in (blob, checker, sinus)])  # (3, 3, k, k)


def test_frequency_bands_put_known_filters_in_their_band() -> None:
    bands = frequency_bands(_filters())
    torch.testing.assert_close(bands.sum(1), torch.ones(3))
    assert bands.argmax(1).tolist() == [0, 2, 1]  # blob low, checkerboard high, sinusoid mid
    assert bands[0, 0] > 0.9 and bands[1, 2] > 0.9 and bands[2, 1] > 0.7


def test_frequency_bands_same_for_a_7x7_filter_on_the_common_grid() -> None:
    assert frequency_bands(_filters(7)).argmax(1).tolist() == [0, 2, 1]


def test_lattice_energy_of_a_pure_grid_and_of_a_smooth_image() -> None:
    grid = torch.zeros(1, 3, 32, 32)
    grid[:, :, ::4, ::4] = 1.0  # impulses every 4 px: all non-DC energy on the stride-4 lattice
    assert float(lattice_energy(grid, 4)) == pytest.approx(1.0)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    smooth = torch.exp(-((xx - 16) ** 2 + (yy - 16) ** 2) / 60)[None, None].repeat(1, 3, 1, 1)
    assert float(lattice_energy(smooth, 4)) < 0.01


def _two_layer(stride: int, seed: int) -> ConvNet:
    pool = PoolSpec(3, 2, ceil_mode=True)
    cfg = ConvNetConfig(name=f"s{stride}", input_size=64, num_classes=4, fc=(),
                        convs=((1, ConvSpec(16, 7, stride, 3, pool=pool)), (2, ConvSpec(16, 5, 1, 2))))
    model = ConvNet(cfg)
    gen = torch.Generator().manual_seed(seed)
    init_weights(model, "kaiming", generator=gen)
    return model.eval()


def _synthetic_images() -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    img = torch.stack([torch.sin(xx / 7) + torch.cos(yy / 9), torch.exp(-((xx - 30) ** 2 + (yy - 34) ** 2) / 200),
                       torch.sin((xx + yy) / 11)])
    return torch.stack([img, img.flip(-1)])


@pytest.mark.parametrize("seed", [0, 1])
def test_aliasing_higher_for_stride_4_than_stride_2(seed: int) -> None:
    images = _synthetic_images()
    d2 = diagnose(_two_layer(2, seed), images, channels=16)
    d4 = diagnose(_two_layer(4, seed), images, channels=16)
    a2, a4 = float(d2.aliasing.nanmean()), float(d4.aliasing.nanmean())
    assert a4 > 2 * a2, (a2, a4)
    assert a4 > 2 * d4.aliasing_chance  # a real grid, not noise


def test_planted_dead_and_dominant_filters_are_found() -> None:
    model = build_model("zfnet-tiny", seed=0, init="kaiming").eval()
    with torch.no_grad():
        model.conv1.weight[3].zero_()
        model.conv1.bias[3] = -1.0  # never activates
        model.conv1.weight[5] *= 20.0  # one filter dominates (Fig. 6a)
    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    d = diagnose(model, images, channels=4)
    assert torch.nonzero(d.dead["conv1"]).flatten().tolist() == [3]
    assert torch.nonzero(d.near_zero["conv1"]).flatten().tolist() == [3]
    assert d.dominates and d.dominant_filter == 5
    torch.testing.assert_close(d.rms, filter_rms(model.conv1.weight))
    assert model.training is False


def test_compare_table_has_both_models_and_restores_mode() -> None:
    a = build_model("zfnet-tiny", seed=0, init="kaiming")
    b = build_model("zfnet-tiny", seed=1, init="kaiming")
    a.train()
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    d = diagnose(a, images, compare=b, channels=4)
    assert a.training and d.compare is not None and d.projections.shape == (4, 3, 32, 32)
    cols, rows = comparison_table(d, d.compare, names=["a", "b"])
    assert cols == ["measure", "a", "b"] and len(rows) >= 10 and all(len(r) == 3 for r in rows)
    assert not d.dominates


def test_diagnose_rejects_bad_images() -> None:
    with pytest.raises(ValueError, match="images must have shape"):
        diagnose(build_model("zfnet-tiny"), torch.zeros(3, 32, 32))


def _folder(root: Path, n: int = 4) -> Path:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for c in range(2):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(n):
            Image.fromarray((torch.rand(36, 36, 3, generator=g) * 255).byte().numpy()).save(root / f"c{c}" / f"{i}.png")
    return root


def test_diagnose_cli_side_by_side(tmp_path: Path) -> None:
    from convlens.cli import main
    from convlens.images.data import Preprocessing
    from convlens.nets.checkpoint import save_checkpoint

    pre = Preprocessing(36, 32, torch.full((3, 1, 1), 127.5), torch.full((3, 1, 1), 64.0))
    paths = []
    for seed in (0, 1):
        p = tmp_path / f"run{seed}" / "checkpoints" / "last.pt"
        save_checkpoint(p, build_model("zfnet-tiny", seed=seed, init="kaiming", num_classes=2), preprocessing=pre,
                        class_names=["a", "b"], epoch=1)
        paths.append(str(p))
    out = tmp_path / "out"
    code = main(["diagnose", "--checkpoint", paths[0], "--compare", paths[1], "--dataset", str(_folder(tmp_path / "d")),
                 "--limit", "6", "--channels", "4", "--device", "cpu", "--out", str(out)])
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    assert result["kind"] == "diagnose" and len(result["tables"][0]["columns"]) == 3
    assert len(result["figures"]) == 6 and all((out / f["path"]).is_file() for f in result["figures"])
    assert "compare" in result["data"] and (out / "diagnose.md").read_text().count("|") > 30


def test_diagnose_cli_missing_checkpoint_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from convlens.cli import main

    assert main(["diagnose", "--checkpoint", str(tmp_path / "nope.pt"), "--dataset", str(tmp_path),
                 "--out", str(tmp_path / "o")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_layer2_projection_figure_titles_each_tile(tmp_path) -> None:
    """The layer-2 figure names each tile's map and activation (values equal the projections' own)."""
    from convlens.deconv.project import project_max
    from convlens.diagnose.figures import diagnosis_figures

    model = build_model("zfnet-tiny", seed=0, init="kaiming")
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    d = diagnose(model, images, channels=4)
    assert d.projection_values is not None and d.projection_boxes is not None
    direct = project_max(model, images, d.layer_names[1], list(range(4)), rule="deconvnet").values.amax(0)
    torch.testing.assert_close(d.projection_values, direct)
    assert (d.projection_values > 0).any()  # live maps were drawn
    figs = diagnosis_figures(d, "t", tmp_path)
    entry = next(f for f in figs if f["path"] == "t_layer2_projections.png")
    assert "grey = 0" in entry["caption"] and (tmp_path / entry["path"]).is_file()
def test_layer2_projections_project_only_each_channels_strongest_image(monkeypatch: pytest.MonkeyPatch) -> None:
    """128 images once made N x K projections (1.2 GB at 224 px); now K at most, same result."""
    from convlens.deconv import project as deconv
    from convlens.diagnose.analysis import _layer2_projections

    model = build_model("zfnet-tiny", seed=0, init="kaiming").eval()
    images = torch.randn(7, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    full = deconv.project_max(model, images, "conv2", list(range(5)), rule="deconvnet")  # the brute force
    ref = full.images[full.values.argmax(0), torch.arange(5)]
    seen = []
    real = deconv.project_max

    def spy(m, x, *a, **kw):
        seen.append(len(x))
        return real(m, x, *a, **kw)

    monkeypatch.setattr(deconv, "project_max", spy)
    got, values, boxes = _layer2_projections(model, images, 5, "conv2")
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(values, full.values.amax(0))
    assert torch.equal(boxes, full.boxes[full.values.argmax(0), torch.arange(5)])
    assert seen and set(seen) == {1} and len(seen) <= 5
