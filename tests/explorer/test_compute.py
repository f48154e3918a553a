"""Upload results (explorer.compute): projection panels use the one presentation; colour bars span the drawn values."""
from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from convlens.explorer.compute import VIEW, analyze_image


def _png_rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_upload_panels_pairs_and_bars(tiny_checkpoint, image_folder) -> None:
    from convlens.nets.loading import load_model

    loaded = load_model(str(tiny_checkpoint))
    image = Image.open(next((image_folder / "a").glob("*.png")))
    a = analyze_image(loaded, image, layers=["conv2"], top=2)
    panels = a.layers["conv2"]
    assert len(panels) == 2
    for p in panels:
        pair = _png_rgb(p.png)
        assert pair.shape == (VIEW, 2 * VIEW + 4, 3)  # projection | patch, made at the size shown
        assert p.full is not None and p.view is not None
        y0, x0, y1, x1 = p.view["display_box"]
        r0, q0, r1, q1 = p.view["rf_box"]
        assert r0 <= y0 < y1 <= r1 and q0 <= x0 < x1 <= q1
    assert any("grey = 0" in n for n in a.notes)
    act, prob, _labels, over = a.occlusion
    for panel in (act, prob, over):
        assert panel.bar is not None and "mean over the occluder positions" in panel.bar[3]
    assert prob.bar is not None and over.bar is not None
    assert prob.bar[1:3] == over.bar[1:3]  # neighbouring maps of one quantity: one scale
    from convlens.occlusion.maps import occlusion_map

    side = int(loaded.input_size) if isinstance(loaded.input_size, int) else int(loaded.input_size[-1])
    x = loaded.preprocessing.center(image.convert("RGB"))[None]
    occ = occlusion_map(loaded.model, x[0], window=max(2, side // 4), stride=max(1, side // 8), layer="conv2")
    heat = occ.prob_heatmap
    assert prob.bar[1] == float(heat.min()) and prob.bar[2] == float(heat.max())  # exactly the drawn values
    assert float(heat.max()) > float(heat.min())
    assert act.bar is not None and act.bar[1] == float(occ.activity_heatmap.min())
    assert torch.isfinite(heat).all()
