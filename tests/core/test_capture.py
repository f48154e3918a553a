import pytest
import torch

from convlens.core.capture import (
    StopForward,
    capture,
    get_module,
    hooked,
    parse_unit,
    record_activations,
    resolve_layer,
)
from convlens.nets.convnet import build_model


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


def _resnet():
    import torchvision

    return torchvision.models.resnet18().eval()


def test_unknown_layer_names_the_closest_few():
    import torchvision

    model = torchvision.models.mobilenet_v2()
    with pytest.raises(ValueError, match=r"unknown layer 'features\.33'") as err:
        get_module(model, "features.33")
    msg = str(err.value)
    assert "closest: features.3, features.13" in msg and "convlens layers" in msg
    assert msg.count(",") < 12  # a few names, never the ~200 module paths
    with pytest.raises(ValueError, match="closest: conv5"):
        resolve_layer(build_model("zfnet-tiny"), "conv6")


def test_capture_any_depth_matches_a_manual_forward():
    model = _resnet()
    x = torch.randn(2, 3, 64, 64)
    acts = capture(model, x, ["layer2.1", "layer2.1.conv1", "layer1", "maxpool"])
    with torch.no_grad():
        stem = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        l1 = model.layer1(stem)
        b = model.layer2[0](l1)
        conv1 = model.layer2[1].conv1(b)
        l21 = model.layer2[1](b)
    torch.testing.assert_close(acts["maxpool"], stem)
    torch.testing.assert_close(acts["layer1"], l1)
    torch.testing.assert_close(acts["layer2.1.conv1"], conv1)
    torch.testing.assert_close(acts["layer2.1"], l21)
    assert list(acts) == ["layer2.1", "layer2.1.conv1", "layer1", "maxpool"]
    assert not acts["layer1"].requires_grad
    assert all(not m._forward_hooks for m in model.modules())
    # batch-size invariance, and the early stop (second call) gives the same values
    again = capture(model, x[1:], ["layer2.1"])
    torch.testing.assert_close(again["layer2.1"], l21[1:])


def test_capture_stops_after_the_deepest_layer_and_keeps_the_last_call_of_shared_modules():
    model = _resnet()
    x = torch.randn(1, 3, 64, 64)
    capture(model, x, ["layer1.0.relu"])  # learns that the shared relu runs twice per forward
    ran: list[str] = []
    h = model.layer2.register_forward_pre_hook(lambda *_: ran.append("layer2"))
    try:
        acts = capture(model, x, ["layer1.0.relu"])
    finally:
        h.remove()
    assert ran == []  # layer2 never ran
    with torch.no_grad():
        ref = model.layer1[0](model.maxpool(model.relu(model.bn1(model.conv1(x)))))
    torch.testing.assert_close(acts["layer1.0.relu"], ref)  # the block's output = the relu's 2nd call
    g = capture(model, x.requires_grad_(True), ["layer1"], no_grad=False)["layer1"]
    assert g.requires_grad


def test_capture_convnet_aliases_and_errors(tiny_model):
    x = torch.randn(3, 3, 32, 32)
    acts = capture(tiny_model, x, ["conv5", "pool1"])
    ref = tiny_model.features(x, ["conv5", "pool1"])
    torch.testing.assert_close(acts["conv5"], ref["conv5"])
    assert (acts["conv5"] >= 0).all()  # conv5 means the rectified output
    with pytest.raises(TypeError, match="list of names"):
        capture(tiny_model, x, "conv5")
    with pytest.raises(ValueError, match="closest"):
        capture(tiny_model, x, ["conv55"])


class _TupleBlock(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x)
        return y, y.mean()


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = _TupleBlock()
        self.unused = torch.nn.ReLU()

    def forward(self, x):
        return self.block(x)[0]


def test_tuple_outputs_and_unused_modules_are_clear_errors():
    net = _Net()
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(TypeError, match=r"'block' \(_TupleBlock\) outputs a tuple, not a tensor"):
        capture(net, x, ["block"])
    assert all(not m._forward_hooks for m in net.modules())
    assert capture(net, x, ["block.conv"])["block.conv"].shape == (1, 4, 6, 6)
    with pytest.raises(ValueError, match="never ran"):
        capture(net, x, ["unused"])


def test_recorded_outputs_survive_later_inplace_ops():
    """torchvision's ReLU(inplace=True) after a BatchNorm and ResNet's ``out += identity`` modify the
    recorded tensor in place: the recorded value is the module's output as it was returned."""
    import torchvision

    from convlens.core.capture import capture

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4).eval()
    x = torch.randn(1, 3, 64, 64)
    acts = capture(model, x, ["layer1.0.bn1", "layer1.0.bn2", "layer1.0"])
    with torch.no_grad():
        block = model.layer1[0]
        stem = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        bn1 = block.bn1(block.conv1(stem))
        bn2 = block.bn2(block.conv2(torch.relu(bn1)))
    assert (bn1 < 0).any() and (bn2 < 0).any()  # values an in-place relu would have changed
    torch.testing.assert_close(acts["layer1.0.bn1"], bn1)
    torch.testing.assert_close(acts["layer1.0.bn2"], bn2)
    torch.testing.assert_close(acts["layer1.0"], torch.relu(bn2 + stem))


def _no_hooks(net: torch.nn.Module) -> bool:
    return all(not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks) for m in net.modules())


def test_hooked_forward_pre_backward_and_stop():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 3))
    x = torch.randn(1, 3, 8, 8, requires_grad=True)
    seen: list[str] = []
    with hooked(net, {"0": lambda m, i, o: seen.append("fwd0"), net[2]: lambda m, i, o: seen.append("fwd2")}):
        net(x)
    with hooked(net, [(net[1], lambda m, i: seen.append("pre1"))], kind="pre"):
        net(x)
    with hooked(net, {net[2]: lambda m, gi, go: seen.append("bwd2")}, kind="backward"):
        net(x).sum().backward()
    assert seen == ["fwd0", "fwd2", "pre1", "bwd2"]
    assert _no_hooks(net)

    def stop(_m, _i, _o):
        raise StopForward

    ran = []
    with hooked(net, [(net[0], stop), (net[2], lambda m, i, o: ran.append(1))]):
        net(x)
        ran.append("after the forward")  # never reached: the forward stopped inside the block
    assert ran == [] and _no_hooks(net)


def test_hooked_removes_hooks_after_exception_and_checks_arguments():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    with pytest.raises(RuntimeError, match="boom"), hooked(net, {"1": lambda m, i, o: None}):
        raise RuntimeError("boom")
    assert _no_hooks(net)
    with pytest.raises(ValueError, match="kind must be one of"), hooked(net, {}, kind="after"):  # type: ignore[arg-type]
        pass
    with pytest.raises(ValueError, match=r"unknown layer 'features\.3'"), hooked(net, {"features.3": print}):
        pass
    assert _no_hooks(net)
