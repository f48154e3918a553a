"""Classification error as in the paper's Table 2: top-1/top-5, 10-crop and ensemble averaging.

Ten-crop and ensembles both average the *softmax* (not the logits, not votes) over the crops of an
image and over models; the loss reported is the negative log of that averaged probability of the
true class. Ensemble members that need different preprocessing (their own mean images) are run
separately with :func:`predict_log_proba` and combined with :func:`average_log_proba`.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from convlens.io.progress import progress_bar

__all__ = ["average_log_proba", "device_of", "evaluate", "predict_log_proba", "topk_correct", "topk_errors"]


def evaluate(
    model: nn.Module | Sequence[nn.Module], loader: Iterable, *, ten_crop: bool = False, progress: bool = False
) -> dict[str, float]:
    """Top-1/top-5 error and loss; 10-crop and ensembles average the softmax (Sec. 3, Table 2).

    Args:
        model: one model, or several (an ensemble: their softmax outputs are averaged).
        loader: yields ``(x, y, ...)`` with x ``(B, 3, H, W)``, or ``(B, K, 3, H, W)`` with
            ``ten_crop=True`` (K crops of each image, e.g. ``data.open_dataset(..., mode="tencrop")``).
        ten_crop: average the softmax over the K crops of each image.

    Returns:
        ``loss`` (mean negative log of the averaged probability of the true class), ``top1_err``,
        ``top5_err`` (fractions in [0, 1]) and ``images``. Each model's train/eval mode is restored.

    Example:
        >>> res = evaluate(model, DataLoader(TensorDataset(x, y), batch_size=64))
        >>> print(f"top-1 error {res['top1_err']:.1%}")
    """
    return topk_errors(*predict_log_proba(model, loader, ten_crop=ten_crop, progress=progress))


@torch.no_grad()
def predict_log_proba(
    model: nn.Module | Sequence[nn.Module], loader: Iterable, *, ten_crop: bool = False, progress: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """log of the softmax averaged over models and crops, ``(N, C)``, and the labels ``(N,)``, in loader order.

    Arguments as in :func:`evaluate`. Combine runs made with different preprocessing (ensemble
    members with their own mean images) with :func:`average_log_proba`.
    """
    models = [model] if isinstance(model, nn.Module) else list(model)
    if not models:
        raise ValueError("evaluate needs at least one model")
    modes = [m.training for m in models]
    device = device_of(models[0])
    out: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    try:
        for m in models:
            m.eval()
        for batch in progress_bar(loader, disable=not progress, unit="batch", leave=False):
            x, y = batch[0].to(device), batch[1].to(device)
            if len(y) == 0:  # every image of the batch was unreadable (logged by the dataset)
                continue
            out.append(_mean_log_softmax(models, x, ten_crop))  # (B, C)
            labels.append(y)
    finally:
        for m, mode in zip(models, modes, strict=False):
            m.train(mode)
    if not out:
        raise ValueError("evaluate: the loader yielded no (readable) images")
    return torch.cat(out), torch.cat(labels)


def average_log_proba(log_probas: Sequence[torch.Tensor]) -> torch.Tensor:
    """Ensemble: log of the mean of several models' probabilities, each given as ``(N, C)`` log-probabilities."""
    stacked = torch.stack(list(log_probas))  # (M, N, C)
    return torch.logsumexp(stacked, dim=0) - math.log(stacked.shape[0])


def topk_errors(log_proba: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """``loss`` (mean NLL), ``top1_err``, ``top5_err`` and ``images`` of ``(N, C)`` log-probabilities."""
    n = len(labels)
    top1, top5 = topk_correct(log_proba, labels, 5).tolist()
    loss = F.nll_loss(log_proba.float(), labels).item()
    return {"loss": loss, "top1_err": 1 - top1 / n, "top5_err": 1 - top5 / n, "images": float(n)}


def device_of(model: nn.Module) -> torch.device:
    """The device of a module's first parameter (or buffer); CPU for a module with neither."""
    tensors = [*model.parameters(), *model.buffers()][:1]
    return tensors[0].device if tensors else torch.device("cpu")


def _mean_log_softmax(models: list[nn.Module], x: torch.Tensor, ten_crop: bool) -> torch.Tensor:
    """log of the softmax averaged over models and crops, computed stably with logsumexp."""
    if ten_crop:
        if x.dim() != 5:
            raise ValueError(f"ten_crop expects batches of shape (B, K, 3, H, W), got {tuple(x.shape)}")
        b, k = x.shape[:2]
        x = x.flatten(0, 1)  # (B*K, 3, H, W)
    elif x.dim() != 4:
        raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(x.shape)}; pass ten_crop=True for crops")
    else:
        b, k = x.shape[0], 1
    logps = [F.log_softmax(m(x).float(), dim=1).view(b, k, -1) for m in models]  # each (B, K, C)
    stacked = torch.cat(logps, dim=1)  # (B, M*K, C)
    return torch.logsumexp(stacked, dim=1) - math.log(stacked.shape[1])


def topk_correct(logits: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """(top-1 correct, top-k correct) counts as a float64 tensor of 2."""
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices  # (B, k)
    hit = top == y[:, None]
    return torch.stack([hit[:, 0].sum(), hit.any(dim=1).sum()]).double()
