"""The torchvision part of benchmarks/deconv.py (``--model mobilenet_v2``): guided backpropagation.

MobileNetV2 (ImageNet weights from ../shared/data/models when present, else random), one real
224x224 image (../shared/data/imagenet-sample when present, else random), ``features.13``: the 9
strongest positions of the 16 strongest channels = 144 units, rule ``guided``.

* ours: one ``project_units`` call.
* Captum ``NeuronGuidedBackprop`` in its best batched use: the image repeated B times, a neuron
  selector picking unit b from copy b; the best B of --captum-batch. Captum only rectifies
  ``nn.ReLU`` modules, so its copy of the model gets ReLU6 modules that are ``nn.ReLU``
  subclasses with relu6's value and relu's gate (convlens's guided rule ignores the upper clip on
  the way down); its maps then equal ours (checked, scaled by the unit values).
"""
from __future__ import annotations

import argparse
import copy
import json
import warnings

import torch
import torch.nn.functional as F
from _timing import timed
from occlusion_torchvision import load
from torch import nn

from convlens.deconv.project import project_units


class _ReLU6Gate(nn.ReLU):
    """relu6's value, relu's gradient gate (an nn.ReLU, so that Captum hooks it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x) - F.relu(x - 6).detach()


def _captum_model(model: nn.Module) -> nn.Module:
    work = copy.deepcopy(model)
    for name, m in list(work.named_modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, nn.ReLU6):
                setattr(m, child_name, _ReLU6Gate())
        del name
    return work


def run(args: argparse.Namespace) -> None:
    from captum.attr import NeuronGuidedBackprop

    if args.threads:
        torch.set_num_threads(args.threads)
    model, images, what = load(1)
    x = images[0][None]
    layer = "features.13"
    with torch.no_grad():
        act = {}
        h = model.features[13].register_forward_hook(lambda _m, _i, o: act.setdefault("a", o))
        model(x)
        h.remove()
    a = act["a"][0]
    chans = a.amax((1, 2)).topk(args.channels).indices
    w = a.shape[-1]
    pos = a[chans].flatten(1).topk(args.top, dim=1).indices
    units = torch.stack([chans[:, None].expand_as(pos), pos // w, pos % w], -1).reshape(-1, 3)
    n = len(units)
    cap_model = _captum_model(model).eval()
    ngb = NeuronGuidedBackprop(cap_model, cap_model.features[13])

    def ours() -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return project_units(model, x, layer, units[None], rule="guided")

    def captum(batch: int) -> torch.Tensor:
        outs = []
        for s in range(0, n, batch):
            u = units[s:s + batch]
            sel = lambda out, u=u: out[torch.arange(len(u)), u[:, 0], u[:, 1], u[:, 2]]  # noqa: E731
            outs.append(ngb.attribute(x.expand(len(u), -1, -1, -1).clone(), sel))
        return torch.cat(outs)

    proj = ours()  # warm-up
    wall: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    batches = [int(v) for v in args.captum_batch.split(",")]
    errs = {}
    for r in range(args.repeat):  # interleaved: the machine is shared
        timed(ours, "ours", wall, cpu)
        for b in batches:
            cap = timed(lambda b=b: captum(b), f"captum x{b}", wall, cpu)
            if r == 0:
                ref = proj.images[0]
                errs[b] = float((ref - cap * proj.values[0].view(n, 1, 1, 1)).abs().max() / ref.abs().max())
    best = {k: min(v) for k, v in wall.items()}
    best_cpu = {k: min(v) for k, v in cpu.items()}
    cap_key = min((k for k in best if k != "ours"), key=best.get)  # type: ignore[arg-type]
    cap_cpu = min(v for k, v in best_cpu.items() if k != "ours")
    print(f"mobilenet_v2 ({what}) {layer}, guided, {args.channels} channels x top-{args.top} = {n} units, "
          f"CPU, {torch.get_num_threads()} threads")
    print(f"{'method':<44} {'ms/unit':>8} {'cpu ms/unit':>12} {'max rel diff':>13}")
    print(f"{'convlens project_units':<44} {best['ours'] / n * 1e3:>8.1f} "
          f"{best_cpu['ours'] / n * 1e3:>12.1f} {0:>13.1e}")
    for b in batches:
        k = f"captum x{b}"
        print(f"{'captum NeuronGuidedBackprop, batched x' + str(b):<44} {best[k] / n * 1e3:>8.1f} "
              f"{best_cpu[k] / n * 1e3:>12.1f} {errs[b]:>13.1e}")
    speed, speed_cpu = best[cap_key] / best["ours"], cap_cpu / best_cpu["ours"]
    print(f"speedup vs Captum's best ({cap_key}): {speed:.2f}x wall, {speed_cpu:.2f}x CPU time")
    print(json.dumps({"benchmark": "deconv", "model": "mobilenet_v2", "weights": what, "rule": "guided",
                      "layer": layer, "units": n, "speedup": round(speed, 2), "speedup_cpu_time": round(speed_cpu, 2),
                      "ours_ms_per_unit": round(best["ours"] / n * 1e3, 2),
                      "captum_best_ms_per_unit": round(best[cap_key] / n * 1e3, 2), "captum_best": cap_key,
                      "max_rel_diff_vs_captum": max(errs.values()), "threads": torch.get_num_threads(),
                      "seconds": {k: [round(v, 2) for v in t] for k, t in wall.items()},
                      "cpu_s": {k: [round(v, 2) for v in t] for k, t in cpu.items()}}))
