"""The two solver strategies of mtl_train.weighting.solvers agree: support enumeration (k <= 8) and the interior point
(larger k), on MGDA's min-norm point, CAGrad's dual and UPGrad's box QPs, over random and degenerate problems."""

from __future__ import annotations

import pytest
import torch

from mtl_train.weighting import cagrad, solvers, upgrad
from mtl_train.weighting.solvers import supports


def problems(seed: int) -> list[torch.Tensor]:
    """Gramians of random gradients: well-conditioned, rank-deficient (k > d), with a repeated row, badly scaled."""
    generator = torch.Generator().manual_seed(seed)
    grams = []
    for k, d in [(3, 6), (4, 2), (5, 9), (6, 3), (8, 20), (8, 5)]:
        grads = torch.randn(k, d, dtype=torch.float64, generator=generator)
        grads += torch.randn(1, d, dtype=torch.float64, generator=generator)  # a common component
        if seed % 3 == 1:
            grads[1] = 2 * grads[0]
        if seed % 3 == 2:
            grads[0] *= 1e3
        grams.append(grads @ grads.T)
    return grams


def interior_point(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every solver take its interior-point path."""
    for module in (solvers, cagrad, upgrad):
        monkeypatch.setattr(module, "ENUMERATION_MAX_TASKS", 0)


def test_supports_lists_every_subset_once() -> None:
    masks = supports(3, torch.device("cpu"))
    assert masks.shape == (8, 3) and not masks[0].any()
    assert len({tuple(row.tolist()) for row in masks}) == 8


@pytest.mark.parametrize("seed", range(6))
def test_min_norm_point_by_enumeration_and_interior_point(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    grams = problems(seed)
    exact = [solvers.min_norm_point(gram) for gram in grams]
    interior_point(monkeypatch)
    for gram, alpha in zip(grams, exact):
        other = solvers.min_norm_point(gram)
        assert alpha.min() >= 0 and alpha.sum().item() == pytest.approx(1.0)
        scale = gram.diagonal().mean()
        assert (alpha @ gram @ alpha - other @ gram @ other).abs() / scale < 1e-9


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("c", [0.2, 0.5, 0.9])
def test_cagrad_dual_by_enumeration_and_interior_point(seed: int, c: float, monkeypatch: pytest.MonkeyPatch) -> None:
    def objective(w: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
        scaled = gram / gram.diagonal().mean()
        return w @ scaled.mean(1) + c * scaled.mean().sqrt() * (w @ scaled @ w).clamp_min(0).sqrt()

    grams = problems(seed)
    exact = [cagrad.cagrad_dual(gram, c) for gram in grams]
    interior_point(monkeypatch)
    for gram, w in zip(grams, exact):
        assert w.min() >= 0 and w.sum().item() == pytest.approx(1.0)
        assert objective(w, gram) <= objective(cagrad.cagrad_dual(gram, c), gram) + 1e-9


@pytest.mark.parametrize("seed", range(6))
def test_nonnegative_qp_by_enumeration_and_interior_point(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    generator = torch.Generator().manual_seed(seed)
    grams = problems(seed)
    matrices = [gram / gram.trace() + 1e-4 * torch.eye(gram.shape[0], dtype=gram.dtype) for gram in grams]
    linears = [torch.randn(3, m.shape[0], dtype=torch.float64, generator=generator) for m in matrices]
    exact = [upgrad.nonnegative_qp(m, c) for m, c in zip(matrices, linears)]
    interior_point(monkeypatch)
    for m, c, x in zip(matrices, linears, exact):
        assert (x >= 0).all()
        torch.testing.assert_close(x, upgrad.nonnegative_qp(m, c), rtol=0, atol=1e-7)
