"""Correspondence analysis (Table 1): sign-change scores by hand, masks, points, errors, CLI."""
from __future__ import annotations

import csv
import json

import pytest
import torch
from PIL import Image

from convlens.correspondence.analysis import (
    correspondence_score,
    face_box,
    random_masks,
    sign_change,
    square_masks,
    transform_points,
)


def test_sign_change_by_hand():
    eps = torch.tensor([[1.0, -2.0, 0.0, 3.0],
                        [2.0, -1.0, 1.0, -1.0],
                        [-1.0, 0.0, 0.0, 5.0]])
    # pairs (0,1): signs differ at features 2, 3 -> 2/4; (0,2): 0, 1 -> 2/4; (1,2): 0, 1, 2, 3 -> 4/4
    torch.testing.assert_close(sign_change(eps), torch.tensor([0.5, 0.5, 1.0], dtype=torch.float64))


def test_identical_images_and_masks_give_zero(tiny_model):
    img = torch.randn(1, 3, 32, 32).expand(3, -1, -1, -1).contiguous()
    masks = square_masks(torch.tensor([[[10.0, 12.0]]]).expand(3, 1, 2), 8, 32, 32)
    corr = correspondence_score(tiny_model, img, masks, ["conv5", "fc7"], part_names=["eye"])
    assert corr.mean.abs().max() == 0 and corr.delta.abs().max() == 0
    assert corr.parts == ("eye",) and corr.mean.shape == (1, 2)


def test_hand_computed_three_images():
    # A "model" whose feature is the image itself (4 pixels): eps = x - x~ = x on the mask (fill 0).
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Identity())
    x = torch.tensor([[1.0, -2.0, 3.0, 4.0], [2.0, 1.0, -1.0, 5.0], [-3.0, -1.0, 2.0, 1.0]]).reshape(3, 1, 2, 2)
    masks = torch.zeros(3, 1, 2, 2, dtype=torch.bool)
    masks[:, 0, 0, :] = True  # mask the top row: eps = [x0, x1, 0, 0]
    corr = correspondence_score(model, x, masks, ["1"], part_names=["top"])
    # signs: [+,-,0,0], [+,+,0,0], [-,-,0,0] -> H = 1, 1, 2 over 4 features
    torch.testing.assert_close(corr.pair_scores["top"][0], torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64))
    torch.testing.assert_close(corr.mean[0, 0], torch.tensor(1 / 3, dtype=torch.float64))
    torch.testing.assert_close(corr.delta[0, 0], torch.tensor(8.0, dtype=torch.float64))  # 2 * (1 + 1 + 2)


def test_transform_points_follows_resize_crop():
    # 100x200 image (h, w): resize smallest side to 50 -> 50x100, crop center 50 (left 25), then crop 40 (offset 5)
    pts = torch.tensor([[[100.0, 50.0], [0.0, 0.0]]])
    out = transform_points(pts, torch.tensor([[100, 200]]), 50, 40)
    torch.testing.assert_close(out[0, 0],
                               torch.tensor([(100.5) * 0.5 - 0.5 - 30, 50.5 * 0.5 - 0.5 - 5], dtype=torch.float64))


def test_masks_and_random_baseline():
    m = square_masks(torch.tensor([[[1.0, 1.0], [30.0, 16.0]]]), 6, 32, 32)
    assert m.shape == (1, 2, 32, 32) and m.sum((-2, -1)).eq(36).all()  # shifted inside, same area
    assert m[0, 0, 0, 0] and m[0, 1, 14:20, 26:32].all()
    boxes = face_box(torch.tensor([[[10.0, 10.0], [20.0, 10.0], [15.0, 18.0]]]))
    r1 = random_masks(boxes, 6, 32, 32, 4, seed=1)
    assert r1.shape == (1, 4, 32, 32) and r1.sum((-2, -1)).eq(36).all()
    assert torch.equal(r1, random_masks(boxes, 6, 32, 32, 4, seed=1))
    ys, xs = r1[0].nonzero()[:, 1], r1[0].nonzero()[:, 2]
    assert ys.min() >= 0 and xs.min() >= 2 and xs.max() <= 27  # inside the grown box (2.5 .. 27.5)


def test_part_outside_image_is_an_error():
    with pytest.raises(ValueError, match="nose of image 0 lands outside"):
        square_masks(torch.tensor([[[40.0, 3.0]]]), 6, 32, 32, names=["nose"])


def test_bad_shapes(tiny_model):
    with pytest.raises(ValueError, match="masks"):
        correspondence_score(tiny_model, torch.randn(2, 3, 32, 32), torch.zeros(3, 1, 32, 32, dtype=torch.bool))


def test_cli_end_to_end(tiny_checkpoint, tmp_path):
    from convlens.cli import main

    folder = tmp_path / "dogs"
    (folder / "dog").mkdir(parents=True)
    rows = []
    for i in range(3):
        Image.new("RGB", (40, 36), (10 * i, 100, 200)).save(folder / "dog" / f"d{i}.png")
        rows.append({"file": f"dog/d{i}.png", "width": 40, "height": 36, "eye_imgleft_x": 12, "eye_imgleft_y": 14,
                     "eye_imgright_x": 26, "eye_imgright_y": 14, "nose_x": 19 + i, "nose_y": 22})
    with open(folder / "landmarks.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    out = tmp_path / "corr"
    rc = main(["correspond", "--checkpoint", str(tiny_checkpoint), "--images", str(folder), "--landmarks",
               str(folder / "landmarks.csv"), "--mask", "6", "--layers", "conv5,fc7", "--repeats", "2",
               "--out", str(out)])
    assert rc == 0
    result = json.loads((out / "result.json").read_text())
    assert result["kind"] == "correspond" and len(result["tables"][0]["rows"]) == 4
    assert (out / "correspondence.md").is_file() and all((out / f["path"]).is_file() for f in result["figures"])
    rows[0]["nose_x"] = 400
    with open(folder / "landmarks.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert main(["correspond", "--checkpoint", str(tiny_checkpoint), "--images", str(folder), "--landmarks",
                 str(folder / "landmarks.csv"), "--mask", "6", "--out", str(out)]) == 2
