"""Cross-entropy with optional class weights and label smoothing, safe for AMP logits."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtl_train.errors import ConfigError


def class_weight_buffer(class_weights: list[float] | None) -> Tensor | None:
    """``loss.class_weights`` as a float32 tensor, after checking every weight is finite and > 0."""
    if class_weights is None:
        return None
    weights = [float(w) for w in class_weights]
    if not weights or not all(math.isfinite(w) and w > 0 for w in weights):
        raise ConfigError(f"loss.class_weights must be a non-empty list of positive numbers, got {class_weights}")
    return torch.tensor(weights, dtype=torch.float32)


def check_class_count(weights: Tensor | None, logits: Tensor) -> None:
    """Raise ConfigError when ``loss.class_weights`` does not have one entry per class (dim 1)."""
    if weights is not None and logits.ndim >= 2 and weights.numel() != logits.shape[1]:
        raise ConfigError(
            f"loss.class_weights has {weights.numel()} entries but the logits have {logits.shape[1]} classes"
        )


REDUCTIONS = ("mean", "none")


def check_reduction(reduction: str) -> str:
    """``reduction`` when it is one of :data:`REDUCTIONS`, else a :class:`ConfigError`."""
    if reduction not in REDUCTIONS:
        raise ConfigError(f"loss.reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    return reduction


class CrossEntropy(nn.Module):
    """``F.cross_entropy`` on float32 logits: ``(B, C)`` with target ``(B,)`` or dense
    ``(B, C, *spatial)`` with target ``(B, *spatial)``.

    With ``class_weights`` the mean is PyTorch's weighted mean, ``sum_i w_{y_i} l_i / sum_i w_{y_i}``
    (normalised by the weights of the targets seen, not by the element count; contrast
    :class:`~mtl_train.losses.focal.FocalLoss`, which divides by the element count).

    Args:
        class_weights: One positive weight per class, or None for uniform weights. Kept as a buffer
            so it follows the module's ``.to(device)``.
        label_smoothing: In ``[0, 1)``; the amount of probability mass spread uniformly over classes.
        reduction: ``mean`` (the weighted mean above) or ``none`` (one weighted value ``w_{y_i} l_i`` per element,
            for masked means: :mod:`mtl_train.labels`).
    """

    class_weights: Tensor | None

    def __init__(self, class_weights: list[float] | None = None, label_smoothing: float = 0.0,
                 reduction: str = "mean") -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"loss.label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)
        self.reduction = check_reduction(reduction)
        self.register_buffer("class_weights", class_weight_buffer(class_weights))

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Mean cross-entropy as a float32 scalar (logits of any float dtype are upcast first)."""
        check_class_count(self.class_weights, logits)
        weight = None if self.class_weights is None else self.class_weights.float()
        return F.cross_entropy(logits.float(), target, weight=weight, label_smoothing=self.label_smoothing,
                               reduction=self.reduction)

    def mean_weights(self, target: Tensor) -> Tensor | None:
        """The weight ``w_{y_i}`` of each element in the mean (None: an unweighted mean)."""
        return None if self.class_weights is None else self.class_weights.float()[target]
