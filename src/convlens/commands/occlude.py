"""``convlens occlude``: occlusion sensitivity of one image (Fig. 7).

Writes into ``--out``: ``occlusion.png`` (the five panels: (a) the image with one grey square,
(b) activity of the strongest layer-5 map over occluder positions, (c) the deconvnet projection
of that map, (d) the correct-class probability, (e) the most probable label with a legend),
``result.json`` (kind ``occlusion``; the grids in ``data``) and ``occlusion.md`` (the labels table).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "occlude",
        help="occlusion sensitivity maps of one image (Fig. 7)",
        description="Slide a grey square (the training mean) over an image and map, per occluder position, "
        "the total activity of the strongest layer-5 map, the correct-class probability and the most probable "
        "label; also the deconvnet projection of that map.",
        epilog="example: convlens occlude --checkpoint runs/zf/checkpoints/last.pt --image dog.jpg --window 50 "
        "--stride 8 --out runs/zf/occlusion",
    )
    p.add_argument("--checkpoint", default=None, help="a convlens checkpoint")
    p.add_argument("--arch", default=None, help="instead of --checkpoint: torchvision:NAME (e.g. torchvision:mobilenet_v2)")
    p.add_argument("--weights", default=None, help="state_dict file for --arch")
    p.add_argument("--image", required=True, help="image file")
    p.add_argument("--label", type=int, default=None, help="correct class index (default: the predicted class)")
    p.add_argument("--window", type=int, default=50, help="occluder side in pixels (default 50)")
    p.add_argument("--stride", type=int, default=8, help="occluder step in pixels (default 8)")
    p.add_argument("--fill", type=float, default=0.0, help="occluder value in normalized space (0 = the mean)")
    p.add_argument("--layer", default=None, help="feature-map layer (default conv5, or the last of model.features)")
    p.add_argument("--channel", type=int, default=None, help="map of --layer (default: strongest in the image)")
    p.add_argument("--rule", choices=("deconvnet", "guided", "gradient"), default="deconvnet",
                   help="projection rule of panel (c) (default deconvnet, the paper's)")
    p.add_argument("--batch-size", type=int, default=None, help="occluders per batch (default: chosen per model)")
    p.add_argument("--no-incremental", action="store_true", help="plain batched forwards (for comparison)")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=run)


def load(args: argparse.Namespace, device: Any) -> Any:
    """``Loaded`` from ``--checkpoint`` or ``--arch/--weights`` (shared by occlude/correspond/invariance)."""
    from ..checkpoint import load_model

    if (args.checkpoint is None) == (getattr(args, "arch", None) is None):
        raise ValueError("give exactly one of --checkpoint C or --arch torchvision:NAME [--weights F]")
    if args.checkpoint is not None:
        return load_model(args.checkpoint, map_location=device)
    return load_model(args.arch, weights=args.weights, map_location=device)


def label_names(labels: torch.Tensor, class_names: list[str]) -> dict[int, str]:
    return {int(c): (class_names[int(c)] if int(c) < len(class_names) else str(int(c))) for c in labels.unique()}


def render(image01: torch.Tensor, occ: Any, projection01: torch.Tensor | None, box: Any,
           class_names: list[str], title: str = "", rule: str = "deconvnet") -> Any:
    """The Fig. 7 row as a matplotlib Figure (panels a-e). ``image01``: (3, H, W) in [0, 1]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    img = image01.permute(1, 2, 0).cpu().numpy()
    H, W = img.shape[:2]
    fig, ax = plt.subplots(1, 5, figsize=(20, 4.6))
    gy, gx = occ.target_prob.shape
    y, x = occ.positions[gy // 2, gx // 2].tolist()
    grey = img.copy()
    grey[y:y + occ.window, x:x + occ.window] = 0.5
    ax[0].imshow(grey)
    ax[0].set_title(f"(a) input, {occ.window}px occluder, stride {occ.stride}")
    for a, heat, t, cm in ((ax[1], occ.activity_heatmap, f"(b) {occ.layer} map {occ.channel}: total activity", "jet"),
                           (ax[3], occ.prob_heatmap, f"(d) p({_name(occ.target, class_names)})", "jet")):
        a.imshow(img)
        im = a.imshow(heat.cpu().numpy(), cmap=cm, alpha=0.6)
        fig.colorbar(im, ax=a, fraction=0.046, pad=0.02)
        a.set_title(t, fontsize=9)
    if projection01 is not None:
        ax[2].imshow(projection01.permute(1, 2, 0).cpu().numpy())
        if box is not None:
            y0, x0, y1, x1 = [int(v) for v in box]
            ax[2].add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="black", lw=2))
    else:
        ax[2].text(0.5, 0.5, "no projection:\nzero signal\n(e.g. saturated ReLU6 unit)", ha="center", va="center",
                   transform=ax[2].transAxes, fontsize=9)
    ax[2].set_title(f"(c) {rule} projection of {occ.layer} map {occ.channel}", fontsize=9)
    labels = occ.label_heatmap.cpu()
    uniq, counts = labels.unique(return_counts=True)
    order = uniq[counts.argsort(descending=True)]
    index = torch.zeros(int(labels.max()) + 1, dtype=torch.long)
    index[order] = torch.arange(len(order))
    cmap = plt.get_cmap("tab20", max(len(order), 2))
    ax[4].imshow(index[labels].numpy(), cmap=cmap, vmin=-0.5, vmax=max(len(order), 2) - 0.5, interpolation="nearest")
    handles = [Patch(color=cmap(i), label=_name(int(c), class_names)) for i, c in enumerate(order[:12])]
    ax[4].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax[4].set_title("(e) most probable label", fontsize=9)
    for a in ax:
        a.set_xticks([])
        a.set_yticks([])
        a.set_xlim(-0.5, W - 0.5)
        a.set_ylim(H - 0.5, -0.5)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _name(c: int, class_names: list[str]) -> str:
    return class_names[c] if c < len(class_names) else str(c)


def run(args: argparse.Namespace) -> int:
    from ..artifacts import markdown_table, write_result
    from ..occlusion import occlusion_map
    from ..train import resolve_device

    device = resolve_device(args.device)
    loaded = load(args, device)
    if not Path(args.image).is_file():
        raise FileNotFoundError(f"--image not found: {args.image}")
    image = loaded.preprocessing.load(args.image).to(device)
    t0 = time.perf_counter()
    occ = occlusion_map(loaded.model, image, window=args.window, stride=args.stride, fill=args.fill,
                        target=args.label, layer=args.layer, channel=args.channel, batch_size=args.batch_size,
                        incremental=not args.no_incremental)
    seconds = time.perf_counter() - t0
    proj01, box = _projection(loaded.model, image, occ, args.rule)
    names = loaded.class_names
    args.out.mkdir(parents=True, exist_ok=True)
    fig = render(loaded.preprocessing.denormalize(image.cpu()), occ, proj01, box, names, rule=args.rule,
                 title=f"{Path(args.image).name}: correct class {_name(occ.target, names)} "
                       f"(clean p = {float(occ.clean_probs[occ.target]):.3f})")
    fig.savefig(args.out / "occlusion.png", dpi=80)
    table = _label_table(occ, names)
    (args.out / "occlusion.md").write_text(f"### {table['title']}\n\n" + markdown_table(table["columns"], table["rows"]))
    data = occ.to_dict()
    data.update(class_names={str(k): v for k, v in label_names(occ.top_label, names).items()}, seconds=seconds,
                image=str(args.image))
    summary = (f"{occ.window}px grey square, stride {occ.stride}, {occ.target_prob.numel()} positions: "
               f"p({_name(occ.target, names)}) {float(occ.target_prob.min()):.3f}..{float(occ.target_prob.max()):.3f} "
               f"(clean {float(occ.clean_probs[occ.target]):.3f}); {occ.layer} map {occ.channel}; {seconds:.1f} s")
    write_result(args.out, "occlusion", title="Occlusion sensitivity (Fig. 7)", summary=summary,
                 params={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"},
                 figures=[{"path": "occlusion.png", "caption": summary, "group": Path(args.image).stem}],
                 tables=[table], data=data)
    print(summary)
    print(markdown_table(table["columns"], table["rows"]))
    print(f"wrote {args.out / 'result.json'}")
    return 0


def _projection(model: Any, image: torch.Tensor, occ: Any, rule: str = "deconvnet") -> tuple[torch.Tensor | None, Any]:
    """Panel (c): deconvnet projection of the map's strongest activation (None if unavailable)."""
    try:
        from ..deconv import project_max
        from ..viz import normalize_for_display

        proj = project_max(model, image[None], occ.layer, [occ.channel], rule=rule)
        if not proj.images.abs().max() > 0:  # e.g. guided/gradient through a unit clipped by ReLU6
            raise ValueError(f"the {rule} projection of {occ.layer} map {occ.channel} is exactly zero")
        return normalize_for_display(proj.images[0, 0]).cpu(), proj.boxes[0, 0].tolist()
    except (ImportError, ValueError, NotImplementedError) as exc:  # e.g. a model the deconvnet cannot walk
        import logging

        logging.getLogger(__name__).warning("no projection for panel (c): %s", exc)
        return None, None


def _label_table(occ: Any, names: list[str]) -> dict[str, Any]:
    labels, counts = occ.top_label.unique(return_counts=True)
    order = counts.argsort(descending=True)
    n = occ.top_label.numel()
    rows = [[_name(int(labels[i]), names), int(labels[i]), f"{int(counts[i]) / n:.1%}",
             f"{float(occ.probs[..., int(labels[i])].mean()):.3f}"] for i in order[:10]]
    return {"title": "Most probable label over occluder positions (Fig. 7e)",
            "columns": ["label", "class", "share of positions", "mean probability"], "rows": rows}
