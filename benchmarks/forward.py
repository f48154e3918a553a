"""Forward GFLOP/s of ZFNet (Fig. 3, 224x224) in eager, channels_last and torch.compile modes, as a
fraction of a large fp32 matmul's GFLOP/s measured in the same run (the machine's practical peak).

FLOPs are counted from the model (2 per multiply-add: convs and fc layers; pooling, LRN and ReLU
are not counted, as usual), 2.336 GFLOP per image for ZFNet. Modes are timed alternately, and
rates use this process's CPU time (a shared machine's other load does not inflate it; the wall
clock rates are printed too). torch.compile's first call (its start-up cost) is reported apart.

    python benchmarks/forward.py [--arch zfnet] [--batch 64] [--repeats 2] [--threads N]

Last line: one JSON object; ``fraction_of_peak`` is the best mode's GFLOP/s over the matmul's.
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

from convlens.nets.convnet import build_model


def model_flops(model: nn.Module, size: int) -> float:
    """Forward FLOPs per image (2 per multiply-add) of the conv and linear layers."""
    total = 0.0

    def hook(m: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            k = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
            total += 2.0 * k * out[0].numel()
        elif isinstance(m, nn.Linear):
            total += 2.0 * m.in_features * m.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
    finally:
        for h in handles:
            h.remove()
    return total


def timed(fn, *args) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    t, c = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - t, time.process_time() - c


def matmul_peak(n: int, repeats: int) -> tuple[float, float]:
    """Best (CPU-time, wall) GFLOP/s of an n x n fp32 matmul."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    times = [timed(torch.mm, a, b) for _ in range(repeats)]
    flops = 2.0 * n**3
    return flops / min(c for _, c in times) / 1e9, flops / min(w for w, _ in times) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="zfnet")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--matmul", type=int, default=2048, help="side of the square matmul used as the peak")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile mode")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = build_model(args.arch, init="kaiming", seed=0).eval()
    size = model.cfg.input_size
    gflop = model_flops(model, size) * args.batch / 1e9
    x = torch.randn(args.batch, 3, size, size)
    cl_model = build_model(args.arch, init="kaiming", seed=0).eval().to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    modes = {"eager": (model, x), "channels_last": (cl_model, x_cl)}
    startup = None
    if not args.no_compile:
        compiled = torch.compile(cl_model)
        with torch.no_grad():
            startup = timed(compiled, x_cl)[0]  # first call: tracing + code generation
        modes["compile+channels_last"] = (compiled, x_cl)
    with torch.no_grad():
        for m, inp in modes.values():
            m(inp)  # warm-up
        times: dict[str, list[tuple[float, float]]] = {k: [] for k in modes}
        peak_cpu, peak_wall = matmul_peak(args.matmul, 3)
        for _ in range(args.repeats):
            for name, (m, inp) in modes.items():
                times[name].append(timed(m, inp))
        pc, pw = matmul_peak(args.matmul, 3)
        peak_cpu, peak_wall = max(peak_cpu, pc), max(peak_wall, pw)
    rates = {k: gflop / min(c for _, c in ts) for k, ts in times.items()}
    wall_rates = {k: gflop / min(w for w, _ in ts) for k, ts in times.items()}
    print(f"{args.arch} forward, batch {args.batch} at {size}x{size} ({gflop / args.batch:.3f} GFLOP/image), "
          f"{torch.get_num_threads()} threads; peak = {args.matmul}^3 fp32 matmul")
    print(f"{'mode':<22} {'GFLOP/CPU-s':>12} {'fraction':>9} {'GFLOP/wall-s':>13}")
    print(f"{'matmul (peak)':<22} {peak_cpu:>12.1f} {1.0:>9.2f} {peak_wall:>13.1f}")
    for k in modes:
        print(f"{k:<22} {rates[k]:>12.1f} {rates[k] / peak_cpu:>9.2f} {wall_rates[k]:>13.1f}")
    if startup is not None:
        print(f"torch.compile start-up (first call, wall): {startup:.1f} s")
    best = max(rates, key=rates.__getitem__)
    print(json.dumps({"benchmark": "forward", "arch": args.arch, "batch": args.batch,
                      "threads": torch.get_num_threads(), "peak_gflops": round(peak_cpu, 1),
                      "gflops": {k: round(v, 1) for k, v in rates.items()}, "best_mode": best,
                      "compile_startup_s": round(startup, 1) if startup is not None else None,
                      "fraction_of_peak": round(rates[best] / peak_cpu, 3)}))


if __name__ == "__main__":
    main()
