import pytest
import torch

from convlens.cli import main
from convlens.nets.convnet import TABLE3_VARIANTS, VARIANTS, build_model, get_config, summary


def shapes(name: str) -> dict[str, tuple[int, ...]]:
    return {r["stage"]: r["shape"] for r in summary(build_model(name))}


def test_zfnet_sizes_match_fig3():
    s = shapes("zfnet")
    assert s["conv1"] == (96, 110, 110)
    assert s["pool1"] == s["norm1"] == (96, 55, 55)
    assert s["conv2"] == (256, 26, 26)
    assert s["norm2"] == (256, 13, 13)
    assert s["conv3"] == (384, 13, 13) and s["conv4"] == (384, 13, 13) and s["conv5"] == (256, 13, 13)
    assert s["pool5"] == (256, 6, 6) and s["flatten"] == (9216,)
    assert s["fc6"] == s["fc7"] == (4096,) and s["fc8"] == (1000,)
    m = build_model("zfnet")
    assert (m.conv1.kernel_size, m.conv1.stride) == ((7, 7), (2, 2))


def test_alexnet_sizes():
    s = shapes("alexnet")
    assert s["conv1"] == (96, 55, 55) and s["pool1"] == (96, 27, 27)
    assert s["pool2"] == (256, 13, 13) and s["flatten"] == (9216,)
    m = build_model("alexnet")
    assert (m.conv1.kernel_size, m.conv1.stride) == ((11, 11), (4, 4))
    assert m.conv3.groups == 1  # dense connections in layers 3-5


@pytest.mark.parametrize("name", ["zfnet-small", "alexnet-small", "zfnet-tiny"])
def test_small_presets_keep_layer_names(name):
    m = build_model(name)
    assert [n for n in m.layer_names] == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
    x = torch.randn(2, 3, m.cfg.input_size, m.cfg.input_size)
    assert m(x).shape == (2, m.cfg.num_classes)


@pytest.mark.slow  # eight full-size 224 px models, mostly weight init: 8 s on a shared machine
def test_table3_variants():
    base = build_model("zfnet")
    assert not hasattr(build_model("zfnet:no34"), "conv3")
    assert not hasattr(build_model("zfnet:no7"), "fc7") and hasattr(build_model("zfnet:no7"), "fc6")
    m = build_model("zfnet:no3467")
    assert m.layer_names == ("conv1", "conv2", "conv5", "fc8")
    assert build_model("zfnet:fc-x0.5").fc6.out_features == 2048
    assert build_model("zfnet:fc-x2").fc7.out_features == 8192
    w = build_model("zfnet:wide345")
    assert (w.conv3.out_channels, w.conv4.out_channels, w.conv5.out_channels) == (512, 1024, 512)
    assert base.conv5.out_channels == 256
    for v in TABLE3_VARIANTS:
        get_config("zfnet-small" + (":" + v if v else ""))
    assert set(VARIANTS) >= {"no34", "no7", "no67", "no3467", "fc-x0.5", "fc-x2", "wide345"}


def test_unknown_arch_and_variant_errors():
    with pytest.raises(ValueError, match="unknown architecture 'zfnet9'"):
        get_config("zfnet9")
    with pytest.raises(ValueError, match="unknown variant 'no99'"):
        get_config("zfnet:no99")


def test_features_returns_rectified_named_layers(tiny_model):
    x = torch.randn(3, 3, 32, 32)
    acts = tiny_model.features(x, ["conv1", "pool1", "fc7", "fc8"])
    assert list(acts) == ["conv1", "pool1", "fc7", "fc8"]
    assert (acts["conv1"] >= 0).all()
    torch.testing.assert_close(acts["conv1"], torch.relu(tiny_model.conv1(x)))
    torch.testing.assert_close(acts["fc8"], tiny_model(x))
    with pytest.raises(ValueError, match="unknown layer 'conv9'"):
        tiny_model.features(x, ["conv9"])


def test_paper_init_scale():
    m = build_model("zfnet-small", init="paper", seed=1)
    assert abs(m.conv2.weight.std().item() - 0.01) < 1e-3
    assert m.conv2.bias.abs().max().item() == 0
    a, b = build_model("zfnet-tiny", seed=3), build_model("zfnet-tiny", seed=3)
    torch.testing.assert_close(a.conv1.weight, b.conv1.weight)


def test_summary_cli(capsys):
    assert main(["summary", "--arch", "zfnet"]) == 0
    out = capsys.readouterr().out
    assert "96x55x55" in out and "9216" in out and "256x6x6" in out


def test_cli_bad_arch_exits_2(capsys):
    assert main(["summary", "--arch", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model spec 'nope' is not known") and err.count("\n") == 1
    assert main(["summary", "--input-size", "abc"]) == 2
