"""Head for 0/1 labels: the classification head's pooling and MLP, giving one logit per label."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from mtl_train.heads.classification import ClassificationHead


class BinaryHead(ClassificationHead):
    """Logits ``(B,)`` for a binary task (``num_labels`` None) or ``(B, num_labels)`` for a multi-label one, from
    features ``(B, C, *spatial)`` (averaged over space) or ``(B, C)``: Linear, ReLU, dropout, Linear."""

    def __init__(self, in_channels: int, spatial_dims: int, num_labels: int | None = None, hidden: int = 64,
                 dropout: float = 0.0) -> None:
        super().__init__(in_channels, spatial_dims, num_classes=1 if num_labels is None else num_labels,
                         hidden=hidden, dropout=dropout)
        self.num_labels = num_labels

    def forward(self, features: Tensor, input_size: Sequence[int]) -> Tensor:
        logits = super().forward(features, input_size)
        return logits.squeeze(1) if self.num_labels is None else logits
