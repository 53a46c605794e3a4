"""Binary and multi-label metrics from per-label histograms of sigmoid scores: accuracy, F1, AUROC and AP.

``prediction`` holds logits, one per sample and label; ``target`` the 0/1 labels of the same shape (integer, bool or
float). A sample's score is ``sigmoid(logit)`` (in float64). For each label the metric counts the positives and the
negatives whose score falls in each of ``bins`` equal bins of [0, 1] (bin ``floor(score * bins)``, a score of 1 in
the last bin), with ``index_add_`` into a fixed-size int64 buffer: ``update`` never reads values on the host, and
the state is a sum over batches, so summing it over processes (what DDP evaluation does) equals one metric over
every batch. Every score below follows from these counts:

* threshold: a sample is predicted positive when its score is >= 0.5 (its logit >= 0), i.e. its bin is in the
  upper half (``bins`` is even);
* accuracy: correct decisions / all decisions;
* F1 = 2 TP / (2 TP + FP + FN) at that threshold;
* AUROC: the Mann-Whitney statistic (Hanley & McNeil, Radiology 1982), the probability that a random positive
  scores above a random negative, a positive and a negative in the same bin counting 1/2:
  ``sum_b pos_b (neg_{<b} + neg_b / 2) / (P N)``;
* AP (average precision): ``sum_n (R_n - R_{n-1}) P_n`` over the bin thresholds from the top bin down, with recall
  ``R_n`` and precision ``P_n`` of the samples in bins >= n: the step-wise sum of scikit-learn's
  ``average_precision_score``, without interpolation.

Exactness: AUROC equals its value on the exact scores when no positive shares a bin with a negative. AP equals
scikit-learn's on the scores rounded down to their bins, hence on the exact scores when no bin holds two samples
of which one is a positive (tied positives are one threshold, as in scikit-learn). With the default 1000 bins the
scores are resolved to 0.001; raise ``bins`` (``task.<t>.metric.bins=10000``) for finer ones.

Undefined values: AUROC needs a positive and a negative, AP a positive, F1 a positive or a predicted positive.
:class:`BinaryMetrics` reports NaN for an undefined value; :class:`MultiLabelMetrics` leaves the labels with an
undefined value out of its macro means (NaN when none is defined).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from mtl_train.errors import ConfigError
from mtl_train.metrics.base import TaskMetric

DEFAULT_BINS = 1000
"""Score bins per label: 2 x 1000 int64 counts (16 kB) per label."""


class LabelScoreHistograms(TaskMetric):
    """The shared state of :class:`BinaryMetrics` and :class:`MultiLabelMetrics`: for each of ``num_labels``
    labels, the counts of negatives and positives per score bin (module docstring). ``rank`` is the rank of the
    predictions: 1 for ``(B,)``, 2 for ``(B, L)``."""

    rank: ClassVar[int] = 2

    def __init__(self, num_labels: int, bins: int = DEFAULT_BINS) -> None:
        if num_labels < 1:
            raise ConfigError(f"metric.num_labels must be >= 1, got {num_labels}")
        if bins < 2 or bins % 2:
            raise ConfigError(f"metric.bins must be an even number >= 2 (bin bins/2 starts at the 0.5 threshold), "
                              f"got {bins}")
        self.num_labels = num_labels
        self.bins = bins
        self.reset()

    def reset(self) -> None:
        self._counts: Tensor | None = None  # flat (L * 2 * bins,) int64, index = (label * 2 + positive) * bins + bin
        self._invalid: Tensor | None = None  # scalar int64: labelled targets that are neither 0 nor 1

    def update(self, prediction: Tensor, target: Tensor) -> None:
        self._add(prediction, target, None)

    def update_labelled(self, prediction: Tensor, target: Tensor, labelled: Tensor) -> None:
        """Add the labelled elements of one batch, element by element and without host reads: an unlabelled element
        is neither counted nor an invalid label."""
        self._add(prediction, target, labelled)

    def _add(self, prediction: Tensor, target: Tensor, labelled: Tensor | None) -> None:
        expected = "(B,)" if self.rank == 1 else f"(B, {self.num_labels})"
        if prediction.ndim != self.rank or (self.rank == 2 and prediction.shape[1] != self.num_labels):
            raise ValueError(f"prediction must be logits of shape {expected}, got {tuple(prediction.shape)}")
        if target.shape != prediction.shape:
            raise ValueError(f"target must have the prediction's shape {tuple(prediction.shape)}, got "
                             f"{tuple(target.shape)}")
        if target.is_complex():
            raise ValueError(f"target must hold 0/1 labels, got dtype {target.dtype}")
        if self._counts is None or self._invalid is None:
            self._counts = torch.zeros(self.num_labels * 2 * self.bins, dtype=torch.int64, device=prediction.device)
            self._invalid = torch.zeros((), dtype=torch.int64, device=prediction.device)
        scores = torch.sigmoid(prediction.detach().double()).nan_to_num(0.0)  # a NaN logit counts as score 0
        bins = (scores * self.bins).floor().clamp(0, self.bins - 1).to(torch.int64)
        positive = target == 1
        valid = positive | (target == 0)
        counted = valid if labelled is None else valid & labelled
        label = torch.arange(self.num_labels, device=prediction.device).expand(prediction.shape[0], -1)
        index = (label.reshape(prediction.shape) * 2 + positive.to(torch.int64)) * self.bins + bins
        self._counts.index_add_(0, index.flatten(), counted.flatten().to(torch.int64))
        self._invalid += (~valid if labelled is None else ~valid & labelled).sum()

    def histograms(self) -> tuple[Tensor, Tensor]:
        """The ``(L, bins)`` float64 counts of negatives and of positives per label and score bin, on the CPU."""
        if self._counts is None or self._invalid is None:
            raise ValueError(f"{type(self).__name__}.compute() called before any update()")
        counts, invalid = torch.cat([self._counts, self._invalid.reshape(1)]).cpu().split([self._counts.numel(), 1])
        if invalid.item() > 0:
            raise ValueError(f"{invalid.item()} target values were neither 0 nor 1; binary and multi-label targets "
                             "must be 0/1 labels")
        if counts.sum().item() == 0:
            raise ValueError(f"{type(self).__name__}.compute() called with no accumulated elements")
        histograms = counts.double().reshape(self.num_labels, 2, self.bins)
        return histograms[:, 0], histograms[:, 1]


def decisions(negatives: Tensor, positives: Tensor) -> Tensor:
    """``(L, 4)`` counts of true positives, false positives, false negatives and true negatives per label at the
    0.5 score threshold (bins in the upper half are predicted positive)."""
    half = negatives.shape[1] // 2
    return torch.stack([positives[:, half:].sum(1), negatives[:, half:].sum(1),
                        positives[:, :half].sum(1), negatives[:, :half].sum(1)], dim=1)


def f1_scores(counts: Tensor) -> Tensor:
    """F1 per row of ``(..., 4)`` TP/FP/FN/TN counts; NaN where ``2 TP + FP + FN`` is 0."""
    true_positives, false_positives, false_negatives = counts[..., 0], counts[..., 1], counts[..., 2]
    denominator = 2 * true_positives + false_positives + false_negatives
    return torch.where(denominator > 0, 2 * true_positives / denominator.clamp(min=1), torch.nan)


def auroc(negatives: Tensor, positives: Tensor) -> Tensor:
    """Per label, the Mann-Whitney AUROC of ``(L, bins)`` histograms, ties within a bin counting 1/2; NaN for a
    label without positives or without negatives."""
    negatives_below = negatives.cumsum(1) - negatives
    pairs = positives.sum(1) * negatives.sum(1)
    wins = (positives * (negatives_below + negatives / 2)).sum(1)
    return torch.where(pairs > 0, wins / pairs.clamp(min=1), torch.nan)


def average_precision(negatives: Tensor, positives: Tensor) -> Tensor:
    """Per label, ``sum_n (R_n - R_{n-1}) P_n`` over the bin thresholds from the top bin down, of ``(L, bins)``
    histograms; NaN for a label without positives."""
    positives_above = positives.flip(1).cumsum(1)  # true positives at each threshold, top bin first
    predicted = positives_above + negatives.flip(1).cumsum(1)
    precision = positives_above / predicted.clamp(min=1)
    total = positives.sum(1)
    return torch.where(total > 0, (positives.flip(1) * precision).sum(1) / total.clamp(min=1), torch.nan)


def nan_mean(values: Tensor) -> float:
    """The mean of the values that are not NaN (NaN when all are)."""
    defined = values[~values.isnan()]
    return defined.mean().item() if defined.numel() > 0 else float("nan")


class BinaryMetrics(LabelScoreHistograms):
    """Accuracy, F1 of the positive class, AUROC and AP of one logit per sample (module docstring).

    ``prediction``: logits ``(B,)``; ``target``: 0/1 labels ``(B,)``. The primary metric is AUROC: it is free of
    the 0.5 threshold and 0.5 for chance whatever the share of positives, so model selection rewards ranking the
    positives first, not predicting the majority class.

    Args:
        bins: Score bins (even); 1000 resolves scores to 0.001.
    """

    higher_is_better: ClassVar[dict[str, bool]] = {"auroc": True, "ap": True, "f1": True, "accuracy": True}
    primary: ClassVar[str] = "auroc"
    rank: ClassVar[int] = 1

    def __init__(self, bins: int = DEFAULT_BINS) -> None:
        super().__init__(num_labels=1, bins=bins)

    def compute(self) -> dict[str, float]:
        negatives, positives = self.histograms()
        counts = decisions(negatives, positives)[0]
        return {
            "auroc": auroc(negatives, positives).item(),
            "ap": average_precision(negatives, positives).item(),
            "f1": f1_scores(counts).item(),
            "accuracy": ((counts[0] + counts[3]) / counts.sum()).item(),
        }


class MultiLabelMetrics(LabelScoreHistograms):
    """Accuracy, micro- and macro-F1, macro AUROC and macro AP of ``num_labels`` logits per sample (module
    docstring).

    ``prediction``: logits ``(B, L)``; ``target``: 0/1 labels ``(B, L)``.

    * ``accuracy``: correct decisions over all (sample, label) pairs (Hamming accuracy).
    * ``micro_f1``: F1 of the TP, FP and FN summed over labels; ``macro_f1``: the mean of the labels' F1.
    * ``auroc``, ``ap``: the mean over labels of each label's AUROC and AP.

    A label whose value is undefined in the evaluated data (AUROC: no positive or no negative; AP: no positive; F1:
    no positive and none predicted) is left out of that macro mean. The primary metric is macro AP, the mAP of
    multi-label benchmarks (PASCAL VOC, MS-COCO): unlike AUROC it is not inflated by the many easy negatives of
    rare labels.

    Args:
        num_labels: Labels per sample (L).
        bins: Score bins per label (even).
    """

    higher_is_better: ClassVar[dict[str, bool]] = {"ap": True, "auroc": True, "macro_f1": True, "micro_f1": True,
                                                   "accuracy": True}
    primary: ClassVar[str] = "ap"

    def compute(self) -> dict[str, float]:
        negatives, positives = self.histograms()
        counts = decisions(negatives, positives)
        total = counts.sum(0)
        return {
            "ap": nan_mean(average_precision(negatives, positives)),
            "auroc": nan_mean(auroc(negatives, positives)),
            "macro_f1": nan_mean(f1_scores(counts)),
            "micro_f1": f1_scores(total).item(),
            "accuracy": ((total[0] + total[3]) / total.sum()).item(),
        }
