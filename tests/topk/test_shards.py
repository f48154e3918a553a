"""``mine --shard I/N`` + ``convlens merge`` equal one-process mining exactly; bad shard sets are refused."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_image_folder
from convlens.cli import main
from convlens.topk.acttable import load_table
from convlens.topk.shards import merge_shards, parse_shard, shard_range


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("shards") / "images", classes=("a", "b", "c"), per_class=5)


@pytest.fixture(scope="module")
def ckpt(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from convlens.images.data import dataset_preprocessing
    from convlens.nets.checkpoint import save_checkpoint
    from convlens.nets.convnet import build_model

    model = build_model("zfnet-tiny", num_classes=3, init="kaiming", seed=0)
    return save_checkpoint(tmp_path_factory.mktemp("ck") / "tiny.pt", model,
                           preprocessing=dataset_preprocessing(str(data), crop=32), class_names=["a", "b", "c"])


def argv(ckpt: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["mine", "--checkpoint", str(ckpt), "--dataset", str(data), "--split", "train", "--layers", "conv2,conv5",
            "--batch-size", "2", "--workers", "0", "--k", "3", "--maps", "2", "--project", "grid", "--device", "cpu",
            "--out", str(out), *extra]


def outputs(out: Path) -> dict:
    tops = torch.load(out / "topk.pt", weights_only=False)
    table = load_table(out / "acts")
    with np.load(out / "class_means.npz") as z:
        means = {k: z[k] for k in z.files}
    return {"tops": tops, "tables": {n: np.asarray(table.values(n)) for n in table.layers},
            "filled": table.filled(), "labels": table.labels(), "means": means,
            "data": json.loads((out / "result.json").read_text())["data"]}


def assert_same(a: dict, b: dict) -> None:
    for layer, t in a["tops"].items():
        for key, v in t.items():
            w = b["tops"][layer][key]
            assert (torch.equal(v, w) if isinstance(v, torch.Tensor) else v == w), (layer, key)
    assert a["tables"].keys() == b["tables"].keys()
    for n in a["tables"]:
        assert np.array_equal(a["tables"][n], b["tables"][n])
    assert np.array_equal(a["filled"], b["filled"]) and np.array_equal(a["labels"], b["labels"])
    assert a["means"].keys() == b["means"].keys()
    for n in a["means"]:
        assert np.array_equal(a["means"][n], b["means"][n], equal_nan=True)
    assert a["data"] == b["data"]


@pytest.mark.parametrize("parts", [2, 3])
def test_merged_shards_equal_one_process(ckpt: Path, data: Path, tmp_path: Path, parts: int) -> None:
    assert main(argv(ckpt, data, tmp_path / "one")) == 0
    shards = [tmp_path / f"part{i}" for i in range(parts)]
    for i, s in enumerate(shards):
        assert main(argv(ckpt, data, s, "--shard", f"{i}/{parts}")) == 0
        assert not (s / "result.json").exists()
        assert load_table(s / "acts").rows().tolist() == list(shard_range(15, i, parts, 2))
    assert main(["merge", "--device", "cpu", "--out", str(tmp_path / "merged"), *map(str, shards[::-1])]) == 0
    one, merged = outputs(tmp_path / "one"), outputs(tmp_path / "merged")
    assert one["filled"].sum() == 15 and one["data"]["images"] == 15
    assert_same(one, merged)


def test_merge_refuses_mismatched_or_incomplete_shards(ckpt: Path, data: Path, tmp_path: Path, capsys) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert main(argv(ckpt, data, a, "--shard", "0/2")) == 0
    assert main(argv(ckpt, data, b, "--shard", "1/2", "--k", "4")) == 0  # other settings
    with pytest.raises(ValueError, match="k: 3 vs 4"):
        merge_shards(tmp_path / "m", [a, b])
    with pytest.raises(ValueError, match=r"parts 0..1 of 2"):
        merge_shards(tmp_path / "m", [a])
    assert main(argv(ckpt, data, c, "--shard", "0/2")) == 0
    with pytest.raises(ValueError, match="each once"):
        merge_shards(tmp_path / "m", [a, c])
    info = json.loads((c / "shard.json").read_text())
    (c / "shard.json").write_text(json.dumps({**info, "shard": [1, 2]}))  # claims part 1, holds part 0's state
    with pytest.raises(ValueError, match=r"shard 1/2 .* is not finished \(8 of 7 images\)"):
        merge_shards(tmp_path / "m", [a, c])
    with pytest.raises(ValueError, match="written by 'convlens mine --shard"):
        merge_shards(tmp_path / "m", [a, tmp_path])
    assert main(["merge", "--out", str(tmp_path / "m"), str(a), str(b)]) == 2
    assert capsys.readouterr().err.count("error:") == 1
    assert main(argv(ckpt, data, tmp_path / "e", "--shard", "0/9")) == 2  # 8 batches: part 0 of 9 is empty
    assert "at most 8 parts" in capsys.readouterr().err


def test_parse_shard() -> None:
    assert parse_shard("2/5") == (2, 5)
    for bad in ("5/5", "x", "-1/3", "1/0"):
        with pytest.raises(ValueError, match="shard must be I/N"):
            parse_shard(bad)
    assert [len(shard_range(10, i, 3)) for i in range(3)] == [3, 3, 4]
    assert [list(shard_range(15, i, 3, 2)) for i in range(3)] == [[0, 1, 2, 3], [4, 5, 6, 7, 8, 9],
                                                                 [10, 11, 12, 13, 14]]
    assert [len(shard_range(3, i, 4, 2)) for i in range(4)] == [0, 2, 0, 1]  # more parts than batches: some empty
