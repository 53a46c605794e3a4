"""Gradient-combination methods (grad_norm_prop, MGDA, PCGrad, CAGrad, IMTL) on hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from mtl_train.backbones.cnn import hard_cnn
from mtl_train.errors import ConfigError
from mtl_train.heads.classification import ClassificationHead
from mtl_train.model import MultiTaskModel
from mtl_train.weighting.base import StepContext
from mtl_train.weighting import cagrad
from mtl_train.weighting.cagrad import CAGrad, cagrad_dual, cagrad_weights
from mtl_train.weighting.grad_norm_prop import GradNormProportional
from mtl_train.weighting.gradients import task_gradient_matrix
from mtl_train.weighting.imtl import IMTL, imtl_g_weights
from mtl_train.weighting.mgda import MGDA, mgda_weights
from mtl_train.weighting.pcgrad import PCGrad, pcgrad_coefficients, random_orders
from mtl_train.weighting.solvers import gramian, min_norm_two_points

T2, T3 = ["a", "b"], ["a", "b", "c"]


def tensor(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def unit_losses(grads: torch.Tensor) -> torch.Tensor:
    """Losses of 1, one per row of ``grads`` (for rules that do not read the losses)."""
    return torch.ones(grads.shape[0])


def simplex_grid(k: int, n: int) -> torch.Tensor:
    """All points of the simplex in R^k (k = 2 or 3) with coordinates in multiples of 1/n, float64."""
    i = torch.arange(n + 1, dtype=torch.float64)
    if k == 2:
        return torch.stack([i / n, 1 - i / n], dim=1)
    a, b = torch.meshgrid(i, i, indexing="ij")
    keep = a + b <= n
    a, b = a[keep], b[keep]
    return torch.stack([a / n, b / n, (n - a - b) / n], dim=1)


# ------------------------------------------------------------------------------------------- grad_norm_prop


def test_grad_norm_prop_worked_example() -> None:
    """Norms 0.8 and 0.2 -> weights 0.8 / 1.0 and 0.2 / 1.0; direction 0.8 g1 + 0.2 g2 = (0.64, 0.04)."""
    out = GradNormProportional(T2).aggregate(tensor([[0.8, 0.0], [0.0, 0.2]]), torch.ones(2))
    assert out.weights.tolist() == pytest.approx([0.8, 0.2])
    assert out.direction.tolist() == pytest.approx([0.64, 0.04])


def test_grad_norm_prop_all_zero_gradients_is_uniform() -> None:
    out = GradNormProportional(T2).aggregate(torch.zeros(2, 3), torch.ones(2))
    assert out.weights.tolist() == [0.5, 0.5] and out.direction.abs().sum() == 0


# ------------------------------------------------------------------------------------------------------ MGDA


def test_min_norm_two_points_line_search() -> None:
    """v1 = (1, 0), v2 = (0, 1): midpoint; v2 on the far side of v1: stay at v1 (0); v1 = v2: 0."""
    assert min_norm_two_points(*map(torch.tensor, (1.0, 0.0, 1.0))).item() == pytest.approx(0.5)
    assert min_norm_two_points(*map(torch.tensor, (1.0, 2.0, 5.0))).item() == 0.0
    assert min_norm_two_points(*map(torch.tensor, (1.0, 1.0, 1.0))).item() == 0.0


def test_mgda_two_task_closed_form_orthogonal() -> None:
    out = MGDA(T2).aggregate(tensor([[1, 0], [0, 1]]), torch.ones(2))
    assert out.weights.tolist() == pytest.approx([0.5, 0.5])
    assert out.direction.tolist() == pytest.approx([0.5, 0.5])


def test_mgda_two_task_closed_form_interior() -> None:
    """g1 = (1, 0), g2 = (0, 2): alpha_1 = (g2 - g1).g2 / ||g1 - g2||^2 = 4/5; d = (0.8, 0.4), <d, g1> = <d, g2>."""
    out = MGDA(T2).aggregate(tensor([[1, 0], [0, 2]]), torch.ones(2))
    assert out.weights.tolist() == pytest.approx([0.8, 0.2])
    assert out.direction.tolist() == pytest.approx([0.8, 0.4])


def test_mgda_two_task_clip_active() -> None:
    """g1 = (1, 0), g2 = (2, 1): (g2 - g1).g2 / ||g1 - g2||^2 = 3/2, clipped to 1 -> alpha = (1, 0), d = g1
    (Sener's code would give 0.999)."""
    out = MGDA(T2).aggregate(tensor([[1, 0], [2, 1]]), torch.ones(2))
    assert out.weights.tolist() == [1.0, 0.0]
    assert out.direction.tolist() == [1.0, 0.0]


def test_mgda_identical_gradients() -> None:
    out = MGDA(T2).aggregate(tensor([[1, 2], [1, 2]]), torch.ones(2))
    assert out.weights.tolist() == [0.5, 0.5] and out.direction.tolist() == pytest.approx([1.0, 2.0])


@pytest.mark.parametrize("seed", range(8))
def test_mgda_frank_wolfe_matches_a_brute_force_grid(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    grads = torch.randn(3, 5, generator=generator) + torch.randn(1, 5, generator=generator) * (seed / 4)
    out = MGDA(T3).aggregate(grads, unit_losses(grads))
    assert out.weights.min() >= 0 and out.weights.sum().item() == pytest.approx(1.0)
    assert torch.allclose(out.direction, out.weights @ grads, atol=1e-6)
    grid_min = (simplex_grid(3, 400) @ grads.double()).norm(dim=1).min().item()
    fw_norm = out.direction.double().norm().item()
    assert fw_norm == pytest.approx(grid_min, abs=1e-4)
    assert fw_norm <= grid_min + 1e-6
    # optimality (KKT): <g_t, d> >= ||d||^2 for every t, with equality where alpha_t > 0
    projections = grads @ out.direction
    squared = out.direction @ out.direction
    assert (projections >= squared - 1e-4).all()
    assert torch.allclose(projections[out.weights > 1e-3], squared.expand(int((out.weights > 1e-3).sum())), atol=1e-4)


def test_mgda_k5_is_stationary() -> None:
    grads = torch.randn(5, 20, generator=torch.Generator().manual_seed(0))
    alpha = mgda_weights(gramian(grads))
    d = alpha.float() @ grads
    projections = grads @ d
    assert (projections >= d @ d - 1e-4).all()
    assert torch.allclose(projections[alpha > 1e-3], (d @ d).expand(int((alpha > 1e-3).sum())), atol=1e-4)


@pytest.mark.parametrize(
    ("normalization", "losses", "weights", "direction"),
    [
        # g1 = (2, 0), g2 = (0, 1); alpha solved on g_t / n_t, applied to the raw g_t
        ("none", None, [0.2, 0.8], [0.4, 0.8]),      # alpha_1 = (-2, 1).(0, 1) / 5
        ("l2", None, [0.5, 0.5], [1.0, 0.5]),        # normalised rows (1, 0), (0, 1)
        ("loss", [2.0, 1.0], [0.5, 0.5], [1.0, 0.5]),  # g / L = (1, 0), (0, 1)
        ("loss+", [1.0, 2.0], [0.2, 0.8], [0.4, 0.8]),  # n = L ||g|| = (2, 2): rows (1, 0), (0, 0.5)
    ],
)
def test_mgda_normalizations(normalization: str, losses: list[float] | None, weights: list[float],
                             direction: list[float]) -> None:
    method = MGDA(T2, normalization=normalization)
    out = method.aggregate(tensor([[2, 0], [0, 1]]), torch.ones(2) if losses is None else torch.tensor(losses))
    assert out.weights.tolist() == pytest.approx(weights)
    assert out.direction.tolist() == pytest.approx(direction)


def test_mgda_validates_options() -> None:
    with pytest.raises(ConfigError, match="weighting.normalization"):
        MGDA(T2, normalization="bogus")
    with pytest.raises(ConfigError, match="weighting.mode"):
        MGDA(T2, mode="bogus")


# ---------------------------------------------------------------------------------------------------- PCGrad


def test_pcgrad_conflicting_pair_hand_computed() -> None:
    """g1 = (1, 0), g2 = (-1, 1), g1.g2 = -1: g1^PC = g1 + g2 / 2 = (0.5, 0.5), g2^PC = g2 + g1 = (0, 1);
    sum (0.5, 1.5) = 2 g1 + 1.5 g2."""
    grads = tensor([[1, 0], [-1, 1]])
    coefficients = pcgrad_coefficients(gramian(grads), random_orders(2))
    projected = coefficients.float() @ grads
    assert projected.tolist() == [pytest.approx([0.5, 0.5]), pytest.approx([0.0, 1.0])]
    out = PCGrad(T2).aggregate(grads, unit_losses(grads))
    assert out.direction.tolist() == pytest.approx([0.5, 1.5])
    assert out.weights.tolist() == pytest.approx([2.0, 1.5])
    mean = PCGrad(T2, reduction="mean").aggregate(grads, unit_losses(grads))
    assert mean.direction.tolist() == pytest.approx([0.25, 0.75])


def test_pcgrad_non_conflicting_pair_is_the_plain_sum() -> None:
    out = PCGrad(T2).aggregate(tensor([[1, 0], [1, 1]]), torch.ones(2))
    assert out.weights.tolist() == [1.0, 1.0] and out.direction.tolist() == [2.0, 1.0]


def reference_pcgrad(grads: torch.Tensor, orders: torch.Tensor) -> torch.Tensor:
    """Direct vector-space PCGrad (Yu et al., Alg. 1) for given visiting orders."""
    projected = []
    for i in range(grads.shape[0]):
        g = grads[i].clone()
        for j in orders[i].tolist():
            dot = g @ grads[j]
            if dot < 0:
                g = g - dot / (grads[j] @ grads[j]) * grads[j]
        projected.append(g)
    return torch.stack(projected)


@pytest.mark.parametrize("order", [[[1, 2], [0, 2], [0, 1]], [[2, 1], [2, 0], [1, 0]], [[1, 2], [2, 0], [0, 1]]])
def test_pcgrad_three_tasks_matches_the_vector_space_loop(order: list[list[int]]) -> None:
    grads = torch.tensor([[1.0, 0.2, -0.5, 0.3], [-0.8, 0.6, 0.1, 0.0], [0.1, -0.9, 0.7, -0.4]], dtype=torch.float64)
    orders = torch.tensor(order)
    coefficients = pcgrad_coefficients(grads @ grads.T, orders)
    assert not torch.allclose(coefficients, torch.eye(3, dtype=torch.float64))  # some projection happened
    expected = reference_pcgrad(grads, orders)
    assert torch.allclose(coefficients @ grads, expected, atol=1e-12)
    assert torch.allclose(coefficients.sum(0) @ grads, expected.sum(0), atol=1e-12)


def test_pcgrad_orders_exclude_self_and_are_reproducible() -> None:
    orders = random_orders(4, torch.Generator().manual_seed(3))
    assert orders.shape == (4, 3)
    for i, row in enumerate(orders.tolist()):
        assert sorted(row) == [j for j in range(4) if j != i]
    assert torch.equal(orders, random_orders(4, torch.Generator().manual_seed(3)))


def test_pcgrad_generator_state_is_checkpointed() -> None:
    grads = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    method = PCGrad(["a", "b", "c", "d"], seed=5)
    method.aggregate(grads, unit_losses(grads))
    state = method.state_dict()
    expected = [method.aggregate(grads, unit_losses(grads)).weights for _ in range(3)]
    restored = PCGrad(["a", "b", "c", "d"], seed=0)
    restored.load_state_dict(state)
    assert all(torch.equal(restored.aggregate(grads, unit_losses(grads)).weights, w) for w in expected)


# ---------------------------------------------------------------------------------------------------- CAGrad


def test_cagrad_with_c_zero_is_the_mean_gradient() -> None:
    grads = torch.randn(3, 7, generator=torch.Generator().manual_seed(0))
    out = CAGrad(T3, c=0.0).aggregate(grads, unit_losses(grads))
    assert out.weights.tolist() == pytest.approx([1 / 3] * 3, abs=1e-7)
    assert torch.allclose(out.direction, grads.mean(0), atol=1e-7)


CONFLICT = tensor([[1, 0], [-2, 1]])  # g0 = (-0.5, 0.5): <g1, g0> = -0.5 < 0


@pytest.mark.parametrize("c", [0.1, 0.4, 0.9])
def test_cagrad_stays_in_the_ball_and_helps_the_worst_task(c: float) -> None:
    g0 = CONFLICT.mean(0)
    out = CAGrad(T2, c=c).aggregate(CONFLICT, unit_losses(CONFLICT))
    unscaled = out.direction * (1 + c * c)
    assert (unscaled - g0).norm().item() <= c * g0.norm().item() + 1e-5
    assert (CONFLICT @ out.direction).min() > (CONFLICT @ g0).min()
    assert torch.allclose(out.direction, out.weights @ CONFLICT, atol=1e-6)
    # the primal optimum: max over d on the ball's boundary of min_i <g_i, d> (brute force over angles)
    angles = torch.linspace(0, 2 * math.pi, 200_001, dtype=torch.float64)
    circle = torch.stack([angles.cos(), angles.sin()], dim=1) * c * g0.double().norm()
    best = (g0.double() + circle).matmul(CONFLICT.double().T).min(dim=1).values.max().item()
    assert (CONFLICT @ unscaled).min().item() == pytest.approx(best, abs=1e-4)


def dual_objective(w: torch.Tensor, gram: torch.Tensor, c: float) -> torch.Tensor:
    rho = c * gram.mean().sqrt()
    return w @ gram.mean(1) + rho * (((w @ gram) * w).sum(-1)).clamp_min(0).sqrt()


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("c", [0.2, 0.5, 2.0])
def test_cagrad_dual_matches_a_brute_force_grid(seed: int, c: float) -> None:
    generator = torch.Generator().manual_seed(seed)
    grads = (torch.randn(3, 6, generator=generator) + 0.5 * torch.randn(1, 6, generator=generator)).double()
    gram = grads @ grads.T
    w = cagrad_dual(gram, c)
    assert w.min() >= 0 and w.sum().item() == pytest.approx(1.0)
    grid = dual_objective(simplex_grid(3, 400), gram, c).min().item()
    assert dual_objective(w, gram, c).item() <= grid + 1e-9


def test_cagrad_is_finite_when_the_gradients_are_pareto_stationary() -> None:
    """0 in the convex hull and c >= 1: the dual's optimum is the kink g_w = 0, where d is undefined; the weights stay
    finite and the update stays finite."""
    grads = tensor([[1, 0], [-1, 0], [0, 1], [0, -1]])
    out = CAGrad(["a", "b", "c", "d"], c=2.0).aggregate(grads, unit_losses(grads))
    assert torch.isfinite(out.weights).all() and torch.isfinite(out.direction).all()


@pytest.mark.parametrize("rows", [[[1, 0], [0, 0], [-2, 1]], [[1, 0], [0, 0], [0, 1]]])
@pytest.mark.parametrize("enumeration", [True, False])
def test_cagrad_leaves_a_zero_gradient_out(rows, enumeration: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A zero row (task switched off) gets weight 0, and the other two get the two-task CAGrad weights (the zero row
    used to win the dual, with a recorded weight of about 2e7 and no conflict-averse term), by support enumeration
    and by the interior point."""
    if not enumeration:
        monkeypatch.setattr(cagrad, "ENUMERATION_MAX_TASKS", 0)
    grads = tensor(rows)
    weights = cagrad_weights(gramian(grads))
    assert weights[1].item() == 0.0 and weights.abs().max() < 10
    expected = cagrad_weights(gramian(grads[[0, 2]]))
    assert weights[[0, 2]].tolist() == pytest.approx(expected.tolist(), abs=1e-6)
    assert cagrad_weights(torch.zeros(3, 3, dtype=torch.float64)).tolist() == [0.0, 0.0, 0.0]


def test_cagrad_without_rescale() -> None:
    gram = gramian(CONFLICT)
    assert torch.allclose(cagrad_weights(gram, 0.4, rescale=False) / 1.16, cagrad_weights(gram, 0.4, rescale=True))


# ------------------------------------------------------------------------------------------------------ IMTL


def test_imtl_g_two_tasks_hand_computed() -> None:
    """g1 = (1, 0), g2 = (0, 2): d = (a1, 2 a2) projects equally on u1 = (1, 0), u2 = (0, 1) iff a1 = 2 a2."""
    out = IMTL(T2, loss_balance=False).aggregate(tensor([[1, 0], [0, 2]]), torch.ones(2))
    assert out.weights.tolist() == pytest.approx([2 / 3, 1 / 3])
    assert out.direction.tolist() == pytest.approx([2 / 3, 2 / 3])


def test_imtl_g_equal_projections_on_random_gradients() -> None:
    grads = torch.randn(3, 10, generator=torch.Generator().manual_seed(0))
    out = IMTL(T3).aggregate(grads, unit_losses(grads))
    assert out.weights.sum().item() == pytest.approx(1.0, abs=1e-6)
    projections = (grads / grads.norm(dim=1, keepdim=True)) @ out.direction
    assert torch.allclose(projections, projections.mean().expand(3), atol=1e-5)


def test_imtl_g_zero_gradient_gets_weight_zero_and_the_others_their_own_imtl_g() -> None:
    """Row 2 is zero (a task switched off): weight 0, and rows 1 and 3 get the two-task answer of
    g1 = (1, 0), g3 = (0, 2), alpha = (2/3, 1/3), so d = (2/3, 2/3) (not d = 0)."""
    out = IMTL(T3, loss_balance=False).aggregate(tensor([[1, 0], [0, 0], [0, 2]]), torch.ones(3))
    assert out.weights.tolist() == pytest.approx([2 / 3, 0.0, 1 / 3])
    assert out.direction.tolist() == pytest.approx([2 / 3, 2 / 3])
    assert imtl_g_weights(torch.zeros(2, 2, dtype=torch.float64)).tolist() == [0.0, 0.0]


@pytest.mark.parametrize(("rows", "weights", "projection"), [
    # identical g1 = g2: K^+ 1 = (1/2, 1/2, 1), c / ||g|| = (1/2, 1/2, 1/2): equal weights, d = (2/3, 2/3)
    ([[1, 0], [1, 0], [0, 2]], [1 / 3, 1 / 3, 1 / 3], 2 / 3),
    # g3 = 3 g1: K^+ 1 = (1/2, 1, 1/2), c / ||g|| = (1/2, 1/2, 1/6), alpha = (3/7, 3/7, 1/7), d = (6/7, 6/7)
    ([[1, 0], [0, 2], [3, 0]], [3 / 7, 3 / 7, 1 / 7], 6 / 7),
])
def test_imtl_g_dependent_gradients_get_the_pseudo_inverse_solution(rows, weights, projection: float) -> None:
    """Parallel gradients: equal projections are possible, and the minimum-norm c = K^+ 1 gives them, symmetric in
    the parallel tasks (the ridged closed form gave identical tasks the weights (1/2, 0, 1/2))."""
    grads = tensor(rows)
    alpha = imtl_g_weights(gramian(grads))
    assert alpha.tolist() == pytest.approx(weights)
    direction = alpha.float() @ grads
    assert direction.norm() > 0
    assert ((grads / grads.norm(dim=1, keepdim=True)) @ direction).tolist() == pytest.approx([projection] * 3)


def test_imtl_g_inconsistent_dependent_gradients_get_the_least_squares_direction() -> None:
    """g3 = g1 + g2 with g1, g2 orthogonal unit vectors: only d = 0 projects equally (the closed form's answer). The
    least-squares solution is d = (x, x), x = (2 + sqrt 2) / 4, with minimum-norm c = (x/2, x/2, x/sqrt 2), so
    alpha = (1/3, 1/3, 1/3) and d = (2/3, 2/3): every task's loss decreases."""
    alpha = imtl_g_weights(gramian(tensor([[1, 0], [0, 1], [1, 1]])))
    assert alpha.tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3])


def test_imtl_g_float32_rounding_does_not_hide_a_dependence() -> None:
    """1000-dimensional float32 gradients with g2 = g1: the unit Gramian's rounding (~1e-7) is below the rank
    tolerance, so the two identical tasks get equal weights and all projections are equal."""
    generator = torch.Generator().manual_seed(3)
    base = torch.randn(2, 1000, generator=generator)
    grads = torch.stack([base[0], base[0], base[1]])
    out = IMTL(T3, loss_balance=False).aggregate(grads, unit_losses(grads))
    assert out.weights[0].item() == pytest.approx(out.weights[1].item(), rel=1e-5)
    projections = (grads / grads.norm(dim=1, keepdim=True)) @ out.direction
    assert torch.allclose(projections, projections.mean().expand(3), rtol=1e-5)


def tiny_model() -> MultiTaskModel:
    torch.manual_seed(0)
    backbone = hard_cnn(T2, in_channels=1, input_size=(16,), spatial_dims=1, channels=(4, 4), kernel_size=3)
    heads = {t: ClassificationHead(4, 1, num_classes=3, hidden=8) for t in T2}
    return MultiTaskModel(backbone, heads)


def model_losses(model: MultiTaskModel) -> tuple[torch.Tensor, torch.Tensor]:
    """(losses, z) of one batch, with z the shared representation the outputs were decoded from."""
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 1, 16, generator=generator), torch.randint(0, 3, (8,), generator=generator)
    z = model.encode(x)
    outputs = model.decode(z, x)
    return torch.stack([torch.nn.functional.cross_entropy(outputs[t], y) for t in T2]), z


def test_imtl_backward_trains_the_log_scales_and_weights_the_shared_update() -> None:
    model = tiny_model()
    losses, z = model_losses(model)
    method = IMTL(T2)
    with torch.no_grad():
        method.log_scales.copy_(torch.tensor([0.5, -0.3]))
    shared = model.shared_parameters()
    scales = torch.tensor([0.5, -0.3]).exp()
    grads = task_gradient_matrix(losses * scales, shared)
    alpha = imtl_g_weights(gramian(grads)).float()
    weights = method.backward(losses, StepContext(model=model, step=0, scale=lambda loss: loss,
                                                  shared_representation=z))

    assert torch.allclose(method.log_scales.grad, scales * losses.detach() - 1, atol=1e-6)  # e^s L - 1
    assert torch.allclose(weights, alpha * scales, atol=1e-5)
    flat = torch.cat([p.grad.reshape(-1) for p in shared])
    assert torch.allclose(flat, alpha @ grads, atol=1e-5)
    head_grad = model.heads["b"].parameters().__next__().grad
    assert head_grad is not None and torch.isfinite(head_grad).all()
    assert [g["params"] for g in method.optimizer_groups()] == [[method.log_scales]]
    assert IMTL(T2, loss_balance=False).optimizer_groups() == []


def test_imtl_under_a_schedule_updates_the_trunk_with_the_active_task() -> None:
    """Task b switched off (loss exactly 0): IMTL-G of the one active task is alpha = (1, 0), so the shared gradient
    is task a's (not 0), and b's log-scale gets no gradient (not -1 per step)."""
    model = tiny_model()
    losses, z = model_losses(model)
    losses = losses * torch.tensor([1.0, 0.0])
    expected = task_gradient_matrix(losses, model.shared_parameters())[0]
    method = IMTL(T2)
    weights = method.backward(losses, StepContext(model=model, step=0, scale=lambda loss: loss,
                                                  shared_representation=z))
    assert weights.tolist() == pytest.approx([1.0, 0.0])
    assert torch.allclose(torch.cat([p.grad.reshape(-1) for p in model.shared_parameters()]), expected, atol=1e-6)
    assert method.log_scales.grad[1].item() == 0.0


def test_imtl_backward_scales_the_log_scale_gradient_like_the_loss() -> None:
    model = tiny_model()
    losses, z = model_losses(model)
    method = IMTL(T2)
    method.backward(losses, StepContext(model=model, step=0, scale=lambda loss: 8.0 * loss, loss_scale=8.0,
                                        shared_representation=z))
    assert torch.allclose(method.log_scales.grad, 8.0 * (losses.detach() - 1), atol=1e-5)


# -------------------------------------------------------------------------------------- every method, model step


def methods() -> dict[str, object]:
    return {
        "grad_norm_prop": lambda: GradNormProportional(T3),
        "mgda": lambda: MGDA(T3),
        "mgda_l2": lambda: MGDA(T3, normalization="l2"),
        "pcgrad": lambda: PCGrad(T3, seed=7),
        "cagrad": lambda: CAGrad(T3),
        "imtl": lambda: IMTL(T3),
    }


@pytest.mark.parametrize("name", list(methods()))
def test_invariant_to_how_rows_are_flattened(name: str) -> None:
    generator = torch.Generator().manual_seed(2)
    grads = torch.randn(3, 50, generator=generator)
    grads[1] -= 0.8 * grads[0]  # some conflict
    permutation = torch.randperm(50, generator=generator)
    direct = methods()[name]().aggregate(grads, unit_losses(grads))
    permuted = methods()[name]().aggregate(grads[:, permutation], unit_losses(grads))
    assert torch.allclose(permuted.direction, direct.direction[permutation], atol=1e-5)
    assert torch.allclose(permuted.weights, direct.weights, atol=1e-5)
    assert torch.allclose(direct.direction, direct.weights @ grads, atol=1e-5)


@pytest.mark.parametrize("mode", ["params", "rep"])
@pytest.mark.parametrize("name", ["grad_norm_prop", "mgda", "pcgrad", "cagrad", "imtl"])
def test_backward_on_a_model_sets_the_shared_gradient(name: str, mode: str) -> None:
    model = tiny_model()
    losses, z = model_losses(model)
    cls = {"grad_norm_prop": GradNormProportional, "mgda": MGDA, "pcgrad": PCGrad, "cagrad": CAGrad, "imtl": IMTL}[name]
    kwargs = {"normalization": "loss+"} if name == "mgda" else {"loss_balance": False} if name == "imtl" else {}
    method = cls(T2, mode=mode, **kwargs)
    target = [z] if mode == "rep" else model.shared_parameters()
    grads = task_gradient_matrix(losses, target)
    expected = method.aggregate(grads, losses.detach())
    if name == "pcgrad":
        method = cls(T2, mode=mode)  # fresh generator: the same orders as the expectation
    ctx = StepContext(model=model, step=0, scale=lambda loss: loss, shared_representation=z)
    weights = method.backward(losses, ctx)
    assert torch.allclose(weights, expected.weights, atol=1e-5)
    for p in model.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    if mode == "params":
        flat = torch.cat([p.grad.reshape(-1) for p in model.shared_parameters()])
        assert torch.allclose(flat, expected.direction, atol=1e-5)
