"""Bad input across every command: exit code 2, exactly one ``error: ...`` line on stderr, no traceback.

Runs ``convlens.cli.main`` in-process (fast); plus the start-up checks: building the CLI imports no
torch, and the code parses with the oldest Python that ``requires-python`` allows.
"""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from convlens.cli import main

ROOT = Path(__file__).resolve().parents[2]

FACTORY = '''
from torch import nn


def build():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))


def not_a_model():
    return "nope"
'''


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Files for the bad invocations: good and broken checkpoints, weights, images, datasets, CSVs."""
    from conftest import make_image_folder
    from convlens.images.data import Preprocessing
    from convlens.nets.checkpoint import save_checkpoint
    from convlens.nets.convnet import build_model

    d = tmp_path_factory.mktemp("cli")
    pre = Preprocessing(36, 32, torch.full((3, 1, 1), 127.5), torch.full((3, 1, 1), 64.0))
    model = build_model("zfnet-tiny", num_classes=2, init="kaiming", seed=0)
    ck = save_checkpoint(d / "tiny.pt", model, preprocessing=pre, class_names=["a", "b"], epoch=1)
    ten = save_checkpoint(d / "ten.pt", build_model("zfnet-tiny", num_classes=10, init="kaiming", seed=0),
                          preprocessing=pre, class_names=[str(i) for i in range(10)], epoch=1)
    state = torch.load(ck, weights_only=True)
    torch.save({k: v for k, v in state.items() if k != "model"}, d / "nomodel.pt")
    state["model"]["conv1.weight"] = torch.zeros(1, 1, 1, 1)
    torch.save(state, d / "shapes.pt")
    torch.save(model.state_dict(), d / "foreign.pt")  # a ZFNet state_dict: foreign to a ResNet
    (d / "garbage.pt").write_bytes(b"\x00\x01 this is not a torch file")
    (d / "notimage.png").write_text("hello")
    (d / "file.txt").write_text("x")
    (d / "twelve.txt").write_text("\n".join(f"c{i}" for i in range(12)))
    (d / "bad.toml").write_text("epochs = = 3")
    (d / "empty").mkdir()
    (d / "net.py").write_text(FACTORY)
    (d / "landmarks.csv").write_text("file,x\na.png,1\n")
    folder = make_image_folder(d / "images", classes=("a", "b"), per_class=2, size=36)
    twelve = make_image_folder(d / "twelve", classes=tuple(f"c{i:02d}" for i in range(12)), per_class=1, size=36)
    image = next((folder / "a").glob("*.png"))
    return {"d": str(d), "ck": str(ck), "ten": str(ten), "img": str(image), "data": str(folder),
            "twelve": str(twelve), "net": str(d / "net.py")}


# (name, argv template, pattern the error line must match); {d}, {ck}, ... come from the env fixture
CASES: list[tuple[str, list[str], str]] = [
    ("no command", [], r"no command given"),
    ("unknown command", ["nosuch"], r"invalid choice"),
    ("missing required flag", ["occlude"], r"required"),
    ("out is an existing file", ["occlude", "--checkpoint", "{ck}", "--image", "{img}", "--out", "{d}/file.txt"],
     r"--out.*existing file"),
    ("window zero", ["occlude", "--checkpoint", "{ck}", "--image", "{img}", "--window", "0", "--out", "{d}/o"],
     r"--window.*positive integer"),
    ("missing checkpoint", ["occlude", "--checkpoint", "{d}/missing.pt", "--image", "{img}", "--out", "{d}/o"],
     r"checkpoint not found"),
    ("garbage checkpoint", ["occlude", "--checkpoint", "{d}/garbage.pt", "--image", "{img}", "--out", "{d}/o"],
     r"cannot read checkpoint"),
    ("state_dict as checkpoint", ["occlude", "--checkpoint", "{d}/foreign.pt", "--image", "{img}", "--out", "{d}/o"],
     r"not a convlens checkpoint.*--weights"),
    ("checkpoint missing model", ["occlude", "--checkpoint", "{d}/nomodel.pt", "--image", "{img}", "--out", "{d}/o"],
     r"no 'model' entry"),
    ("checkpoint wrong shapes", ["project", "--checkpoint", "{d}/shapes.pt", "--image", "{img}", "--out", "{d}/o"],
     r"wrong shape: conv1\.weight"),
    ("garbage weights", ["project", "--arch", "torchvision:resnet18", "--weights", "{d}/garbage.pt", "--image", "{img}",
                         "--out", "{d}/o"], r"--weights .*cannot read it"),
    ("foreign weights", ["project", "--arch", "torchvision:resnet18", "--weights", "{d}/foreign.pt", "--image", "{img}",
                         "--out", "{d}/o"], r"missing key.*unexpected key"),
    ("weights not found", ["project", "--arch", "{net}:build", "--weights", "{d}/nope.pt", "--image", "{img}",
                           "--out", "{d}/o"], r"--weights .*no such file"),
    ("weights a folder", ["project", "--arch", "{net}:build", "--weights", "{d}/empty", "--image", "{img}",
                          "--out", "{d}/o"], r"--weights .*no such file"),
    ("unknown torchvision arch", ["project", "--arch", "torchvision:resnet81", "--image", "{img}", "--out", "{d}/o"],
     r"did you mean torchvision:resnet18"),
    ("unknown convlens arch", ["project", "--arch", "zfnett", "--image", "{img}", "--out", "{d}/o"],
     r"did you mean zfnet"),
    ("spec .py without factory", ["occlude", "--arch", "{net}", "--image", "{img}", "--out", "{d}/o"], r"no factory"),
    ("spec .py missing", ["occlude", "--arch", "{d}/nothere.py:build", "--image", "{img}", "--out", "{d}/o"],
     r"no such file"),
    ("spec bad syntax", ["occlude", "--arch", "not a spec", "--image", "{img}", "--out", "{d}/o"],
     r"not known.*expected"),
    ("spec module missing", ["occlude", "--arch", "no_such_pkg_xyz.models:build", "--image", "{img}",
                             "--out", "{d}/o"], r"cannot import"),
    ("factory not a module", ["occlude", "--arch", "{net}:not_a_model", "--image", "{img}", "--out", "{d}/o"],
     r"returned str, expected an nn\.Module"),
    ("factory missing", ["occlude", "--arch", "{net}:nope", "--image", "{img}", "--out", "{d}/o"],
     r"no class or function 'nope'"),
    ("checkpoint and arch", ["occlude", "--checkpoint", "{ck}", "--arch", "torchvision:resnet18", "--image", "{img}",
                             "--out", "{d}/o"], r"both given"),
    ("weights with checkpoint", ["occlude", "--checkpoint", "{ck}", "--weights", "{d}/foreign.pt", "--image",
                                 "{img}", "--out", "{d}/o"], r"--weights goes with --arch"),
    ("no model", ["occlude", "--image", "{img}", "--out", "{d}/o"], r"no model given"),
    ("device unknown", ["occlude", "--checkpoint", "{ck}", "--image", "{img}", "--device", "gpu", "--out", "{d}/o"],
     r"--device.*expected auto, cpu"),
    ("occlude fc7", ["occlude", "--checkpoint", "{ck}", "--image", "{img}", "--layer", "fc7", "--out", "{d}/o"],
     r"--layer fc7.*expected a feature map"),
    ("occlude unknown layer", ["occlude", "--checkpoint", "{ck}", "--image", "{img}", "--layer", "conv9",
                               "--out", "{d}/o"], r"--layer.*conv9"),
    ("occlude two layers", ["occlude", "--checkpoint", "{ck}", "--image", "{img}", "--layer", "conv1,conv2",
                            "--out", "{d}/o"], r"takes one layer"),
    ("image missing", ["occlude", "--checkpoint", "{ck}", "--image", "{d}/nope.png", "--out", "{d}/o"],
     r"--image .*no such file"),
    ("image garbage", ["occlude", "--checkpoint", "{ck}", "--image", "{d}/notimage.png", "--out", "{d}/o"],
     r"--image .*cannot read it as an image"),
    ("label out of range", ["occlude", "--checkpoint", "{ck}", "--image", "{img}", "--label", "7", "--out", "{d}/o"],
     r"--label 7"),
    ("window too large", ["occlude", "--checkpoint", "{ck}", "--image", "{img}", "--window", "99", "--out", "{d}/o"],
     r"window"),
    ("project unknown layer", ["project", "--checkpoint", "{ck}", "--image", "{img}", "--layer", "features.3",
                               "--out", "{d}/o"], r"--layer.*features\.3"),
    ("normalize bogus", ["project", "--checkpoint", "{ck}", "--image", "{img}", "--normalize", "bogus",
                         "--out", "{d}/o"], r"--normalize"),
    ("input size zero", ["project", "--checkpoint", "{ck}", "--image", "{img}", "--input-size", "0", "--out", "{d}/o"],
     r"--input-size.*positive integer"),
    ("classes missing", ["project", "--checkpoint", "{ck}", "--image", "{img}", "--classes", "{d}/nope.txt",
                         "--out", "{d}/o"], r"--classes .*no such file"),
    ("classes wrong count", ["project", "--arch", "{net}:build", "--image", "{img}", "--classes", "{d}/twelve.txt",
                             "--out", "{d}/o"], r"--classes has 12 names but .* has 2 outputs"),
    ("mine missing dataset", ["mine", "--checkpoint", "{ck}", "--dataset", "{d}/nodata", "--out", "{d}/o"],
     r"nodata"),
    ("mine unknown layer", ["mine", "--checkpoint", "{ck}", "--dataset", "{data}", "--layers", "conv9",
                            "--out", "{d}/o"], r"--layers.*conv9"),
    ("mine empty layers", ["mine", "--checkpoint", "{ck}", "--dataset", "{data}", "--layers", ",",
                           "--out", "{d}/o"], r"--layers is empty"),
    ("mine limit zero", ["mine", "--checkpoint", "{ck}", "--dataset", "{data}", "--limit", "0", "--out", "{d}/o"],
     r"--limit.*positive integer"),
    ("12 classes on a 10-class model", ["evaluate", "--checkpoint", "{ten}", "--dataset", "{twelve}",
                                        "--split", "train"], r"12 classes but the model .* 10 outputs"),
    ("evaluate missing checkpoint", ["evaluate", "--checkpoint", "{d}/nope.pt", "--dataset", "{data}"],
     r"checkpoint not found"),
    ("diagnose empty dataset", ["diagnose", "--checkpoint", "{ck}", "--dataset", "{d}/empty", "--out", "{d}/o"],
     r"empty"),
    ("invariance missing image", ["invariance", "--checkpoint", "{ck}", "--images", "{d}/nope.png",
                                  "--out", "{d}/o"], r"--images .*no such file"),
    ("invariance labels count", ["invariance", "--checkpoint", "{ck}", "--images", "{img}", "--labels", "0,1",
                                 "--out", "{d}/o"], r"--labels has 2 values for 1 images"),
    ("invariance bad scale", ["invariance", "--checkpoint", "{ck}", "--images", "{img}", "--scale", "abc",
                              "--out", "{d}/o"], r"--scale must be comma-separated numbers"),
    ("correspond bad csv", ["correspond", "--checkpoint", "{ck}", "--images", "{d}", "--landmarks",
                            "{d}/landmarks.csv", "--out", "{d}/o"], r"--landmarks .*must have columns"),
    ("correspond missing csv", ["correspond", "--checkpoint", "{ck}", "--images", "{d}", "--landmarks",
                                "{d}/nope.csv", "--out", "{d}/o"], r"--landmarks"),
    ("transfer bad probe", ["transfer", "--checkpoint", "{ck}", "--dataset", "{data}", "--probe", "knn",
                            "--out", "{d}/o"], r"--probe: unknown knn"),
    ("transfer bad per-class", ["transfer", "--checkpoint", "{ck}", "--dataset", "{data}", "--per-class", "0",
                                "--out", "{d}/o"], r"--per-class"),
    ("input size the model cannot take", ["project", "--checkpoint", "{ck}", "--image", "{img}", "--input-size", "64",
                                          "--out", "{d}/o"], r"--input-size 64: zfnet-tiny cannot run on 64x64"),
    ("landmarks not text", ["correspond", "--checkpoint", "{ck}", "--images", "{d}", "--landmarks", "{d}/garbage.pt",
                            "--out", "{d}/o"], r"--landmarks .*(not a CSV text file|must have columns)"),
    ("transfer one class", ["transfer", "--checkpoint", "{ck}", "--dataset", "{data}", "--split", "train", "--limit",
                            "1", "--per-class", "1", "--out", "{d}/o"], r"at least 2 classes.*--limit"),
    ("summary bad input size", ["summary", "--input-size", "abc"], r"--input-size"),
    ("train bad arch", ["train", "--arch", "nope", "--dataset", "{data}", "--out", "{d}/run"],
     r"unknown architecture 'nope'"),
    ("train bad toml", ["train", "--config", "{d}/bad.toml", "--out", "{d}/run"], r"--config .*not valid TOML"),
    ("serve missing run", ["serve", "{d}/norun"], r"norun"),
    ("evolution missing run", ["evolution", "--run", "{d}/norun", "--dataset", "{data}"], r"norun"),
]
if not torch.cuda.is_available():
    CASES.append(("cuda without CUDA", ["occlude", "--checkpoint", "{ck}", "--image", "{img}", "--device", "cuda",
                                        "--out", "{d}/o"], r"CUDA is not available.*--device cpu"))


@pytest.mark.parametrize(("name", "argv", "pattern"), CASES, ids=[c[0] for c in CASES])
def test_bad_invocation_one_error_line(env: dict[str, str], capsys: pytest.CaptureFixture[str], name: str,
                                       argv: list[str], pattern: str) -> None:
    code = main([a.format(**env) for a in argv])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, (name, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), (name, err)
    assert "Traceback" not in err
    assert re.search(pattern, lines[0]), (name, lines[0])


def test_enough_bad_invocations() -> None:
    assert len(CASES) >= 40


def test_missing_timm_extra(env: dict[str, str], capsys: pytest.CaptureFixture[str],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # as if the optional extra were not installed
    code = main(["occlude", "--arch", "timm:resnet10t", "--image", env["img"], "--out", env["d"] + "/o"])
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "pip install -e '.[timm]'" in lines[0]


def test_debug_reraises(env: dict[str, str]) -> None:
    with pytest.raises(FileNotFoundError):
        main(["--debug", "occlude", "--checkpoint", env["d"] + "/missing.pt", "--image", env["img"],
              "--out", env["d"] + "/o"])


def test_help_imports_no_torch() -> None:
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "convlens", "--help"], capture_output=True,
                         text=True, timeout=120, cwd=ROOT, env={"PYTHONPATH": str(ROOT / "src"), "PATH": ""})
    assert out.returncode == 0 and "usage: convlens" in out.stdout
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert "convlens.cli" in imported
    heavy = {m for m in imported if m.split(".")[0] in ("torch", "numpy", "matplotlib", "torchvision")}
    assert not heavy, sorted(heavy)[:5]


def _min_python() -> tuple[int, int]:
    text = (ROOT / "pyproject.toml").read_text()
    m = re.search(r'requires-python\s*=\s*">=\s*(\d+)\.(\d+)"', text)
    assert m, "pyproject.toml must declare requires-python = \">=3.X\""
    return int(m[1]), int(m[2])


# stdlib names that appeared after 3.10: an import of one must be guarded (try/except ImportError)
NEWER_STDLIB = {(3, 11): {"tomllib", "wsgiref.types"}, (3, 12): set(), (3, 13): set()}
NEWER_NAMES = {(3, 11): {("typing", "Self"), ("typing", "Never"), ("typing", "LiteralString"),
                         ("typing", "assert_never"), ("typing", "reveal_type"), ("typing", "Required"),
                         ("typing", "NotRequired"), ("enum", "StrEnum"), ("datetime", "UTC")},
               (3, 12): {("typing", "override")}}


def _guarded(tree: ast.AST) -> set[int]:
    """Line numbers of imports inside ``try: ... except ImportError/ModuleNotFoundError``."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                for h in node.handlers):
            lines |= {n.lineno for stmt in node.body for n in ast.walk(stmt)
                      if isinstance(n, ast.Import | ast.ImportFrom)}
    return lines


def test_code_runs_on_the_declared_minimum_python() -> None:
    """``requires-python`` matches the code: every module parses with that grammar and uses no newer stdlib."""
    minimum = _min_python()
    assert minimum >= (3, 10), "the code uses PEP 604 unions and match-free 3.10 syntax at least"
    problems = []
    for path in sorted((ROOT / "src").rglob("*.py")):
        src = path.read_text()
        tree = ast.parse(src, filename=str(path), feature_version=minimum)
        guarded = _guarded(tree)
        newer_mods = {m for v, mods in NEWER_STDLIB.items() if v > minimum for m in mods}
        newer_names = {n for v, names in NEWER_NAMES.items() if v > minimum for n in names}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                bad = [a.name for a in node.names if a.name in newer_mods]
            elif isinstance(node, ast.ImportFrom):
                bad = [node.module or ""] if node.module in newer_mods else \
                    [f"{node.module}.{a.name}" for a in node.names if (node.module, a.name) in newer_names]
            else:
                continue
            if bad and node.lineno not in guarded:
                problems.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {', '.join(bad)}")
    assert not problems, problems
