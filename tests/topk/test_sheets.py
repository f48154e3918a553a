"""Fig. 2 on torchvision CNNs: the default rule follows the image, rule resolution, labelled figures."""
from __future__ import annotations

import pytest
import torch
import torchvision

from conftest import SHARED, needs_shared
from convlens.core.capture import record_activations
from convlens.deconv.project import project_units
from convlens.deconv.rules import resolve_rule


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


@pytest.mark.parametrize(("arch", "layer", "expected"), [
    ("resnet18", "layer1", "deconvnet"), ("resnet18", "layer2", "guided"), ("vgg11", "features.8", "deconvnet"),
    ("mobilenet_v2", "features.6", "guided"),
])
def test_default_rule_projections_follow_the_image(arch, layer, expected):
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(num_classes=10).eval()
    rule, reason = resolve_rule(model, layer, "auto")
    assert rule == expected and layer in reason
    assert "(" not in reason  # printed as "rule: guided (reason)": no nested parentheses
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), record_activations(model, [layer]) as acts:
        model(x)
    act = acts[layer]
    live = act.min(0).values  # the unit live in both images, as strong as possible in the weaker one
    c, y, xx = (int(v) for v in torch.unravel_index(live.argmax(), live.shape))
    assert float(live[c, y, xx]) > 0
    proj = project_units(model, x, layer, torch.tensor([[c, y, xx]]), rule="auto")
    assert proj.rule == expected
    a, b = proj.images[0, 0], proj.images[1, 0]
    assert a.abs().sum() > 0 and b.abs().sum() > 0
    assert _corr(a, b) < 0.9, f"{arch} {layer} {rule}: the projection barely depends on the image"
    # deconvnet where the rule is image-blind gives (nearly) the same map: what auto avoids
    if "no max pooling" in reason:
        blind = project_units(model, x, layer, torch.tensor([[c, y, xx]]), rule="deconvnet").images
        assert _corr(blind[0, 0], blind[1, 0]) > 0.99


def test_resolve_rule_explicit_and_errors():
    model = torchvision.models.mobilenet_v2(num_classes=10)
    assert resolve_rule(model, "features.3", "gradient") == ("gradient", "requested")
    assert resolve_rule(model, "features.0", "auto")[0] == "deconvnet"  # first conv: all rules agree
    with pytest.raises(ValueError, match="rule must be one of"):
        resolve_rule(model, "features.3", "lrp")
    with pytest.raises(ValueError, match="features"):
        resolve_rule(model, "featurs.3", "auto")


def _pairwise_max_corr(tiles: torch.Tensor) -> float:
    flat = tiles.flatten(1).double()
    flat = flat - flat.mean(1, keepdim=True)
    flat = flat / flat.norm(dim=1, keepdim=True)
    c = flat @ flat.t()
    return float((c - torch.eye(len(c), dtype=c.dtype)).max())


@pytest.mark.slow
@needs_shared
def test_real_mobilenet_top9_projections_follow_their_images():
    from torch.utils.data import DataLoader

    from convlens.images.data import collate_skip, open_dataset
    from convlens.nets.loading import load_model
    from convlens.topk.mining import mine_top_activations
    from convlens.topk.tiles import unit_tiles

    weights = SHARED / "models" / "mobilenet_v2_imagenet" / "mobilenet_v2_imagenet.pt"
    loaded = load_model("torchvision:mobilenet_v2", weights=weights)
    ds = open_dataset(str(SHARED / "imagenet-sample"), "train", loaded.preprocessing, limit=12)
    tops = mine_top_activations(loaded.model, DataLoader(ds, batch_size=6, collate_fn=collate_skip), ["features.6"])
    top = tops["features.6"]
    m = int(top.values[:, -1].argmax())  # a map live in all nine of its images
    assert float(top.values[m, -1]) > 0 and len(set(top.dataset_indices[m].tolist())) == 9
    tiles = unit_tiles(loaded.model, ds, top, [m])  # rule auto: guided on this net without max pooling
    assert tiles.rule == "guided"
    proj = tiles.projections[0]
    assert (proj.flatten(1).abs().sum(1) > 0).all()
    assert _pairwise_max_corr(proj) < 0.9  # nine different pictures, not one pattern nine times
    blind = unit_tiles(loaded.model, ds, top, [m], rule="deconvnet").projections[0]
    assert _pairwise_max_corr(blind) > 0.99  # what the paper's rule gives on this net: the same pattern


def test_sheets_are_labelled_split_and_readable_size():
    from convlens.deconv.blocks import map_block
    from convlens.io.viz import normalize_for_display, text_block
    from convlens.topk.sheets import display_tiles, fig2_sheets

    gen = torch.Generator().manual_seed(0)
    proj, patch = display_tiles(torch.randn(9, 3, 32, 32, generator=gen), torch.rand(9, 3, 32, 32, generator=gen))
    assert proj.shape == (9, 3, 64, 64) and float(proj.min()) >= 0 and float(proj.max()) <= 1
    block = map_block(proj, patch, ["features.16 map 7"], ["6 (8.31)"] * 9, ["great white shark"] * 9)
    blank = map_block(proj, patch, [""], [""] * 9, [""] * 9)
    assert block.shape == blank.shape and not torch.equal(block, blank)  # the text is drawn
    sheets = fig2_sheets([block] * 40, ["features.16: top-9 activations per map, rule guided"], maps_per_sheet=16)
    assert len(sheets) == 3 and all(s.shape[-1] <= 2000 for s in sheets)
    assert text_block(["x"], 50).shape == (3, 18, 50)
    t = torch.zeros(1, 3, 8, 8)
    t[0, 0, 0, 0], t[0, 1, 3, 3] = 100.0, 1.0  # one huge pixel would leave the rest flat grey
    torch.testing.assert_close(normalize_for_display(t, percentile=100.0), normalize_for_display(t))
    assert (float(normalize_for_display(t, percentile=99.0)[0, 1, 3, 3]) > 0.9
            > float(normalize_for_display(t)[0, 1, 3, 3]))
