"""MoDo, SDMGrad and PCD, and the weight EMA (CR-MOGM) every gradient method offers: worked examples to the printed
digits, edge cases (zero rows, k = 1, aligned and conflicting pairs, inactive tasks), the sub-batch sampling on real
models, and exact resumption of their state.

Worked-example inputs (k = 3 tasks, d = 4): J, a second batch J2 and a third J3 (close to J), losses of 1.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import CONFIG_DIR, compose_config
from omegaconf import OmegaConf
from state_round_trip import assert_state_round_trip_resumes_exactly
from tiny_trainer import TASKS as TWO_TASKS
from tiny_trainer import tiny_model, tiny_trainer
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensorMode

from mtl_train.backbones.cnn import hard_cnn
from mtl_train.backbones.soft import SoftSharingBackbone
from mtl_train.errors import ConfigError
from mtl_train.heads.classification import ClassificationHead
from mtl_train.model import MultiTaskModel
from mtl_train.schedules.pretrain_then_joint import PretrainThenJointSchedule
from mtl_train.utils.instantiate import check_node, instantiate
from mtl_train.weighting.base import StepContext
from mtl_train.weighting.db_mtl import DBMTL, db_mtl_direction
from mtl_train.weighting.gradient_based import Aggregation, GradientWeighting, weighted_sum
from mtl_train.weighting.gradients import task_gradient_matrix
from mtl_train.weighting.mgda import MGDA
from mtl_train.weighting.modo import MoDo, modo_weights
from mtl_train.weighting.pcd import PCD, pcd_coefficients, pcd_weights
from mtl_train.weighting.pcgrad import PCGrad
from mtl_train.weighting.sdmgrad import SDMGrad, sdmgrad_weights
from mtl_train.weighting.solvers import project_onto_simplex

TASKS = ["a", "b", "c"]
F64 = torch.float64
J = torch.tensor([[2.0, 0.0, 1.0, -1.0], [1.0, 1.0, -2.0, 0.0], [-1.0, 2.0, 0.0, 1.0]], dtype=F64)
J2 = torch.tensor([[1.8, 0.2, 1.0, -0.8], [0.9, 1.1, -1.7, 0.1], [-1.2, 1.9, 0.3, 1.0]], dtype=F64)
J3 = torch.tensor([[2.2, -0.1, 0.9, -1.1], [1.2, 0.8, -2.1, -0.2], [-0.8, 2.1, 0.2, 0.9]], dtype=F64)
J_ALIGNED = torch.tensor([[1.0, 2.0, 0.0, 0.0], [2.0, 1.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0]], dtype=F64)
UNIFORM = torch.full((3,), 1.0 / 3.0, dtype=F64)
ALL = torch.ones(3, dtype=torch.bool)
ONES = torch.ones(3, dtype=F64)


def close(actual: Tensor, expected: list[float], atol: float = 1e-6) -> bool:
    return torch.allclose(actual.detach().to(F64), torch.tensor(expected, dtype=F64), atol=atol, rtol=0)


def without_row(matrix: Tensor, row: int) -> Tensor:
    zeroed = matrix.clone()
    zeroed[row] = 0.0
    return zeroed


# ------------------------------------------------------------------------------------------- simplex projection

@pytest.mark.parametrize(("values", "active", "expected"), [
    ([0.2, 0.3, 0.5], [True, True, True], [0.2, 0.3, 0.5]),  # already on the simplex
    ([1.0, 1.0, 1.0], [True, True, True], [1 / 3, 1 / 3, 1 / 3]),  # theta = 2/3
    ([0.6, 0.5, 0.1], [True, True, True], [0.6 - 1 / 15, 0.5 - 1 / 15, 0.1 - 1 / 15]),  # theta = (1.2 - 1) / 3
    ([0.8, 0.6, 0.0], [True, True, True], [0.6, 0.4, 0.0]),  # 0.0 < (1.4 - 1) / 3: rho = 2, theta = 0.2
    ([2.0, 0.0, -1.0], [True, True, True], [1.0, 0.0, 0.0]),  # rho = 1, theta = 1
    ([0.6, 9.0, 0.1], [True, False, True], [0.75, 0.0, 0.25]),  # the inactive 9 is left out: theta = -0.15
    ([0.6, 9.0, 0.1], [False, False, False], [0.0, 0.0, 0.0]),
])
def test_projection_onto_the_simplex_by_hand(values: list[float], active: list[bool], expected: list[float]) -> None:
    """Sorted values u, prefix sums S_j, thresholds (S_j - 1) / j; rho = the last j with u_j above its threshold."""
    result = project_onto_simplex(torch.tensor(values, dtype=F64), torch.tensor(active))
    assert close(result, expected, atol=1e-12)


# -------------------------------------------------------------------------------------------------------- MoDo

def test_modo_worked_example() -> None:
    """A = J J2^T = [[5.4, 0, -3.1], [0, 5.4, 0.1], [-2.2, 1.4, 6.0]], lambda_0 = 1/3: A lambda + rho lambda =
    (0.8, 1.866667, 1.766667), lambda_0 - 0.1 * that = (0.253333, 0.146667, 0.156667), projected (theta =
    -0.147778)."""
    cross = J @ J2.T
    assert close(cross @ UNIFORM + 0.1 * UNIFORM, [0.8, 1.866667, 1.766667])
    weights = modo_weights(UNIFORM, cross, gamma=0.1, rho=0.1)
    assert close(weights, [0.401111, 0.294444, 0.304444])
    assert close(weights @ J3, [0.992222, 0.834778, -0.196444, -0.226111])  # three samples: update on J3
    assert close(weights @ ((J + J2) / 2), [0.706944, 0.942944, -0.097944, -0.041833])  # two: on both batches
    assert close(modo_weights(weights, J2 @ J3.T, 0.1, 0.1), [0.345706, 0.221586, 0.432709])  # the next step
    libmtl = modo_weights(UNIFORM, cross, gamma=1e-3, rho=0.1)  # LibMTL's step size keeps lambda near uniform
    assert close(libmtl, [0.334011, 0.332944, 0.333044])
    assert close(libmtl @ J3, [0.867922, 0.932348, -0.331964, -0.134261])


def test_modo_keeps_its_weights_between_steps() -> None:
    method = MoDo(TASKS)
    assert close(method.cross_weights(J @ J2.T, ALL), [0.401111, 0.294444, 0.304444])
    assert close(method.cross_weights(J2 @ J3.T, ALL), [0.345706, 0.221586, 0.432709])
    assert close(method.lambdas, [0.345706, 0.221586, 0.432709])


def test_modo_edge_cases() -> None:
    """A zero row only feels the ridge, so its weight grows: A lambda + rho lambda = (1.0333, 0.0333, 1.0333) -> (0.3,
    0.4, 0.3). k = 1: lambda = 1. Two opposite unit gradients: A lambda = 0, the ridge shifts both equally, (0.5,
    0.5). Aligned (2, 0) and (1, 0): A lambda + rho lambda = (3.05, 1.55), step (0.195, 0.345), theta = -0.23 ->
    (0.425, 0.575): the weight moves to the smaller gradient, as min-norm does."""
    zero_row = without_row(J, 1)
    assert close(modo_weights(UNIFORM, zero_row @ zero_row.T, 0.1, 0.1), [0.3, 0.4, 0.3])
    assert close(modo_weights(torch.ones(1, dtype=F64), torch.tensor([[4.0]], dtype=F64), 0.1, 0.1), [1.0])
    half = torch.full((2,), 0.5, dtype=F64)
    opposite = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=F64)
    assert close(modo_weights(half, opposite @ opposite.T, 0.1, 0.1), [0.5, 0.5])
    aligned = torch.tensor([[2.0, 0.0], [1.0, 0.0]], dtype=F64)
    assert close(modo_weights(half, aligned @ aligned.T, 0.1, 0.1), [0.425, 0.575], atol=1e-12)
    one_task = MoDo(["a"]).aggregate(torch.tensor([[3.0, 4.0]]), torch.ones(1))
    assert one_task.weights.tolist() == [1.0] and one_task.direction.tolist() == [3.0, 4.0]


def test_modo_inactive_task_keeps_its_weight_and_gets_none() -> None:
    """c off (zero row): the step and projection run on a and b, whose weights sum to 1; c's stored 1/3 stays.
    A = J J2^T on a, b: (5.4, 5.4) lambda + rho -> step (1/3 - 0.1 * 1.8333, same) = (0.15, 0.15), theta = -0.35."""
    method = MoDo(TASKS)
    cross = without_row(J, 2) @ without_row(J2, 2).T
    weights = method.cross_weights(cross, torch.tensor([True, True, False]))
    assert close(weights, [0.5, 0.5, 0.0], atol=1e-12)
    assert close(method.lambdas, [0.5, 0.5, 1 / 3], atol=1e-12)
    off = method.aggregate(torch.zeros(3, 4), torch.zeros(3))  # every task off: no weight, no NaN, no state moved
    assert off.weights.tolist() == [0.0, 0.0, 0.0] and off.direction.tolist() == [0.0] * 4
    assert close(method.lambdas, [0.5, 0.5, 1 / 3], atol=1e-12)


# ----------------------------------------------------------------------------------------------------- SDMGrad

def test_sdmgrad_worked_example() -> None:
    """A = J J2^T; torchjd's defaults (inner lr 10) and LibMTL's (5); the authors' code as written (A = J J^T)."""
    w, omega = sdmgrad_weights(J @ J2.T, UNIFORM)
    assert close(w, [0.0, 0.617716, 0.382284]) and close(omega, [0.076923, 0.552089, 0.370988])
    assert close(omega @ J3, [0.534948, 1.213053, -1.015959, 0.138856])
    assert close(sdmgrad_weights(J2 @ J3.T, w)[1], [0.076923, 0.076923, 0.846154])  # step 2, warm-started
    w, omega = sdmgrad_weights(J @ J2.T, UNIFORM, lr=5.0)
    assert close(w, [0.0, 0.577524, 0.422476]) and close(omega, [0.076923, 0.521172, 0.401905])
    assert close(omega @ J3, [0.473114, 1.253245, -0.944850, 0.172864])
    assert close(sdmgrad_weights(J @ J.T, UNIFORM)[0], [0.0, 0.0, 1.0])


def test_sdmgrad_keeps_its_inner_weights_between_steps() -> None:
    method = SDMGrad(TASKS)
    method.cross_weights(J @ J2.T, ALL)
    assert close(method.inner_weights, [0.0, 0.617716, 0.382284])
    assert close(method.cross_weights(J2 @ J3.T, ALL), [0.076923, 0.076923, 0.846154])


def test_sdmgrad_edge_cases() -> None:
    """Every weight is at least lamda / k / (1 + lamda) = 0.3 / 3 / 1.3 = 0.076923; a zero row takes the rest (the
    min-norm point), so d collapses towards lamda / (1 + lamda) times the mean. Aligned (2, 0), (1, 0): w = (0, 1),
    omega = (0.15, 1.15) / 1.3. Opposite unit pair: w = (0.5, 0.5) (A (w + lamda w~) = 0)."""
    omega = sdmgrad_weights(without_row(J, 1) @ without_row(J, 1).T, UNIFORM)[1]
    assert close(omega, [0.076923, 0.846154, 0.076923])
    assert sdmgrad_weights(J @ J2.T, UNIFORM)[1].min() >= 0.3 / 3 / 1.3 - 1e-12
    half = torch.full((2,), 0.5, dtype=F64)
    aligned = torch.tensor([[2.0, 0.0], [1.0, 0.0]], dtype=F64)
    assert close(sdmgrad_weights(aligned @ aligned.T, half)[1], [0.15 / 1.3, 1.15 / 1.3], atol=1e-12)
    opposite = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=F64)
    assert close(sdmgrad_weights(opposite @ opposite.T, half)[1], [0.5, 0.5], atol=1e-12)
    one_task = SDMGrad(["a"]).aggregate(torch.tensor([[3.0, 4.0]]), torch.ones(1))
    assert one_task.weights.tolist() == pytest.approx([1.0]) and one_task.direction.tolist() == pytest.approx([3, 4])


def test_sdmgrad_inner_solver_reaches_the_minimiser_with_a_small_step() -> None:
    """(3, 0) and (-1, 0): 1/2 ||3 (w_1 + 0.15) - (w_2 + 0.15)||^2 vanishes at 4 w_1 = 0.7, w_1 = 0.175. The default
    step (10) overshoots on this rank-1 problem (as in the reference implementations); a step of 0.5 converges."""
    grads = torch.tensor([[3.0, 0.0], [-1.0, 0.0]], dtype=F64)
    w, omega = sdmgrad_weights(grads @ grads.T, torch.full((2,), 0.5, dtype=F64), lr=0.5, iterations=200)
    assert close(w, [0.175, 0.825], atol=1e-9)
    assert abs((omega @ grads)[0].item()) < 1e-9


def test_sdmgrad_inactive_task_is_left_out_of_the_preference_and_the_simplex() -> None:
    """c off: w~ = (1/2, 1/2, 0); with A = diag(5.4, 5.4, 0) (a and b orthogonal, of equal norms; c's zero row)
    w = (1/2, 1/2) and omega = (0.5 + 0.15) / 1.3 = 0.5 each; c's stored w stays 1/3."""
    method = SDMGrad(TASKS)
    cross = torch.diag(torch.tensor([5.4, 5.4, 0.0], dtype=F64))
    omega = method.cross_weights(cross, torch.tensor([True, True, False]))
    assert close(omega, [0.5, 0.5, 0.0], atol=1e-12)
    assert close(method.inner_weights, [0.5, 0.5, 1 / 3], atol=1e-12)
    off = method.aggregate(torch.zeros(3, 4), torch.zeros(3))
    assert off.weights.tolist() == [0.0, 0.0, 0.0] and torch.isfinite(off.direction).all()


# --------------------------------------------------------------------------------------------------------- PCD

def test_pcd_worked_example() -> None:
    """Fresh state: s_i = 1 / sqrt(6 + 1e-8), the normalised rows are unit vectors with g~1.g~2 = 0, g~1.g~3 = -0.5.
    tau = 0.02: only constraint 3 binds, mu = (0, 0.52), ||d~|| = 0.866256; tau = 0.5: both bind."""
    for tau, weights, direction in [
        (0.02, [1.154393, 0.0, 0.600284], [1.708501, 1.200568, 1.154393, -0.554109]),
        (0.5, [0.923936, 0.316778, 0.871140], [1.293511, 2.059058, 0.290380, -0.052796]),
    ]:
        aggregation = PCD(TASKS, tau=tau).aggregate(J, ONES)
        assert close(aggregation.weights, weights) and close(aggregation.direction, direction)
        assert aggregation.direction.norm().item() == pytest.approx(6**0.5, abs=1e-9)  # the primary's norm
    unit = J / J.norm(dim=1, keepdim=True)
    coefficients = pcd_coefficients(unit @ unit.T, 0, torch.full((3,), 0.02, dtype=F64))
    assert close(coefficients, [1.0, 0.0, 0.52])
    assert (coefficients @ unit @ unit.T)[1].item() == pytest.approx(0.086667, abs=1e-6)  # g~2 . d~ >= 0.02
    assert (coefficients @ unit).norm().item() == pytest.approx(0.866256, abs=1e-6)


def test_pcd_edge_cases() -> None:
    """Aligned rows: g~1 is feasible, d = g1. k = 1: g1. A secondary opposite to the primary: mu = 1 + tau,
    d~ = -tau g~1, rescaled to -g1. Two opposite secondaries: infeasible, d = g1. A zero secondary constrains
    nothing. A zero primary: d = 0."""
    assert close(PCD(TASKS).aggregate(J_ALIGNED, ONES).direction, [1.0, 2.0, 0.0, 0.0], atol=1e-9)
    assert close(PCD(["a"]).aggregate(J[:1], ONES[:1]).direction, [2.0, 0.0, 1.0, -1.0], atol=1e-9)
    opposite = torch.tensor([[1.0, 2.0, 0.0], [-1.0, -2.0, 0.0]], dtype=F64)
    aggregation = PCD(TWO_TASKS).aggregate(opposite, ONES[:2])
    assert close(aggregation.direction, [-1.0, -2.0, 0.0], atol=1e-9)
    assert close(aggregation.weights, [1 / 0.02, 1.02 / 0.02], atol=1e-6)  # (1, 1 + tau) / ||d~|| (s ||g1|| = 1)
    infeasible = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, -1.0, 0.0]], dtype=F64)
    assert close(PCD(TASKS).aggregate(infeasible, ONES).direction, [1.0, 0.0, 0.0], atol=1e-9)
    without_c = PCD(TWO_TASKS).aggregate(J[:2], ONES[:2])  # g~1 . g~2 = 0 < 0.02: mu_2 = 0.02
    assert close(without_c.weights * (1 + 0.02**2) ** 0.5, [1.0, 0.02], atol=1e-9)  # (1, mu) / ||d~||
    zero_secondary = PCD(TASKS).aggregate(without_row(J, 2), ONES)
    assert close(zero_secondary.weights, [*without_c.weights.tolist(), 0.0], atol=1e-12)
    zero_primary = PCD(TASKS).aggregate(without_row(J, 0), ONES)
    assert zero_primary.direction.tolist() == [0.0] * 4 and zero_primary.weights.tolist() == [0.0] * 3


def test_pcd_primary_by_name_and_tau_per_task() -> None:
    """primary=c with tau (0.5, 0.5) for a and b is the worked example with the rows in the order c, a, b."""
    order = [2, 0, 1]
    expected = PCD(TASKS, tau=0.5).aggregate(J[order], ONES)
    aggregation = PCD(TASKS, primary="c", tau=[0.5, 0.5]).aggregate(J, ONES)
    assert close(aggregation.direction, expected.direction.tolist(), atol=1e-9)
    assert close(aggregation.weights[order], expected.weights.tolist(), atol=1e-9)
    strict = PCD(TASKS, tau=[0.5, 0.02]).aggregate(J, ONES)  # b must descend at 0.5: its constraint binds too
    assert (strict.weights > 0).all()
    assert PCD(TASKS, tau=[0.02, 0.5]).aggregate(J, ONES).weights[1].item() == 0.0  # b at 0.02 holds already


def test_pcd_normalisation_follows_the_bias_corrected_ema() -> None:
    """Step 1 with J, step 2 with D J, D = diag(10, 1, 0.1): v = 0.999 * 0.006 + 0.001 * 6 D^2 after two steps,
    v^ = v / (1 - 0.999^2); the step uses s = 1 / sqrt(v^ + 1e-8)."""
    method = PCD(TASKS)
    method.aggregate(J, ONES)
    scaled = torch.diag(torch.tensor([10.0, 1.0, 0.1], dtype=F64)) @ J
    aggregation = method.aggregate(scaled, ONES)
    moments = 0.999 * 0.001 * 6 + 0.001 * 6 * torch.tensor([100.0, 1.0, 0.01], dtype=F64)
    assert close(method.second_moments, moments.tolist(), atol=1e-12)
    assert method.steps.tolist() == [2, 2, 2]
    scales = torch.rsqrt(moments / (1 - 0.999**2) + 1e-8)
    expected = pcd_weights(scaled @ scaled.T, scales, 0, torch.full((3,), 0.02, dtype=F64))
    assert close(aggregation.weights, expected.tolist(), atol=1e-12)
    assert aggregation.direction.norm().item() == pytest.approx(scaled[0].norm().item(), rel=1e-9)


def test_pcd_inactive_secondary_gets_nothing_and_keeps_its_ema() -> None:
    method = PCD(TASKS)
    aggregation = method.aggregate(without_row(J, 1), torch.tensor([1.0, 0.0, 1.0]))
    assert aggregation.weights[1].item() == 0.0
    assert method.steps.tolist() == [1, 0, 1] and method.second_moments[1].item() == 0.0
    # without task b, c binds as in the worked example: mu_3 = 0.52 on unit rows
    assert close(aggregation.weights, [1.154393, 0.0, 0.600284])


@pytest.mark.parametrize("k", [10, 12])
def test_pcd_many_tasks_satisfy_the_optimality_conditions(k: int) -> None:
    """Above 8 secondaries the dual QP is solved by the interior point: d~ = g~1 + sum mu_j g~_j with mu >= 0,
    every constraint g~_j . d~ >= tau holds, and mu_j > 0 only where it is tight."""
    generator = torch.Generator().manual_seed(k)
    grads = torch.randn(k, 3 * k, dtype=F64, generator=generator)
    unit = grads / grads.norm(dim=1, keepdim=True)
    tau = torch.full((k,), 0.3, dtype=F64)
    coefficients = pcd_coefficients(unit @ unit.T, 0, tau)
    slack = (unit @ (coefficients @ unit))[1:] - 0.3
    assert coefficients[0].item() == 1.0 and (coefficients[1:] >= 0).all()
    assert (slack >= -1e-7).all()
    assert (coefficients[1:] * slack).abs().max() < 1e-6
    assert (coefficients[1:] > 1e-6).any()  # some constraint binds


def test_pcd_rejects_bad_options() -> None:
    with pytest.raises(ConfigError, match="weighting.primary"):
        PCD(TASKS, primary="d")
    with pytest.raises(ConfigError, match="weighting.tau"):
        PCD(TASKS, tau=[0.1])
    with pytest.raises(ConfigError, match="weighting.beta"):
        PCD(TASKS, beta=1.0)


# ---------------------------------------------------------------------------------------- sub-batch sampling

def soft_model() -> MultiTaskModel:
    """Soft sharing: z is the stack of the task towers' outputs, ``(k, B, C, L)`` (samples along axis 1)."""
    torch.manual_seed(0)
    backbone = SoftSharingBackbone(TWO_TASKS, in_channels=1, input_size=(16,), spatial_dims=1, channels=(4, 4),
                                   kernel_size=3)
    return MultiTaskModel(backbone, {t: ClassificationHead(4, 1, num_classes=3, hidden=8) for t in TWO_TASKS})


MODELS: dict[str, tuple[Callable[[], MultiTaskModel], tuple[int, ...]]] = {
    "hard": (tiny_model, (6,)),
    "soft": (soft_model, (1, 16)),
}


def batch_step(model: MultiTaskModel, shape: tuple[int, ...], size: int, seed: int = 1
               ) -> tuple[Tensor, Tensor, StepContext]:
    """The per-sample losses (k, B) of one seeded batch, their means (the step's losses) and the step context."""
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.randn(size, *shape, generator=generator), torch.randint(0, 3, (size,), generator=generator)
    z = model.encode(x)
    outputs = model.decode(z, x)
    per_sample = torch.stack([nn.functional.cross_entropy(outputs[t], y, reduction="none") for t in model.task_names])
    return per_sample, per_sample.mean(1), StepContext(model=model, step=0, scale=lambda loss: loss,
                                                       shared_representation=z)


def part_gradients(per_sample: Tensor, params: list[Tensor], parts: int, part: int) -> Tensor:
    """``parts`` times the gradient of the loss terms of block ``part`` (of B // parts samples) of the batch mean."""
    size = per_sample.shape[1] // parts
    return parts * task_gradient_matrix(per_sample[:, part * size:(part + 1) * size].sum(1) / per_sample.shape[1],
                                        params)


def shared_gradient(model: MultiTaskModel) -> Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.shared_parameters()])


@pytest.mark.parametrize("backbone", list(MODELS))
@pytest.mark.parametrize("method", [MoDo, SDMGrad])
def test_three_samples_weigh_with_two_parts_and_update_with_the_third(backbone: str, method: type) -> None:
    """B = 7: parts of 2 samples (the 7th trains the heads only). The weights come from A = G_1 G_2^T of the first
    two parts, the shared update is weights @ G_3, every head gets its own whole-batch gradient."""
    build, shape = MODELS[backbone]
    model = build()
    per_sample, losses, ctx = batch_step(model, shape, 7)
    shared = model.shared_parameters()
    first, second, third = (part_gradients(per_sample, shared, 3, p) for p in range(3))
    heads = [torch.autograd.grad(losses[t], model.task_parameters(name), retain_graph=True)
             for t, name in enumerate(TWO_TASKS)]
    reference = method(TWO_TASKS)
    expected = reference.cross_weights(first @ second.T, torch.ones(2, dtype=torch.bool))

    weights = method(TWO_TASKS).backward(losses, ctx)

    torch.testing.assert_close(weights, expected.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(shared_gradient(model), expected.float() @ third, rtol=1e-4, atol=1e-6)
    for t, name in enumerate(TWO_TASKS):
        for p, g in zip(model.task_parameters(name), heads[t]):
            torch.testing.assert_close(p.grad, g)


def test_rep_mode_pairs_the_parts_sample_by_sample() -> None:
    """mode=rep: the rows are d L_t / dz; A pairs sample i of part 1 with sample i of part 2 (each part's rows times
    3), and z receives weights @ (3 x the rows of part 3's samples, 0 elsewhere)."""
    model = tiny_model()
    per_sample, losses, ctx = batch_step(model, (6,), 7)
    z = ctx.shared_representation
    rows = torch.stack([torch.autograd.grad(losses[t], z, retain_graph=True)[0] for t in range(2)])  # (k, 7, 5)
    first, second = (3 * rows[:, 2 * p:2 * p + 2].flatten(1) for p in range(2))
    expected = MoDo(TWO_TASKS).cross_weights(first @ second.T, torch.ones(2, dtype=torch.bool)).float()
    update = torch.zeros_like(rows)
    update[:, 4:6] = 3 * rows[:, 4:6]
    target = torch.autograd.grad(z, model.shared_parameters(), torch.tensordot(expected, update, dims=1),
                                 retain_graph=True)

    weights = MoDo(TWO_TASKS, mode="rep").backward(losses, ctx)

    torch.testing.assert_close(weights, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(shared_gradient(model), torch.cat([g.reshape(-1) for g in target]), rtol=1e-4,
                               atol=1e-7)


@pytest.mark.parametrize("mode", ["params", "rep"])
def test_two_samples_update_with_the_whole_batch(mode: str) -> None:
    """sampling=two, B = 8: A from the two halves, the update weights @ G of the whole batch."""
    model = tiny_model()
    per_sample, losses, ctx = batch_step(model, (6,), 8)
    shared = model.shared_parameters()
    whole = task_gradient_matrix(losses, shared)
    weights = MoDo(TWO_TASKS, sampling="two", mode=mode).backward(losses, ctx)
    torch.testing.assert_close(shared_gradient(model), weights @ whole, rtol=1e-4, atol=1e-7)
    if mode == "params":
        first, second = (part_gradients(per_sample, shared, 2, p) for p in range(2))
        expected = MoDo(TWO_TASKS).cross_weights(first @ second.T, torch.ones(2, dtype=torch.bool))
        torch.testing.assert_close(weights, expected.float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("sampling", "size"), [("one", 8), ("three", 2), ("two", 1)])
def test_no_split_or_a_batch_too_short_to_split_uses_the_batch_gramian(sampling: str, size: int) -> None:
    """sampling=one, or fewer samples than parts (a short last batch): A = G G^T, update weights @ G."""
    model = tiny_model()
    _, losses, ctx = batch_step(model, (6,), size)
    whole = task_gradient_matrix(losses, model.shared_parameters())
    expected = SDMGrad(TWO_TASKS).cross_weights(whole @ whole.T, torch.ones(2, dtype=torch.bool)).float()
    weights = SDMGrad(TWO_TASKS, sampling=sampling).backward(losses, ctx)
    torch.testing.assert_close(weights, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(shared_gradient(model), expected @ whole, rtol=1e-4, atol=1e-7)


def test_three_samples_with_a_switched_off_task(tmp_path: Path) -> None:
    """On the tiny trainer with b switched off (its loss 0): b's weight is 0, its stored weight does not move, and
    the shared update is task a's gradient on the third part of the batch (samples 4 and 5 of 8)."""
    method = MoDo(TWO_TASKS)
    trainer = tiny_trainer(method, tmp_path, schedule=PretrainThenJointSchedule(TWO_TASKS, tasks=["a"], epochs=1.5))
    model, split = trainer.model, trainer.splits["train"]
    inputs, targets = split.inputs[:8], {t: target[:8] for t, target in split.targets.items()}
    outputs = model(inputs)
    part = nn.functional.cross_entropy(outputs["a"][4:6], targets["a"][4:6], reduction="sum") * 3 / 8
    expected = torch.cat([g.reshape(-1) for g in torch.autograd.grad(part, model.shared_parameters())])
    _, weights = trainer.train_step(inputs, targets)
    assert weights.tolist() == [1.0, 0.0] and method.lambdas.tolist() == pytest.approx([1.0, 0.5], abs=1e-12)
    torch.testing.assert_close(shared_gradient(model), expected, rtol=1e-5, atol=1e-7)


def test_sampling_is_validated() -> None:
    with pytest.raises(ConfigError, match="weighting.sampling"):
        MoDo(TASKS, sampling="four")
    with pytest.raises(ConfigError, match="weighting.inner_lr"):
        SDMGrad(TASKS, inner_lr=0.0)
    with pytest.raises(ConfigError, match="weighting.gamma"):
        MoDo(TASKS, gamma=-1.0)


# ------------------------------------------------------------------------------------- weight EMA (CR-MOGM)

class Fixed(GradientWeighting):
    """Returns the weights it is handed for each step (a stand-in for any method's weights)."""

    def __init__(self, task_names: list[str], sequence: list[list[float]], weight_ema: float = 0.0) -> None:
        super().__init__(task_names, weight_ema=weight_ema)
        self.sequence = [torch.tensor(w, dtype=F64) for w in sequence]

    def aggregate(self, grads: Tensor, losses: Tensor) -> Aggregation:
        return weighted_sum(grads, self.sequence.pop(0))


def smoothed_step(method: GradientWeighting, grads: Tensor, active: Tensor = ALL) -> Aggregation:
    return method.smoothed(method.aggregate(grads, active.to(F64)), grads, active)


def test_weight_ema_worked_example() -> None:
    """alpha = 0.9 over the weights MGDA gives J and then J2 (torchjd's Frank-Wolfe values): the first step keeps
    them, the second averages: 0.9 * 0.429879 + 0.1 * 0.427300 = 0.429621, ..., and d = lambda @ J2."""
    method = Fixed(TASKS, [[0.429879, 0.157247, 0.412874], [0.427300, 0.221069, 0.351631]], weight_ema=0.9)
    first = smoothed_step(method, J)
    assert close(first.weights, [0.429879, 0.157247, 0.412874])
    assert close(first.direction, [0.604130, 0.982995, 0.115386, -0.017005], atol=3e-6)  # from 6-digit weights
    second = smoothed_step(method, J2)
    assert close(second.weights, [0.429621, 0.163629, 0.406750])
    assert close(second.direction, [0.432484, 1.038741, 0.273477, 0.079416], atol=3e-6)


def test_weight_ema_on_mgda_and_its_limits() -> None:
    """MGDA (exact min-norm weights) with alpha = 0.9: the second step's weights are 0.9 w^_1 + 0.1 w^_2; alpha = 0
    is the method itself (no state); alpha = 1 freezes the first step's weights."""
    plain = [MGDA(TASKS, mode="params").aggregate(g, ONES).weights for g in (J, J2)]
    method = MGDA(TASKS, mode="params", weight_ema=0.9)
    smoothed_step(method, J)
    second = smoothed_step(method, J2)
    assert close(second.weights, (0.9 * plain[0] + 0.1 * plain[1]).tolist(), atol=1e-12)
    assert close(second.direction, (second.weights @ J2).tolist(), atol=1e-12)
    off = MGDA(TASKS, mode="params")
    assert "ema_weights" not in off.state_dict() and close(smoothed_step(off, J2).weights, plain[1].tolist())
    frozen = MGDA(TASKS, mode="params", weight_ema=1.0)
    smoothed_step(frozen, J)
    assert close(smoothed_step(frozen, J2).weights, plain[0].tolist(), atol=1e-12)


def test_weight_ema_moves_a_non_linear_update_along_the_current_gradients() -> None:
    """DB-MTL's update combines its EMA gradients g^ (here 0.1 G after one step), not G: with alpha = 0.5 the second
    step's direction is d^ + (w - w^) @ G."""
    grads = torch.tensor([[3.0, 0.0], [0.0, 1.0]], dtype=F64)
    method = DBMTL(TWO_TASKS, weight_ema=0.5)
    first = smoothed_step(method, grads, torch.ones(2, dtype=torch.bool))
    second_grads = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=F64)
    fresh = db_mtl_direction(0.09 * grads + 0.1 * second_grads)  # beta = 0.9: g^ = 0.9 (0.1 g_1) + 0.1 g_2
    second = smoothed_step(method, second_grads, torch.ones(2, dtype=torch.bool))
    weights = 0.5 * first.weights + 0.5 * fresh.weights
    assert close(second.weights, weights.tolist(), atol=1e-9)
    assert close(second.direction, (fresh.direction + (weights - fresh.weights) @ second_grads).tolist(), atol=1e-9)


def test_weight_ema_per_task_with_inactive_tasks() -> None:
    """c is off at the first step: weight 0 and no average yet; it starts from its own weight when it turns on,
    while a and b average. b is off at the third step: its average stays, its weight is 0."""
    method = Fixed(TASKS, [[0.6, 0.4, 0.0], [0.2, 0.2, 0.6], [1.0, 0.0, 0.0]], weight_ema=0.5)
    first = smoothed_step(method, J, torch.tensor([True, True, False]))
    assert close(first.weights, [0.6, 0.4, 0.0]) and method.ema_started.tolist() == [True, True, False]
    second = smoothed_step(method, J)
    assert close(second.weights, [0.4, 0.3, 0.6])
    third = smoothed_step(method, J, torch.tensor([True, False, True]))
    assert close(third.weights, [0.7, 0.0, 0.3])
    assert close(method.ema_weights, [0.7, 0.3, 0.3])
    off = smoothed_step(Fixed(TASKS, [[0.0, 0.0, 0.0]], weight_ema=0.5), J, torch.zeros(3, dtype=torch.bool))
    assert off.weights.tolist() == [0.0] * 3 and off.direction.tolist() == [0.0] * 4


def test_weight_ema_on_the_trainer_with_a_switched_off_task(tmp_path: Path) -> None:
    """PCGrad with alpha = 0.9 while b is off for 3 steps: b's weight is 0 and its average never starts; a's weight
    is 1 (its average of 1s), so the shared update is a's gradient."""
    method = PCGrad(TWO_TASKS, weight_ema=0.9)
    trainer = tiny_trainer(method, tmp_path, schedule=PretrainThenJointSchedule(TWO_TASKS, tasks=["a"], epochs=1.5))
    model, split = trainer.model, trainer.splits["train"]
    for step in range(3):
        rows = slice(step % 2 * 8, (step % 2 + 1) * 8)
        inputs, targets = split.inputs[rows], {t: target[rows] for t, target in split.targets.items()}
        loss = nn.functional.cross_entropy(model(inputs)["a"], targets["a"])
        expected = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, model.shared_parameters())])
        _, weights = trainer.train_step(inputs, targets)
        trainer.step += 1
        assert weights.tolist() == [1.0, 0.0]
        assert method.ema_weights.tolist() == [1.0, 0.0] and method.ema_started.tolist() == [True, False]
        torch.testing.assert_close(shared_gradient(model), expected, rtol=1e-5, atol=1e-7)


class CombinesItself(GradientWeighting):
    """Equal weights applied through one combined trunk backward (``task_gradients(..., combine=...)``), as a method
    that overrides ``backward`` does; ``smooth`` says whether it passes its weights through the EMA first."""

    def __init__(self, task_names: list[str], smooth: bool, weight_ema: float = 0.0) -> None:
        super().__init__(task_names, weight_ema=weight_ema)
        self.smooth = smooth

    def aggregate(self, grads: Tensor, losses: Tensor) -> Aggregation:
        return weighted_sum(grads, torch.ones(grads.shape[0], dtype=grads.dtype))

    def backward(self, losses: Tensor, ctx: StepContext) -> Tensor:
        weights = torch.ones(self.num_tasks)
        if self.smooth:
            weights = self.smoothed_weights(weights, torch.ones(self.num_tasks, dtype=torch.bool))
        self.apply_direction(ctx, self.task_gradients(losses, ctx, combine=weights.unsqueeze(0))[0])
        return weights


def test_a_step_that_skips_the_weight_ema_stops_with_a_config_error() -> None:
    model = tiny_model()
    _, losses, ctx = batch_step(model, (6,), 8)
    with pytest.raises(ConfigError, match="weighting.weight_ema is not applied by CombinesItself"):
        CombinesItself(TWO_TASKS, smooth=False, weight_ema=0.5).backward(losses, ctx)
    assert CombinesItself(TWO_TASKS, smooth=True, weight_ema=0.5).backward(losses, ctx).tolist() == [1.0, 1.0]
    assert CombinesItself(TWO_TASKS, smooth=False).backward(losses, ctx).tolist() == [1.0, 1.0]  # off: no check


GRADIENT_METHODS = sorted(p.stem for p in (CONFIG_DIR / "weighting").glob("*.yaml")
                          if "jacobian:" in p.read_text() and p.stem != "gradnorm")


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_every_gradient_method_takes_weight_ema_from_its_config(name: str) -> None:
    """The key is in every gradient method's signature (declared or added by the base class), passes the config
    checks, and turns the average on."""
    cfg = compose_config([f"weighting={name}", "++weighting.weight_ema=0.5"])
    check_node(cfg.weighting, "weighting", ["task_names"])
    method = instantiate(cfg.weighting, "weighting", task_names=TASKS)
    assert isinstance(method, GradientWeighting) and method.weight_ema == 0.5
    assert "weight_ema" in inspect.signature(type(method)).parameters
    assert method.state_dict()["ema_weights"].shape == (3,)
    with pytest.raises(ConfigError, match="weighting.weight_ema"):
        instantiate(compose_config([f"weighting={name}", "++weighting.weight_ema=1.5"]).weighting, "weighting",
                    task_names=TASKS)


def fake_step(method: Callable[[], GradientWeighting], backbone: Callable[[], nn.Module]) -> Tensor:
    """One ``backward`` of the method ``method()`` builds, on a 1-D signal model, under ``FakeTensorMode`` (tensors
    without values: a host read raises)."""
    with FakeTensorMode():
        trunk = backbone()
        model = MultiTaskModel(trunk, {t: ClassificationHead(4, 1, num_classes=3, hidden=8) for t in TASKS})
        x = torch.randn(8, 1, 16)
        z = model.encode(x)
        outputs = model.decode(z, x)
        losses = torch.stack([nn.functional.cross_entropy(outputs[t], torch.zeros(8, dtype=torch.long))
                              for t in TASKS])
        return method().backward(losses, StepContext(model=model, step=0, scale=lambda loss: loss,
                                                     shared_representation=z))


def test_weight_ema_step_needs_no_tensor_values_on_the_host() -> None:
    """The EMA with PCGrad (rep mode) and MoDo (three samples, soft sharing's per-task z), under FakeTensorMode."""
    signal = dict(in_channels=1, input_size=(16,), spatial_dims=1, channels=(4, 4), kernel_size=3)
    pcgrad = fake_step(lambda: PCGrad(TASKS, mode="rep", weight_ema=0.9), lambda: hard_cnn(TASKS, **signal))
    modo = fake_step(lambda: MoDo(TASKS, weight_ema=0.9), lambda: SoftSharingBackbone(TASKS, **signal))
    assert pcgrad.shape == modo.shape == (3,)


# ---------------------------------------------------------------------------------------------- exact resume

RESUMABLE: dict[str, Callable[[], GradientWeighting]] = {
    "modo": lambda: MoDo(TWO_TASKS, weight_ema=0.8),
    "sdmgrad-rep": lambda: SDMGrad(TWO_TASKS, inner_lr=0.5, mode="rep", weight_ema=0.8),
    "pcd": lambda: PCD(TWO_TASKS, weight_ema=0.8),
    "pcgrad-ema": lambda: PCGrad(TWO_TASKS, weight_ema=0.8),
}


def seeded_step(method: GradientWeighting, seed: int) -> tuple[Tensor, Tensor]:
    """One backward of ``method`` on the tiny model and the batch of ``seed`` (8 samples): weights, shared update."""
    model = tiny_model()
    _, losses, ctx = batch_step(model, (6,), 8, seed)
    return method.backward(losses, ctx), shared_gradient(model)


@pytest.mark.parametrize("name", list(RESUMABLE))
def test_state_round_trip_resumes_exactly(name: str, tmp_path: Path) -> None:
    expected = assert_state_round_trip_resumes_exactly(RESUMABLE[name], seeded_step, tmp_path)
    assert not torch.equal(expected[2][0], expected[3][0])  # the steps differ, so the state mattered


def test_configs_document_the_new_keys() -> None:
    for name in ("modo", "sdmgrad", "pcd"):
        config = OmegaConf.load(CONFIG_DIR / "weighting" / f"{name}.yaml")
        assert config.weight_ema == 0.0 and config.mode == "params"
