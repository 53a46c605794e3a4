"""The 0/1-label head (mtl_train.heads.binary): one logit per sample, or one per label."""

from __future__ import annotations

import torch

from mtl_train.heads.binary import BinaryHead


def test_binary_head_gives_one_logit_per_sample_or_per_label() -> None:
    flat, spatial = torch.randn(5, 6), torch.randn(5, 6, 3, 3)
    assert BinaryHead(6, 0)(flat, ()).shape == (5,)
    assert BinaryHead(6, 2)(spatial, (28, 28)).shape == (5,)
    assert BinaryHead(6, 0, num_labels=4)(flat, ()).shape == (5, 4)
    assert BinaryHead(6, 0, num_labels=1)(flat, ()).shape == (5, 1)  # a multi-label task with one label
