"""The shared flag groups (commands/_common.py, _model.py) and the one device resolver."""
from __future__ import annotations

import argparse

import pytest
import torch

from convlens.commands import _common, _model
from convlens.nets.device import resolve_device


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    _model.add_model_args(p)
    _common.add_dataset_args(p, required=False)
    _common.add_device_arg(p)
    _common.add_out_arg(p, required=False)
    return p


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None).type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="expected auto, cpu, cuda"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"CUDA is not available.*--device cpu"):
            resolve_device("cuda")
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:1")


def test_model_flags_load(tiny_checkpoint):
    args = _parser().parse_args(["--checkpoint", str(tiny_checkpoint), "--input-size", "40"])
    loaded = _model.load_model_from_args(args, "cpu")
    assert loaded.input_size == 40 and loaded.arch == "zfnet-tiny"
    assert args.device == "auto" and args.limit is None


@pytest.mark.parametrize(("argv", "match"), [
    ([], "no model given"),
    (["--checkpoint", "a.pt", "--arch", "torchvision:resnet18"], "both given"),
    (["--checkpoint", "a.pt", "--weights", "w.pt"], "--weights goes with --arch"),
])
def test_model_spec_errors(argv, match):
    with pytest.raises(ValueError, match=match):
        _model.model_spec(_parser().parse_args(argv))


def test_out_must_not_be_a_file(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(argparse.ArgumentTypeError, match="existing file"):
        _common.out_dir(str(f))
    assert _common.out_dir(str(tmp_path)) == tmp_path


def test_layers_default_and_checked(tiny_checkpoint):
    from convlens.nets.loading import load_model

    loaded = load_model(tiny_checkpoint)
    assert _common.parse_layers(None, loaded) == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert _common.parse_layers("conv2, conv5", loaded) == ["conv2", "conv5"]
    with pytest.raises(ValueError, match="--layers"):
        _common.parse_layers("conv9", loaded)
    mobile = load_model("torchvision:mobilenet_v2", input_size=64)
    layers = _common.parse_layers(None, mobile)
    assert layers and all(name.startswith("features.") for name in layers)
    with pytest.raises(ValueError, match="--layers"):
        _common.parse_layers("conv5", mobile)


def test_dataset_more_classes_than_outputs(tiny_checkpoint, tmp_path):
    from conftest import make_image_folder
    from convlens.nets.loading import load_model

    root = make_image_folder(tmp_path / "three", classes=("a", "b", "c"), per_class=1, size=12)
    args = _parser().parse_args(["--checkpoint", str(tiny_checkpoint), "--dataset", str(root), "--split", "train"])
    with pytest.raises(ValueError, match=r"3 classes but the model .* has 2 outputs"):
        _common.open_dataset_from_args(args, load_model(tiny_checkpoint), check_classes=True)
