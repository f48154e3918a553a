"""The torchvision part of benchmarks/occlusion.py (``--model mobilenet_v2``); see its docstring."""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torchvision
from _timing import timed
from torch import nn

from convlens.occlusion.maps import Approximation, occluded_images, occlusion_map

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
WEIGHTS = SHARED / "models" / "mobilenet_v2_imagenet" / "mobilenet_v2_imagenet.pt"
IMAGES = SHARED / "imagenet-sample"


def log(*a: object) -> None:
    print(*a, file=sys.stderr, flush=True)


def load(n_images: int) -> tuple[nn.Module, list[torch.Tensor], str]:
    """(model, normalized 224x224 images, description)."""
    if WEIGHTS.exists():
        from convlens.nets.loading import load_model

        loaded = load_model("torchvision:mobilenet_v2", weights=WEIGHTS)
        model, what = loaded.model.eval(), "ImageNet weights"
        mean, std = (0.5,) * 3, (0.5,) * 3
    else:
        torch.manual_seed(0)
        model, what = torchvision.models.mobilenet_v2().eval(), "random weights"
        mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    images = []
    if IMAGES.exists():
        from PIL import Image
        from torchvision import transforms as T

        tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(mean, std)])
        files = sorted(p for p in IMAGES.rglob("*.JPEG"))
        step = max(1, len(files) // n_images)
        images = [tf(Image.open(f).convert("RGB")) for f in files[::step][:n_images]]
        what += f", {len(images)} real images"
    else:
        gen = torch.Generator().manual_seed(0)
        images = [torch.randn(3, 224, 224, generator=gen) for _ in range(n_images)]
        what += f", {n_images} random images"
    return model, images, what


def run(args: argparse.Namespace) -> None:
    from captum.attr import Occlusion

    if args.threads:
        torch.set_num_threads(args.threads)
    model, images, what = load(args.images)
    w, s = args.window, args.stride or 12
    ppes = [int(v) for v in (args.ppe or "1,4,16").split(",")]
    approx = Approximation()
    image = images[0]
    with torch.no_grad():
        target = int(model(image[None]).argmax())

    def ours() -> object:
        return occlusion_map(model, image, window=w, stride=s, target=target, batch_size=args.batch_size)

    def ours_approx() -> object:
        return occlusion_map(model, image, window=w, stride=s, target=target, batch_size=args.batch_size,
                             approximate=approx)

    def prob(x: torch.Tensor) -> torch.Tensor:
        return model(x).softmax(1)

    captum = Occlusion(prob)

    def run_captum(ppe: int) -> torch.Tensor:
        with torch.no_grad():
            return captum.attribute(image[None], sliding_window_shapes=(3, w, w), strides=(3, s, s), baselines=0.0,
                                    target=target, perturbations_per_eval=ppe)

    def loop() -> torch.Tensor:
        with torch.no_grad():
            return torch.stack([prob(occluded_images(image[None], p[:1], p[1:], w, 0.0))[0, target]
                                for p in occ.positions.reshape(-1, 2)])

    occ = ours()  # warm-up (and the positions of the loop)
    ours_approx()
    wall: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    for r in range(args.repeats):  # interleaved: the machine is shared and its load drifts
        timed(ours, "ours", wall, cpu)
        timed(ours_approx, "approx", wall, cpu)
        for ppe in ppes:
            timed(lambda ppe=ppe: run_captum(ppe), f"captum{ppe}", wall, cpu)
        if r == 0 and not args.no_plain:
            naive = timed(loop, "loop", wall, cpu)
        log(f"[{r}] " + ", ".join(f"{k} {v[-1]:.2f}s (cpu {cpu[k][-1]:.2f})" for k, v in wall.items()))
    best = {k: min(v) for k, v in wall.items()}
    best_cpu = {k: min(v) for k, v in cpu.items()}
    cap = min((k for k in best if k.startswith("captum")), key=best.get)  # type: ignore[arg-type]
    cap_cpu = min(best_cpu[k] for k in best_cpu if k.startswith("captum"))
    n_ours, n_cap = occ.target_prob.numel(), ((224 - w) // s + 1) ** 2
    err = float((naive - occ.target_prob.reshape(-1)).abs().max()) if not args.no_plain else float("nan")

    ssims, fractions = [], []
    for i, img in enumerate(images):  # quality of the approximate mode on each real image
        a = occlusion_map(model, img, window=w, stride=s, batch_size=args.batch_size,
                          approximate=Approximation(quality=True))
        assert a.quality is not None
        ssims.append(a.quality["ssim_prob"])
        fractions.append(a.quality["computed_fraction"])
        log(f"image {i}: approximate quality {a.quality}")

    print(f"mobilenet_v2 ({what}), 224x224, {w}x{w} grey square at stride {s}, torch threads "
          f"{torch.get_num_threads()}, method {occ.method}")
    print(f"{'method':<36} {'occluders':>9} {'seconds':>8} {'cpu s':>7} {'ms/occl':>8}")
    rows = [("convlens exact (incremental)", "ours", n_ours), ("convlens approximate", "approx", n_ours)]
    rows += [(f"captum Occlusion ppe {p}", f"captum{p}", n_cap) for p in ppes]
    rows += [("plain loop, 1 forward/position", "loop", n_ours)] if "loop" in best else []
    for name, key, n in rows:
        print(f"{name:<36} {n:>9} {best[key]:>8.2f} {best_cpu[key]:>7.2f} {1e3 * best[key] / n:>8.2f}")
    speed, aspeed = best[cap] / best["ours"], best[cap] / best["approx"]
    print(f"speedup vs Captum's best ({cap}): exact {speed:.2f}x, approximate {aspeed:.2f}x (total time; "
          f"CPU time {cap_cpu / best_cpu['ours']:.2f}x / {cap_cpu / best_cpu['approx']:.2f}x); "
          f"approximate SSIM median {statistics.median(ssims):.3f} over {len(ssims)} images "
          f"(computed {statistics.mean(fractions):.0%} of the positions); |p - loop| max {err:.1e}")
    print(json.dumps({
        "benchmark": "occlusion", "model": "mobilenet_v2", "weights": what, "speedup": round(speed, 2),
        "approx_speedup": round(aspeed, 2), "approx_ssim": round(statistics.median(ssims), 4),
        "approx_ssims": [round(v, 4) for v in ssims], "cpu_time_speedup": round(cap_cpu / best_cpu["ours"], 2),
        "approx_cpu_time_speedup": round(cap_cpu / best_cpu["approx"], 2), "captum_best": cap,
        "seconds": {k: [round(x, 2) for x in v] for k, v in wall.items()},
        "cpu_s": {k: [round(x, 2) for x in v] for k, v in cpu.items()}, "max_abs_prob_diff_vs_loop": err,
        "occluders_ours": n_ours, "occluders_captum": n_cap, "threads": torch.get_num_threads(),
    }))
