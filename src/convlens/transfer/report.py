"""Tables, figures and ``result.json`` of the transfer protocol (Tables 4-7, Fig. 9) from a
:class:`convlens.transfer.probes.ProtocolResult`."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from convlens.io.artifacts import save_figure, write_text

__all__ = ["per_class_table", "plot_by_layer", "plot_vs_n", "protocol_tables", "write_transfer_outputs"]


def _fmt(mean: float, std: float) -> str:
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def protocol_tables(res: Any, *, title: str = "Mean per-class accuracy % (mean ± std over folds)",
                    scratch: Mapping[int, Sequence[float]] | None = None) -> list[dict[str, Any]]:
    """Table 7 layout: a row per (probe, layer), a column per training size (+ the scratch row)."""
    import numpy as np

    ns = sorted({n for (_, _, n) in res.scores})
    keys = list(dict.fromkeys((p, layer) for (layer, p, _) in res.scores))
    rows = [[f"{p} ({layer})", *(_fmt(*res.mean_std(layer, p, n)) if (layer, p, n) in res.scores else "-"
                                  for n in ns)] for p, layer in keys]
    if scratch:
        rows.append(["trained from scratch", *(_fmt(float(np.mean(scratch[n])), float(np.std(scratch[n])))
                                                if n in scratch else "-" for n in ns)])
    return [{"title": f"{title}, {res.folds} folds", "columns": ["probe (layer)", *(f"{n}/class" for n in ns)],
             "rows": rows}]


def per_class_table(res: Any, class_names: Sequence[str]) -> dict[str, Any]:
    """Table 6 style: per-class accuracy of the last layer, each probe, largest n (mean over folds)."""
    layer = list(dict.fromkeys(k[0] for k in res.scores))[-1]
    n = max(k[2] for k in res.scores)
    probes = [p for p in dict.fromkeys(k[1] for k in res.scores) if (layer, p, n) in res.scores]
    cols = ["class", *(f"{p} acc %" for p in probes)]
    rows = []
    k = min(len(res.per_class[(layer, p, n)]) for p in probes)  # classes up to the largest label seen
    for c in range(max(k, len(class_names))):
        name = class_names[c] if c < len(class_names) else str(c)
        vals = [float(res.per_class[(layer, p, n)][c]) if c < k else float("nan") for p in probes]
        rows.append([name, *("-" if v != v else f"{100 * v:.1f}" for v in vals)])
    return {"title": f"Per-class accuracy, {layer}, {n} training images/class (mean over folds)", "columns": cols,
            "rows": rows}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_vs_n(res: Any, out: Path, scratch: Mapping[int, Sequence[float]] | None = None) -> dict[str, str]:
    """accuracy_vs_n.png (Fig. 9 style): the last layer's accuracy per probe vs training images per class."""
    import numpy as np

    plt = _plt()
    layer = list(dict.fromkeys(k[0] for k in res.scores))[-1]
    ns = sorted({k[2] for k in res.scores})
    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=110)
    for p in dict.fromkeys(k[1] for k in res.scores):
        have = [n for n in ns if (layer, p, n) in res.scores]
        if not have:
            continue
        ms = np.array([res.mean_std(layer, p, n) for n in have]) * 100
        ax.errorbar(have, ms[:, 0], yerr=ms[:, 1], marker="o", capsize=3, label=f"{p} on {layer}")
    if scratch:
        sn = sorted(scratch)
        ax.errorbar(sn, [100 * np.mean(scratch[n]) for n in sn], yerr=[100 * np.std(scratch[n]) for n in sn],
                    marker="s", capsize=3, linestyle="--", label="trained from scratch")
    ax.set(xlabel="training images per class", ylabel="mean per-class accuracy %", ylim=(0, 100))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / "accuracy_vs_n.png")
    plt.close(fig)
    return {"path": "accuracy_vs_n.png", "group": "transfer",
            "caption": f"Accuracy vs training images per class (Fig. 9 style), {layer}, mean ± std over folds"}


def plot_by_layer(res: Any, out: Path) -> dict[str, str]:
    """accuracy_by_layer.png (Table 7 style): each probe's accuracy per layer at the largest n."""
    import numpy as np

    plt = _plt()
    layers = list(dict.fromkeys(k[0] for k in res.scores))
    n = max(k[2] for k in res.scores)
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=110)
    for p in dict.fromkeys(k[1] for k in res.scores):
        have = [i for i, layer in enumerate(layers) if (layer, p, n) in res.scores]
        ms = np.array([res.mean_std(layers[i], p, n) for i in have]) * 100
        ax.errorbar([i + 1 for i in have], ms[:, 0], yerr=ms[:, 1], marker="o", capsize=3, label=p)
    ax.set_xticks(range(1, len(layers) + 1), [f"{i}\n{layer}" for i, layer in enumerate(layers, 1)], fontsize=7)
    ax.set(ylabel=f"accuracy % ({n}/class)", ylim=(0, 100), title="Linear probes per layer (Table 7 style)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / "accuracy_by_layer.png")
    plt.close(fig)
    return {"path": "accuracy_by_layer.png", "group": "transfer",
            "caption": f"Probe accuracy per layer, {n} training images per class, mean ± std over folds"}


def write_transfer_outputs(out: Path, res: Any, *, curve: Any = None, class_names: Sequence[str] = (),
                           params: Mapping[str, Any] | None = None,
                           scratch: Mapping[int, Sequence[float]] | None = None,
                           duplicates: list[list[Any]] | None = None) -> Path:
    """result.json (kind transfer), transfer.md and the two PNGs. ``curve``: an extra protocol result
    (e.g. many n on the top layer) plotted as accuracy-vs-n instead of ``res``."""
    from convlens.io.artifacts import markdown_table, write_result

    out.mkdir(parents=True, exist_ok=True)
    tables = protocol_tables(res, scratch=scratch)
    if curve is not None:
        tables += protocol_tables(curve, title="Accuracy vs training images per class")
    if class_names:
        tables.append(per_class_table(res, class_names))
    if duplicates is not None:
        tables.append({"title": "Near-duplicates (normalized correlation of 32x32 grey images)",
                       "columns": ["image in other set", "image in dataset", "correlation"], "rows": duplicates})
    figures = [plot_vs_n(curve if curve is not None else res, out, scratch), plot_by_layer(res, out)]
    md = "".join(f"### {t['title']}\n\n{markdown_table(t['columns'], t['rows'])}\n" for t in tables)
    write_text(out / "transfer.md", md)
    best = max(res.scores, key=lambda k: float(res.scores[k].mean()))
    summary = (f"Linear probes on frozen features, {res.folds} folds: best {best[1]} on {best[0]} with "
               f"{best[2]}/class = {_fmt(*res.mean_std(*best))} % mean per-class accuracy")
    data = {"protocol": res.to_dict(), "curve": curve.to_dict() if curve is not None else None,
            "scratch": {str(k): list(v) for k, v in (scratch or {}).items()}, "duplicates": duplicates}
    return write_result(out, "transfer", title="Feature generalization: linear probes (Tables 4-7, Fig. 9)",
                        summary=summary, params=dict(params or {}), figures=figures, tables=tables, data=data)
