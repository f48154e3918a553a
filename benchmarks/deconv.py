"""Benchmark: batched deconvnet projections vs Captum's NeuronDeconvolution (Sec. 2.1).

Workload (issue 3): ZFNet (Fig. 3) with random weights, one 224x224 image, conv5, the 9
strongest positions of each of the 16 strongest channels = 144 projections, CPU, float32.

* ours: ``convlens.deconv.project.project_topk`` per channel batched into one call (``project_units``):
  one forward, one batched, receptive-field-cropped pass down.
* Captum, one call per unit: ``NeuronDeconvolution(model, model.relu5).attribute(x, (c, y, x))``.
* Captum, best batched use: the image repeated B times, a neuron selector picking unit b from
  copy b (one forward/backward per chunk of B units); the best B of --captum-batch.

Captum's one-call-per-unit time is measured on the first --captum-units units (its cost per unit
is constant) to keep the run short; every Captum map computed is compared with ours. Times are
wall clock and process CPU time (the shared machines here are often oversubscribed, which hurts
wall-clock ratios; the CPU-time ratio is the steadier one).

For Captum to compute the paper's deconvnet, LRN is passed straight through on the way down (a
full backward hook returning grad_output on each ``norm`` module), as in convlens. Captum seeds
each unit with 1 and convlens with its activation, so Captum's maps are scaled by the values
before comparing. The last line printed is one JSON object; ``speedup`` = Captum's best time
per projection / ours.

Run:  .venv/bin/python benchmarks/deconv.py            (about 1-3 minutes on 2 busy cores)

``--model mobilenet_v2``: torchvision MobileNetV2, guided rule, ``features.13``, against Captum's
``NeuronGuidedBackprop`` (see benchmarks/deconv_torchvision.py).
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from torch import nn

from convlens.deconv.project import project_units
from convlens.nets.convnet import build_model


def _captum_setup(model: nn.Module) -> list:
    return [m.register_full_backward_hook(lambda _m, _gi, go: (go[0],))
            for m in model.modules() if isinstance(m, nn.LocalResponseNorm)]


def captum_per_unit(model: nn.Module, x: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    from captum.attr import NeuronDeconvolution

    nd = NeuronDeconvolution(model, model.relu5)
    return torch.cat([nd.attribute(x, tuple(int(v) for v in u)) for u in units])


def captum_batched(model: nn.Module, x: torch.Tensor, units: torch.Tensor, batch: int) -> torch.Tensor:
    from captum.attr import NeuronDeconvolution

    nd = NeuronDeconvolution(model, model.relu5)
    outs = []
    for s in range(0, len(units), batch):
        u = units[s : s + batch]
        sel = lambda out, u=u: out[torch.arange(len(u)), u[:, 0], u[:, 1], u[:, 2]]  # noqa: E731
        outs.append(nd.attribute(x.expand(len(u), -1, -1, -1).clone(), sel))
    return torch.cat(outs)


def timed(fn, repeat: int = 1):  # type: ignore[no-untyped-def]
    """(best wall seconds, CPU seconds of that run, result)."""
    best, cpu, out = float("inf"), float("inf"), None
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        wall = time.perf_counter() - t
        if wall < best:
            best, cpu = wall, time.process_time() - c
    return best, cpu, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("zfnet", "mobilenet_v2"), default="zfnet")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--top", type=int, default=9)
    ap.add_argument("--captum-batch", default=None,
                    help="units per Captum call in the batched variant (best is used; default 16,48 for zfnet, "
                         "1,4,16 for mobilenet_v2, whose depthwise layers are slower per image in large batches)")
    ap.add_argument("--captum-units", type=int, default=16, help="units timed for Captum's one-call-per-unit variant")
    ap.add_argument("--repeat", type=int, default=2, help="best of N for our projection")
    args = ap.parse_args()
    if args.captum_batch is None:
        args.captum_batch = "16,48" if args.model == "zfnet" else "1,4,16"
    if args.model != "zfnet":
        from deconv_torchvision import run

        return run(args)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = build_model("zfnet", seed=0).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        act = model.features(x, ["conv5"])["conv5"][0]  # (256, 13, 13)
    chans = act.amax((1, 2)).topk(args.channels).indices
    pos = act[chans].flatten(1).topk(args.top, dim=1).indices  # (C, top)
    units = torch.stack([chans[:, None].expand_as(pos), pos // 13, pos % 13], -1).reshape(-1, 3)
    n = len(units)

    t_ours, c_ours, proj = timed(lambda: project_units(model, x, "conv5", units[None]), args.repeat)
    ours = proj.images[0]  # (n, 3, 224, 224)
    values = proj.values[0].view(n, 1, 1, 1)

    def rel(a: torch.Tensor) -> float:
        k = len(a)
        return float((ours[:k] - a * values[:k]).abs().max() / ours[:k].abs().max())

    handles = _captum_setup(model)
    try:
        m = min(args.captum_units, n)
        t_unit, c_unit, cap = timed(lambda: captum_per_unit(model, x, units[:m]))
        rows = [("convlens project_units (batched, RF-cropped)", t_ours / n, c_ours / n, 0.0),
                (f"captum NeuronDeconvolution, 1 call/unit ({m} units)", t_unit / m, c_unit / m, rel(cap))]
        for b in (int(v) for v in args.captum_batch.split(",")):
            t_b, c_b, cap = timed(lambda b=b: captum_batched(model, x, units, b))
            rows.append((f"captum NeuronDeconvolution, batched x{b}", t_b / n, c_b / n, rel(cap)))
    finally:
        for h in handles:
            h.remove()

    print(f"zfnet conv5, {args.channels} channels x top-{args.top} = {n} projections of one 224x224 image, "
          f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'method':<52} {'ms/proj':>8} {'cpu ms/proj':>12} {'max rel diff':>13}")
    for name, t, c, err in rows:
        print(f"{name:<52} {t * 1e3:>8.1f} {c * 1e3:>12.1f} {err:>13.2e}")
    best = min(rows[1:], key=lambda r: r[1])
    best_cpu = min(r[2] for r in rows[1:])
    speedup, speedup_cpu = best[1] / rows[0][1], best_cpu / rows[0][2]
    print(f"speedup per projection vs Captum's best ({best[0].split(', ')[1]}): {speedup:.1f}x wall, "
          f"{speedup_cpu:.1f}x CPU time")
    print(json.dumps({"benchmark": "deconv", "projections": n,
                      "ours_ms_per_projection": round(rows[0][1] * 1e3, 2),
                      "captum_per_unit_ms_per_projection": round(rows[1][1] * 1e3, 2),
                      "captum_batched_ms_per_projection": round(min(r[1] for r in rows[2:]) * 1e3, 2),
                      "ours_cpu_ms_per_projection": round(rows[0][2] * 1e3, 2),
                      "captum_best_cpu_ms_per_projection": round(best_cpu * 1e3, 2),
                      "max_rel_diff_vs_captum": max(r[3] for r in rows), "speedup": round(speedup, 2),
                      "speedup_cpu_time": round(speedup_cpu, 2), "threads": torch.get_num_threads(),
                      "machine": platform.machine()}))


if __name__ == "__main__":
    main()
