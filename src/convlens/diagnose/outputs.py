"""What ``convlens diagnose`` writes (Fig. 6 as numbers), callable from Python.

:func:`write_diagnosis` diagnoses one model, or two side by side, and writes ``diagnose.md`` (the
comparison table), per model ``<tag>_conv1_filters.png``, ``<tag>_conv1_filters_shared.png`` and
``<tag>_layer2_projections.png`` (:func:`convlens.diagnose.figures.diagnosis_figures`), and
``result.json`` (kind ``diagnose``).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["DiagnoseSettings", "write_diagnosis"]


@dataclasses.dataclass(frozen=True)
class DiagnoseSettings:
    """Layer-2 ``channels`` projected, the dominance flag ``threshold`` (max RMS / median RMS) and
    ``dead_eps`` (a filter is dead below this fraction of positive activations)."""

    channels: int = 16
    threshold: float = 3.0
    dead_eps: float = 1e-3


def _short(spec: str) -> str:
    """RUN of RUN/checkpoints/last.pt; the spec itself otherwise."""
    p = Path(spec)
    return p.parent.parent.name if p.suffix and p.parent.name == "checkpoints" else spec


def _provenance(loaded: Any) -> Any:
    return loaded.provenance.to_dict() if loaded.provenance is not None else None


def write_diagnosis(out: str | Path, models: Sequence[tuple[Any, torch.Tensor, str]],
                    settings: DiagnoseSettings = DiagnoseSettings(),
                    params: Mapping[str, Any] | None = None) -> list[str]:
    """Diagnose one or two models (Fig. 6) and write the table, the figures and ``result.json``.

    Args:
        out: output folder (created).
        models: one or two ``(loaded, images, spec)``: a :class:`convlens.nets.loading.Loaded`, its
            sample (N, 3, H, W) in its own preprocessing on its device, and how it was named.
        settings: see :class:`DiagnoseSettings`.
        params: recorded first in ``result.json`` ``params`` (e.g. the dataset flags).

    Returns:
        The lines to show the user (the table, the file written).

    Example:
        >>> a = load_model("runs/zf/checkpoints/last.pt")
        >>> write_diagnosis("out/diag", [(a, images, "runs/zf/checkpoints/last.pt")])
    """
    from convlens.diagnose.analysis import comparison_table, diagnose
    from convlens.diagnose.figures import diagnosis_figures
    from convlens.io.artifacts import markdown_table, write_result, write_text

    s, out = settings, Path(out)
    diags = [diagnose(loaded.model, images, channels=s.channels, dominance_threshold=s.threshold,
                      dead_eps=s.dead_eps, name=loaded.arch) for loaded, images, _ in models]
    tags = ["a", "b"][: len(diags)]
    names = [f"{tag}: {d.name} ({_short(m[2])})" for tag, d, m in zip(tags, diags, models, strict=False)]
    cols, rows = comparison_table(diags[0], diags[1] if len(diags) > 1 else None, names=names)
    out.mkdir(parents=True, exist_ok=True)
    figures = [f for tag, d in zip(tags, diags, strict=False) for f in diagnosis_figures(d, tag, out)]
    table = {"title": "Fig. 6 diagnostics" + (" side by side" if len(diags) > 1 else ""), "columns": cols, "rows": rows}
    write_text(out / "diagnose.md", f"### {table['title']}\n\n" + markdown_table(cols, rows))
    main = dataclasses.replace(diags[0], compare=diags[1]) if len(diags) > 1 else diags[0]
    summary = "; ".join(
        f"{n.split(' (')[0]}: dominance {x['RMS max / median (dominance)']:.2f}, mid-freq share "
        f"{x['layer-1 energy mid freq']:.2f}, layer-2 grid energy {x['layer-2 aliasing (grid energy)']:.4f}"
        for n, x in zip(names, [d.metrics() for d in diags], strict=False))
    record = {**(params or {}), "channels": s.channels, "threshold": s.threshold, "dead_eps": s.dead_eps,
              "layers": list(diags[0].layer_names), "preprocessing": _provenance(models[0][0])}
    if len(models) > 1:
        record["compare_preprocessing"] = _provenance(models[1][0])
    write_result(out, "diagnose", title="Architecture diagnostics (Fig. 6)", summary=summary, params=record,
                 figures=figures, tables=[table], data=main.to_dict())
    return [markdown_table(cols, rows), f"wrote {out / 'result.json'}"]
