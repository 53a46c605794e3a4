"""Multi-class focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtl_train.errors import ConfigError
from mtl_train.losses.cross_entropy import check_class_count, check_reduction, class_weight_buffer

MIN_MODULATING_FACTOR = 1e-12
"""Floor on ``1 - p_t``. At ``p_t == 1`` exactly, ``(1 - p_t)**gamma`` has an infinite derivative
for ``0 < gamma < 1`` and the backward pass would give NaN; the floor keeps it finite and changes
the loss by at most ``1e-12**gamma * |log p_t|`` with ``log p_t == 0`` there."""


class FocalLoss(nn.Module):
    """``FL = -alpha_t * (1 - p_t)**gamma * log(p_t)``, averaged over all elements.

    ``p_t`` is the softmax probability of the true class, computed through ``log_softmax`` on
    float32 logits. Accepts ``(B, C)`` logits with ``(B,)`` targets or dense ``(B, C, *spatial)``
    logits with ``(B, *spatial)`` targets.

    Reduction: the plain mean over elements, ``mean_i alpha_{y_i} * (...)``. So with ``gamma=0`` it
    equals ``F.cross_entropy(..., weight=w, reduction="none").mean()``; this differs from
    ``F.cross_entropy(..., weight=w)`` (and :class:`~mtl_train.losses.cross_entropy.CrossEntropy`),
    which divide by the sum of the targets' weights instead. Without class weights both agree.

    Args:
        gamma: Focusing parameter, ``>= 0``; 0 gives (weighted) cross-entropy.
        class_weights: ``alpha_t``, one positive weight per class; None means 1 for every class.
        reduction: ``mean`` (the plain mean above) or ``none`` (one value per element, for masked means:
            :mod:`mtl_train.labels`).
    """

    class_weights: Tensor | None

    def __init__(self, gamma: float = 2.0, class_weights: list[float] | None = None, reduction: str = "mean") -> None:
        super().__init__()
        if not gamma >= 0:
            raise ConfigError(f"loss.gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)
        self.reduction = check_reduction(reduction)
        self.register_buffer("class_weights", class_weight_buffer(class_weights))

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Mean focal loss as a float32 scalar (logits of any float dtype are upcast first)."""
        expected = logits.shape[:1] + logits.shape[2:]
        if logits.ndim < 2 or target.shape != expected:
            raise ValueError(
                f"focal loss expects logits (B, C, ...) and target (B, ...) = {tuple(expected)}, "
                f"got {tuple(logits.shape)} and {tuple(target.shape)}"
            )
        check_class_count(self.class_weights, logits)
        log_p_t = torch.log_softmax(logits.float(), dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
        one_minus_p_t = (-torch.expm1(log_p_t)).clamp(min=MIN_MODULATING_FACTOR)
        loss = -one_minus_p_t.pow(self.gamma) * log_p_t
        if self.class_weights is not None:
            loss = loss * self.class_weights.float()[target]
        return loss.mean() if self.reduction == "mean" else loss
