"""The Fig. 5 figure of an invariance analysis: per transformation, example transformed images, the
feature distance per layer and P(class), one curve per image; the class is the true label when labels
were given, else the prediction for the untransformed image, and the panel title says which."""
from __future__ import annotations

from typing import Any

import torch

__all__ = ["example_params", "render_invariance"]


def render_invariance(
    curves: dict[str, Any], examples: dict[str, torch.Tensor], names: list[str], layers: list[str]
) -> Any:
    """Fig. 5 as a matplotlib Figure. ``examples[t]``: (K, 3, H, W) in [0, 1] (the first image transformed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from convlens.io.viz import make_grid

    units = {"translate": "vertical translation (pixels)", "scale": "scale factor", "rotate": "rotation (degrees)"}
    fig, ax = plt.subplots(len(curves), 2 + len(layers), figsize=(4.2 * (2 + len(layers)), 3.4 * len(curves)),
                           squeeze=False)
    for r, (t, c) in enumerate(curves.items()):
        strip = make_grid(examples[t], nrow=len(examples[t]), pad=2)
        ax[r, 0].imshow(strip.permute(1, 2, 0).numpy())
        ax[r, 0].set_axis_off()
        ax[r, 0].set_title(f"{t}: " + ", ".join(f"{v:g}" for v in example_params(c.params)), fontsize=9)
        for j, layer in enumerate(layers):
            for i, n in enumerate(names):
                ax[r, 1 + j].plot(c.params.numpy(), c.distances[layer][i].cpu().numpy(), marker=".", label=n)
            ax[r, 1 + j].set_title(f"{layer}: Euclidean distance", fontsize=9)
        for i, n in enumerate(names):
            ax[r, -1].plot(c.params.numpy(), c.probs[i].cpu().numpy(), marker=".", label=n)
        ax[r, -1].set_ylim(-0.02, 1.02)
        ax[r, -1].set_title("P(true label)" if c.labels_given else "P(predicted class)\nthe class predicted for "
                            "the untransformed image", fontsize=9)
        for a in ax[r, 1:]:
            a.set_xlabel(units[t], fontsize=8)
            a.grid(alpha=0.3)
    ax[0, -1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def example_params(params: torch.Tensor, k: int = 5) -> list[float]:
    idx = torch.linspace(0, len(params) - 1, min(k, len(params))).round().long()
    return [float(params[i]) for i in idx]
