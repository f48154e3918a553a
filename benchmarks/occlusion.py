"""Occlusion benchmark (Fig. 7 workload): ours vs captum.attr.Occlusion, same process.

zfnet at 224x224 with random (seeded, Kaiming) weights, one image, a 50x50 grey (0) square at
stride 8. Captum runs at several ``perturbations_per_eval`` and its best time is used. Captum
places 22x22 = 484 occluders (no flush-with-border last position); ours places 23x23 = 529
and returns every class's probability map plus the conv5 map activity, Captum one class.
The exactness check compares our class-probability map with a naive loop (one occluded image
per forward through ``model(x)``).

Run:  .venv/bin/python benchmarks/occlusion.py [--repeats 2] [--ppe 8,16,32,64]
The last line printed is one JSON object; ``speedup`` = Captum's best time / ours.

``--model mobilenet_v2``: torchvision MobileNetV2 (the ImageNet weights in
../shared/data/models/mobilenet_v2_imagenet when present, else random weights), real images from
../shared/data/imagenet-sample when present (else random), 224x224, a 50px square at stride 12
(16x16 positions for us, 15x15 for Captum): ours exact (generic incremental inference), ours
approximate, Captum ``Occlusion`` at its best ``perturbations_per_eval`` and a plain loop of one
forward per position, interleaved over the repeats. JSON: ``speedup`` (Captum's best / ours exact,
total time), ``approx_speedup`` (Captum's best / ours approximate), ``approx_ssim`` (median over
--images real images of the SSIM of the approximate target-probability heatmap against the exact
one) and the same ratios in process CPU time.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from convlens.nets.convnet import build_model
from convlens.occlusion.maps import occluded_images, occlusion_map

CPU: dict[str, list[float]] = {}


def best_time(fn, repeats: int, key: str = "") -> float:
    """Best wall time of ``repeats`` calls (the machine is shared: the minimum is the least disturbed).

    Also records the process CPU time under ``key``: with ``--threads 1`` it measures the work
    done, nearly independent of how busy the machine is.
    """
    times = []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - t)
        CPU.setdefault(key, []).append(time.process_time() - c)
    return min(times)


def log(*a: object) -> None:
    print(*a, file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("zfnet", "mobilenet_v2"), default="zfnet")
    ap.add_argument("--images", type=int, default=3, help="mobilenet_v2: real images for the approximate SSIM")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--ppe", default=None, help="Captum perturbations_per_eval values to try "
                    "(default 8,16,32,64 for zfnet, 1,4,16 for mobilenet_v2)")
    ap.add_argument("--batch-size", type=int, default=None, help="our occluders per batch (default 128 for zfnet, "
                    "else occlusion_map's default)")
    ap.add_argument("--window", type=int, default=50)
    ap.add_argument("--stride", type=int, default=None, help="default 8 for zfnet, 12 for mobilenet_v2")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--no-plain", action="store_true", help="skip timing our plain batched path")
    ap.add_argument("--naive-every", type=int, default=1,
                    help="check every k-th occluder against the naive loop (1 = all; it is the slowest part)")
    args = ap.parse_args()
    from captum.attr import Occlusion

    if args.model != "zfnet":
        from occlusion_torchvision import run as run_torchvision

        return run_torchvision(args)
    args.ppe = args.ppe or "8,16,32,64"
    args.batch_size = args.batch_size or 128
    args.stride = args.stride or 8

    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = build_model("zfnet", seed=0, init="kaiming").eval()
    image = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        target = int(model(image).argmax())
    w, s = args.window, args.stride
    rows = []

    def ours(incremental: bool = True):
        return occlusion_map(model, image, window=w, stride=s, target=target,
                             batch_size=args.batch_size, incremental=incremental)

    def prob(x):
        return model(x).softmax(1)

    captum = Occlusion(prob)
    ppes = [int(v) for v in args.ppe.split(",")]

    def run_captum(ppe):
        with torch.no_grad():
            return captum.attribute(image, sliding_window_shapes=(3, w, w), strides=(3, s, s),
                                    baselines=0.0, target=target, perturbations_per_eval=ppe)

    occ = ours()  # warm-up
    # Interleave the methods over the repeats: the machine is shared and its load drifts.
    times: dict[str, list[float]] = {}
    for r in range(args.repeats):
        times.setdefault("ours", []).append(best_time(ours, 1, "ours"))
        log(f"[{r}] ours {times['ours'][-1]:.2f} s (cpu {CPU['ours'][-1]:.2f} s)")
        for ppe in ppes:
            times.setdefault(f"captum{ppe}", []).append(best_time(lambda ppe=ppe: run_captum(ppe), 1, f"captum{ppe}"))
            log(f"[{r}] captum ppe {ppe}: {times[f'captum{ppe}'][-1]:.2f} s (cpu {CPU[f'captum{ppe}'][-1]:.2f} s)")
    t_ours = min(times["ours"])
    rows.append(("convlens incremental", f"batch {args.batch_size}", occ.target_prob.numel(), t_ours))
    t_captum = {ppe: min(times[f"captum{ppe}"]) for ppe in ppes}
    plain = []
    t_plain = float("nan")
    if not args.no_plain:
        t_plain = best_time(lambda: plain.append(ours(False)), 1, "plain")
        log(f"plain batched {t_plain:.2f} s")
        rows.append(("convlens plain batched", f"batch {args.batch_size}", occ.target_prob.numel(), t_plain))
    n = ((224 - w) // s + 1) ** 2
    for ppe in ppes:
        rows.append(("captum Occlusion", f"ppe {ppe}", n, t_captum[ppe]))
    best_ppe = min(t_captum, key=t_captum.get)

    # exactness: naive loop, one occluded image per forward
    pos = occ.positions.reshape(-1, 2)[::args.naive_every]
    t = time.perf_counter()
    with torch.no_grad():
        naive = torch.stack([prob(occluded_images(image, p[:1], p[1:], w, 0.0))[0] for p in pos])
    t_naive = time.perf_counter() - t
    rows.append(("naive loop (1 image/forward)", "batch 1", len(pos), t_naive))
    max_diff = float((naive - occ.probs.reshape(-1, naive.shape[1])[::args.naive_every]).abs().max())
    max_diff_plain = max_diff_act = float("nan")
    if plain:
        max_diff_plain = float((plain[0].probs - occ.probs).abs().max())
        max_diff_act = float((occ.feature_activity - plain[0].feature_activity).abs().max()
                             / occ.feature_activity.abs().max())

    print(f"zfnet 224, random weights, {w}x{w} grey square, stride {s}, torch threads {torch.get_num_threads()}")
    print(f"{'method':<30} {'setting':<12} {'occluders':>9} {'seconds':>9} {'ms/occl':>8}")
    for name, setting, n, sec in rows:
        print(f"{name:<30} {setting:<12} {n:>9} {sec:>9.2f} {1000 * sec / n:>8.2f}")
    speedup = t_captum[best_ppe] / t_ours
    cpu_speedup = min(CPU[f"captum{best_ppe}"]) / min(CPU["ours"])
    print(f"speedup vs captum (best ppe {best_ppe}): {speedup:.2f}x total time "
          f"({speedup * occ.target_prob.numel() / ((224 - w) // s + 1) ** 2:.2f}x per occluder); "
          f"vs our plain batching {t_plain / t_ours:.2f}x")
    print(f"process CPU time: ours {min(CPU['ours']):.1f} s, "
          f"captum ppe {best_ppe} {min(CPU[f'captum{best_ppe}']):.1f} s: "
          f"{cpu_speedup:.2f}x")
    print(f"max |p_ours - p_naive| over all classes = {max_diff:.2e} ({len(pos)} occluders); vs plain batched "
          f"(all {occ.target_prob.numel()}): {max_diff_plain:.2e}; conv5 activity max rel diff = {max_diff_act:.2e}")
    def clean(v: object) -> object:  # NaN (skipped) -> null: strict JSON
        return None if isinstance(v, float) and v != v else v

    print(json.dumps({
        "speedup": round(speedup, 3), "cpu_time_speedup": round(cpu_speedup, 3),
        "cpu_s": {k: [round(v, 2) for v in t] for k, t in CPU.items()}, "ours_s": round(t_ours, 3),
        "captum_best_s": round(t_captum[best_ppe], 3),
        "captum_best_ppe": best_ppe, "plain_batched_s": clean(round(t_plain, 3)), "naive_loop_s": round(t_naive, 3),
        "max_abs_prob_diff": max_diff, "naive_checked": len(pos), "max_abs_prob_diff_plain": clean(max_diff_plain),
        "max_rel_activity_diff": clean(max_diff_act),
        "occluders_ours": occ.target_prob.numel(), "occluders_captum": ((224 - w) // s + 1) ** 2,
        "threads": torch.get_num_threads(), "all_times_s": {k: [round(v, 2) for v in t] for k, t in times.items()},
    }))


if __name__ == "__main__":
    main()
