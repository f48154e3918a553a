"""Page assembly for the static report: one HTML file, sections in the paper's order.

Built with :class:`string.Template` and :func:`html.escape` only. Every PNG a section shows is
copied into ``report/assets/`` (mirroring its path in the run), so the report folder is
self-contained: it opens from disk, can be zipped and mailed, and links to nothing outside.
"""
from __future__ import annotations

import json
import math
import shutil
from datetime import datetime
from html import escape
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any
from urllib.parse import quote

from convlens.io.manifest import Result, Run, Table
from convlens.report.svg import line_chart

__all__ = ["SECTIONS", "render_page"]

# kind -> (section heading, where it is in the paper, what it shows when the result has no summary)
SECTIONS: dict[str, tuple[str, str, str]] = {
    "summary": ("Architecture", "Fig. 3", "Each layer's output shape and parameter count."),
    "mine": ("Top-9 activations per feature map", "Fig. 2",
             "For each feature map, the 9 strongest activations in the data set, projected back to pixels "
             "with the deconvnet, next to the image patches that caused them."),
    "evolution": ("Feature evolution during training", "Fig. 4",
                  "The strongest activation of a few maps per layer, projected, at successive epochs."),
    "invariance": ("Feature invariance", "Fig. 5",
                   "Distance between the features of an image and its translated, scaled and rotated "
                   "versions, per layer, and the probability of the image's class (true or predicted)."),
    "diagnose": ("Architecture selection", "Fig. 6", "Layer-1 filters and features, compared across models."),
    "occlusion": ("Occlusion sensitivity", "Fig. 7",
                  "A grey square slides over the image; maps show the feature activity, the correct-class "
                  "probability and the most probable label as a function of the square's position."),
    "correspond": ("Correspondence analysis", "Table 1, Fig. 8",
                   "How consistently masking the same object part changes the features, vs random masks."),
    "ablate": ("Varying the architecture", "Tables 2-3", "Error of variants with removed or resized layers."),
    "transfer": ("Feature generalization", "Tables 4-7, Fig. 9",
                 "Linear classifiers trained on each layer's features of another data set."),
    "project": ("Deconvnet projections", "Fig. 1", "Single units projected back to pixel space."),
    "featvis": ("Feature visualization by optimization", "Olah et al. 2017",
                "Images optimized to excite each unit, with their activation relative to the unit's strongest "
                "mined image; the top-9 remain the primary view."),
}
_CONFIG_KEYS = ("arch", "dataset", "epochs", "batch_size", "lr", "momentum", "weight_decay", "init",
                "clip_radius", "limit_train", "limit_val", "seed", "device")


def _template(name: str) -> str:
    return resources.files("convlens.report").joinpath("templates", name).read_text(encoding="utf-8")


class _Assets:
    """Copies files into ``out/assets`` on first use and returns their URL relative to index.html."""

    def __init__(self, root: Path, out: Path) -> None:
        self.root, self.out = root, out
        self.done: dict[Path, str] = {}

    def url(self, src: Path) -> str:
        if src not in self.done:
            try:
                rel = src.relative_to(self.root)
            except ValueError:
                rel = Path("external") / f"{abs(hash(src)) % 10**8}_{src.name}"
            dst = self.out / "assets" / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if (not dst.exists() or dst.stat().st_mtime < src.stat().st_mtime
                    or dst.stat().st_size != src.stat().st_size):
                shutil.copy2(src, dst)
            self.done[src] = quote(("assets" / rel).as_posix())
        return self.done[src]


def _warn(msg: str) -> str:
    return f'<p class="warn">&#9888; {escape(msg)}</p>'


def _is_num(s: str) -> bool:
    try:
        float(s.replace("%", "").replace(",", "").replace("±", " ").split()[0])
        return True
    except (ValueError, IndexError):
        return s.strip() in ("-", "nan", "")


def _table(t: Table) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in t.columns)
    width = max([len(t.columns)] + [len(r) for r in t.rows])
    numeric = [all(_is_num(r[j]) for r in t.rows if j < len(r)) and any(j < len(r) for r in t.rows)
               for j in range(width)]  # right-align a column only if all its cells are numbers
    body = "".join(
        "<tr>" + "".join(f'<td{" class=num" if numeric[j] else ""}>{escape(c)}</td>' for j, c in enumerate(row))
        + "</tr>" for row in t.rows
    )
    title = f'<p class="tt">{escape(t.title)}</p>' if t.title else ""
    return f'<div class="table">{title}<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _params(params: dict[str, Any]) -> str:
    if not params:
        return ""
    text = ", ".join(f"{k}={json.dumps(v, default=str)}" for k, v in params.items())
    return f'<details class="params"><summary>parameters</summary><code>{escape(text)}</code></details>'


def _figures(r: Result, assets: _Assets) -> str:
    groups: dict[str, list[str]] = {}
    for f in r.figures:
        cap = f"<figcaption>{escape(f.caption)}</figcaption>" if f.caption else ""
        img = f'<img src="{assets.url(f.path)}" alt="{escape(f.caption or f.path.name)}">'
        groups.setdefault(f.group, []).append(f"<figure>{img}{cap}</figure>")
    named = len(groups) > 1 or not ({"", r.kind} & set(groups))  # no heading that only repeats the kind
    html = "".join(
        f'<div class="group">{f"<h4>{escape(g)}</h4>" if g and named else ""}'
        f'<div class="figs">{"".join(items)}</div></div>'
        for g, items in groups.items()
    )
    return f'<div class="groups">{html}</div>' if html else ""


def _mine_from_data(r: Result, assets: _Assets, maps_per_layer: int = 8) -> str:
    """Fig. 2 from ``data`` when mine wrote no grid figures: per map, its projections then patches."""
    out = []
    for layer, info in (r.data.get("layers") or {}).items():
        rows = []
        for m, acts in list((info.get("maps") or {}).items())[:maps_per_layer]:
            cells = []
            for kind in ("projection", "patch"):
                for a in acts if isinstance(acts, list) else []:
                    src = a.get(kind) if isinstance(a, dict) else None
                    path = (r.dir / src).resolve() if isinstance(src, str) else None
                    if path and path.is_relative_to(r.dir.resolve()) and path.is_file():
                        cells.append(f'<img src="{assets.url(path)}" alt="{escape(layer)} map {escape(m)} {kind}">')
            rows.append(f'<div class="maprow"><span class="lbl">map {escape(str(m))}</span>{"".join(cells)}</div>')
        out.append(f'<div class="group"><h4>{escape(layer)}</h4><div class="maps">{"".join(rows)}</div></div>')
    return "".join(out)


def _result(r: Result, assets: _Assets, several: bool) -> str:
    parts = [f"<h3>{escape(r.title)}</h3>" if several else ""]
    parts.append(f'<p class="what">{escape(r.summary or SECTIONS.get(r.kind, ("", "", ""))[2])}</p>')
    parts.append(_params(r.params))
    parts += [_warn(w) for w in r.warnings]
    parts.append(_figures(r, assets))
    if r.kind == "mine" and not r.figures:
        parts.append(_mine_from_data(r, assets))
    parts += [_table(t) for t in r.tables]
    return f'<div class="result" id="{escape(r.name)}">{"".join(parts)}</div>'


def _section(sid: str, heading: str, ref: str, body: str) -> str:
    ref_html = f' <span class="ref">({escape(ref)})</span>' if ref else ""
    return f'<section id="{escape(sid)}"><h2>{escape(heading)}{ref_html}</h2>{body}</section>'


def _overview(run: Run) -> str:
    """Sec. 3: the training configuration, the curves of metrics.csv, and the training runs in the folder."""
    parts = []
    if run.config:
        cfg = run.config
        keys = [k for k in _CONFIG_KEYS if k in cfg] or [k for k, v in cfg.items() if not isinstance(v, (dict, list))]
        items = "".join(f"<span><b>{escape(k)}</b> {escape(json.dumps(cfg[k], default=str).strip(chr(34)))}</span>"
                        for k in keys)
        parts.append(f'<p class="tt">Training configuration (config.json)</p><p class="cfg">{items}</p>')
    trains = run.of_kind("train")
    main = next((r for r in trains if r.name == ""), None)
    if main is not None:
        parts.append(f'<p class="what">{escape(main.summary)}</p>')
        parts += [_warn(w) for w in main.warnings]
    if run.metrics:
        parts.append(_curves(run.metrics))
    if main is not None and main.tables:
        parts.append("<details><summary>per-epoch metrics</summary>"
                     + "".join(_table(t) for t in main.tables) + "</details>")
    others = [r for r in trains if r is not main]
    if others:
        items = "".join(f"<li><code>{escape(r.name)}</code>: {escape(r.summary)}</li>" for r in others)
        parts.append(f'<p class="what">Other training runs in this folder:</p><ul>{items}</ul>')
    if run.checkpoints:
        names = ", ".join(p.name for p in run.checkpoints)
        parts.append(f'<p class="what">Checkpoints: {escape(names)}</p>')
    return _section("training", "Training", "Sec. 3", "".join(parts)) if parts else ""


def _curves(metrics: tuple[dict[str, float], ...]) -> str:
    def series(key: str) -> list[tuple[float, float]]:
        return [(m.get("epoch", i + 1), m.get(key, math.nan)) for i, m in enumerate(metrics)]

    loss = line_chart({"train loss": series("train_loss"), "val loss": series("val_loss")}, title="loss")
    err = line_chart({k.replace("_err", "").replace("_", " "): series(k) for k in
                      ("train_top1_err", "val_top1_err", "train_top5_err", "val_top5_err")},
                     title="top-1 / top-5 error")
    last = metrics[-1]
    cols = [k for k in ("epoch", "train_loss", "val_loss", "train_top1_err", "val_top1_err", "val_top5_err",
                        "seconds") if k in last]
    table = _table(Table("Last epoch", tuple(cols), ((tuple(f"{last[c]:.4g}" for c in cols)),)))
    what = ('<p class="what">Training curves from metrics.csv (one point per epoch; dashed: training set, '
            'solid: validation set).</p>')
    return f'{what}<div class="charts">{loss}{err}</div>{table}'


def render_page(run: Run, out: Path, *, version: str = "") -> str:
    """The full ``index.html`` text for ``run``; copies the PNGs it shows into ``out/assets``."""
    assets = _Assets(run.root, out)
    sections, nav = [], []

    def add(kind: str) -> None:
        results = run.of_kind(kind)
        heading, ref, _ = SECTIONS.get(kind, (results[0].title, "", ""))
        body = "".join(_result(r, assets, several=len(results) > 1 or kind in SECTIONS) for r in results)
        sections.append(_section(kind, heading, ref, body))
        nav.append(f'<a href="#{escape(kind)}">{escape(heading)}</a>')

    kinds = [k for k in dict.fromkeys(r.kind for r in run.results) if k != "train"]
    if "summary" in kinds:
        add("summary")
    training = _overview(run)
    if training:
        sections.append(training)
        nav.append('<a href="#training">Training</a>')
    for kind in kinds:
        if kind != "summary":
            add(kind)
    if not [k for k in kinds if k != "summary"]:
        sections.append(_section("none", "Analyses", "", '<p class="what">No analysis results in this run yet '
                                 "(run e.g. <code>convlens mine --out RUN/mine</code>).</p>"))
    cfg = run.config or {}
    arch, dataset = cfg.get("arch", ""), cfg.get("dataset", "")
    subtitle = " · ".join(str(v) for v in (arch, dataset, f"{len(run.results)} results") if v)
    return Template(_template("page.html")).substitute(
        title=escape(f"convlens report: {run.root.name}"), subtitle=escape(subtitle),
        css=_template("style.css"), nav=" ".join(nav), warnings="".join(_warn(w) for w in run.warnings),
        body="\n".join(s for s in sections if s), version=escape(version),
        generated=datetime.now().strftime("%Y-%m-%d %H:%M"), run=escape(str(run.root)),
    )
