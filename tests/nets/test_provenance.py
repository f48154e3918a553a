"""Say what was done: every model-using command prints one preprocessing line (values and where each came
from) and records it in result.json; Python warnings reach people as one plain line each."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import SHARED, needs_shared
from convlens.cli import main


def _said(out: str) -> list[str]:
    return [ln for ln in out.splitlines() if ln.startswith("preprocessing:")]


def _recorded(out_dir: Path) -> dict:
    return json.loads((out_dir / "result.json").read_text())["params"]["preprocessing"]


def test_checkpoint_preprocessing_comes_from_the_checkpoint(tiny_checkpoint, tmp_path, capsys):
    from convlens.nets.checkpoint import load_checkpoint

    stored = load_checkpoint(tiny_checkpoint)["preprocessing"]  # the oracle: what train saved
    assert main(["layers", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "l")]) == 0
    lines = _said(capsys.readouterr().out)
    rec = _recorded(tmp_path / "l")
    assert len(lines) == 1 and lines[0] == rec["line"]
    crop, resize = stored["crop"], stored["resize"]
    assert (rec["input_size"], rec["resize"]) == (crop, resize) and crop == 32
    assert rec["size_from"] == rec["resize_from"] == rec["normalize_from"] == "checkpoint"
    assert rec["mean"] == f"per-pixel mean image (3, {resize}, {resize})"  # the paper's mean image, not 3 numbers
    assert rec["std"] == "none (pixels 0..255 minus the mean, not divided)"  # stored std: ones in pixel units
    assert stored["std"] is not None and bool((torch.as_tensor(stored["std"]) == 1).all())
    assert rec["tf_same_padding"] is False and rec["meta_json"] is None
    assert lines[0].startswith(f"preprocessing: 32 px (resize {resize}, center crop) from checkpoint; mean per-pixel")


def test_torchvision_spec_with_flags(tmp_path, capsys):
    out = tmp_path / "l"
    assert main(["layers", "--arch", "torchvision:resnet18", "--normalize", "0.2:0.3", "--input-size", "64",
                 "--depth", "1", "--out", str(out)]) == 0
    lines = _said(capsys.readouterr().out)
    assert lines == ["preprocessing: 64 px (resize 73, center crop) from flag; mean 0.2,0.2,0.2 std 0.3,0.3,0.3 "
                     "from flag"]  # 73 = round(64 * 256 / 224)
    rec = _recorded(out)
    assert rec["line"] == lines[0] and rec["mean"] == [0.2] * 3 and rec["std"] == [0.3] * 3
    assert (rec["size_from"], rec["normalize_from"], rec["resize_from"]) == ("flag", "flag", "default")


def test_weights_with_meta_json_turn_on_tf_padding(tmp_path, capsys):
    from convlens.nets.convnet import build_model

    model = build_model("zfnet-tiny", num_classes=2, init="kaiming", seed=0)
    stride2 = sum(isinstance(m, nn.Conv2d) and m.stride != (1, 1) for m in model.modules())
    assert stride2 > 0  # the fix has something to act on
    folder = tmp_path / "weights"
    folder.mkdir()
    torch.save(model.state_dict(), folder / "net.pt")
    (folder / "meta.json").write_text(json.dumps({"input": {"normalize_mean": [0.5] * 3, "normalize_std": [0.5] * 3},
                                                  "source": {"file": "net.tflite"}}))
    size = model.cfg.input_size
    out = tmp_path / "l"
    assert main(["layers", "--arch", "zfnet-tiny", "--weights", str(folder / "net.pt"), "--out", str(out)]) == 0
    lines = _said(capsys.readouterr().out)
    assert lines == [f"preprocessing: {size} px (resize {round(size * 256 / 224)}, center crop) from model; mean "
                     f"0.5,0.5,0.5 std 0.5,0.5,0.5 from meta.json; TF SAME padding on {stride2} stride-2 convs "
                     "(meta.json source net.tflite)"]
    rec = _recorded(out)
    assert rec["normalize_from"] == "meta.json" and rec["mean"] == rec["std"] == [0.5] * 3
    assert rec["tf_same_padding"] is True and rec["tf_padding_convs"] == stride2
    assert rec["meta_json"] == str(folder / "meta.json")

    from convlens.nets.loading import load_model  # the padding fix is really on, once per stride-2 conv

    loaded = load_model("zfnet-tiny", weights=folder / "net.pt")
    hooked = [m for m in loaded.model.modules() if isinstance(m, nn.Conv2d) and m._forward_pre_hooks]
    assert len(hooked) == stride2 and loaded.provenance is not None and loaded.provenance.line() == lines[0]


def test_project_records_the_line_once(tiny_checkpoint, image_folder, tmp_path, capsys):
    image = sorted((image_folder / "a").iterdir())[0]
    out = tmp_path / "p"
    assert main(["project", "--checkpoint", str(tiny_checkpoint), "--image", str(image), "--layer", "conv1",
                 "--top", "2", "--out", str(out)]) == 0
    lines = _said(capsys.readouterr().out)
    assert len(lines) == 1 and _recorded(out)["line"] == lines[0]


WARNING_NET = '''
import warnings
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        warnings.warn("this net says hello")
        y = self.conv(x).relu()
        warnings.warn("this net says hello")  # same text, another line: still one line for people
        return self.head(y.mean((2, 3)))
'''


def test_a_warning_is_one_plain_line(tmp_path, capsys):
    net = tmp_path / "warnnet.py"
    net.write_text(WARNING_NET)
    assert main(["layers", "--arch", f"{net}:Net", "--input-size", "16"]) == 0
    err = capsys.readouterr().err
    assert err.splitlines().count("warning: this net says hello") == 1, err
    assert "UserWarning" not in err and "warnnet.py" not in err and "warnings.warn" not in err, err
    import warnings

    assert warnings.showwarning.__module__ == "warnings"  # restored after the command


@needs_shared
@pytest.mark.shared_data
@pytest.mark.slow  # the real 224 px MobileNetV2 through the commands: 30 s on a shared machine
def test_real_mobilenet_says_its_preprocessing_and_no_user_warning(tmp_path):
    folder = SHARED / "models" / "mobilenet_v2_imagenet"
    image = next((SHARED / "imagenet-sample" / "n01443537").iterdir())
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "convlens", "project", "--arch", "torchvision:mobilenet_v2",
                           "--weights", str(folder / "mobilenet_v2_imagenet.pt"), "--image", str(image),
                           "--layer", "features.14", "--top", "2", "--out", str(tmp_path / "p")],
                          capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr
    line = ("preprocessing: 224 px (resize 256, center crop) from default; mean 0.5,0.5,0.5 std 0.5,0.5,0.5 from "
            "meta.json; TF SAME padding on 5 stride-2 convs (meta.json source mobilenet_v2_1.0_224_quant.tflite)")
    assert _said(proc.stdout) == [line]
    assert _recorded(tmp_path / "p")["line"] == line
    assert "UserWarning" not in proc.stderr and "Warning:" not in proc.stderr, proc.stderr
    assert all(ln.startswith("warning: ") for ln in proc.stderr.splitlines()), proc.stderr


def test_serve_says_the_preprocessing_of_the_runs_own_checkpoint(tiny_checkpoint, tmp_path, capsys):
    import shutil

    from convlens.cli import build_parser
    from convlens.commands.serve import _model_loader

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(tiny_checkpoint, run / "checkpoints" / "last.pt")
    loader, label = _model_loader(build_parser().parse_args(["serve", str(run)]))
    assert label == "last.pt"
    loaded = loader()
    lines = _said(capsys.readouterr().out)
    assert loaded.provenance is not None and lines == [loaded.provenance.line()]
    assert "from checkpoint" in lines[0]
    assert _model_loader(build_parser().parse_args(["serve", str(tmp_path / "empty")])) == (None, "")
