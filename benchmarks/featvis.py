"""Feature visualization benchmark: ours (batched, truncated) vs the Lucent recipe run as Lucent runs it.

Both run in this process on the same model, layer, units, steps and image size, with the same
parameterization (Fourier 1/f spectrum, sd 0.01, decorrelated colour, sigmoid), the same
normalization (the model's own), Adam at lr 0.05 and the channel-mean objective.

The Lucent recipe, reimplemented here from torch-lucent 0.1.8 (``lucent/optvis/render.py``,
``param/spatial.py``, ``param/color.py``, ``transform.py``, ``objectives.py``) because installing
it pins old dependencies:

- one ``render_vis`` per unit: a batch of one image, its own Adam;
- ``hook_model``: a forward hook on every module, the *whole* model run on every step
  (the layers after the one visualized included), the weights' ``requires_grad`` left on (Lucent
  does not turn it off, so autograd also computes every weight gradient);
- ``standard_transforms`` with one ``np.random.choice`` draw per step for the whole batch:
  ``pad(12, constant 0.5)``, ``jitter(8)`` (a kornia-style integer translation: ``grid_sample``
  of a translation matrix), ``random_scale(0.9..1.1)`` (``nn.Upsample(bilinear,
  align_corners=True)`` to the rounded-up scaled size, then padded), ``random_rotate(-10..10, 0 x5)``
  (kornia's ``get_rotation_matrix2d`` + ``warp_affine``, i.e. ``affine_grid`` + ``grid_sample``),
  ``jitter(4)``;
- not reproduced: Lucent's bilinear upsampling of images under 224 px to 224 px before the model
  (``render_vis`` without ``fixed_image_size``): both sides here feed the network the transformed
  image at its own size, so the comparison is at the same network input size (with the upsampling,
  Lucent's steps would cost more and the speedup would be larger).

Ours: :func:`convlens.featvis.render` with its defaults (all units in one batch, per-image
transforms, the model only up to the layer, weights frozen during the optimization, a
channels-last input), and the same with a contiguous NCHW input for comparison. A first short
render warms both paths up (fx tracing, oneDNN primitives) before anything is timed.

Run:  .venv/bin/python benchmarks/featvis.py [--units 16 --steps 64 --size 128 --threads 1]
The last line printed is one JSON object; ``speedup`` = ours units/s over the Lucent recipe's.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from _timing import timed

from convlens.core.capture import capture
from convlens.featvis import FeatvisConfig, render
from convlens.nets.loading import load_model
from convlens.nets.meta import make_preprocessing, parse_normalize

WEIGHTS = Path(__file__).resolve().parents[2] / "shared/data/models/mobilenet_v2_imagenet/mobilenet_v2_imagenet.pt"
COLOR = np.asarray([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]]).astype("float32")
COLOR_NORMALIZED = torch.tensor(COLOR / np.max(np.linalg.norm(COLOR, axis=0)))


# ----------------------------------------------------------------------------- Lucent's recipe


def rfft2d_freqs(h: int, w: int) -> np.ndarray:
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[: w // 2 + 2] if w % 2 == 1 else np.fft.fftfreq(w)[: w // 2 + 1]
    return np.sqrt(fx * fx + fy * fy)


def lucent_image(size: int, sd: float = 0.01, decay_power: float = 1.0):
    freqs = rfft2d_freqs(size, size)
    spectrum = (torch.randn(1, 3, *freqs.shape, 2) * sd).requires_grad_(True)
    scale = torch.tensor(1.0 / np.maximum(freqs, 1.0 / size) ** decay_power).float()[None, None, ..., None]

    def inner() -> torch.Tensor:
        image = torch.fft.irfftn(torch.view_as_complex(scale * spectrum), s=(size, size), norm="ortho")
        image = image[:1, :3, :size, :size] / 4.0
        t = image.permute(0, 2, 3, 1) @ COLOR_NORMALIZED.T  # _linear_decorrelate_color
        return torch.sigmoid(t.permute(0, 3, 1, 2))

    return [spectrum], inner


def _warp(image: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """kornia ``warp_affine(image, M, dsize=(h, w))`` (bilinear, zeros) with M in pixel coordinates."""
    _, _, h, w = image.shape
    norm = torch.tensor([[2 / (w - 1), 0, -1], [0, 2 / (h - 1), -1], [0, 0, 1]], dtype=torch.float32)
    full = torch.cat([m, torch.tensor([[0.0, 0.0, 1.0]])])
    theta = (norm @ torch.linalg.inv(full) @ torch.linalg.inv(norm))[:2][None]
    grid = F.affine_grid(theta, list(image.shape), align_corners=True)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def jitter(d: int):
    def inner(image: torch.Tensor) -> torch.Tensor:
        dx, dy = np.random.choice(d), np.random.choice(d)
        return _warp(image, torch.tensor([[1.0, 0.0, float(dx)], [0.0, 1.0, float(dy)]]))
    return inner


def pad(w: int, value: float = 0.5):
    return lambda image: F.pad(image, [w] * 4, mode="constant", value=value)


def random_scale(scales: list[float]):
    def inner(image: torch.Tensor) -> torch.Tensor:
        scale = np.random.choice(scales)
        shp = image.shape[2:]
        new = [math.ceil(scale * d) for d in shp]
        pad_x, pad_y = max(0, math.ceil((shp[1] - new[1]) / 2)), max(0, math.ceil((shp[0] - new[0]) / 2))
        up = torch.nn.Upsample(size=new, mode="bilinear", align_corners=True)
        return F.pad(up(image), [pad_y, pad_x] * 2)
    return inner


def random_rotate(angles: list[float]):
    def inner(image: torch.Tensor) -> torch.Tensor:
        _, _, h, w = image.shape
        a = math.radians(float(np.random.choice(angles)))
        cx, cy = (w - 1) / 2, (h - 1) / 2
        cos, sin = math.cos(a), math.sin(a)  # kornia get_rotation_matrix2d, scale 1
        m = torch.tensor([[cos, sin, (1 - cos) * cx - sin * cy], [-sin, cos, sin * cx + (1 - cos) * cy]])
        return _warp(image, m)
    return inner


STANDARD_TRANSFORMS = [pad(12), jitter(8), random_scale([1 + (i - 5) / 50.0 for i in range(11)]),
                       random_rotate(list(range(-10, 11)) + 5 * [0]), jitter(4)]


def lucent_render_vis(model: torch.nn.Module, layer: str, unit: int, steps: int, size: int, normalize) -> torch.Tensor:
    """``render_vis(model, f"{layer}:{unit}", param_f=lambda: param.image(size), thresholds=(steps,))``."""
    params, image_f = lucent_image(size)
    optimizer = torch.optim.Adam(params, lr=5e-2)
    features: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in model.named_modules():  # hook_model: every module
        if name:
            handles.append(module.register_forward_hook(
                lambda _m, _i, out, name=name: features.__setitem__(name, out)))
    try:
        for _ in range(steps):
            optimizer.zero_grad()
            x = image_f()
            for t in STANDARD_TRANSFORMS:
                x = t(x)
            model(normalize(x))
            loss = -features[layer][:, unit].mean()  # objectives.channel
            loss.backward()
            optimizer.step()
    finally:
        for h in handles:
            h.remove()
    return image_f().detach()


# ----------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layer", default="features.13")
    ap.add_argument("--units", type=int, default=16)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-nchw", action="store_true", help="skip timing ours with a contiguous (NCHW) input")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    np.random.seed(0)
    torch.manual_seed(0)
    if WEIGHTS.is_file():  # with its meta.json: x = pixel / 127.5 - 1, TF "SAME" padding hooks
        loaded = load_model("torchvision:mobilenet_v2", weights=WEIGHTS)
        model, pre = loaded.model, loaded.preprocessing
    else:
        model = torchvision.models.mobilenet_v2().eval()
        pre = make_preprocessing(parse_normalize("imagenet"), 224)
    units = list(range(args.units))
    wall: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    for cl in (True, False):  # warm-up: the first call traces the model and builds the kernels
        render(model, args.layer, units, preprocessing=pre, config=FeatvisConfig(steps=1, size=args.size,
                                                                                 channels_last=cl))
    cfg = FeatvisConfig(steps=args.steps, size=args.size)
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    ours = timed(lambda: render(model, args.layer, units, preprocessing=pre, config=cfg), "ours", wall, cpu)
    log(f"ours: {wall['ours'][0]:.1f} s")
    if not args.no_nchw:
        cl = FeatvisConfig(steps=args.steps, size=args.size, channels_last=False)
        timed(lambda: render(model, args.layer, units, preprocessing=pre, config=cl), "ours_nchw", wall, cpu)
        log(f"ours NCHW input: {wall['ours_nchw'][0]:.1f} s")
    lucent_vals = []
    for u in units:
        img = timed(lambda u=u: lucent_render_vis(model, args.layer, u, args.steps, args.size, pre.normalize),
                    "lucent", wall, cpu)
        act = capture(model, pre.normalize(img), [args.layer])[args.layer]
        lucent_vals.append(float(act[0, u].mean()))
        log(f"lucent unit {u}: {wall['lucent'][-1]:.1f} s")
    t_ours, t_luc = sum(wall["ours"]), sum(wall["lucent"])
    ups = {"ours": args.units / t_ours, "lucent": args.units / t_luc}
    rows = [("ours (batched, truncated)", t_ours, ups["ours"], sum(cpu["ours"]))]
    if "ours_nchw" in wall:
        ups["ours_nchw"] = args.units / sum(wall["ours_nchw"])
        rows.append(("ours, NCHW input", sum(wall["ours_nchw"]), ups["ours_nchw"], sum(cpu["ours_nchw"])))
    rows.append(("Lucent recipe (1 unit/run, whole model)", t_luc, ups["lucent"], sum(cpu["lucent"])))
    print(f"MobileNetV2 {args.layer}, {args.units} units, {args.steps} steps, {args.size} px, "
          f"{args.threads} thread(s), {'ImageNet' if WEIGHTS.is_file() else 'random'} weights")
    print(f"{'method':<42} {'wall s':>8} {'units/s':>9} {'cpu s':>8}")
    for name, t, u, c in rows:
        print(f"{name:<42} {t:>8.1f} {u:>9.4f} {c:>8.1f}")
    mean_ours = float(ours.values.mean())
    print(f"final channel mean (untransformed image): ours {mean_ours:.3f}, Lucent recipe {np.mean(lucent_vals):.3f}")
    print(json.dumps({"speedup": round(ups["ours"] / ups["lucent"], 3),
                      "cpu_time_speedup": round(sum(cpu["lucent"]) / sum(cpu["ours"]), 3),
                      "units_per_s_ours": round(ups["ours"], 5), "units_per_s_lucent": round(ups["lucent"], 5),
                      "units_per_s_ours_nchw": round(ups["ours_nchw"], 5) if "ours_nchw" in ups else None,
                      "cpu_s_ours": round(sum(cpu["ours"]), 2), "cpu_s_lucent": round(sum(cpu["lucent"]), 2),
                      "units": args.units, "steps": args.steps, "size": args.size, "layer": args.layer,
                      "threads": args.threads, "device": "cpu", "objective_ours": round(mean_ours, 4),
                      "objective_lucent": round(float(np.mean(lucent_vals)), 4)}))


if __name__ == "__main__":
    main()
