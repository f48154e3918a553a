"""Fault tests: kill -9 at random points of ``train`` and ``mine`` (then resume and compare with an
uninterrupted run, bit for bit), a corpus of bad image files through mine/evaluate/transfer, the
same command twice, one writer per output folder.

The number of kills per command is ``CONVLENS_FAULT_KILLS`` (default 1, for CI); run e.g.
``CONVLENS_FAULT_KILLS=20 pytest tests/test_faults.py`` for the full figure.
"""
from __future__ import annotations

import io
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_image_folder
from convlens.cli import main

KILLS = int(os.environ.get("CONVLENS_FAULT_KILLS", "1"))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"),
                                      os.environ.get("PYTHONPATH", "")])}


def convlens(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "convlens", *argv], env=ENV, capture_output=True, text=True,
                          timeout=300)


def count_files(out: Path) -> int:
    return sum(1 for p in out.rglob("*") if ".tmp" not in p.name and p.is_file()) if out.is_dir() else 0


def reference_timeline(argv: list[str], out: Path) -> list[tuple[float, int]]:
    """Run to the end, watching ``out``: the times at which its number of files grew (the write events)."""
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "convlens", *argv], env=ENV, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    events: list[tuple[float, int]] = []
    while p.poll() is None:
        n = count_files(out)
        if not events or n > events[-1][1]:
            events.append((time.perf_counter() - t0, n))
        time.sleep(0.005)
    assert p.returncode == 0, p.stderr.read() if p.stderr else ""
    return events


def kill_at(argv: list[str], out: Path, events: list[tuple[float, int]], rng: random.Random) -> str:
    """Start the command and SIGKILL it at a random point: after a random write event of the reference
    run (half the time one chosen uniformly among the events, half uniformly in time), plus a random
    part of the gap to the next event. A run that ends first is started again in a fresh folder with
    an earlier kill. Returns where it was killed."""
    if rng.random() < 0.5:
        j = rng.randrange(len(events))
    else:
        t = rng.uniform(events[0][0], events[-1][0])
        j = max(i for i, e in enumerate(events) if e[0] <= t)
    frac = rng.random()
    for _ in range(8):
        gap = events[j + 1][0] - events[j][0] if j + 1 < len(events) else 0.05
        shutil.rmtree(out, ignore_errors=True)
        p = subprocess.Popen([sys.executable, "-m", "convlens", *argv], env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        deadline = None
        while p.poll() is None:
            now = time.perf_counter()
            if deadline is None and count_files(out) >= events[j][1]:
                deadline = now + frac * gap
            if deadline is not None and now >= deadline:
                p.send_signal(signal.SIGKILL)
                p.wait()
                return f"{frac * gap:.3f}s after file {events[j][1]} of {events[-1][1]}"
            time.sleep(0.002)
        frac *= 0.3  # it finished first: kill earlier
        j = max(0, j - 1) if frac < 0.01 else j
    raise AssertionError(f"{argv[0]} always finished before the kill")


def leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if ".tmp" in p.name)


def same_weights(a: Path, b: Path) -> bool:
    sa = torch.load(a, map_location="cpu", weights_only=True)["model"]
    sb = torch.load(b, map_location="cpu", weights_only=True)["model"]
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("faults") / "data"
    make_image_folder(root / "train", per_class=8, size=36)
    make_image_folder(root / "test", per_class=3, size=36)
    return root


def train_argv(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--arch", "zfnet-tiny", "--dataset", str(data), "--epochs", "3", "--batch-size", "4",
            "--init", "kaiming", "--device", "cpu", "--seed", "3", "--out", str(out), *extra]


@pytest.mark.slow
def test_train_killed_anywhere_resumes_to_the_same_weights_and_metrics(data: Path, tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    events = reference_timeline(train_argv(data, ref), ref)
    ref_metrics = (ref / "metrics.csv").read_text()
    assert len(ref_metrics.splitlines()) == 4  # header + 3 epochs
    rng = random.Random(0)
    for i in range(KILLS):
        out = tmp_path / f"k{i}"
        delay = kill_at(train_argv(data, out), out, events, rng)
        r = convlens(*train_argv(data, out, "--resume"))
        assert r.returncode == 0, f"killed {delay}: resume failed: {r.stderr[-2000:]}"
        assert (out / "metrics.csv").read_text() == ref_metrics, f"killed {delay}"
        assert same_weights(out / "checkpoints" / "last.pt", ref / "checkpoints" / "last.pt"), f"killed {delay}"
        assert json.loads((out / "result.json").read_text())["data"]["final"]["epoch"] == 3
        assert leftovers(out) == [], f"killed {delay}"
        shutil.rmtree(out)
    print(f"train: {KILLS} runs killed, all resumed to identical weights and metrics")


def test_train_twice_same_numbers_and_no_silent_overwrite(data: Path, tmp_path: Path, capsys) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(train_argv(data, a, "--epochs", "1")) == 0
    b.mkdir()
    shutil.copy(a / "mean.pt", b / "mean.pt")  # the mean cached: must not change any random stream
    assert main(train_argv(data, b, "--epochs", "1")) == 0
    assert (a / "metrics.csv").read_text() == (b / "metrics.csv").read_text()
    assert same_weights(a / "checkpoints" / "last.pt", b / "checkpoints" / "last.pt")
    before = (a / "checkpoints" / "last.pt").read_bytes()
    capsys.readouterr()
    assert main(train_argv(data, a, "--epochs", "1")) == 2  # a second train into a run: refused
    assert "already holds a training run" in capsys.readouterr().err
    assert (a / "checkpoints" / "last.pt").read_bytes() == before
    # last.pt lost or corrupt: --resume falls back on the newest epoch_NNN.pt
    (a / "checkpoints" / "last.pt").write_bytes(b"garbage")
    (a / "metrics.csv").unlink()
    assert main(train_argv(data, a, "--epochs", "1", "--resume")) == 0
    assert (a / "metrics.csv").read_text() == (b / "metrics.csv").read_text()


def mine_argv(ckpt: Path, data: Path, out: Path) -> list[str]:
    return ["mine", "--checkpoint", str(ckpt), "--dataset", str(data), "--split", "train", "--layers", "conv1,conv2",
            "--batch-size", "2", "--save-every", "1", "--workers", "0", "--maps", "2", "--device", "cpu",
            "--out", str(out)]


def mine_outputs(out: Path) -> dict[str, bytes]:
    files = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.png"))}
    files["result.json"] = (out / "result.json").read_bytes()
    files.update({str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "acts").glob("*.npy"))})
    return files


@pytest.fixture(scope="module")
def checkpoint(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from convlens.images.data import dataset_preprocessing
    from convlens.nets.checkpoint import save_checkpoint
    from convlens.nets.convnet import build_model

    model = build_model("zfnet-tiny", num_classes=2, init="kaiming", seed=0)
    pre = dataset_preprocessing(str(data), crop=32)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", model, preprocessing=pre,
                           class_names=["a", "b"], epoch=1)


@pytest.mark.slow
def test_mine_killed_anywhere_reruns_to_the_same_outputs(data: Path, checkpoint: Path, tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    events = reference_timeline(mine_argv(checkpoint, data, ref), ref)
    expected = mine_outputs(ref)
    assert len(expected) > 4
    rng = random.Random(1)
    for i in range(KILLS):
        out = tmp_path / f"k{i}"
        delay = kill_at(mine_argv(checkpoint, data, out), out, events, rng)
        r = convlens(*mine_argv(checkpoint, data, out))
        assert r.returncode == 0, f"killed {delay}: rerun failed: {r.stderr[-2000:]}"
        got = mine_outputs(out)
        assert sorted(got) == sorted(expected), f"killed {delay}"
        assert [k for k in got if got[k] != expected[k]] == [], f"killed {delay}"
        assert leftovers(out) == [], f"killed {delay}"
        shutil.rmtree(out)
    print(f"mine: {KILLS} runs killed, all rerun to identical outputs")


def bad_files(folder: Path) -> dict[str, str]:
    """The corrupt-file corpus, written into ``folder``; returns name -> what it is."""
    rng = np.random.default_rng(0)
    good = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (40, 44, 3), dtype=np.uint8)).save(good, "PNG")
    jpeg = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (40, 44, 3), dtype=np.uint8)).save(jpeg, "JPEG")

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    bomb = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 4096)))
    (folder / "truncated.png").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (folder / "zero.png").write_bytes(b"")
    (folder / "text.jpg").write_bytes(b"this is not an image")
    (folder / "bomb.png").write_bytes(bomb)
    Image.new("1", (12000, 12000)).save(folder / "bomb12k.png")
    (folder / "jpeg_named.png").write_bytes(jpeg.getvalue())  # wrong extension: readable
    Image.new("CMYK", (40, 40), (0, 255, 255, 0)).save(folder / "cmyk.jpg")
    Image.fromarray(rng.integers(0, 65535, (40, 40)).astype(np.uint16)).save(folder / "gray16.png")
    Image.new("RGB", (1, 1), (5, 6, 7)).save(folder / "one.png")
    pal = Image.new("P", (40, 40), 3)
    pal.putpalette([i % 256 for i in range(768)])
    pal.info["transparency"] = 0
    pal.save(folder / "palette.png")
    return {"truncated.png": "bad", "zero.png": "bad", "text.jpg": "bad", "bomb.png": "bad", "bomb12k.png": "bad",
            "jpeg_named.png": "ok", "cmyk.jpg": "ok", "gray16.png": "ok", "one.png": "ok", "palette.png": "ok"}


def test_corrupt_corpus_through_mine_evaluate_transfer(data: Path, checkpoint: Path, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "bad"
    shutil.copytree(data / "test", root)
    corpus = bad_files(root / "a")
    bad = sorted(name for name, kind in corpus.items() if kind == "bad")
    n_good = len(list((data / "test").rglob("*.png"))) + len(corpus) - len(bad)
    commands = {
        "mine": ["mine", "--checkpoint", str(checkpoint), "--dataset", str(root), "--layers", "conv1", "--maps", "1",
                 "--batch-size", "4", "--workers", "2", "--device", "cpu"],
        "evaluate": ["evaluate", "--checkpoint", str(checkpoint), "--dataset", str(root), "--device", "cpu"],
        "transfer": ["transfer", "--checkpoint", str(checkpoint), "--dataset", str(root), "--per-class", "1",
                     "--folds", "1", "--n-test", "1", "--probe", "softmax", "--layers", "conv1", "--device", "cpu"],
    }
    for name, argv in commands.items():
        out = tmp_path / name
        caplog.clear()
        assert main([*argv, "--out", str(out)]) == 0, name
        listed = json.loads((out / "result.json").read_text())["data"]["skipped_images"]
        assert sorted(Path(e["image"]).name for e in listed) == bad, name
        assert all(e["reason"] and "object at 0x" not in e["reason"] for e in listed)
        warnings = [r for r in caplog.records if r.levelname == "WARNING" and "unreadable" in r.getMessage()]
        assert len(warnings) == 1 and f"skipped {len(bad)} unreadable" in warnings[0].getMessage(), name
    result = json.loads((tmp_path / "evaluate" / "result.json").read_text())
    assert result["data"]["rows"][0]["images"] == n_good  # every other file was read (CMYK, 16-bit, 1x1, palette...)


def test_one_writer_per_output_folder(data: Path, checkpoint: Path, tmp_path: Path) -> None:
    from convlens.training.rundir import lock_output

    out = tmp_path / "out"
    with lock_output(out, "convlens mine --out elsewhere (another run)"):
        r = convlens(*mine_argv(checkpoint, data, out))
    assert r.returncode == 2 and "in use by another convlens process" in r.stderr and "another run" in r.stderr
    assert not (out / "result.json").exists()
