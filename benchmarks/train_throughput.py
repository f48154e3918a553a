"""Training throughput: ``convlens.training.recipe.train_one_epoch`` (filter clipping on) vs a bare PyTorch loop.

Both train the same architecture from the same initial weights on the same pre-made batches
(so data loading is not measured), in the same process, alternating step by step (ABAB...) so
that load from other processes hits both alike; the ratio uses this process's CPU time (the wall
clock is printed too), which other processes on a shared machine do not inflate.
The bare loop is forward, cross-entropy,
zero_grad, backward, SGD step - nothing else. The convlens loop adds the paper's filter
renormalization after every step, top-1/top-5 bookkeeping and the progress plumbing.

    python benchmarks/train_throughput.py [--arch zfnet-small] [--batch 128] [--steps 8] [--repeats 3]

Last line: one JSON object; ``ratio`` = convlens images/s / bare images/s (goal >= 0.95).
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from convlens.nets.convnet import get_config
from convlens.training.recipe import TrainConfig, build_train_model, train_one_epoch


def bare_loop(model, batches, optimizer) -> None:
    model.train()
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def convlens_loop(model, batches, optimizer) -> None:
    train_one_epoch(model, batches, optimizer, clip_radius=0.1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="zfnet-small")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=8, help="training steps per timed repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--channels-last", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    size = get_config(args.arch).input_size
    g = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    batches = [(torch.randn(args.batch, 3, size, size, generator=g).contiguous(memory_format=fmt),
                torch.randint(0, 10, (args.batch,), generator=g)) for _ in range(args.steps)]
    cfg = TrainConfig(arch=args.arch, dataset="synthetic", init="kaiming")
    runners = {"bare PyTorch": bare_loop, "convlens": convlens_loop}
    state = {}
    for name in runners:
        model = build_train_model(cfg, 10).to(memory_format=fmt)
        state[name] = (model, torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9))
        runners[name](*state[name][:1], batches[:1], state[name][1])  # warm-up step
    # Alternate single steps (bare, convlens, bare, ...) and time each with both the wall clock and
    # this process's CPU time: on a shared machine CPU time is what measures *our* work.
    wall: dict[str, list[float]] = {name: [] for name in runners}
    cpu: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.repeats):
        for batch in batches:
            for name, fn in runners.items():
                t, c = time.perf_counter(), time.process_time()
                fn(state[name][0], [batch], state[name][1])
                wall[name].append(time.perf_counter() - t)
                cpu[name].append(time.process_time() - c)
    n = args.batch * args.steps * args.repeats
    ips = {name: n / sum(ts) for name, ts in cpu.items()}
    wips = {name: n / sum(ts) for name, ts in wall.items()}
    print(f"{args.arch}, batch {args.batch}, {args.steps} steps x {args.repeats} repeats (alternating steps), "
          f"{torch.get_num_threads()} threads, {'channels_last' if args.channels_last else 'NCHW'}")
    print(f"{'loop':<14} {'images per CPU-s':>17} {'images per wall-s':>18}")
    for name in runners:
        print(f"{name:<14} {ips[name]:>17.1f} {wips[name]:>18.1f}")
    ratio = ips["convlens"] / ips["bare PyTorch"]
    print(f"ratio convlens / bare (CPU time): {ratio:.3f}; wall clock: {wips['convlens'] / wips['bare PyTorch']:.3f}"
          " (goal >= 0.95)")
    print(json.dumps({"benchmark": "train_throughput", "arch": args.arch, "batch": args.batch,
                      "threads": torch.get_num_threads(), "convlens_images_per_cpu_s": round(ips["convlens"], 2),
                      "bare_images_per_cpu_s": round(ips["bare PyTorch"], 2),
                      "ratio_wall": round(wips["convlens"] / wips["bare PyTorch"], 4), "ratio": round(ratio, 4)}))

if __name__ == "__main__":
    main()
