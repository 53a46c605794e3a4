"""Binary cross-entropy on logits for 0/1 labels (binary and multi-label tasks), whatever the labels' dtype."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtl_train.errors import ConfigError
from mtl_train.losses.cross_entropy import check_reduction


def pos_weight_buffer(pos_weight: float | list[float] | None) -> Tensor | None:
    """``loss.pos_weight`` as a float32 tensor, after checking every weight is finite and > 0."""
    if pos_weight is None:
        return None
    weights = [float(w) for w in (pos_weight if isinstance(pos_weight, list) else [pos_weight])]
    if not weights or not all(math.isfinite(w) and w > 0 for w in weights):
        raise ConfigError(f"loss.pos_weight must be a positive number or a non-empty list of them (one per label), "
                          f"got {pos_weight}")
    return torch.tensor(weights, dtype=torch.float32)


class BinaryCrossEntropy(nn.Module):
    """``F.binary_cross_entropy_with_logits`` of float32 logits against targets of their shape: ``(B,)`` for a binary
    task, ``(B, L)`` for a multi-label one.

    The target is cast to the logits' dtype, so 0/1 labels read from a file as integers (int64) or booleans work as
    they are; probabilities in [0, 1] (soft labels) work too. The loss of element i is
    ``-(p y_i log s_i + (1 - y_i) log(1 - s_i))`` with ``s_i = sigmoid(logit_i)`` and ``p`` the positive weight of
    its label; the result is the plain mean over elements.

    Args:
        pos_weight: Weight of the positive term (``p``): one number, or one per label (broadcast along the last
            dim); e.g. negatives / positives of a rare label. None: 1.
        reduction: ``mean`` or ``none`` (one value per element, for masked means: :mod:`mtl_train.labels`).
    """

    pos_weight: Tensor | None

    def __init__(self, pos_weight: float | list[float] | None = None, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = check_reduction(reduction)
        self.register_buffer("pos_weight", pos_weight_buffer(pos_weight))

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Mean binary cross-entropy as a float32 scalar (per element with ``reduction='none'``)."""
        if logits.shape != target.shape:
            raise ValueError(f"binary cross-entropy expects targets of the logits' shape {tuple(logits.shape)}, got "
                             f"{tuple(target.shape)}")
        logits = logits.float()
        pos_weight = None if self.pos_weight is None else self.pos_weight.float()
        return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), pos_weight=pos_weight,
                                                  reduction=self.reduction)
