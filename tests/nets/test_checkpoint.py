"""load_model: every kind of model spec loads and runs; weights, sidecar and flag precedence; clean errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from convlens.nets.loading import load_model, parse_spec
from convlens.nets.meta import parse_normalize
from convlens.nets.weights import read_state_dict

FACTORY_SRC = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU6(),
                                  nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(6, num_classes)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


def build():
    return Net()


def not_a_model():
    return 42
'''


@pytest.fixture
def user_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_net.py"
    path.write_text(FACTORY_SRC)
    return path


def _runs(loaded, n_out: int | None = None) -> torch.Tensor:
    s = loaded.input_size
    with torch.no_grad():
        y = loaded.model(torch.randn(2, 3, s, s))
    assert y.shape[0] == 2 and torch.isfinite(y).all() and y.abs().sum() > 0
    if n_out is not None:
        assert y.shape[1] == n_out
    assert not loaded.model.training
    return y


def test_convlens_checkpoint(tiny_checkpoint):
    loaded = load_model(tiny_checkpoint)
    assert loaded.arch == "zfnet-tiny" and loaded.class_names == ["a", "b"] and loaded.epoch == 1
    assert loaded.input_size == 32 and loaded.path == str(tiny_checkpoint)
    _runs(loaded, 2)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", pytest.param("vgg11", marks=pytest.mark.slow)])
def test_torchvision_random_weights_small_input(name):
    loaded = load_model(f"torchvision:{name}", input_size=64)
    assert loaded.arch == f"torchvision:{name}" and loaded.input_size == 64 and len(loaded.class_names) == 1000
    assert loaded.preprocessing.std.flatten().tolist() == pytest.approx([0.229 * 255, 0.224 * 255, 0.225 * 255])
    _runs(loaded, 1000)


def test_torchvision_weights_set_num_classes_and_roundtrip(tmp_path):
    src = load_model("torchvision:resnet18", classes=[f"c{i}" for i in range(5)]).model
    torch.save(src.state_dict(), tmp_path / "r18.pt")
    loaded = load_model("torchvision:resnet18", weights=tmp_path / "r18.pt", input_size=64)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), src.eval()(x))
    assert loaded.class_names == ["0", "1", "2", "3", "4"]


def test_timm_model():
    pytest.importorskip("timm")
    loaded = load_model("timm:resnet10t")
    assert loaded.arch == "timm:resnet10t" and loaded.input_size == 176  # from timm's pretrained_cfg
    assert loaded.preprocessing.resize == round(176 / 0.875)
    loaded = load_model("timm:resnet10t", input_size=64)
    _runs(loaded, 1000)


def test_timm_missing_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(ImportError, match=r"pip install -e '\.\[timm\]'"):
        load_model("timm:resnet10t")


@pytest.mark.parametrize("ext", [".pt", ".safetensors"])
def test_user_factory_with_state_dict(tmp_path, user_file, ext):
    from safetensors.torch import save_file

    ref = load_model(f"{user_file}:build", input_size=16).model
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p))
    sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
    wpath = tmp_path / f"w{ext}"
    save_file(sd, str(wpath)) if ext == ".safetensors" else torch.save(sd, wpath)
    loaded = load_model(f"{user_file}:build", weights=wpath, input_size=16, classes=["x", "y", "z"])
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), ref.eval()(x))
    assert loaded.class_names == ["x", "y", "z"] and loaded.arch == f"{user_file}:build"
    # the class itself is a factory too
    assert type(load_model(f"{user_file}:Net").model).__name__ == "Net"


def test_module_factory(tmp_path, user_file, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = load_model("my_net:build", input_size=16)
    _runs(loaded, 3)
    assert parse_spec("my_net:build").kind == "module"


def test_spec_kinds(tiny_checkpoint, user_file):
    assert parse_spec(tiny_checkpoint).kind == "checkpoint"
    assert parse_spec("torchvision:resnet18").kind == "torchvision"
    assert parse_spec("timm:resnet10t").kind == "timm"
    assert parse_spec(f"{user_file}:build") == parse_spec(f"{user_file}:build")
    assert parse_spec(f"{user_file}:build").kind == "file"
    assert parse_spec("zfnet-small:no34").kind == "convlens"
    assert parse_spec("pkg.mod:make").kind == "module"


def test_sidecar_order(tmp_path, user_file):
    """flags > meta.json beside the weights > the model's own > defaults."""
    folder = tmp_path / "w"
    folder.mkdir()
    torch.save(load_model(f"{user_file}:build").model.state_dict(), folder / "w.pt")
    plain = load_model(f"{user_file}:build", weights=folder / "w.pt")
    assert plain.input_size == 224 and plain.class_names == ["0", "1", "2"]
    assert plain.preprocessing.mean.flatten().tolist() == pytest.approx([0.485 * 255, 0.456 * 255, 0.406 * 255])
    (folder / "meta.json").write_text(json.dumps({"input": {"normalize_mean": [0.5] * 3, "normalize_std": [0.25] * 3,
                                                            "size": 48, "resize": 50}}))
    (folder / "classes.txt").write_text("cat, feline\ndog\nbird\n")
    side = load_model(f"{user_file}:build", weights=folder / "w.pt")
    assert side.input_size == 48 and side.preprocessing.resize == 50 and side.class_names == ["cat", "dog", "bird"]
    assert side.preprocessing.std.flatten().tolist() == pytest.approx([0.25 * 255] * 3)
    (tmp_path / "names.txt").write_text("a\nb\nc\n")
    flags = load_model(f"{user_file}:build", weights=folder / "w.pt", normalize="none", input_size=32,
                       classes=tmp_path / "names.txt")
    assert flags.input_size == 32 and flags.class_names == ["a", "b", "c"]
    assert flags.preprocessing.mean.abs().sum() == 0 and flags.preprocessing.std.flatten().tolist() == [255.0] * 3


def test_checkpoint_keeps_its_preprocessing_unless_overridden(tiny_checkpoint):
    own = load_model(tiny_checkpoint)
    bigger = load_model(tiny_checkpoint, input_size=40)
    assert bigger.input_size == 40 and torch.equal(bigger.preprocessing.mean, own.preprocessing.mean)
    assert load_model(tiny_checkpoint, normalize="inception").preprocessing.std.flatten().tolist() == [127.5] * 3


@pytest.mark.parametrize(("text", "mean", "std"), [
    ("imagenet", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ("0.5:0.25", (0.5,) * 3, (0.25,) * 3),
    ("0.1,0.2,0.3:1,2,3", (0.1, 0.2, 0.3), (1.0, 2.0, 3.0)),
])
def test_parse_normalize(text, mean, std):
    assert parse_normalize(text) == (pytest.approx(mean), pytest.approx(std))


@pytest.mark.parametrize("text", ["imagenette", "0.5", "0.5:0", "1,2:3", "a:b", "0.5:0.5:0.5"])
def test_parse_normalize_rejects(text):
    with pytest.raises(ValueError, match="--normalize"):
        parse_normalize(text)


def test_weights_errors(tmp_path, user_file, tiny_checkpoint):
    spec = f"{user_file}:build"
    (tmp_path / "garbage.pt").write_bytes(b"\x00not a torch file")
    with pytest.raises(ValueError, match="cannot read it"):
        load_model(spec, weights=tmp_path / "garbage.pt")
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match=r"missing key.*unexpected key.*another architecture"):
        load_model(spec, weights=tmp_path / "foreign.pt")
    sd = load_model(spec).model.state_dict()
    sd["head.weight"] = torch.zeros(3, 7)
    torch.save(sd, tmp_path / "shape.pt")
    with pytest.raises(ValueError, match=r"wrong shape: head.weight \(3, 7\) in the file vs \(3, 6\)"):
        load_model(spec, weights=tmp_path / "shape.pt")
    with pytest.raises(FileNotFoundError, match="--weights"):
        load_model(spec, weights=tmp_path / "nope.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="not a state_dict"):
        read_state_dict(tmp_path / "list.pt")
    # a convlens checkpoint as --weights: its "model" entry is used
    ck = load_model("zfnet-tiny", weights=tiny_checkpoint)
    assert len(ck.class_names) == 2


def test_checkpoint_errors(tmp_path, tiny_checkpoint):
    state = torch.load(tiny_checkpoint, weights_only=True)
    torch.save({k: v for k, v in state.items() if k != "model"}, tmp_path / "nomodel.pt")
    with pytest.raises(ValueError, match="has no 'model' entry"):
        load_model(tmp_path / "nomodel.pt")
    state["model"]["conv1.weight"] = torch.zeros(1, 1, 1, 1)
    torch.save(state, tmp_path / "shapes.pt")
    with pytest.raises(ValueError, match=r"wrong shape: conv1\.weight"):
        load_model(tmp_path / "shapes.pt")


@pytest.mark.parametrize(("spec", "exc", "match"), [
    ("torchvision:resnet81", ValueError, "did you mean torchvision:resnet18"),
    ("timm:resnet10tt", ValueError, "did you mean timm:resnet10t"),
    ("zfnett", ValueError, "did you mean zfnet"),
    ("nothere.py:build", FileNotFoundError, "no such file"),
    ("net.py", ValueError, "no factory"),
    ("runs/x/last.pt", FileNotFoundError, "checkpoint not found"),
    ("torchvision:", ValueError, "no model name"),
    ("no_such_module_xyz:build", ValueError, "cannot import"),
])
def test_bad_specs(spec, exc, match):
    with pytest.raises(exc, match=match):
        load_model(spec)


def test_bad_factories(user_file):
    with pytest.raises(ValueError, match=r"returned int, expected an nn\.Module"):
        load_model(f"{user_file}:not_a_model")
    with pytest.raises(ValueError, match="no class or function 'nope'"):
        load_model(f"{user_file}:nope")


def test_classes_count_must_match(user_file, tmp_path):
    (tmp_path / "twelve.txt").write_text("\n".join(f"c{i}" for i in range(12)))
    with pytest.raises(ValueError, match=r"12 names but .* has 3 outputs"):
        load_model(f"{user_file}:build", classes=tmp_path / "twelve.txt")
