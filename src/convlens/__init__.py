"""convlens: Zeiler & Fergus (2013), "Visualizing and Understanding Convolutional Networks", for PyTorch.

The public API is re-exported here lazily, so that ``import convlens.report`` (the static
report, which must not need torch) does not import torch.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    # model.py
    "LAYERS": "model", "ConvNet": "model", "ConvNetConfig": "model", "build_model": "model", "get_config": "model",
    # hooks.py
    "record_activations": "hooks", "capture": "hooks", "parse_unit": "hooks",
    # layers.py: names, defaults and receptive fields of any model's layers
    "LayerInfo": "layers", "list_layers": "layers", "default_layers": "layers", "resolve_layers": "layers",
    # data.py / checkpoint.py
    "Preprocessing": "data", "open_dataset": "data", "load_image": "data",
    "load_model": "checkpoint", "save_checkpoint": "checkpoint",
    # training (Sec. 3, Table 2)
    "TrainConfig": "train", "fit": "train", "renormalize_filters": "train", "evaluate": "evaluation",
    # deconvnet and receptive fields (Sec. 2.1, Fig. 1)
    "Projection": "deconv", "project_units": "deconv", "project_max": "deconv", "project_topk": "deconv",
    "sanity_check": "sanity", "receptive_fields": "receptive_field", "unit_box": "receptive_field",
    "axis_receptive_fields": "receptive_field",
    # top-9 and evolution (Fig. 2, Fig. 4)
    "TopKAccumulator": "topk", "TopActivations": "topk", "mine_top_activations": "mining", "unit_tiles": "tiles",
    "feature_evolution": "evolution",
    # occlusion, correspondence, invariance (Fig. 5, 7, 8, Table 1)
    "OcclusionMap": "occlusion", "occlusion_map": "occlusion", "Correspondence": "correspondence",
    "correspondence_score": "correspondence", "InvarianceCurves": "invariance", "invariance_curves": "invariance",
    # diagnostics, transfer (Fig. 6, Tables 4-7); the functions diagnose() and ablate() live in their modules
    "Diagnosis": "diagnose", "extract_features": "transfer", "fit_probe": "transfer", "evaluate_probes": "transfer",
    "caltech_folds": "transfer", "per_class_accuracy": "transfer", "find_duplicates": "transfer",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'convlens' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
