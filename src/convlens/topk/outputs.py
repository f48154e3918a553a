"""What a mined run writes (Fig. 2): ``convlens mine`` and ``convlens merge`` call these, and so can Python.

:func:`mine_run` mines a dataset (resumably) and writes the whole run; :func:`write_mine_outputs`
writes the run from mined top-k (the projections, resumably; the labelled Fig. 2 sheets
``<layer>_grid.png``, ``<layer>_grid_2.png`` ...; ``units/<layer>/...``; ``class_means.npz``;
``topk.pt``; ``result.json``). Both read the run's settings from a mapping with the keys of
``convlens mine``'s flags (:data:`MINE_SETTINGS` gives their defaults), so the CLI, ``merge`` (the
shards' recorded settings) and a Python user write the same files.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from convlens.topk.accumulator import TopActivations

__all__ = ["MINE_SETTINGS", "mine_run", "write_merged_run", "write_mine_outputs"]

# the settings keys of a mined run and their defaults (those of ``convlens mine``); ``dataset`` has none
MINE_SETTINGS: dict[str, Any] = {
    "checkpoint": None, "arch": None, "weights": None, "normalize": None, "input_size": None, "classes": None,
    "dataset": None, "data_dir": None, "split": "test", "limit": None, "batch_size": 64, "workers": 2,
    "seed": 0, "k": 9, "per_image": 1, "rule": "auto", "maps": 16, "maps_per_sheet": 16, "project": "all",
    "save_every": 50,
}


def _settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    missing = [k for k in ("dataset",) if settings.get(k) is None]
    if missing:
        raise ValueError(f"settings need {', '.join(missing)} (the dataset mined, as given to 'convlens mine')")
    return {**MINE_SETTINGS, **settings}


def mine_run(loaded: Any, ds: Any, layers: list[str], out: str | Path, settings: Mapping[str, Any], *,
             device: torch.device | str = "cpu", shard: tuple[int, int] | None = None, main: bool = True) -> str:
    """Mine ``ds`` through ``loaded.model`` (resumable: ``OUT/mine.state``) and write the run.

    Args:
        loaded: a :class:`convlens.nets.loading.Loaded` (model on ``device``, preprocessing, class names).
        ds: the dataset (images in the model's preprocessing; ``classes`` and ``describe`` are used).
        layers: module paths or layer names to mine.
        out: the run folder (created).
        settings: the run's settings (keys of :data:`MINE_SETTINGS`; absent keys take its defaults);
            with ``shard`` they are recorded in ``shard.json`` for ``convlens merge``.
        device: where the model is (pinned memory on CUDA).
        shard: ``(I, N)``: mine only the I-th of N contiguous parts and write ``shard.json``, no figures.
        main: False on the non-zero ranks of a ``torchrun`` run (they mine their part and write nothing).

    Returns:
        What to tell the user: the path of ``result.json``, the shard's one line, or "" (not ``main``).

    Example:
        >>> loaded = load_model("torchvision:mobilenet_v2", weights="w.pt")
        >>> ds = open_dataset("images/", transform=loaded.preprocessing.eval_transform())
        >>> mine_run(loaded, ds, ["features.13"], "runs/mine", {**MINE_SETTINGS, "dataset": "images/"})
    """
    from torch.utils.data import DataLoader

    from convlens.images.data import collate_skip
    from convlens.nets.fingerprint import weights_fingerprint
    from convlens.topk.acttable import write_image_names
    from convlens.topk.mining import mine_top_activations
    from convlens.topk.shards import shard_range, write_shard_info

    s = {**_settings(settings)}
    out, batch = Path(out), s["batch_size"]
    part = shard_range(len(ds), *shard, batch) if shard else None
    if part is not None and not len(part):
        raise ValueError(f"--shard {shard[0]}/{shard[1]}: this part holds no images ({len(ds)} images make "  # type: ignore[index]
                         f"{-(-len(ds) // batch)} batches); use at most {-(-len(ds) // batch)} parts")
    loader = DataLoader(ds, batch_size=batch, shuffle=False, num_workers=s["workers"], sampler=part,
                        collate_fn=collate_skip, pin_memory=torch.device(device).type == "cuda")
    out.mkdir(parents=True, exist_ok=True)
    spec = s["checkpoint"] or f"{s['arch']}:{s['weights']}"
    s["weights_hash"] = weights_fingerprint(loaded.model)  # the model by value: once per run
    key = (f"{spec}@{s['weights_hash']}|{s['dataset']}|{s['data_dir']}|{s['split']}|{s['limit']}|{s['normalize']}|"
           f"{s['input_size']}|{','.join(layers)}")
    tops = mine_top_activations(loaded.model, loader, layers, k=s["k"], per_image=s["per_image"],
                                state_path=out / "mine.state", save_every=s["save_every"],
                                state_key=key + (f"|shard {shard[0]}/{shard[1]}" if shard else ""),
                                progress=True, tie_seed=s["seed"], num_classes=len(ds.classes) or None,
                                table=out / "acts")
    if not main:
        return ""
    write_image_names(out / "acts", ds)
    if shard:
        write_shard_info(out, shard, {**settings, "weights_hash": s["weights_hash"],
                                      "num_classes": len(ds.classes) or None}, key, len(ds))
        return (f"shard {shard[0]}/{shard[1]}: {len(part or ())} images mined into {out}; "  # type: ignore[arg-type]
                "merge all parts with 'convlens merge --out RUN SHARD...'")
    write_mine_outputs(out, loaded, ds, tops, s)
    return str(out / "result.json")


def write_merged_run(out: str | Path, loaded: Any, ds: Any, merged: Any) -> Path:
    """Write the run merged from shards (:func:`convlens.topk.shards.merge_shards`) as one process would have.

    Args:
        out: the merged run's folder (``merge_shards`` wrote its state and activation table there).
        loaded: the model opened from ``merged.settings``; ds: the dataset opened from them.
        merged: the :class:`convlens.topk.shards.MergedShards`.

    Returns:
        The path of ``result.json``.

    Example:
        >>> merged = merge_shards("runs/m", ["runs/m.part0", "runs/m.part1"])
        >>> write_merged_run("runs/m", loaded, ds, merged)  # loaded, ds opened from merged.settings
    """
    from convlens.topk.acttable import write_image_names

    if merged.table is not None:
        write_image_names(Path(out) / "acts", ds)
    return write_mine_outputs(out, loaded, ds, merged.tops, merged.settings)


def write_mine_outputs(out: str | Path, loaded: Any, ds: Any, tops: dict[str, TopActivations],
                       settings: Mapping[str, Any]) -> Path:
    """Write a mined run: ``topk.pt``, the projections (resumable), the labelled sheets,
    ``class_means.npz`` and ``result.json`` (kind ``mine``).

    Args:
        out: the run folder.
        loaded: the model that was mined (:class:`convlens.nets.loading.Loaded`).
        ds: the dataset that was mined (the top-k images are re-read by index).
        tops: per layer the mined :class:`convlens.topk.accumulator.TopActivations`.
        settings: see :func:`mine_run` (``weights_hash``, when given, keys the reusable projections).

    Returns:
        The path of ``result.json``.

    Example:
        >>> merged = merge_shards("runs/m", ["runs/m.part0", "runs/m.part1"])
        >>> write_mine_outputs("runs/m", loaded, ds, merged.tops, merged.settings)
    """
    from convlens.io.artifacts import atomic_write, write_result
    from convlens.topk.record import mine_source

    s, out = _settings(settings), Path(out)
    atomic_write(out / "topk.pt", lambda f: torch.save({n: t.to_dict() for n, t in tops.items()}, f), binary=True)
    figures, rows, layers_data, names = _project_layers(out, loaded, ds, tops, s)
    _save_class_means(out, tops)
    first, k, per_image = next(iter(tops.values())), s["k"], s["per_image"]
    source = mine_source(checkpoint=s["checkpoint"], arch=s["arch"], weights=s["weights"], normalize=s["normalize"],
                         input_size=s["input_size"], classes=s["classes"], dataset=s["dataset"],
                         data_dir=s["data_dir"], split=s["split"], limit=s["limit"])
    provenance = {"preprocessing": loaded.provenance.to_dict() if loaded.provenance is not None else None}
    return write_result(
        out, "mine", title=f"Top-{k} activations per feature map (Fig. 2)",
        summary=f"Strongest activation of each map in each of {first.num_images} {s['split']} images "
                f"({first.num_skipped} unreadable skipped), top {k} per map "
                f"({'one per image' if per_image == 1 else f'up to {per_image} per image'}), projected "
                f"({', '.join(n + ': ' + d['rule'] for n, d in layers_data.items())}) beside the receptive-field "
                "patches. Clipped activations (ReLU6) are ranked by their pre-clip value; remaining ties in a "
                f"seeded random order (seed {s['seed']}).",
        params={"checkpoint": s["checkpoint"], "arch": s["arch"] or loaded.arch, "weights": s["weights"],
                "dataset": s["dataset"], "split": s["split"], "layers": list(tops), "k": k,
                "per_image": s["per_image"], "maps": s["maps"], "limit": s["limit"], "seed": s["seed"],
                "project": s["project"], "rule": s["rule"], "source": source} | provenance,
        figures=figures,
        tables=[{"title": "Mined activations per layer",
                 "columns": ["layer", "maps", "rule", "mean top-1 value", f"mean top-{k} value",
                             "dead maps (top-1 = 0)", "saturated maps (top-1 at the clip)",
                             f"maps with all top-{k} at the clip"],
                 "rows": rows}],
        data={"layers": layers_data, "skipped": first.num_skipped, "images": first.num_images,
              "class_names": names, "class_means": "class_means.npz", "input_size": loaded.input_size},
    )


def _shown_maps(tops: dict[str, TopActivations], maps: int | str, seed: int) -> dict[str, list[int]]:
    """Per layer the maps shown in the figures: all, or ``maps`` drawn at random (seeded)."""
    gen = torch.Generator().manual_seed(seed)
    shown = {}
    for layer, top in tops.items():
        c = top.values.shape[0]
        pick = range(c) if maps == "all" else torch.randperm(c, generator=gen)[:min(int(maps), c)].tolist()
        shown[layer] = sorted(pick)
    return shown


def _project_layers(out: Path, loaded: Any, ds: Any, tops: dict[str, TopActivations],
                    s: dict[str, Any]) -> tuple[list[dict[str, Any]], list[list[Any]], dict[str, Any], list[str]]:
    """Project every layer's maps (as ``s["project"]`` says), save the sheets; (figures, table rows,
    per-layer ``data``, class names)."""
    from convlens.io.artifacts import save_png
    from convlens.io.progress import progress_bar
    from convlens.topk.units import display_class_names, layer_sheets, map_entries, project_mined

    names = display_class_names(getattr(ds, "classes", []), loaded.class_names)
    shown = _shown_maps(tops, s["maps"], s["seed"])
    k = next(iter(tops.values())).values.shape[1]
    todo = {n: list(range(t.values.shape[0])) if s["project"] == "all" else shown[n] if s["project"] == "grid"
            else [] for n, t in tops.items()}
    describe = getattr(ds, "describe", None)
    figures, rows, layers_data = [], [], {}
    per_sheet = s["maps_per_sheet"]
    total = sum(len(m) * k for m in todo.values())
    with progress_bar(total=total, unit="unit", desc="projecting", dynamic_ncols=True, disable=not total) as bar:
        for layer, top in tops.items():
            c = top.values.shape[0]
            done = project_mined(loaded.model, ds, top, out, maps=todo[layer], rule=s["rule"],
                                 to_pixels=loaded.preprocessing.denormalize, class_names=names, progress=bar,
                                 weights=s.get("weights_hash"))
            sat = [int(m) for m in torch.nonzero(top.saturated).flatten().tolist()]
            bar.write(f"{layer}: rule {done.rule} ({done.reason})" + (f"; {len(sat)}/{c} maps saturate at "
                      f"{top.ceiling:g}: ranked by their pre-clip value" if top.ceiling is not None else "")
                      + (f"; {done.reused} maps already done" if done.reused else ""))
            sheets = layer_sheets(out, layer, done.entries, shown[layer], rule=done.rule, saturated=sat,
                                  maps_per_sheet=per_sheet) if s["project"] != "none" else []
            for i, sheet in enumerate(sheets):
                path = f"{layer}_grid.png" if i == 0 else f"{layer}_grid_{i + 1}.png"
                save_png(sheet, out / path)
                part = shown[layer][i * per_sheet:(i + 1) * per_sheet]
                figures.append({"path": path, "group": layer,
                                "caption": f"{layer}: top-{k} activations of maps {', '.join(map(str, part))}; left: "
                                           f"{done.rule} projections (activation), right: image patches (class)"})
            # every map: the projected ones with their PNG paths, the others without (projected on demand)
            entries = {str(m): done.entries[m] if m in done.entries
                       else map_entries(top, m, names, describe, paths=False) for m in range(c)}
            all_k = int((top.values >= top.ceiling).all(1).sum()) if top.ceiling is not None else 0
            rows.append([layer, c, done.rule, f"{float(top.values[:, 0].mean()):.4g}",
                         f"{float(top.values[:, -1].mean()):.4g}", int((top.values[:, 0] <= 0).sum()), len(sat), all_k])
            layers_data[layer] = {"num_maps": c, "rule": done.rule, "rule_reason": done.reason, "ceiling": top.ceiling,
                                  "saturated_maps": sat, "shown_maps": shown[layer], "maps": entries}
    return figures, rows, layers_data, names


def _save_class_means(out: Path, tops: dict[str, TopActivations]) -> None:
    """``class_means.npz``: per layer a float32 (maps, classes) array, and ``__counts__`` (classes,) int64."""
    import numpy as np

    from convlens.io.artifacts import atomic_write

    arrays: dict[str, Any] = {n: t.class_means.numpy().astype(np.float32) for n, t in tops.items()
                              if t.class_means is not None}
    counts = next((t.class_counts for t in tops.values() if t.class_counts is not None), None)
    if counts is not None:
        arrays["__counts__"] = counts.numpy().astype(np.int64)
    atomic_write(out / "class_means.npz", lambda f: np.savez(f, **arrays), binary=True)
