"""deconv.outputs: ``write_projection`` from Python writes what ``convlens project`` writes."""
from __future__ import annotations

import json

from convlens.cli import main
from convlens.deconv.outputs import ProjectSettings, write_projection
from convlens.nets.loading import load_model


def test_write_projection_equals_the_cli(tiny_checkpoint, image_folder, tmp_path):
    image = next((image_folder / "a").glob("*.png"))
    assert main(["project", "--checkpoint", str(tiny_checkpoint), "--image", str(image), "--layer", "conv2",
                 "--top", "4", "--out", str(tmp_path / "cli")]) == 0
    loaded = load_model(str(tiny_checkpoint))
    x = loaded.preprocessing.load(image)[None]
    lines = write_projection(loaded, x, tmp_path / "py", ProjectSettings("conv2", top=4), image_path=str(image),
                             params={"checkpoint": str(tiny_checkpoint), "arch": loaded.arch, "weights": None})
    assert lines[0].startswith("rule: ") and lines[-1].endswith("result.json")
    cli, py = (json.loads((tmp_path / d / "result.json").read_text()) for d in ("cli", "py"))
    assert len(py["data"]["units"]) == 4 and py["data"]["values"][0] > 0  # something was projected
    assert py["data"] == cli["data"] and py["params"] == cli["params"] and py["tables"] == cli["tables"]
    for fig in cli["figures"]:
        assert (tmp_path / "py" / fig["path"]).read_bytes() == (tmp_path / "cli" / fig["path"]).read_bytes()
