"""convlens: Zeiler & Fergus (2013), "Visualizing and Understanding Convolutional Networks", for PyTorch.

The public API is re-exported here lazily, so that ``import convlens.report`` (the static
report, which must not need torch) does not import torch.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    # the convnets of the paper (Fig. 3) and any model
    "nets.convnet": ("LAYERS", "ConvNet", "ConvNetConfig", "build_model", "get_config"),
    "nets.loading": ("load_model",),
    "nets.checkpoint": ("save_checkpoint",),
    # capture, layer names, receptive fields of any model's layers
    "core.capture": ("record_activations", "capture", "parse_unit"),
    "core.layers": ("LayerInfo", "list_layers", "default_layers", "resolve_layers"),
    "core.receptive_field": ("receptive_fields", "unit_box", "axis_receptive_fields"),
    "images.data": ("Preprocessing", "open_dataset", "load_image"),
    # training (Sec. 3, Table 2)
    "training.recipe": ("TrainConfig", "fit", "renormalize_filters"),
    "training.evaluation": ("evaluate",),
    # deconvnet (Sec. 2.1, Fig. 1)
    "deconv.project": ("Projection", "project_units", "project_max", "project_topk"),
    "deconv.sanity": ("sanity_check",),
    # top-9 and evolution (Fig. 2, Fig. 4)
    "topk.accumulator": ("TopKAccumulator", "TopActivations"),
    "topk.mining": ("mine_top_activations",),
    "topk.tiles": ("unit_tiles",),
    "evolution.analysis": ("feature_evolution",),
    # occlusion, correspondence, invariance (Fig. 5, 7, 8, Table 1)
    "occlusion.maps": ("OcclusionMap", "occlusion_map"),
    "correspondence.analysis": ("Correspondence", "correspondence_score"),
    "invariance.analysis": ("InvarianceCurves", "invariance_curves"),
    # diagnostics, transfer (Fig. 6, Tables 4-7); the functions diagnose() and ablate() live in their modules
    "diagnose.analysis": ("Diagnosis",),
    "transfer.probes": ("extract_features", "fit_probe", "evaluate_probes", "caltech_folds", "per_class_accuracy",
                        "find_duplicates"),
}
_EXPORTS = {name: module for module, names in _PUBLIC.items() for name in names}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'convlens' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
