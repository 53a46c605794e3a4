"""The checkpoint round trip every stateful method is tested with: four steps in one go equal two steps, a
save/load of the method's state into a fresh instance, and two more."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from mtl_train.weighting.base import Weighting

Step = Callable[[Weighting, int], tuple[Tensor, Tensor]]  # (method, seed) -> (weights, shared update)


def assert_state_round_trip_resumes_exactly(build: Callable[[], Weighting], seeded_step: Step,
                                            tmp_path: Path) -> list[tuple[Tensor, Tensor]]:
    """``seeded_step(method, seed)`` runs one step on the batch of ``seed``; the resumed method's weights and
    updates at seeds 2 and 3 must equal the uninterrupted method's, bit for bit. Returns the uninterrupted steps'
    ``(weights, update)``."""
    straight = build()
    expected = [seeded_step(straight, seed) for seed in range(4)]
    first = build()
    for seed in range(2):
        seeded_step(first, seed)
    torch.save(first.state_dict(), tmp_path / "state.pt")
    resumed = build()
    resumed.load_state_dict(torch.load(tmp_path / "state.pt"))
    for seed in (2, 3):
        weights, update = seeded_step(resumed, seed)
        assert torch.equal(weights, expected[seed][0]) and torch.equal(update, expected[seed][1])
    return expected
