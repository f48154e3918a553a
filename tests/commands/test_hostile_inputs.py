"""Hostile inputs, round two (issue 23): every bad number, path, file or model is one ``error:`` line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from convlens.cli import main


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize("argv,flag,says", [
    (["train", "--lr", "inf", "--out", "X"], "--lr", "finite"),
    (["train", "--lr", "0", "--out", "X"], "--lr", "> 0"),
    (["train", "--warmup-epochs", "-3", "--out", "X"], "--warmup-epochs", ">= 0"),
    (["train", "--seed", "99999999999999999999999", "--out", "X"], "--seed", "from 0 to 4294967295"),
    (["occlude", "--arch", "zfnet-tiny", "--image", "a.png", "--fill", "nan", "--out", "X"], "--fill", "finite"),
    (["diagnose", "--arch", "zfnet-tiny", "--dataset", "d", "--threshold=-inf", "--out", "X"], "--threshold",
     "finite"),
    (["mine", "--arch", "zfnet-tiny", "--dataset", "d", "--seed=-1", "--out", "X"], "--seed", "from 0"),
])
def test_bad_numbers_are_one_error_line_naming_the_flag(argv, flag, says, capsys):
    code, err = run_cli(argv, capsys)
    assert code == 2 and err.count("\n") == 0 and err.startswith(f"error: argument {flag}") and says in err


def test_every_float_and_int_flag_is_checked():
    from convlens.cli import build_parser

    def actions(p):
        for a in p._actions:
            yield a
            if hasattr(a, "choices") and isinstance(a.choices, dict):
                for sub in a.choices.values():
                    yield from actions(sub)
    seen = list(actions(build_parser()))
    assert len(seen) > 100
    assert not [a.dest for a in seen if a.type in (float, int)]  # none left unchecked


def test_out_component_over_255_bytes(tmp_path, capsys):
    code, err = run_cli(["project", "--arch", "zfnet-tiny", "--image", "a.png", "--out", str(tmp_path / ("a" * 300))],
                        capsys)
    assert code == 2 and err.startswith("error: argument --out: a folder name in it is 300 bytes") and "\n" not in err


def test_train_resume_on_an_empty_or_missing_folder(tmp_path, capsys):
    for out in (tmp_path / "TYPO", tmp_path):
        code, err = run_cli(["train", "--out", str(out), "--resume"], capsys)
        assert code == 2 and "--resume" in err and "holds no training run" in err and "missing or empty" in err


def test_demo_with_a_missing_dataset_fails(tmp_path, capsys):
    code, err = run_cli(["demo", "--dataset", str(tmp_path / "nope"), "--out", str(tmp_path / "demo")], capsys)
    assert code == 2 and err.startswith("error: dataset must be") and "no such directory" in err


def test_toml_value_of_the_wrong_kind_names_the_key(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('epochs = "ten"\n')
    code, err = run_cli(["train", "--config", str(cfg), "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and err == "error: epochs must be a whole number, got 'ten'"
    cfg.write_text("lr = nan\n")
    code, err = run_cli(["train", "--config", str(cfg), "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and err == "error: lr must be a finite number, got nan"


def test_nan_weights_refused_at_load(tmp_path, capsys):
    from convlens.nets.convnet import build_model

    model = build_model("zfnet-tiny", num_classes=3, init="kaiming", seed=0)
    sd = model.state_dict()
    sd["conv2.weight"][0, 0, 0, 0] = float("nan")
    torch.save(sd, tmp_path / "w.pt")
    code, err = run_cli(["project", "--arch", "zfnet-tiny", "--weights", str(tmp_path / "w.pt"), "--image", "a.png",
                         "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "1 tensor(s) hold NaN or infinite values (conv2.weight)" in err


def test_factory_error_blamed_on_the_factory(tmp_path, capsys):
    (tmp_path / "net.py").write_text("def build():\n    raise RuntimeError('mat1 and mat2 shapes cannot be "
                                     "multiplied')\n")
    code, err = run_cli(["project", "--arch", f"{tmp_path / 'net.py'}:build", "--image", "a.png",
                         "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "factory build() raised RuntimeError" in err and "not in the input" in err
    assert "could not run on this input" not in err


def test_checkpoint_with_damaged_preprocessing(tiny_checkpoint, tmp_path, capsys):
    ck = torch.load(tiny_checkpoint, weights_only=True)
    for damage in ({"resize": 36}, {**ck["preprocessing"], "std": torch.zeros(3, 1, 1)},
                   {**ck["preprocessing"], "crop": 99999}):
        torch.save({**ck, "preprocessing": damage}, tmp_path / "bad.pt")
        code, err = run_cli(["project", "--checkpoint", str(tmp_path / "bad.pt"), "--image", "a.png",
                             "--out", str(tmp_path / "o")], capsys)
        assert code == 2 and "its 'preprocessing' entry is damaged" in err and "\n" not in err


def test_fixed_size_model_gets_its_own_input_size(tmp_path):
    """A vision transformer accepts one size: it is used, and projections never feed it crops."""
    from PIL import Image

    (tmp_path / "vit.py").write_text(
        "from torchvision.models import VisionTransformer\n"
        "def build():\n    return VisionTransformer(image_size=48, patch_size=16, num_layers=1, num_heads=1, "
        "hidden_dim=8, mlp_dim=8, num_classes=3)\n")
    Image.new("RGB", (70, 60), (200, 30, 30)).save(tmp_path / "a.png")
    from convlens.nets.loading import load_model

    loaded = load_model(f"{tmp_path / 'vit.py'}:build")
    assert loaded.preprocessing.crop == 48
    out = tmp_path / "o"
    assert main(["project", "--arch", f"{tmp_path / 'vit.py'}:build", "--image", str(tmp_path / "a.png"),
                 "--layer", "conv_proj", "--top", "2", "--rule", "gradient", "--out", str(out)]) == 0
    assert json.loads((out / "result.json").read_text())["kind"] == "project"
    assert Path(out / "grid.png").is_file()


def test_progress_bars_in_a_log_stay_a_few_lines():
    import io
    import re
    import time

    from convlens.io.progress import progress_bar

    log = io.StringIO()  # a file or CI log: not a terminal
    bar = progress_bar(range(2000), file=log, desc="epoch")
    for i in bar:
        bar.set_postfix(loss=f"{i:.3f}")  # tqdm redraws on every set_postfix by default
        time.sleep(0.0002)
    redraws = [part for part in re.split(r"[\r\n]", log.getvalue()) if part.strip()]
    assert 1 <= len(redraws) <= 3 and "2000/2000" in redraws[-1]

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    term = Terminal()
    bar = progress_bar(range(10), file=term)
    assert bar.mininterval == 0.1  # tqdm's own default on a terminal
    bar.close()
    src = Path(__file__).parents[2] / "src" / "convlens"
    users = [p.name for p in src.rglob("*.py") if re.search(r"^\s*from tqdm", p.read_text(), re.M)]
    assert users == ["progress.py"]  # every bar goes through the one helper


def test_occluder_batch_bounded_by_the_models_activations():
    from convlens.occlusion import engine as eng

    def clean(mb: int) -> dict[str, torch.Tensor]:  # meta tensors: sizes without memory
        return {f"n{i}": torch.empty(mb * 2**20 // 4 // 8, device="meta") for i in range(8)}

    assert eng._memory_bound_batch(clean(123)) == 8  # efficientnet_b0 at 224 px: was 32 (peak 3.9 GB)
    assert eng._memory_bound_batch(clean(32)) >= eng.GRAPH_BATCH  # resnet18: unchanged
    assert eng._memory_bound_batch(clean(100_000)) == 1
    mb = eng.BATCH_MEMORY / 2**20
    for size in (16, 123, 400):  # patches in flight (workers x batch x half the activations) under the budget
        assert eng.WORKERS * eng._memory_bound_batch(clean(size)) * size / 2 <= mb


def test_default_paper_init_says_up_front_what_to_expect(tmp_path, caplog):
    import argparse

    from convlens.commands.train import PAPER_INIT_NOTE, config_from_args

    base = {"config": None, "out": str(tmp_path / "run"), "dataset": "fashion-mnist"}
    with caplog.at_level("WARNING"):
        cfg = config_from_args(argparse.Namespace(**base))
    assert cfg.init == "paper" and PAPER_INIT_NOTE in caplog.text and "--init kaiming" in PAPER_INIT_NOTE
    caplog.clear()
    for init in ("paper", "kaiming"):  # chosen: no note
        with caplog.at_level("WARNING"):
            assert config_from_args(argparse.Namespace(**base, init=init)).init == init
        assert PAPER_INIT_NOTE not in caplog.text
