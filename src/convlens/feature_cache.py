"""A feature cache on disk: per layer, one ``.npz`` keyed by a hash of the model, the layer, the
dataset and the extraction settings, so that a second probe run (other probes, other fold sizes)
skips the forward passes. Used by ``convlens transfer``; callable from Python."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["cache_key", "cached_features", "file_fingerprint", "weights_fingerprint"]

log = logging.getLogger(__name__)


def file_fingerprint(path: str | os.PathLike[str] | None) -> str:
    """Cheap identity of a weights/checkpoint file: resolved path, size and mtime."""
    if path is None:
        return "none"
    p = Path(path).resolve()
    st = p.stat()
    return f"{p}:{st.st_size}:{int(st.st_mtime)}"


def weights_fingerprint(model: Any) -> str:
    """The model's identity by value: a hash of every ``state_dict`` entry's name, dtype, shape and bytes.

    Two models with equal weights (however they were loaded) share it; any changed number changes
    it. One pass over the weights (about 1 s per 100 M float32 parameters on a CPU).
    """
    import torch

    h = hashlib.blake2b(digest_size=16)
    for name, t in model.state_dict().items():
        if not isinstance(t, torch.Tensor):
            continue
        flat = t.detach().reshape(-1).cpu().contiguous()
        h.update(f"{name}|{flat.dtype}|{tuple(t.shape)}|".encode())
        if flat.numel():
            h.update(flat.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cache_key(model_id: str, layer: str, dataset_id: str, extra: Mapping[str, object]) -> str:
    blob = json.dumps({"model": model_id, "layer": layer, "dataset": dataset_id, **extra}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cached_features(extract: Callable[[list[str]], Any], layers: Sequence[str], cache_dir: Path, *,
                    model_id: str, dataset_id: str, extra: Mapping[str, object]) -> tuple[Any, dict[str, bool]]:
    """Load each layer's features from ``cache_dir`` (npz) or compute the missing ones in one pass.

    Returns:
        (:class:`convlens.transfer.Features`, {layer: came from the cache}).
    """
    import numpy as np
    import torch

    from .transfer import Features

    cache_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: cache_dir / f"{name.replace('/', '_')}-{cache_key(model_id, name, dataset_id, extra)}.npz"
             for name in layers}
    hit = {name: p.exists() for name, p in paths.items()}
    feats: dict[str, Any] = {}
    labels = indices = None
    for name in [n for n in layers if hit[n]]:
        with np.load(paths[name]) as z:
            feats[name] = torch.from_numpy(z["features"])
            labels, indices = torch.from_numpy(z["labels"]), torch.from_numpy(z["indices"])
    missing = [n for n in layers if not hit[n]]
    if missing:
        log.info("extracting %s (not cached)", ", ".join(missing))
        fresh = extract(missing)
        labels, indices = fresh.labels, fresh.indices
        for name in missing:
            feats[name] = fresh.features[name]
            tmp = paths[name].with_name(paths[name].stem + ".tmp.npz")
            np.savez(tmp, features=feats[name].numpy(), labels=labels.numpy(), indices=indices.numpy())
            os.replace(tmp, paths[name])
    assert labels is not None and indices is not None
    return Features({n: feats[n] for n in layers}, labels.long(), indices.long()), hit
