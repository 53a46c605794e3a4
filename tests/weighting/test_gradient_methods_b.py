"""Nash-MTL, Aligned-MTL, GradVac, UPGrad and DB-MTL on hand-computed cases, plus invariances, state round trips
and one step on a tiny model."""

from __future__ import annotations

import io
import itertools
import math
from unittest import mock

import pytest
import torch

from mtl_train.backbones.cnn import hard_cnn
from mtl_train.errors import ConfigError
from mtl_train.heads.classification import ClassificationHead
from mtl_train.model import MultiTaskModel
from mtl_train.weighting.aligned_mtl import AlignedMTL, aligned_gradients, aligned_mtl_weights
from mtl_train.weighting.base import StepContext
from mtl_train.weighting.db_mtl import DBMTL, db_mtl_direction
from mtl_train.weighting.gradients import task_gradient_matrix
from mtl_train.weighting.gradvac import GradVac, gradvac_weights
from mtl_train.weighting.nash_mtl import NashMTL, nash_mtl_weights
from mtl_train.weighting.upgrad import UPGrad, nonnegative_qp, upgrad_projection_weights, upgrad_weights

TASKS2 = ["a", "b"]


def unit_losses(grads: torch.Tensor) -> torch.Tensor:
    """Losses of 1, one per row of ``grads`` (for rules that do not read the losses)."""
    return torch.ones(grads.shape[0])


def close(actual, expected, atol: float = 1e-6) -> bool:
    return torch.allclose(torch.as_tensor(actual, dtype=torch.float64),
                          torch.as_tensor(expected, dtype=torch.float64), atol=atol, rtol=0)


# ----------------------------------------------------------------------------------------------- Nash-MTL

def test_nash_orthogonal_gradients_hand_computed() -> None:
    """M = diag(4, 1) (orthogonal g's of norms 2 and 1): m_ii alpha_i = 1/alpha_i, so alpha = (1/2, 1)."""
    gram = torch.diag(torch.tensor([4.0, 1.0], dtype=torch.float64))
    assert close(nash_mtl_weights(gram, eps=0.0)[0], [0.5, 1.0], atol=1e-12)
    assert close(nash_mtl_weights(gram)[0], [0.5, 1.0], atol=1e-9)  # the default ridge eps = 1e-10 on K = I
    grads = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    aggregation = NashMTL(TASKS2, max_norm=None).aggregate(grads, unit_losses(grads))
    assert close(aggregation.weights, [0.5, 1.0]) and close(aggregation.direction, [1.0, 1.0, 0.0])


def test_nash_solves_the_bargaining_equation_on_random_gramians() -> None:
    generator = torch.Generator().manual_seed(0)
    for k, d in [(2, 5), (3, 10), (5, 8), (8, 40), (10, 12)]:
        grads = torch.randn(k, d, dtype=torch.float64, generator=generator)
        gram = grads @ grads.T
        alpha, unit_alpha = nash_mtl_weights(gram)
        assert (alpha > 0).all()
        assert torch.linalg.norm(gram @ alpha - 1 / alpha) < 1e-5
        assert close(unit_alpha, alpha * grads.norm(dim=1), atol=1e-9)  # alpha_i = unit_alpha_i / ||g_i||
        # ||d||^2 = alpha^T M alpha = sum_i alpha_i (M alpha)_i = k
        assert (alpha @ grads).norm().item() == pytest.approx(math.sqrt(k), rel=1e-6)


def test_nash_warm_start_gives_the_same_solution() -> None:
    generator = torch.Generator().manual_seed(1)
    grads = torch.randn(4, 9, dtype=torch.float64, generator=generator)
    cold, _ = nash_mtl_weights(grads @ grads.T)
    warm, _ = nash_mtl_weights(grads @ grads.T, init=torch.tensor([5.0, 0.1, 1.0, 2.0], dtype=torch.float64))
    assert close(cold, warm, atol=1e-9)


def test_nash_early_stop_on_the_cpu_matches_the_full_newton_run() -> None:
    """The CPU's early stop (lambda^2/2 <= 1e-12) lands within 1e-6 (relative) of 20 full iterations, cold and
    warm-started from the previous solution of a slightly changed problem."""
    torch.manual_seed(3)
    for k in (2, 4, 8):
        grads = torch.randn(k, 40, dtype=torch.float64) * torch.logspace(0, 2, k, dtype=torch.float64).unsqueeze(1)
        full, full_normalized = nash_mtl_weights(grads @ grads.T, tolerance=0.0)
        torch.testing.assert_close(nash_mtl_weights(grads @ grads.T, tolerance=1e-12)[0], full, rtol=1e-6, atol=0)
        drifted = grads + 0.05 * torch.randn_like(grads)
        warm, _ = nash_mtl_weights(drifted @ drifted.T, init=full_normalized, tolerance=1e-12)
        torch.testing.assert_close(warm, nash_mtl_weights(drifted @ drifted.T)[0], rtol=1e-6, atol=0)


def test_nash_early_stop_needs_few_newton_steps_when_warm_started() -> None:
    """From the previous step's solution the CPU loop stops within 4 Newton steps (one Cholesky factorisation
    each, after the one batched factorisation that picks the ridge) instead of running all 20."""
    torch.manual_seed(4)
    grads = torch.randn(4, 60, dtype=torch.float64)
    _, previous = nash_mtl_weights(grads @ grads.T)
    drifted = grads + 0.05 * torch.randn_like(grads)
    factorise = torch.linalg.cholesky_ex
    with mock.patch("torch.linalg.cholesky_ex", side_effect=factorise) as counted:
        nash_mtl_weights(drifted @ drifted.T, init=previous, tolerance=1e-12)
    assert 2 <= counted.call_count <= 1 + 4
    with mock.patch("torch.linalg.cholesky_ex", side_effect=factorise) as counted:
        nash_mtl_weights(drifted @ drifted.T, init=previous, tolerance=0.0)
    assert counted.call_count == 1 + 20


def test_nash_scaling_the_gradients_scales_alpha_inversely_and_keeps_the_direction() -> None:
    generator = torch.Generator().manual_seed(2)
    grads = torch.randn(3, 7, generator=generator)
    one = NashMTL(["a", "b", "c"], max_norm=None).aggregate(grads, unit_losses(grads))
    two = NashMTL(["a", "b", "c"], max_norm=None).aggregate(2 * grads, unit_losses(grads))
    assert close(two.weights, one.weights / 2, atol=1e-5)
    assert close(two.direction, one.direction, atol=1e-5)


def test_nash_clips_the_direction_and_reports_effective_weights() -> None:
    grads = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    aggregation = NashMTL(TASKS2, max_norm=1.0).aggregate(grads, unit_losses(grads))  # unclipped norm sqrt(2)
    assert aggregation.direction.norm().item() == pytest.approx(1.0, abs=1e-5)
    assert close(aggregation.weights @ grads, aggregation.direction)
    assert close(aggregation.weights, torch.tensor([0.5, 1.0]) / math.sqrt(2), atol=1e-5)


@pytest.mark.parametrize("ratio", [1.0, 1e2, 1e4])
def test_nash_solves_the_equation_whatever_the_spread_of_gradient_norms(ratio: float) -> None:
    """Full-rank G whose row norms spread over ``ratio``: alpha_i (G G^T alpha)_i = 1 to 1e-6 for every task, warm or
    cold, with the CPU early stop or all 20 iterations (a ridge relative to ||M||_F shrank the smallest task by 0.2
    at 1e4)."""
    generator = torch.Generator().manual_seed(5)
    for k in (2, 4, 7):
        grads = torch.randn(k, 3 * k, dtype=torch.float64, generator=generator)
        grads *= torch.logspace(0, math.log10(ratio), k, dtype=torch.float64).unsqueeze(1)
        gram = grads @ grads.T
        for tolerance in (0.0, 1e-12):
            alpha, unit_alpha = nash_mtl_weights(gram, tolerance=tolerance)
            assert (alpha * (gram @ alpha) - 1).abs().max() < 1e-6
            warm, _ = nash_mtl_weights(gram, init=unit_alpha * 1.3, tolerance=tolerance)
            assert (warm * (gram @ warm) - 1).abs().max() < 1e-6


def test_nash_gives_a_zero_gradient_weight_zero_and_solves_the_others() -> None:
    """Row 1 is zero (a task switched off): its weight is 0 and the other two solve their own equation, here
    orthogonal rows of norms 2 and 4: alpha = (1/2, 0, 1/4)."""
    grads = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 4.0, 0.0]], dtype=torch.float64)
    alpha, _ = nash_mtl_weights(grads @ grads.T)
    assert close(alpha, [0.5, 0.0, 0.25], atol=1e-9)
    aggregation = NashMTL(["a", "b", "c"], max_norm=None).aggregate(grads.float(), unit_losses(grads))
    assert torch.isfinite(aggregation.weights).all() and aggregation.weights[1] == 0
    assert close(aggregation.direction, [1.0, 1.0, 0.0], atol=1e-6)
    assert nash_mtl_weights(torch.zeros(2, 2))[0].tolist() == [0.0, 0.0]


def test_nash_keeps_a_switched_off_task_stored_alpha() -> None:
    """b's gradient is zero in an update step: its weight is 0 but its stored alpha (reused between updates) and warm
    start stay as they were; a reuse step with b's loss 0 reports b's weight as 0 too."""
    method = NashMTL(["a", "b", "c"], max_norm=None)
    method.alpha.copy_(torch.tensor([0.3, 0.7, 0.9]))
    method.alpha_normalized.copy_(torch.tensor([1.1, 1.2, 1.3]))
    grads = torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 4.0]])
    aggregation = method.aggregate(grads, torch.tensor([1.0, 0.0, 1.0]))
    assert close(aggregation.weights, [0.5, 0.0, 0.25])
    assert close(method.alpha, [0.5, 0.7, 0.25]) and method.alpha_normalized[1].item() == pytest.approx(1.2)
    model = tiny_model()
    reuse = NashMTL(TASKS2, update_weights_every=2)
    reuse.calls = 1
    losses, ctx = model_losses(model, 0)
    assert reuse.backward(losses * torch.tensor([1.0, 0.0]), ctx)[1].item() == 0.0


def test_nash_stays_finite_and_bounded_when_the_gradients_are_dependent() -> None:
    """Two identical tasks (float32, so the Gramian of the unit gradients may be slightly indefinite) and more tasks
    than dimensions: no solution exists; alpha stays finite and positive and ||d|| <= sqrt(k)."""
    generator = torch.Generator().manual_seed(6)
    base = torch.randn(2, 1000, generator=generator)
    for grads in (torch.cat([base, base[:1]]), torch.randn(5, 2, generator=generator)):
        alpha, _ = nash_mtl_weights(grads @ grads.T)
        assert torch.isfinite(alpha).all() and (alpha > 0).all()
        assert (alpha @ grads).norm() <= math.sqrt(grads.shape[0]) * (1 + 1e-5)


def fp16_representation_step(model: MultiTaskModel, scale: float, seed: int) -> tuple[torch.Tensor, StepContext]:
    """Losses and context of one batch whose shared representation z is held in fp16 (as under fp16 autocast), with
    the losses scaled by ``scale`` (as GradScaler does)."""
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.randn(8, 1, 16, generator=generator), torch.randint(0, 3, (8,), generator=generator)
    z = model.encode(x).half()
    outputs = model.decode(z.float(), x)
    losses = torch.stack([torch.nn.functional.cross_entropy(outputs[t], y) for t in TASKS2])
    return losses, StepContext(model=model, step=0, scale=lambda loss: loss * scale, loss_scale=scale,
                               shared_representation=z)


def test_nash_reused_weights_under_an_fp16_loss_scale_of_65536() -> None:
    """A reuse step (alpha from the previous update) in ``mode=rep`` with z in fp16 and loss scale 65536: the trunk
    gradients are 65536 times those of the unscaled float32 step (65536 itself is not representable in fp16)."""
    def reuse_step(scale: float) -> list[torch.Tensor]:
        model = tiny_model()
        method = NashMTL(TASKS2, update_weights_every=2, mode="rep")
        method.alpha.copy_(torch.tensor([0.7, 1.3]))
        method.calls = 1  # the next call reuses alpha
        method.backward(*fp16_representation_step(model, scale, seed=3))
        return [p.grad / scale for p in model.shared_parameters()]

    for scaled, plain in zip(reuse_step(65536.0), reuse_step(1.0)):
        assert torch.isfinite(scaled).all()
        torch.testing.assert_close(scaled, plain, rtol=1e-2, atol=1e-5)


def test_nash_rejects_bad_options() -> None:
    with pytest.raises(ConfigError, match="weighting.update_weights_every"):
        NashMTL(TASKS2, update_weights_every=0)
    with pytest.raises(ConfigError, match="weighting.max_norm"):
        NashMTL(TASKS2, max_norm=-1.0)
    with pytest.raises(ConfigError, match="weighting.tolerance"):
        NashMTL(TASKS2, tolerance=-1e-12)


# ----------------------------------------------------------------------------------------------- Aligned-MTL

def test_aligned_rows_are_orthogonal_with_the_smallest_singular_value() -> None:
    generator = torch.Generator().manual_seed(3)
    grads = torch.randn(4, 10, dtype=torch.float64, generator=generator)
    aligned = aligned_gradients(grads)
    sigma_min = torch.linalg.svdvals(grads).min()
    assert close(aligned @ aligned.T, sigma_min**2 * torch.eye(4, dtype=torch.float64), atol=1e-9)
    alpha = aligned_mtl_weights(grads @ grads.T)
    assert close(alpha @ grads, aligned.sum(0), atol=1e-9)  # direction = sum of the aligned rows (w = 1)


def test_aligned_orthogonal_equal_norm_rows_give_the_sum() -> None:
    grads = torch.tensor([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    aggregation = AlignedMTL(TASKS2).aggregate(grads, unit_losses(grads))
    assert close(aggregation.weights, [1.0, 1.0], atol=1e-6)
    assert close(aggregation.direction, [3.0, 3.0, 0.0], atol=1e-5)


@pytest.mark.parametrize(("scale_mode", "scale"), [("min", 1.0), ("median", 4.0), ("rmse", 14.0 / 3.0)])
def test_aligned_scale_modes_hand_computed(scale_mode: str, scale: float) -> None:
    """Orthogonal rows of norms 3, 2, 1: lambda = (9, 4, 1), B = sqrt(s) diag(1/3, 1/2, 1), alpha = B 1."""
    grads = torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64))
    alpha = aligned_mtl_weights(grads @ grads.T, scale_mode=scale_mode)
    assert close(alpha, math.sqrt(scale) * torch.tensor([1 / 3, 1 / 2, 1.0], dtype=torch.float64), atol=1e-9)


def test_aligned_drops_null_directions_and_applies_task_weights() -> None:
    grads = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])  # rank 2
    aggregation = AlignedMTL(["a", "b", "c"], task_weights={"c": 2.0}).aggregate(grads, unit_losses(grads))
    assert torch.isfinite(aggregation.weights).all()
    assert close(aggregation.weights @ grads, aggregation.direction)
    # M = [[1,2,0],[2,4,0],[0,0,1]]: kept lambda = 5 (v = (1,2,0)/sqrt5) and 1 (e_3); s = 1;
    # B = (1/5) v v^T sqrt5/sqrt5... = vv^T/sqrt(5) + e3 e3^T; w = (1, 1, 2): alpha = (3/5 sqrt5)(1, 2, 0) + (0, 0, 2)
    expected = torch.tensor([1.0, 2.0, 0.0]) * 3 / (5 * math.sqrt(5)) + torch.tensor([0.0, 0.0, 2.0])
    assert close(aggregation.weights, expected, atol=1e-5)
    with pytest.raises(ConfigError, match="weighting.scale_mode"):
        AlignedMTL(TASKS2, scale_mode="max")
    with pytest.raises(ConfigError, match="weighting.task_weights"):
        AlignedMTL(TASKS2, task_weights=[1.0])


# ----------------------------------------------------------------------------------------------- GradVac

def test_gradvac_conflicting_pair_with_zero_targets_is_pcgrad() -> None:
    """beta = 1, phi^ = 0, g1 = (1, 0), g2 = (-1, 1), cos = -1/sqrt2 < 0:
    g1' = g1 - (g1.g2/||g2||^2) g2 = (1, 0) + (1/2)(-1, 1) = (0.5, 0.5);  g2' = g2 - (g2.g1/||g1||^2) g1 = (0, 1).
    Update (0.5, 1.5) = 2 g1 + 1.5 g2; phi^ <- phi = -1/sqrt2 for both pairs."""
    grads = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    method = GradVac(TASKS2, beta=1.0)
    aggregation = method.aggregate(grads, unit_losses(grads))
    assert close(aggregation.direction, [0.5, 1.5]) and close(aggregation.weights, [2.0, 1.5])
    assert close(method.targets, [[0.0, -1 / math.sqrt(2)], [-1 / math.sqrt(2), 0.0]])


def test_gradvac_raises_the_cosine_to_a_positive_target() -> None:
    """phi^ = 0.5, g1 = (1, 0), g2 = (0, 1), phi = 0: w = ||g1|| (0.5 * 1 - 0) / (||g2|| sqrt(0.75)) = 1/sqrt3,
    g1' = (1, 1/sqrt3) whose cosine with g2 is exactly 0.5 (and symmetrically for g2)."""
    method = GradVac(TASKS2, beta=1.0)
    method.targets.fill_(0.5)
    aggregation = method.aggregate(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.ones(2))
    w = 1 / math.sqrt(3)
    assert close(aggregation.weights, [1 + w, 1 + w]) and close(aggregation.direction, [1 + w, 1 + w])
    g1 = torch.tensor([1.0, w])
    assert (g1 @ torch.tensor([0.0, 1.0]) / g1.norm()).item() == pytest.approx(0.5)


def test_gradvac_leaves_pairs_above_target_unchanged() -> None:
    grads = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # cos = 1/sqrt2 > 0
    method = GradVac(TASKS2, beta=1.0)
    aggregation = method.aggregate(grads, unit_losses(grads))
    assert close(aggregation.direction, [2.0, 1.0]) and close(aggregation.weights, [1.0, 1.0])
    assert close(method.targets[0, 1], 1 / math.sqrt(2))  # "always": the EMA follows the observed cosine
    lib = GradVac(TASKS2, beta=1.0, ema_update="on_adjust")
    lib.aggregate(grads, unit_losses(grads))
    assert close(lib.targets, torch.zeros(2, 2))  # LibMTL: only adjusted pairs update their target


def test_gradvac_ema_rate() -> None:
    targets = torch.zeros(2, 2)
    _, new = gradvac_weights(torch.tensor([[1.0, 1.0], [1.0, 2.0]]), targets, torch.tensor([[1], [0]]), beta=0.5)
    assert close(new[0, 1], 0.5 * 1 / math.sqrt(2), atol=1e-6)


def test_gradvac_coefficients_match_a_direct_implementation() -> None:
    """Against the loop in vector space (LibMTL's form, EMA 'always'), same pair order."""
    generator = torch.Generator().manual_seed(4)
    grads = torch.randn(4, 6, dtype=torch.float64, generator=generator)
    targets = torch.rand(4, 4, dtype=torch.float64, generator=generator) * 0.6 - 0.3
    order = torch.stack([torch.tensor([j for j in torch.randperm(4, generator=generator).tolist() if j != i])
                         for i in range(4)])
    weights, new_targets = gradvac_weights(grads @ grads.T, targets, order, beta=0.3)
    expected_targets, pc = targets.clone(), grads.clone()
    for i in range(4):
        for j in order[i].tolist():
            phi = pc[i] @ grads[j] / (pc[i].norm() * grads[j].norm() + 1e-8)
            t = expected_targets[i, j]
            if phi < t:
                pc[i] = pc[i] + grads[j] * pc[i].norm() * (t * (1 - phi**2).sqrt() - phi * (1 - t**2).sqrt()) / (
                    grads[j].norm() * (1 - t**2).sqrt() + 1e-8)
            expected_targets[i, j] = 0.7 * t + 0.3 * phi
    assert close(weights @ grads, pc.sum(0), atol=1e-9)
    assert close(new_targets, expected_targets, atol=1e-9)


# ----------------------------------------------------------------------------------------------- UPGrad

def test_upgrad_projections_lie_in_the_dual_cone() -> None:
    """Row i of V J is pi_J(g_i) / k with J pi >= 0. With the ridge reg_eps the QP's optimality conditions give
    (J J^T v_i)_j >= -reg_eps * trace(J J^T) * v_ij instead, so the exact check uses a negligible ridge."""
    generator = torch.Generator().manual_seed(5)
    for k, d in [(2, 3), (3, 5), (5, 4), (8, 20), (10, 30)]:
        jac = torch.randn(k, d, dtype=torch.float64, generator=generator)
        gram = jac @ jac.T
        exact = upgrad_projection_weights(gram, reg_eps=1e-12)
        assert ((exact @ jac) @ jac.T >= -1e-9).all()
        default = upgrad_projection_weights(gram)
        assert ((default @ jac) @ jac.T >= -1e-4 * gram.trace() * default - 1e-9).all()
        aggregation = UPGrad([str(i) for i in range(k)], reg_eps=1e-12).aggregate(jac, unit_losses(jac))
        assert ((jac @ aggregation.direction) >= -1e-9).all()
        assert close(aggregation.direction, (exact @ jac).sum(0), atol=1e-9)


def test_upgrad_non_conflicting_rows_give_the_mean() -> None:
    grads = torch.tensor([[1.0, 0.0, 1.0], [1.0, 2.0, 0.0]])
    aggregation = UPGrad(TASKS2).aggregate(grads, unit_losses(grads))
    assert close(aggregation.weights, [0.5, 0.5]) and close(aggregation.direction, [1.0, 1.0, 0.5])


def test_upgrad_conflicting_rows_hand_computed() -> None:
    """J = [[1, 0], [-1, 1]], dual cone {x1 >= 0, x2 >= x1}: pi(g1) = (0.5, 0.5) = g1 + 0.5 g2, pi(g2) = (0, 1) =
    g1 + g2; update (1/2)(pi(g1) + pi(g2)) = (0.25, 0.75), weights (1, 0.75)."""
    grads = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    exact = UPGrad(TASKS2, reg_eps=1e-12).aggregate(grads, unit_losses(grads))
    assert close(exact.weights, [1.0, 0.75], atol=1e-8) and close(exact.direction, [0.25, 0.75], atol=1e-8)
    default = UPGrad(TASKS2).aggregate(grads.float(), unit_losses(grads))  # reg_eps 1e-4 of the normalised Gramian
    assert close(default.direction, [0.25, 0.75], atol=1e-3)


def test_nonnegative_qp_matches_active_set_enumeration() -> None:
    generator = torch.Generator().manual_seed(6)
    for k, d in [(3, 2), (4, 10), (6, 3), (7, 12)]:
        jac = torch.randn(k, d, dtype=torch.float64, generator=generator)
        matrix = jac @ jac.T / (jac**2).sum() + 1e-4 * torch.eye(k, dtype=torch.float64)
        linear = torch.randn(3, k, dtype=torch.float64, generator=generator)
        solution = nonnegative_qp(matrix, linear)
        for b in range(3):
            best = None
            for size in range(k + 1):
                for free in map(list, itertools.combinations(range(k), size)):
                    x = torch.zeros(k, dtype=torch.float64)
                    if free:
                        x[free] = torch.linalg.solve(matrix[free][:, free], -linear[b, free])
                    if (x >= -1e-12).all() and (matrix @ x + linear[b] >= -1e-12).all():
                        best = x
                        break
                if best is not None:
                    break
            assert close(solution[b], best, atol=1e-8)


def test_upgrad_zero_gramian_gives_the_mean_weights() -> None:
    assert close(upgrad_weights(torch.zeros(3, 3)), [1 / 3, 1 / 3, 1 / 3])


# ----------------------------------------------------------------------------------------------- DB-MTL

def test_db_mtl_two_ema_steps_by_hand() -> None:
    """beta = 0.9, sigma = 0: g^1 = 0.1 g(1); g^2 = 0.9 g^1 + 0.1 g(2)."""
    g1 = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    g2 = torch.tensor([[1.0, 0.0], [0.0, 11.0]])
    method = DBMTL(TASKS2)
    first = method.aggregate(g1, unit_losses(g1))
    assert close(method.ema_grads, [[0.3, 0.0], [0.0, 0.1]])
    # alpha = max ||g^|| = 0.3; directions: 0.3 * (e1 + e2)
    assert close(first.direction, [0.3, 0.3]) and close(first.weights, [0.3 / (0.3 + 1e-8), 0.3 / (0.1 + 1e-8)])
    second = method.aggregate(g2, unit_losses(g2))
    ema = torch.tensor([[0.27 + 0.1, 0.0], [0.0, 0.09 + 1.1]])
    assert close(method.ema_grads, ema)
    assert close(second.direction, [1.19, 1.19], atol=1e-5)  # alpha = max(0.37, 1.19) = 1.19
    assert close(second.weights @ method.ema_grads, second.direction)
    assert int(method.steps) == 2


def test_db_mtl_decaying_beta() -> None:
    method = DBMTL(TASKS2, beta=0.9, beta_sigma=0.5)
    method.aggregate(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.ones(2))  # beta_1 = 0.9 -> g^ = 0.1 g
    method.aggregate(torch.tensor([[0.0, 0.0], [0.0, 0.0]]), torch.ones(2))  # beta_2 = 0.9/sqrt2
    assert close(method.ema_grads, 0.1 * 0.9 / math.sqrt(2) * torch.eye(2))


def test_db_mtl_direction_gives_every_task_the_largest_norm() -> None:
    ema = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 1.0]])
    aggregation = db_mtl_direction(ema)
    assert close(aggregation.direction, [2.0, 2.0, 2.0], atol=1e-6)
    assert close(aggregation.weights, [1.0, 4.0, 2.0], atol=1e-6)


def test_db_mtl_rejects_rep_mode() -> None:
    with pytest.raises(ConfigError, match="weighting.mode"):
        DBMTL(TASKS2, mode="rep")


# ----------------------------------------------------------------------------------------------- all methods

FACTORIES = {
    "nash_mtl": lambda k: NashMTL([str(i) for i in range(k)]),
    "aligned_mtl": lambda k: AlignedMTL([str(i) for i in range(k)]),
    "gradvac": lambda k: GradVac([str(i) for i in range(k)], seed=3),
    "upgrad": lambda k: UPGrad([str(i) for i in range(k)]),
    "db_mtl": lambda k: DBMTL([str(i) for i in range(k)]),
}


@pytest.mark.parametrize("name", list(FACTORIES))
def test_direction_does_not_depend_on_how_gradients_are_flattened(name: str) -> None:
    generator = torch.Generator().manual_seed(7)
    grads = torch.randn(4, 15, generator=generator) + torch.randn(1, 15, generator=generator)
    permutation = torch.randperm(15, generator=generator)
    plain = FACTORIES[name](4).aggregate(grads, unit_losses(grads))
    permuted = FACTORIES[name](4).aggregate(grads[:, permutation], unit_losses(grads))
    assert close(permuted.direction, plain.direction[permutation], atol=1e-5)
    assert close(permuted.weights, plain.weights, atol=1e-5)


@pytest.mark.parametrize("name", ["nash_mtl", "gradvac", "db_mtl"])
def test_state_dict_round_trip(name: str) -> None:
    generator = torch.Generator().manual_seed(8)
    steps = [torch.randn(4, 9, generator=generator) for _ in range(3)]
    original = FACTORIES[name](4)
    original.aggregate(steps[0], unit_losses(steps[0]))
    original.aggregate(steps[1], unit_losses(steps[1]))
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    restored = FACTORIES[name](4)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    expected = original.aggregate(steps[2], unit_losses(steps[2]))
    actual = restored.aggregate(steps[2], unit_losses(steps[2]))
    assert torch.equal(expected.direction, actual.direction) and torch.equal(expected.weights, actual.weights)


def tiny_model() -> MultiTaskModel:
    torch.manual_seed(0)
    backbone = hard_cnn(TASKS2, in_channels=1, input_size=(16,), spatial_dims=1, channels=(4, 4), kernel_size=3)
    heads = {t: ClassificationHead(4, 1, num_classes=3, hidden=8) for t in TASKS2}
    return MultiTaskModel(backbone, heads)


def model_losses(model: MultiTaskModel, seed: int) -> tuple[torch.Tensor, StepContext]:
    """The losses of one batch and the step context (with z, the representation the outputs were decoded from)."""
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.randn(8, 1, 16, generator=generator), torch.randint(0, 3, (8,), generator=generator)
    z = model.encode(x)
    outputs = model.decode(z, x)
    losses = torch.stack([torch.nn.functional.cross_entropy(outputs[t], y) for t in TASKS2])
    return losses, StepContext(model=model, step=0, scale=lambda loss: loss, shared_representation=z)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_one_step_on_a_model(name: str) -> None:
    model = tiny_model()
    method = FACTORIES[name](2)
    method.task_names = TASKS2
    losses, ctx = model_losses(model, 0)
    shared = model.shared_parameters()
    log_losses = torch.log(losses + 1e-8) if name == "db_mtl" else losses
    grads = task_gradient_matrix(log_losses, shared)
    reference = FACTORIES[name](2).aggregate(grads, log_losses.detach())
    expected_task_grads = {t: torch.autograd.grad(task_loss, model.task_parameters(t), retain_graph=True)
                           for t, task_loss in zip(TASKS2, log_losses)}
    weights = method.backward(losses, ctx)
    assert weights.shape == (2,) and torch.isfinite(weights).all()
    assert close(weights, reference.weights, atol=1e-5)
    assert close(torch.cat([p.grad.reshape(-1) for p in shared]), reference.direction, atol=1e-5)
    for t in TASKS2:
        params = model.task_parameters(t)
        assert all(torch.allclose(p.grad, e, atol=1e-6) for p, e in zip(params, expected_task_grads[t]))


def test_nash_reuses_alpha_between_updates() -> None:
    model = tiny_model()
    method = NashMTL(TASKS2, update_weights_every=2)
    method.backward(*model_losses(model, 0))
    alpha = method.alpha.clone()
    model.zero_grad()
    losses, ctx = model_losses(model, 1)
    shared = model.shared_parameters()
    unclipped = alpha @ task_gradient_matrix(losses, shared)
    weights = method.backward(losses, ctx)
    factor = min(1.0, 1.0 / (unclipped.norm().item() + 1e-6))
    assert close(method.alpha, alpha) and close(weights, alpha * factor, atol=1e-6)
    assert close(torch.cat([p.grad.reshape(-1) for p in shared]), unclipped * factor, atol=1e-6)
    assert method.calls == 2
    method.backward(*model_losses(model, 2))  # third call: a fresh solve
    assert not close(method.alpha, alpha, atol=1e-9)
