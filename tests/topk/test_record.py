"""The re-opened mining run's cached weights fingerprint."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from convlens.nets.fingerprint import weights_fingerprint
from convlens.topk.record import MinedSource


def test_weights_fingerprint_is_cached_until_a_weight_changes(monkeypatch) -> None:
    import convlens.nets.fingerprint as fp

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    source = MinedSource(Path("."), SimpleNamespace(model=model), None, [])
    calls = []
    monkeypatch.setattr(fp, "weights_fingerprint", lambda m: calls.append(1) or weights_fingerprint(m))
    first = source.weights()
    assert source.weights() == first == weights_fingerprint(model) and len(calls) == 1  # hashed once
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] += 1.0  # in place: the tensor's version moves
    second = source.weights()
    assert len(calls) == 2 and second != first and second == weights_fingerprint(model)
