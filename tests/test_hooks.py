import pytest
import torch

from convlens.hooks import parse_unit, record_activations


def test_record_activations_matches_features_and_removes_hooks(tiny_model):
    x = torch.randn(2, 3, 32, 32)
    with record_activations(tiny_model, ["conv2", "pool1"]) as acts:
        tiny_model(x)
    ref = tiny_model.features(x, ["conv2", "pool1"])
    torch.testing.assert_close(acts["conv2"], ref["conv2"])
    torch.testing.assert_close(acts["pool1"], ref["pool1"])
    assert all(not m._forward_hooks for m in tiny_model.modules())


def test_record_activations_removes_hooks_after_exception(tiny_model):
    with pytest.raises(RuntimeError), record_activations(tiny_model, ["conv1"]):
        raise RuntimeError("boom")
    assert all(not m._forward_hooks for m in tiny_model.modules())


def test_record_activations_any_module():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    with record_activations(net, ["1"]) as acts:
        net(torch.randn(1, 3, 8, 8))
    assert acts["1"].shape == (1, 4, 6, 6)
    with pytest.raises(ValueError, match=r"unknown layer 'features\.3'"), record_activations(net, ["features.3"]):
        pass


def test_parse_unit():
    assert parse_unit("conv5:42") == ("conv5", 42)
    assert parse_unit("features.10:3") == ("features.10", 3)
    for bad in ("conv5", "conv5:x", ":3", "conv5:-1"):
        with pytest.raises(ValueError, match="layer:channel"):
            parse_unit(bad)
