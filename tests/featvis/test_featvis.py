"""convlens.featvis: parameterization oracles, truncated forward, batch = one unit, hygiene, CLI."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from convlens.cli import main
from convlens.core.capture import capture
from convlens.featvis import FeatvisConfig, render, render_to_dir, truncated_forward
from convlens.featvis.param import color_matrix, decorrelate_color, fourier_image, freq_scale, init_spectrum, to_rgb
from convlens.featvis.render import diversity
from convlens.featvis.transforms import TransformParams, TransformSpec, apply_transforms, draw_transforms
from convlens.nets.meta import make_preprocessing, parse_normalize

PRE = make_preprocessing(parse_normalize("imagenet"), 32)


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 3, stride=2, padding=1),
                         nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 3), nn.Flatten(), nn.LazyLinear(2)).eval()


# ----------------------------------------------------------------------------- parameterization


def test_color_decorrelation_against_direct_computation() -> None:
    m = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=torch.float64)
    m = m / max(float(np.linalg.norm(m[:, j])) for j in range(3))
    torch.testing.assert_close(color_matrix(torch.float64), m)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    y = decorrelate_color(x)
    for n, i, j in [(0, 0, 0), (1, 3, 4), (0, 2, 1)]:
        torch.testing.assert_close(y[n, :, i, j], m @ x[n, :, i, j])  # each pixel p -> M p
    back = torch.einsum("ij,njhw->nihw", torch.linalg.inv(m), y)
    torch.testing.assert_close(back, x)


def test_fourier_image_is_irfft2_of_the_1_over_f_scaled_spectrum() -> None:
    size = 8
    g = torch.Generator().manual_seed(3)
    spec = init_spectrum(2, size, g, torch.float64)
    assert spec.shape == (2, 3, 8, 5, 2) and 0.005 < float(spec.std()) < 0.02
    fy, fx = np.fft.fftfreq(size)[:, None], np.fft.fftfreq(size)[: size // 2 + 1][None]
    f = np.sqrt(fx ** 2 + fy ** 2)
    scale = torch.from_numpy(1.0 / np.maximum(f, 1.0 / size))
    torch.testing.assert_close(freq_scale(size, size, dtype=torch.float64), scale)
    z = torch.complex(spec[..., 0], spec[..., 1]) * scale
    expected = torch.fft.irfft2(z, s=(size, size), norm="ortho") / 4.0
    torch.testing.assert_close(fourier_image(spec, size), expected)
    pixels = to_rgb(spec, size)
    torch.testing.assert_close(pixels, torch.sigmoid(decorrelate_color(expected)))
    assert float(pixels.min()) > 0 and float(pixels.max()) < 1


def test_transforms_identity_and_per_image_draws() -> None:
    img = torch.rand(3, 3, 10, 10, dtype=torch.float64)
    spec = TransformSpec(pad=4, jitter1=8, jitter2=0)
    ident = TransformParams(torch.full((3, 2), 4), torch.ones(3, dtype=torch.float64),
                            torch.zeros(3, dtype=torch.float64), torch.zeros(3, 2, dtype=torch.long))
    torch.testing.assert_close(apply_transforms(img, ident, spec), img)
    # a shift by one pixel moves the image by one pixel, the padding value comes in at the border
    shifted = TransformParams(ident.shift1 - torch.tensor([0, 1]), ident.scale, ident.angle, ident.shift2)
    out = apply_transforms(img, shifted, spec)
    torch.testing.assert_close(out[..., 1:], img[..., :-1])
    assert torch.all(out[..., 0] == 0.5)
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    draws = draw_transforms(gens, 4, TransformSpec())
    assert draws.shift1.shape == (8, 2) and len({tuple(r) for r in draws.shift1.tolist()}) > 1


def test_diversity_term_is_lucid_pairwise_gram_cosine() -> None:
    act = torch.rand(2 * 3, 4, 5, 5, dtype=torch.float64)
    got = diversity(act, 3)
    for u in range(2):
        grams = [(a.flatten(1) @ a.flatten(1).T).flatten() for a in act[3 * u:3 * u + 3]]
        grams = [g / g.norm() for g in grams]
        want = sum(float(grams[i] @ grams[j]) for i in range(3) for j in range(3) if i != j) / 3
        assert abs(float(got[u]) - want) < 1e-12


# ----------------------------------------------------------------------------- truncated forward


@pytest.mark.parametrize(("name", "layer"), [("sequential", "4"), ("resnet18", "layer2"),
                                             ("mobilenet_v2", "features.5"), ("resnet18", "layer2.1.relu")])
def test_truncated_forward_equals_full_activation(name: str, layer: str) -> None:
    model = small_net() if name == "sequential" else getattr(torchvision.models, name)(weights=None).eval()
    x = torch.randn(2, 3, 32, 32)
    model(x)  # materialize the lazy layer
    f = truncated_forward(model, layer)
    assert isinstance(f, torch.fx.GraphModule)
    # the rest of the network is not in the truncated graph
    assert not any(n.op == "call_module" and n.target in ("fc", "classifier.1", "7") for n in f.graph.nodes)
    got = f(x)
    want = capture(model, x, [layer])[layer]
    assert float(want.abs().max()) > 0
    torch.testing.assert_close(got, want)


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if float(x.detach().sum()) > -1e9:  # data-dependent control flow: fx cannot trace it
            x = self.a(x)
        return self.b(torch.relu(x))


def test_truncated_forward_falls_back_to_a_stopping_hook() -> None:
    model = Untraceable().eval()
    f = truncated_forward(model, "a")
    assert not isinstance(f, torch.fx.GraphModule)
    x = torch.randn(1, 3, 8, 8, requires_grad=True)
    out = f(x)
    torch.testing.assert_close(out, model.a(x))
    out.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert not model.a._forward_hooks


# ----------------------------------------------------------------------------- optimization


def test_activation_rises() -> None:
    # layer 3 is a BatchNorm (before the ReLU): every unit has a gradient from the start
    fv = render(small_net(), "3", [0, 1, 2], preprocessing=PRE, config=FeatvisConfig(steps=40, size=16))
    assert fv.images.shape == (3, 1, 3, 16, 16)
    assert torch.all(fv.history[-5:].mean(0) > fv.history[:5].mean(0) + 0.01), fv.history
    assert torch.all(fv.values[:, 0] > fv.history[0])  # the final (untransformed) image too


def test_batch_equals_one_unit_with_the_same_seed() -> None:
    model = torchvision.models.resnet18(weights=None).eval().double()
    cfg = FeatvisConfig(steps=6, size=24, seed=5, diverse=2)
    both = render(model, "layer1", [3, 9], preprocessing=PRE, config=cfg)
    alone = render(model, "layer1", [9], preprocessing=PRE, config=cfg)
    assert both.images.dtype == torch.float64
    assert float((both.images[1] - both.images[1, :, :, :1, :1]).abs().max()) > 0  # not a flat image
    torch.testing.assert_close(alone.images[0], both.images[1], rtol=0, atol=1e-12)
    torch.testing.assert_close(alone.history[:, 0], both.history[:, 1], rtol=0, atol=1e-12)
    other = render(model, "layer1", [9], preprocessing=PRE, config=FeatvisConfig(steps=6, size=24, seed=6, diverse=2))
    assert float((other.images[0] - alone.images[0]).abs().max()) > 1e-3  # the seed matters


def test_model_left_as_found() -> None:
    model = small_net().train()
    model(torch.randn(1, 3, 16, 16))
    model[2].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    render(model, "4", [0], preprocessing=PRE, config=FeatvisConfig(steps=2, size=16))
    with pytest.raises(ValueError, match="out of range"):
        render(model, "4", [99], preprocessing=PRE, config=FeatvisConfig(steps=2, size=16))
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_bad_config_and_layers() -> None:
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        FeatvisConfig(steps=0)
    with pytest.raises(ValueError, match="objective must be one of channel, neuron"):
        FeatvisConfig(objective="pixel")
    with pytest.raises(ValueError, match="unknown layer 'nope'"):
        render(small_net(), "nope", [0], preprocessing=PRE)
    with pytest.raises(ValueError, match="not \\(B, C, H, W\\)"):
        render(small_net(), "6", [0], preprocessing=PRE, config=FeatvisConfig(steps=1, size=16))


def test_resume_skips_done_units(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, cfg = small_net(), FeatvisConfig(steps=3, size=16, objective="neuron")
    first = render_to_dir(model, "4", [0, 2], tmp_path, preprocessing=PRE, config=cfg, top1={0: 2.0, 2: 0.5})
    assert first[0]["ratio"] == [first[0]["peak"][0] / 2.0]
    import convlens.featvis.store as store

    calls: list[list[int]] = []
    real = store.render

    def spy(model, layer, units, **kw):  # type: ignore[no-untyped-def]
        calls.append(list(units))
        return real(model, layer, units, **kw)

    monkeypatch.setattr(store, "render", spy)
    again = render_to_dir(model, "4", [2, 1, 0], tmp_path, preprocessing=PRE, config=cfg, top1={0: 2.0, 2: 0.5})
    assert calls == [[1]] and again[0] == first[1] and again[2] == first[0]
    render_to_dir(model, "4", [0], tmp_path, preprocessing=PRE, config=FeatvisConfig(steps=4, size=16))
    assert calls[-1] == [0]  # other settings: redone


def test_read_back_activation_is_the_saved_png_through_the_model(tmp_path: Path) -> None:
    model = small_net()
    rec = render_to_dir(model, "4", [1], tmp_path, preprocessing=PRE, config=FeatvisConfig(steps=3, size=16))[0]
    from PIL import Image

    arr = np.asarray(Image.open(tmp_path / "4" / rec["images"][0]))
    assert arr.dtype == np.uint8 and arr.shape == (16, 16, 3)
    x = PRE.normalize(torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float() / 255)
    act = capture(model, x, ["4"])["4"][0, 1]
    assert abs(rec["activation"][0] - float(act.mean())) < 1e-5 and abs(rec["peak"][0] - float(act.max())) < 1e-5


# ----------------------------------------------------------------------------- CLI


def test_cli_end_to_end(tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "mined"
    run.mkdir()
    values = torch.full((16, 3), 0.5)
    torch.save({"conv2": {"values": values, "layer": "conv2"}}, run / "topk.pt")
    out = tmp_path / "fv"
    code = main(["featvis", "--checkpoint", str(tiny_checkpoint), "--layer", "conv2", "--units", "0-2,5",
                 "--steps", "4", "--size", "24", "--device", "cpu", "--run", str(run), "--out", str(out)])
    assert code == 0
    res = json.loads((out / "result.json").read_text())
    assert res["kind"] == "featvis" and [u["unit"] for u in res["data"]["units"]] == [0, 1, 2, 5]
    assert all(u["ratio"] == [u["peak"][0] / 0.5] for u in res["data"]["units"])
    assert (out / "featvis_conv2.png").is_file() and (out / "conv2" / "unit_5.png").is_file()
    assert "peak / top-1" in capsys.readouterr().out
    code = main(["featvis", "--checkpoint", str(tiny_checkpoint), "--layer", "conv2", "--units", "0",
                 "--steps", "2", "--size", "24", "--diverse", "2", "--out", str(tmp_path / "fv2")])
    assert code == 0 and (tmp_path / "fv2" / "conv2" / "unit_0_1.png").is_file()
    assert "ratio to top-1 absent" in json.loads((tmp_path / "fv2" / "result.json").read_text())["data"]["note"]
    # the static report shows the result as its own section, with the contact sheet
    from convlens.report import build_report

    (tmp_path / "run").mkdir()
    out.rename(tmp_path / "run" / "featvis")
    html = build_report(tmp_path / "run").read_text()
    assert '<section id="featvis"' in html and "Feature visualization by optimization" in html
    assert re.search(r'<img src="assets/[^"]*featvis_conv2[^"]*\.png"', html), html[:2000]


@pytest.mark.parametrize(("argv", "pattern"), [
    (["--layer", "conv9"], r"unknown layer 'conv9'"),
    (["--layer", "conv2", "--units", "0-999"], r"unit 12 is out of range for layer 'conv2'.*12 channels"),
    (["--layer", "conv2", "--units", "a-b"], r"--units 'a-b'"),
    (["--layer", "conv2", "--steps", "0"], r"--steps.*positive integer"),
    (["--layer", "conv2", "--lr", "-1"], r"--lr must be > 0"),
    (["--layer", "conv2", "--run", "/nonexistent/run"], r"--run /nonexistent/run: no such folder"),
])
def test_cli_bad_arguments(tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                           argv: list[str], pattern: str) -> None:
    code = main(["featvis", "--checkpoint", str(tiny_checkpoint), "--steps", "1", "--size", "16", *argv,
                 "--out", str(tmp_path / "o")])
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and lines[-1].startswith("error: ") and re.search(pattern, lines[-1]), lines


def test_unit_featvis_caches_in_the_run(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from convlens.featvis import CACHE_DIR, unit_featvis

    torch.save({"3": {"values": torch.tensor([[4.0, 1.0], [2.0, 1.0]])}}, tmp_path / "topk.pt")
    loaded = SimpleNamespace(model=small_net(), preprocessing=PRE, arch="small")
    cfg = FeatvisConfig(steps=2, size=16)
    rec = unit_featvis(tmp_path, loaded, "3", 1, config=cfg)
    assert rec["path"] == str(tmp_path / CACHE_DIR / "3" / "unit_1.png") and Path(rec["path"]).is_file()
    assert rec["top1"] == 2.0 and rec["ratio"] == [rec["peak"][0] / 2.0]
    assert json.loads((tmp_path / CACHE_DIR / "3" / "unit_1.json").read_text())["settings"]["model"] == "small"
