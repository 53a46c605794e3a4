"""Binary and multi-label metrics (mtl_train.metrics.binary) against hand-computed accuracy, F1, AUROC and AP."""

from __future__ import annotations

import math

import pytest
import torch

from mtl_train.errors import ConfigError
from mtl_train.metrics.base import TaskMetric
from mtl_train.metrics.binary import BinaryMetrics, MultiLabelMetrics


def logits(scores: list[float] | list[list[float]]) -> torch.Tensor:
    """The logits whose sigmoid is ``scores``."""
    return torch.logit(torch.tensor(scores, dtype=torch.float64)).float()


# Scores 0.1 (neg), 0.4 (neg), 0.35 (pos), 0.8 (pos).
# AUROC: pairs (pos, neg) ranked right: 0.8 > 0.1, 0.8 > 0.4, 0.35 > 0.1; wrong: 0.35 < 0.4 -> 3/4.
# AP: from the top, 0.8 (pos): R 1/2, P 1; 0.4 (neg); 0.35 (pos): R 1, P 2/3 -> 1/2 * 1 + 1/2 * 2/3 = 5/6.
# At score >= 0.5 only 0.8 is predicted positive: TP 1, FP 0, FN 1, TN 2 -> F1 2/3, accuracy 3/4.
SCORES = [0.1, 0.4, 0.35, 0.8]
LABELS = [0, 0, 1, 1]


def test_binary_hand_computed() -> None:
    metric = BinaryMetrics()
    metric.update(logits(SCORES), torch.tensor(LABELS))
    assert metric.compute() == pytest.approx({"auroc": 0.75, "ap": 5 / 6, "f1": 2 / 3, "accuracy": 0.75})
    assert metric.primary == "auroc" and all(metric.higher_is_better.values())


@pytest.mark.parametrize("dtype", [torch.int64, torch.float32, torch.bool, torch.uint8])
def test_binary_targets_of_any_dtype_give_the_same_values(dtype: torch.dtype) -> None:
    metric = BinaryMetrics()
    metric.update(logits(SCORES), torch.tensor(LABELS).to(dtype))
    assert metric.compute()["ap"] == pytest.approx(5 / 6)


def test_a_zero_logit_is_predicted_positive() -> None:
    metric = BinaryMetrics()
    metric.update(torch.tensor([0.0, -1e-6]), torch.tensor([1, 0]))  # scores 0.5 and just below
    assert metric.compute()["accuracy"] == 1.0


def test_ties_within_a_bin_count_half() -> None:
    """Two bins: 0.1 (neg) and 0.2 (pos) share bin 0, 0.7 (neg) and 0.9 (pos) bin 1. Pairs: 0.2 vs 0.1 tie (1/2),
    0.2 vs 0.7 wrong (0), 0.9 vs 0.1 right (1), 0.9 vs 0.7 tie (1/2): AUROC 2/4, where the exact scores give 3/4."""
    metric = BinaryMetrics(bins=2)
    metric.update(logits([0.1, 0.2, 0.7, 0.9]), torch.tensor([0, 1, 0, 1]))
    assert metric.compute()["auroc"] == 0.5
    exact = BinaryMetrics()
    exact.update(logits([0.1, 0.2, 0.7, 0.9]), torch.tensor([0, 1, 0, 1]))
    assert exact.compute()["auroc"] == 0.75


def test_positives_sharing_a_bin_are_one_threshold_of_ap() -> None:
    """0.9 (neg), 0.82 (pos), 0.81 (pos). Exact: 0.82: R 1/2, P 1/2; 0.81: R 1, P 2/3 -> AP 7/12. With 10 bins both
    positives are in bin 8: one threshold, R 1, P 2/3 -> AP 2/3 (scikit-learn's on the binned scores)."""
    scores, labels = logits([0.9, 0.82, 0.81]), torch.tensor([0, 1, 1])
    exact, coarse = BinaryMetrics(), BinaryMetrics(bins=10)
    exact.update(scores, labels)
    coarse.update(scores, labels)
    assert exact.compute()["ap"] == pytest.approx(7 / 12)
    assert coarse.compute()["ap"] == pytest.approx(2 / 3)


def test_binary_without_negatives_has_no_auroc() -> None:
    metric = BinaryMetrics()
    metric.update(logits([0.3, 0.9]), torch.tensor([1, 1]))
    values = metric.compute()
    assert math.isnan(values["auroc"]) and values["ap"] == 1.0 and values["f1"] == pytest.approx(2 / 3)


# Two labels over 4 samples; label 0 is the binary case above, label 1 has scores 0.8, 0.35, 0.4, 0.1 and labels
# 1, 1, 0, 1. Label 1: AUROC: positives above the negative 0.4: 0.8 only -> 1/3. AP: 0.8 (pos) R 1/3 P 1;
# 0.4 (neg); 0.35 (pos) R 2/3 P 2/3; 0.1 (pos) R 1 P 3/4 -> (1 + 2/3 + 3/4) / 3 = 29/36.
# Predicted positive (>= 0.5): 0.8 only -> TP 1, FP 0, FN 2, TN 1 -> F1 2/4.
# Macro AUROC (3/4 + 1/3) / 2 = 13/24; macro AP (5/6 + 29/36) / 2 = 59/72; macro F1 (2/3 + 1/2) / 2 = 7/12;
# micro F1 over TP 2, FP 0, FN 3: 4/7; accuracy (3 + 2) / 8 = 5/8.
MULTI_SCORES = [[0.1, 0.8], [0.4, 0.35], [0.35, 0.4], [0.8, 0.1]]
MULTI_LABELS = [[0, 1], [0, 1], [1, 0], [1, 1]]
MULTI_VALUES = {"ap": 59 / 72, "auroc": 13 / 24, "macro_f1": 7 / 12, "micro_f1": 4 / 7, "accuracy": 5 / 8}


def test_multilabel_hand_computed() -> None:
    metric = MultiLabelMetrics(num_labels=2)
    metric.update(logits(MULTI_SCORES), torch.tensor(MULTI_LABELS))
    assert metric.compute() == pytest.approx(MULTI_VALUES)
    assert metric.primary == "ap"


def test_a_label_without_positives_is_left_out_of_the_macro_means() -> None:
    """A third label, all negative and never predicted positive: no AUROC, AP or F1, so the macro means are those
    of the first two labels; its 4 right decisions add to the accuracy and nothing to micro-F1."""
    scores = [row + [0.2] for row in MULTI_SCORES]
    labels = [row + [0] for row in MULTI_LABELS]
    metric = MultiLabelMetrics(num_labels=3)
    metric.update(logits(scores), torch.tensor(labels))
    assert metric.compute() == pytest.approx({**MULTI_VALUES, "accuracy": 9 / 12})


def sum_states(into: TaskMetric, other: TaskMetric) -> None:
    """What Distributed.sum_metric_state does over two ranks: add every private tensor and int of ``other``."""
    for name, value in vars(other).items():
        if name.startswith("_") and isinstance(value, (torch.Tensor, int)):
            setattr(into, name, getattr(into, name) + value)


@pytest.mark.parametrize("make", [lambda: BinaryMetrics(), lambda: MultiLabelMetrics(num_labels=3)],
                         ids=["binary", "multilabel"])
def test_states_summed_over_ranks_equal_one_metric_over_every_batch(make) -> None:
    generator = torch.Generator().manual_seed(0)
    shape = (37,) if isinstance(make(), BinaryMetrics) else (37, 3)
    batches = [(torch.randn(shape, generator=generator), torch.randint(0, 2, shape, generator=generator))
               for _ in range(4)]
    whole, rank0, rank1 = make(), make(), make()
    for index, (prediction, target) in enumerate(batches):
        whole.update(prediction, target)
        (rank0 if index % 2 else rank1).update(prediction, target)
    sum_states(rank0, rank1)
    assert rank0.compute() == whole.compute()


def test_unlabelled_elements_are_not_counted() -> None:
    """update_labelled (missing labels) equals update on the labelled elements alone; the masked -1 is not an
    invalid label."""
    masked = MultiLabelMetrics(num_labels=2)
    target = torch.tensor(MULTI_LABELS + [[-1, -1]])
    masked.update_labelled(logits(MULTI_SCORES + [[0.9, 0.9]]), target, target != -1)
    assert masked.compute() == pytest.approx(MULTI_VALUES)


def test_a_target_that_is_not_0_or_1_is_reported_by_compute() -> None:
    metric = BinaryMetrics()
    metric.update(logits([0.2, 0.7]), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="^1 target values were neither 0 nor 1"):
        metric.compute()


def test_shapes_that_do_not_fit_are_value_errors() -> None:
    with pytest.raises(ValueError, match=r"prediction must be logits of shape \(B,\), got \(4, 1\)"):
        BinaryMetrics().update(torch.zeros(4, 1), torch.zeros(4))
    with pytest.raises(ValueError, match=r"prediction must be logits of shape \(B, 3\), got \(4, 2\)"):
        MultiLabelMetrics(num_labels=3).update(torch.zeros(4, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"target must have the prediction's shape \(4,\), got \(4, 1\)"):
        BinaryMetrics().update(torch.zeros(4), torch.zeros(4, 1))


def test_compute_before_update_and_reset() -> None:
    metric = BinaryMetrics()
    with pytest.raises(ValueError, match="before any update"):
        metric.compute()
    metric.update(logits(SCORES), torch.tensor(LABELS))
    metric.reset()
    with pytest.raises(ValueError, match="before any update"):
        metric.compute()


@pytest.mark.parametrize("bins", [0, 3])
def test_bins_must_be_even(bins: int) -> None:
    with pytest.raises(ConfigError, match=f"^metric.bins must be an even number >= 2 .*, got {bins}$"):
        BinaryMetrics(bins=bins)
