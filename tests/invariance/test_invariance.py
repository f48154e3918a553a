"""Feature invariance (Fig. 5): identity, exact shifts, circular-shift equivariance, errors, CLI."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from convlens.invariance.analysis import invariance_curves, shift_images, transform_images


@pytest.mark.parametrize("transform,identity", [("translate", 0), ("scale", 1.0), ("rotate", 0)])
def test_identity_gives_zero_distance(tiny_model, transform, identity):
    images = torch.randn(2, 3, 32, 32)
    curves = invariance_curves(tiny_model, images, transform=transform, params=[identity, identity],
                               layers=["conv1", "fc7"])
    assert curves.distances["conv1"].abs().max() == 0 and curves.distances["fc7"].abs().max() == 0
    clean = tiny_model(images).softmax(1)
    torch.testing.assert_close(curves.probs[:, 0], clean.gather(1, clean.argmax(1, keepdim=True))[:, 0])


def test_distances_grow_and_labels(tiny_model):
    images = torch.randn(2, 3, 32, 32)
    curves = invariance_curves(tiny_model, images, transform="translate", params=[0, 4, 8], labels=[1, 3])
    assert curves.labels.tolist() == [1, 3] and curves.probs.shape == (2, 3)
    assert (curves.distances["conv1"][:, 1:] > 0).all()
    ref = tiny_model(shift_images(images, 8)).softmax(1)
    torch.testing.assert_close(curves.probs[:, 2], ref[[0, 1], [1, 3]])


def test_whole_pixel_translation_is_exact_and_fractional_interpolates():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    y = transform_images(x, "translate", 1)
    assert torch.equal(y[0, 0, 1:], x[0, 0, :3]) and y[0, 0, 0].eq(0).all()
    assert torch.equal(transform_images(x, "translate", -2)[0, 0, :2], x[0, 0, 2:])
    half = transform_images(x, "translate", 0.5)
    torch.testing.assert_close(half[0, 0, 2], (x[0, 0, 1] + x[0, 0, 2]) / 2)


def test_rotation_and_scale_move_points_as_documented():
    x = torch.zeros(1, 1, 21, 21)
    x[0, 0, 10, 15] = 1  # 5 px right of the centre
    assert divmod(int(transform_images(x, "rotate", 90)[0, 0].argmax()), 21) == (5, 10)  # counter-clockwise: up
    assert divmod(int(transform_images(x, "scale", 2.0)[0, 0].argmax()), 21) == (10, 20)


def test_circular_shift_equivariance():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular").double()
    x = torch.randn(1, 3, 9, 9, dtype=torch.float64)
    torch.testing.assert_close(conv(shift_images(x, 2, -3, circular=True)), shift_images(conv(x), 2, -3, circular=True))


def test_bad_inputs(tiny_model):
    with pytest.raises(ValueError, match="unknown transform"):
        invariance_curves(tiny_model, torch.randn(1, 3, 32, 32), transform="shear", params=[1])
    with pytest.raises(ValueError, match="unknown layer"):
        invariance_curves(tiny_model, torch.randn(1, 3, 32, 32), transform="rotate", params=[1], layers=["fc9"])
    with pytest.raises(ValueError, match="batch dim"):
        invariance_curves(tiny_model, torch.randn(3, 32, 32), transform="rotate", params=[1])
    with pytest.raises(ValueError, match="labels"):
        invariance_curves(tiny_model, torch.randn(1, 3, 32, 32), transform="rotate", params=[1], labels=[9])


def test_cli_end_to_end(tiny_checkpoint, image_folder, tmp_path):
    from convlens.cli import main

    imgs = [str(p) for p in sorted((image_folder / "a").iterdir())[:2]]
    out = tmp_path / "inv"
    rc = main(["invariance", "--checkpoint", str(tiny_checkpoint), "--images", *imgs, "--layers", "conv1,fc7",
               "--translate=-4,0,4", "--scale", "0.8,1,1.2", "--rotate", "0,90", "--out", str(out)])
    assert rc == 0
    result = json.loads((out / "result.json").read_text())
    assert result["kind"] == "invariance" and set(result["data"]["curves"]) == {"translate", "scale", "rotate"}
    assert all((out / f["path"]).is_file() for f in result["figures"])
    assert main(["invariance", "--checkpoint", str(tiny_checkpoint), "--images", *imgs, "--layers", "conv9",
                 "--out", str(out)]) == 2


def _texts(fig) -> str:
    import matplotlib.text

    return " ".join(t.get_text() for t in fig.findobj(matplotlib.text.Text))


@pytest.mark.parametrize("labels", [None, "1,0"])
def test_prediction_is_never_called_the_true_label(tiny_checkpoint, image_folder, tmp_path, capsys, monkeypatch,
                                                   labels):
    import convlens.io.artifacts
    from convlens.cli import main

    shown: list[str] = []
    save = convlens.io.artifacts.save_figure
    monkeypatch.setattr(convlens.io.artifacts, "save_figure", lambda fig, path, **kw: (shown.append(_texts(fig)),
                                                                                    save(fig, path, **kw))[1])
    imgs = [str(p) for p in sorted((image_folder / "a").iterdir())[:2]]
    out = tmp_path / "inv"
    extra = ["--labels", labels] if labels else []
    assert main(["invariance", "--checkpoint", str(tiny_checkpoint), "--images", *imgs, "--layers", "conv1,fc7",
                 "--translate=-4,0,4", "--scale", "1,1.2", "--rotate", "0,90", *extra, "--out", str(out)]) == 0
    everything = " ".join([capsys.readouterr().out, (out / "result.json").read_text(),
                           (out / "invariance.md").read_text(), *shown]).lower()
    assert len(shown) == 1 and "p(" in shown[0].lower()  # the figure's texts were read
    result = json.loads((out / "result.json").read_text())
    kinds = {c["label_kind"] for c in result["data"]["curves"].values()}
    if labels is None:
        assert "true label" not in everything and "p(true" not in everything
        assert "predicted class" in everything and kinds == {"predicted class"}
    else:
        assert "true label" in everything and kinds == {"true label"}
        assert result["tables"][0]["columns"][1] == "true label"
