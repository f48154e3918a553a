"""The figure of :func:`convlens.training.ablate.ablate`: train and val errors per variant (Tables 2-3)."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_errors(res: Any, out: Path) -> dict[str, str]:
    """Bar chart of the variants' train/val errors (``OUT/errors.png``); returns its figure entry."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from convlens.io.artifacts import save_figure

    names = [r.variant for r in res.rows]
    x = range(len(names))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(names) + 1.5), 3.4), dpi=110)
    ax.bar([i - 0.2 for i in x], [100 * r.val_top1_err for r in res.rows], 0.4, label="val top-1")
    ax.bar([i + 0.2 for i in x], [100 * r.val_top5_err for r in res.rows], 0.4, label="val top-5")
    ax.plot(list(x), [100 * r.train_top1_err for r in res.rows], "k_", markersize=18, label="train top-1")
    ax.set_xticks(list(x), names, rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="error %", title=f"Ablations of {res.params['base']} ({res.params['epochs']} epochs)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / "errors.png")
    plt.close(fig)
    return {"path": "errors.png", "group": "ablate", "caption": "Train top-1 and val top-1/top-5 error per variant"}
