"""occlusion.outputs: ``write_occlusion`` from Python writes what ``convlens occlude`` writes."""
from __future__ import annotations

import json

import pytest

from convlens.cli import main
from convlens.nets.loading import load_model
from convlens.occlusion.outputs import OcclusionSettings, write_occlusion


def test_write_occlusion_equals_the_cli(tiny_checkpoint, image_folder, tmp_path):
    image = next(iter(sorted((image_folder / "a").iterdir())))
    assert main(["occlude", "--checkpoint", str(tiny_checkpoint), "--image", str(image), "--window", "8",
                 "--stride", "4", "--label", "1", "--out", str(tmp_path / "cli")]) == 0
    loaded = load_model(str(tiny_checkpoint))
    x = loaded.preprocessing.load(image)
    settings = OcclusionSettings("conv5", label=1, window=8, stride=4)
    lines = write_occlusion(loaded, x, tmp_path / "py", settings, image_path=str(image))
    assert lines[-1].endswith("result.json")
    cli, py = (json.loads((tmp_path / d / "result.json").read_text()) for d in ("cli", "py"))
    for d in (cli, py):
        d["data"].pop("seconds")
    assert py["data"]["target"] == 1 and len(py["data"]["target_prob"]) > 0
    assert py["data"] == cli["data"] and py["tables"] == cli["tables"]
    assert (tmp_path / "py" / "occlusion.md").read_text() == (tmp_path / "cli" / "occlusion.md").read_text()
    with pytest.raises(ValueError, match="expected a class index"):
        write_occlusion(loaded, x, tmp_path / "bad", OcclusionSettings("conv5", label=99), image_path=str(image))
