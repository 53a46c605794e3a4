"""GradDrop, RGW, DualProj and ConFIG: worked examples (to the printed digits), edge cases (a zero gradient row, k = 1,
aligned and conflicting rows, every task off), invariances, one step on a model and checkpoint round trips.

The common examples: J (k = 3, d = 4, equal row norms sqrt(6), rows 1 and 3 conflict), D J with D = diag(10, 1, 0.1)
(norms spread 100:1), and J_al (no conflict anywhere)."""

from __future__ import annotations

import datetime
import io
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tiny_trainer import TASKS as TINY_TASKS
from tiny_trainer import tiny_trainer
from torch import nn

from mtl_train.backbones.hard import HardSharedBackbone
from mtl_train.engine.distributed import Distributed
from mtl_train.errors import ConfigError
from mtl_train.heads.classification import ClassificationHead
from mtl_train.model import MultiTaskModel
from mtl_train.weighting.base import StepContext
from mtl_train.weighting.con_fig import ConFIG, con_fig_weights
from mtl_train.weighting.dualproj import DualProj, dualproj_weights
from mtl_train.weighting.graddrop import GradDrop, graddrop, keep_masks
from mtl_train.weighting.gradient_based import GradientWeighting
from mtl_train.weighting.gradients import task_gradient_matrix
from mtl_train.weighting.rgw import RandomGradientWeighting

T1, T2, T3 = ["a"], ["a", "b"], ["a", "b", "c"]
J = torch.tensor([[2.0, 0.0, 1.0, -1.0], [1.0, 1.0, -2.0, 0.0], [-1.0, 2.0, 0.0, 1.0]], dtype=torch.float64)
DJ = torch.diag(torch.tensor([10.0, 1.0, 0.1], dtype=torch.float64)) @ J
J_ALIGNED = torch.tensor([[1.0, 2.0, 0.0, 0.0], [2.0, 1.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
LOSSES = torch.tensor([0.8, 1.5, 0.4], dtype=torch.float64)
# U = torch.rand(4) after seeding 0: the first draws of every seed-0 generator here
SEED0_UNIFORMS = [0.496257, 0.768222, 0.088477, 0.132030]


def approx(values: torch.Tensor, expected: list[float], digits: int = 6) -> None:
    """``values`` equal ``expected`` to the printed number of decimals."""
    assert values.tolist() == pytest.approx(expected, abs=0.6 * 10 ** -digits, rel=0)


def with_zero_row(grads: torch.Tensor, row: int = 1) -> torch.Tensor:
    grads = grads.clone()
    grads[row] = 0
    return grads


# ----------------------------------------------------------------------------------------------------- GradDrop

def test_graddrop_worked_example_on_a_matrix() -> None:
    """P = (0.75, 1, 1/3, 0.5) and U (seed 0) = (0.496, 0.768, 0.088, 0.132): P > U everywhere, so only the positive
    entries survive: (3, 3, 1, 1), against the plain sum (2, 3, -1, 0). Passed shares: g1 keeps 5 of its 6, g2 2 of 6,
    g3 5 of 6."""
    out = GradDrop(T3, seed=0, mode="params").aggregate(J, LOSSES)
    approx(out.direction, [3.0, 3.0, 1.0, 1.0])
    approx(out.weights, [5 / 6, 2 / 6, 5 / 6])
    approx(torch.rand(4, generator=torch.Generator().manual_seed(0)), SEED0_UNIFORMS)


Z = torch.tensor([[0.7, -1.2, 0.3, 2.0], [-0.5, 0.8, 1.1, -0.4]])
R = torch.tensor([[[0.2, -0.1, 0.4, -0.3], [0.1, 0.3, -0.2, 0.5]],
                  [[-0.3, 0.2, 0.1, 0.2], [0.4, -0.1, 0.3, -0.6]]])
REP_EXAMPLE = [[-0.3, 0.2, 0.5, 0.2], [0.4, -0.1, 0.1, -0.6]]


def test_graddrop_worked_example_at_a_representation() -> None:
    """k = 2, B = 2, F = 4: S_1 = (0.1, 0.4, 0.2, -0.8), S_2 = (-0.7, -0.3, 0.4, 0.8), P = (0.125, 0.571, 1, 0.5);
    with U (seed 0): M_1 = (0, 0, 1, 0), M_2 = (1, 1, 1, 1)."""
    signals = (R * torch.sign(Z)).sum(1)
    approx(signals.flatten(), [0.1, 0.4, 0.2, -0.8, -0.7, -0.3, 0.4, 0.8])
    uniform = torch.tensor(SEED0_UNIFORMS)
    assert keep_masks(signals, uniform).tolist() == [[0, 0, 1, 0], [1, 1, 1, 1]]
    out = graddrop(R, uniform, torch.zeros(2), torch.sign(Z))
    approx(out.direction, sum(REP_EXAMPLE, []))
    approx(out.weights, [0.2 / 0.69, 1.0])  # task 1 passes 0.4^2 + (-0.2)^2 of its squared norm 0.69


class LinearTrunk(HardSharedBackbone):
    """z = x W^T with W = I (4 x 4): z is the input itself."""

    def __init__(self, tasks: list[str]) -> None:
        super().__init__([nn.Linear(4, 4, bias=False)], tasks, split_depth=1, out_channels=4, spatial_dims=0)
        with torch.no_grad():
            self.shared[0].weight.copy_(torch.eye(4))


def linear_losses_step(method: GradientWeighting, rows: torch.Tensor, x: torch.Tensor) -> MultiTaskModel:
    """One ``method.backward`` on z = x (the linear trunk) with L_i = sum(rows[i] * z), so dL_i/dz = rows[i]."""
    model = MultiTaskModel(LinearTrunk(T2), {t: ClassificationHead(4, 0, num_classes=2) for t in T2})
    z = model.encode(x)
    losses = torch.stack([(rows[i] * z).sum() for i in range(2)])
    method.backward(losses, StepContext(model=model, step=0, scale=lambda loss: loss, shared_representation=z))
    return model


def test_graddrop_rep_mode_sends_the_masked_gradient_through_the_trunk() -> None:
    """The rep example through the engine: z = x, so W.grad = D^T x for the masked per-sample gradient D."""
    model = linear_losses_step(GradDrop(T2, seed=0, mode="rep"), R, Z)
    weight = model.backbone.shared[0].weight
    torch.testing.assert_close(weight.grad, torch.tensor(REP_EXAMPLE).T @ Z)


def test_graddrop_aligned_rows_give_the_plain_sum() -> None:
    """No coordinate of J_al holds both signs: P is 0 or 1, everything is kept, d = (4, 4, 1, 1), every share 1."""
    for seed in range(5):
        out = GradDrop(T3, seed=seed, mode="params").aggregate(J_ALIGNED, LOSSES)
        approx(out.direction, [4.0, 4.0, 1.0, 1.0])
        approx(out.weights, [1.0, 1.0, 1.0])


def test_graddrop_one_task_is_the_identity() -> None:
    grads = torch.tensor([[0.5, -2.0, 0.0, 3.0]])
    for seed in range(5):
        out = GradDrop(T1, seed=seed, mode="params").aggregate(grads, torch.ones(1))
        assert out.direction.tolist() == grads[0].tolist() and out.weights.tolist() == [1.0]


def test_graddrop_ignores_a_zero_row() -> None:
    """A zero row changes neither P nor the output (same draws), and passes nothing (share 0)."""
    with_zero = GradDrop(T3, seed=4, mode="params").aggregate(torch.cat([J[:1], torch.zeros(1, 4), J[2:]]), LOSSES)
    without = GradDrop(T2, seed=4, mode="params").aggregate(J[[0, 2]], LOSSES[:2])
    assert with_zero.direction.tolist() == without.direction.tolist()
    assert with_zero.weights.tolist() == [without.weights[0].item(), 0.0, without.weights[1].item()]


def test_graddrop_conflicting_pair_keeps_one_sign_with_probability_p() -> None:
    """Rows (1, 1) and (-1, -3) repeated over 4000 columns: each column keeps exactly one side, the positive one
    with probability P = 1/2 and 1/4."""
    grads = torch.tensor([[1.0, 1.0], [-1.0, -3.0]]).repeat_interleave(4000, dim=1)
    out = GradDrop(T2, seed=0, mode="params").aggregate(grads, torch.ones(2))
    first, second = out.direction[:4000], out.direction[4000:]
    assert set(first.tolist()) == {1.0, -1.0} and set(second.tolist()) == {1.0, -3.0}
    assert (first > 0).double().mean().item() == pytest.approx(0.5, abs=0.03)
    assert (second > 0).double().mean().item() == pytest.approx(0.25, abs=0.03)


def test_graddrop_leak() -> None:
    """Leak 1 passes everything (the plain sum); per-task leaks (1, 0): task a passes untouched, b is masked."""
    assert GradDrop(T3, leak=1.0, mode="params").aggregate(J, LOSSES).direction.tolist() == [2.0, 3.0, -1.0, 0.0]
    out = graddrop(R, torch.tensor(SEED0_UNIFORMS), torch.tensor([1.0, 0.0]), torch.sign(Z))
    masked_b = torch.tensor([[1.0, 1.0, 1.0, 1.0]]) * R[1]
    torch.testing.assert_close(out.direction.view(2, 4), R[0] + masked_b)
    assert out.weights.tolist() == [1.0, 1.0]


def test_graddrop_is_equivariant_and_scales_linearly() -> None:
    """Permuting the columns and the draws alike permutes the output; scaling every row by 3 scales it by 3."""
    generator = torch.Generator().manual_seed(2)
    grads = torch.randn(3, 1, 30, generator=generator)
    uniform = torch.rand(30, generator=generator)
    permutation = torch.randperm(30, generator=generator)
    plain = graddrop(grads, uniform, torch.zeros(3))
    permuted = graddrop(grads[:, :, permutation], uniform[permutation], torch.zeros(3))
    torch.testing.assert_close(permuted.direction, plain.direction[permutation])
    torch.testing.assert_close(permuted.weights, plain.weights)
    torch.testing.assert_close(graddrop(3 * grads, uniform, torch.zeros(3)).direction, 3 * plain.direction)


def test_graddrop_every_task_off_gives_zeros() -> None:
    out = GradDrop(T3, mode="params").aggregate(torch.zeros(3, 4), torch.zeros(3))
    assert out.direction.tolist() == [0.0] * 4 and out.weights.tolist() == [0.0] * 3


def graddrop_rep_parameters(output_dir: Path, distributed: Distributed) -> dict[str, torch.Tensor]:
    """The tiny trainer's parameters after 3 SGD steps of GradDrop at z (seed 0)."""
    trainer = tiny_trainer(GradDrop(TINY_TASKS, seed=0, mode="rep"), output_dir, distributed=distributed, max_steps=3)
    trainer.fit()
    return {name: p.detach().clone() for name, p in trainer.model.named_parameters()}


def graddrop_on_one_rank(rank: int, store: str, output_dir: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    torch.save(graddrop_rep_parameters(output_dir, Distributed(rank=rank, world_size=2)), output_dir / f"{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)  # as tests/engine/test_distributed_gloo.py: no interpreter finalisation with gloo's threads alive


@pytest.mark.slow  # two gloo processes
def test_graddrop_rep_masks_come_from_the_global_batch_under_torchrun(tmp_path: Path) -> None:
    """Two processes, each with half of every batch, end with the single process's parameters: sign(z) and the
    per-sample gradients are gathered together, so P and the masks are the whole batch's on both ranks."""
    mp.spawn(graddrop_on_one_rank, args=(str(tmp_path / "store"), tmp_path), nprocs=2, join=True)
    single = graddrop_rep_parameters(tmp_path, Distributed())
    for rank in range(2):
        for name, value in torch.load(tmp_path / f"{rank}.pt").items():
            torch.testing.assert_close(value, single[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"leak": 1.5}, "weighting.leak"), ({"leak": [0.0, 0.0]}, "weighting.leak"), ({"leak": "none"}, "weighting.leak"),
    ({"seed": 0.5}, "weighting.seed"), ({"mode": "both"}, "weighting.mode"),
])
def test_graddrop_rejects_bad_options(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        GradDrop(T3, **kwargs)


# ---------------------------------------------------------------------------------------------------------- RGW

def test_rgw_worked_example() -> None:
    """Seed 0: eps = (1.540996, -0.293429, -2.178789), lambda = softmax(eps), d = lambda @ J."""
    out = RandomGradientWeighting(T3, seed=0).aggregate(J, LOSSES)
    approx(out.weights, [0.844634, 0.134893, 0.020473])
    approx(out.direction, [1.803688, 0.175839, 0.574849, -0.824161])
    approx(torch.randn(3, generator=torch.Generator().manual_seed(0)), [1.540996, -0.293429, -2.178789])


def test_rgw_one_task_gets_weight_one() -> None:
    out = RandomGradientWeighting(T1, seed=3).aggregate(J[:1], LOSSES[:1])
    assert out.weights.tolist() == [1.0] and out.direction.tolist() == J[0].tolist()


def test_rgw_weights_average_to_one_over_k() -> None:
    """E[lambda_i] = 1/k (softmax of i.i.d. normals): 2000 draws."""
    method = RandomGradientWeighting(T3, seed=1)
    draws = torch.stack([method.aggregate(J, LOSSES).weights for _ in range(2000)])
    assert torch.allclose(draws.sum(1), torch.ones(2000, dtype=torch.float64))
    approx(draws.mean(0), [1 / 3] * 3, digits=1)


def test_rgw_switched_off_task_gets_weight_zero() -> None:
    """b's loss 0: lambda of a and c rescaled to sum 1 (the softmax of their draws); the generator still moves by k."""
    out = RandomGradientWeighting(T3, seed=0).aggregate(with_zero_row(J), torch.tensor([0.8, 0.0, 0.4]))
    a, c = 0.844634, 0.020473
    approx(out.weights, [a / (a + c), 0.0, c / (a + c)])
    nothing = RandomGradientWeighting(T3).aggregate(torch.zeros(3, 4), torch.zeros(3))
    assert nothing.weights.tolist() == [0.0] * 3 and nothing.direction.tolist() == [0.0] * 4


def tiny_signal_model() -> MultiTaskModel:
    torch.manual_seed(0)
    trunk = HardSharedBackbone([nn.Sequential(nn.Linear(6, 5), nn.Tanh())], T2, split_depth=1, out_channels=5,
                               spatial_dims=0)
    return MultiTaskModel(trunk, {t: ClassificationHead(5, 0, num_classes=3, hidden=4) for t in T2})


def signal_step(model: MultiTaskModel) -> tuple[torch.Tensor, StepContext]:
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 6, generator=generator), torch.randint(0, 3, (8,), generator=generator)
    z = model.encode(x)
    outputs = model.decode(z, x)
    losses = torch.stack([nn.functional.cross_entropy(outputs[t], y) for t in T2])
    return losses, StepContext(model=model, step=0, scale=lambda loss: loss, shared_representation=z)


@pytest.mark.parametrize("mode", ["params", "rep"])
def test_rgw_step_gives_the_trunk_lambda_g_and_each_head_its_own_gradient(mode: str) -> None:
    """One trunk backward of the lambda-weighted rows equals lambda @ G from the naive engine; the heads get their
    plain (unweighted) gradients, unlike RLW."""
    model = tiny_signal_model()
    losses, ctx = signal_step(model)
    grads = task_gradient_matrix(losses, model.shared_parameters())
    own = {t: torch.autograd.grad(losses[i], model.task_parameters(t), retain_graph=True) for i, t in enumerate(T2)}
    expected = RandomGradientWeighting(T2, seed=5).aggregate(grads, losses.detach())
    weights = RandomGradientWeighting(T2, seed=5, mode=mode).backward(losses, ctx)
    torch.testing.assert_close(weights, expected.weights)
    shared = torch.cat([p.grad.flatten() for p in model.shared_parameters()])
    torch.testing.assert_close(shared, expected.direction, rtol=1e-5, atol=1e-7)
    for t in T2:
        for p, g in zip(model.task_parameters(t), own[t]):
            torch.testing.assert_close(p.grad, g)


def test_rgw_rejects_bad_options() -> None:
    with pytest.raises(ConfigError, match="weighting.distribution"):
        RandomGradientWeighting(T3, distribution="uniform")
    with pytest.raises(ConfigError, match="weighting.seed"):
        RandomGradientWeighting(T3, seed="0")


# ----------------------------------------------------------------------------------------------------- DualProj

def test_dualproj_mean_that_conflicts_with_no_task_is_kept() -> None:
    """J: g_i . mean = (1, 7/3, 4/3) >= 0, so v = 1/3 and d = the mean (also for J_al)."""
    out = DualProj(T3).aggregate(J, LOSSES)
    approx(out.weights, [1 / 3] * 3)
    approx(out.direction, [0.666667, 1.0, -0.333333, 0.0])
    approx(J @ out.direction, [1.0, 2.333333, 1.333333])
    approx(DualProj(T3).aggregate(J_ALIGNED, LOSSES).direction, J_ALIGNED.mean(0).tolist())


def test_dualproj_norms_spread_100_to_1_exact_projection() -> None:
    """D J (Gramian [[600, 0, -3], [0, 6, 0.1], [-3, 0.1, 0.06]]): the mean conflicts with 0.1 g3; the exact
    projection raises v3 to 16.111111 and leaves g3 . d = 0."""
    out = DualProj(T3).aggregate(DJ, LOSSES)
    approx(out.weights, [0.333333, 0.333333, 16.111111])
    approx(out.direction, [5.388889, 3.555556, 2.666667, -1.722222])
    approx(DJ @ out.direction, [151.666667, 3.611111, 0.0])


def test_dualproj_trace_normalisation_reproduces_torchjd() -> None:
    """torchjd's defaults (Gramian / trace + 1e-4 I) on D J: v3 = 8.015079, and 0.1 g3 is left in conflict."""
    out = DualProj(T3, normalization="trace", reg_eps=1e-4).aggregate(DJ, LOSSES)
    approx(out.weights, [0.333333, 0.333333, 8.015079])
    approx(out.direction, [6.198492, 1.936349, 2.666667, -2.531825])
    approx(DJ @ out.direction, [175.954762, 2.801508, -0.485762], digits=5)


def test_dualproj_edge_cases() -> None:
    """A zero row adds nothing to the mean: d = (g1 + g3) / 3; anti-parallel rows: d = 0; k = 1: d = g; every task
    off: weights 0."""
    approx(DualProj(T3).aggregate(with_zero_row(J), LOSSES).direction, ((J[0] + J[2]) / 3).tolist())
    g = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    approx(DualProj(T2).aggregate(torch.cat([g, -g]), torch.ones(2)).direction, [0.0] * 3)
    approx(DualProj(T1).aggregate(g, torch.ones(1)).direction, g[0].tolist())
    off = DualProj(T3).aggregate(torch.zeros(3, 4), torch.zeros(3))
    assert off.weights.tolist() == [0.0] * 3 and off.direction.tolist() == [0.0] * 4


def test_dualproj_switched_off_task_is_left_out() -> None:
    """c's loss 0: DualProj of a and b alone (u = 1/2 on them), c's weight 0."""
    with_off = DualProj(T3).aggregate(with_zero_row(J, 2), torch.tensor([1.0, 1.0, 0.0]))
    alone = DualProj(T2).aggregate(J[:2], torch.ones(2))
    approx(with_off.weights, [*alone.weights.tolist(), 0.0])
    approx(with_off.direction, alone.direction.tolist())


@pytest.mark.parametrize("k", [3, 5, 10])
def test_dualproj_satisfies_the_projection_conditions(k: int) -> None:
    """min v^T M v s.t. v >= u: every g_i . d >= 0, and g_i . d = 0 wherever v_i > u_i. Random rows with norms spread
    over 1e3, k = 10 through the interior point."""
    generator = torch.Generator().manual_seed(k)
    for _ in range(5):
        grads = torch.randn(k, 12, dtype=torch.float64, generator=generator)
        grads *= torch.logspace(0, 3, k, dtype=torch.float64)[torch.randperm(k, generator=generator)].unsqueeze(1)
        v = dualproj_weights(grads @ grads.T, reg_eps=1e-12)
        products = grads @ (v @ grads) / grads.norm(dim=1)
        scale = (v @ grads).norm()
        assert (v >= 1 / k - 1e-9).all()
        assert (products >= -1e-6 * scale).all()
        assert (products.abs() <= 1e-6 * scale)[v > 1 / k + 1e-6].all()


def test_dualproj_stays_finite_on_degenerate_gradients() -> None:
    """Duplicated rows, more tasks than dimensions (float32), and nearly anti-parallel rows."""
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(2, 50, generator=generator)
    for grads in (torch.cat([base, base, -base[:1]]), torch.randn(6, 2, generator=generator),
                  torch.cat([base[:1], -base[:1] + 1e-6 * base[1:]])):
        for normalization in ("unit", "trace"):
            out = DualProj(list("abcdef")[:grads.shape[0]], normalization=normalization).aggregate(
                grads, torch.ones(grads.shape[0]))
            assert torch.isfinite(out.weights).all() and torch.isfinite(out.direction).all()
            assert (grads @ out.direction >= -1e-5 * grads.norm(dim=1) * grads.norm()).all()


def test_dualproj_rejects_bad_options() -> None:
    with pytest.raises(ConfigError, match="weighting.normalization"):
        DualProj(T3, normalization="frobenius")
    with pytest.raises(ConfigError, match="weighting.reg_eps"):
        DualProj(T3, reg_eps=0.0)
    with pytest.raises(ConfigError, match="weighting.iterations"):
        DualProj(T3, iterations=0)


# ------------------------------------------------------------------------------------------------------- ConFIG

def test_con_fig_worked_example() -> None:
    """J: equal cosines 0.473432 with every row, weights (1.293103, 0.465517, 1.241379)."""
    out = ConFIG(T3).aggregate(J, LOSSES)
    approx(out.direction, [1.810345, 2.948276, 0.362069, -0.051724])
    approx(out.weights, [1.293103, 0.465517, 1.241379])
    approx(torch.cosine_similarity(J, out.direction.unsqueeze(0)), [0.473432] * 3)


def test_con_fig_direction_ignores_row_norms_and_aligned_rows_are_not_summed() -> None:
    """D J: the same direction, a longer step; J_al: neither the mean nor the sum."""
    approx(ConFIG(T3).aggregate(DJ, LOSSES).direction, [6.698276, 10.908621, 1.339655, -0.191379])
    approx(ConFIG(T3).aggregate(J_ALIGNED, LOSSES).direction, [4.037342, 3.893252, 1.228118, 0.984438])


def test_con_fig_edge_cases() -> None:
    """A zero row drops out (ConFIG of g1 and g3: (1, 2, 1, 0) = g1 + g3, weight 0); k = 1: d = g; anti-parallel
    rows: d = 0; every task off: weights 0."""
    out = ConFIG(T3).aggregate(with_zero_row(J), LOSSES)
    approx(out.direction, [1.0, 2.0, 1.0, 0.0])
    approx(out.weights, [1.0, 0.0, 1.0])
    g = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    approx(ConFIG(T1).aggregate(g, torch.ones(1)).direction, g[0].tolist())
    approx(ConFIG(T2).aggregate(torch.cat([g, -g]), torch.ones(2)).direction, [0.0] * 3)
    off = ConFIG(T3).aggregate(torch.zeros(3, 4), torch.zeros(3))
    assert off.weights.tolist() == [0.0] * 3 and off.direction.tolist() == [0.0] * 4


@pytest.mark.parametrize(("k", "d"), [(3, 8), (6, 20), (5, 3)])
def test_con_fig_matches_the_pseudo_inverse_formula(k: int, d: int) -> None:
    """b = pinv(U) 1, d = (sum_i g_i . b^) b^, with torch.linalg.pinv; k > d is the least-squares case."""
    generator = torch.Generator().manual_seed(k * d)
    grads = torch.randn(k, d, dtype=torch.float64, generator=generator)
    grads *= torch.logspace(0, 2, k, dtype=torch.float64).unsqueeze(1)
    b = torch.linalg.pinv(grads / grads.norm(dim=1, keepdim=True)) @ torch.ones(k, dtype=torch.float64)
    unit = b / b.norm()
    expected = (grads @ unit).sum() * unit
    torch.testing.assert_close(ConFIG([str(i) for i in range(k)]).aggregate(grads, torch.ones(k)).direction, expected)
    torch.testing.assert_close(con_fig_weights(grads @ grads.T) @ grads, expected)


# ---------------------------------------------------------------------------------------------- every method

FACTORIES: dict[str, Callable[[int], GradientWeighting]] = {
    "graddrop": lambda k: GradDrop([str(i) for i in range(k)], seed=3, mode="params"),
    "rgw": lambda k: RandomGradientWeighting([str(i) for i in range(k)], seed=3),
    "dualproj": lambda k: DualProj([str(i) for i in range(k)]),
    "con_fig": lambda k: ConFIG([str(i) for i in range(k)]),
}


@pytest.mark.parametrize("name", list(FACTORIES))
def test_state_dict_round_trip_resumes_exactly(name: str) -> None:
    """Two steps, a checkpoint, a fresh instance loaded from it: the third step is identical (the random methods
    continue their generator's sequence)."""
    generator = torch.Generator().manual_seed(8)
    steps = [torch.randn(4, 9, generator=generator) for _ in range(3)]
    original = FACTORIES[name](4)
    for grads in steps[:2]:
        original.aggregate(grads, torch.ones(4))
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    restored = FACTORIES[name](4)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    expected, actual = original.aggregate(steps[2], torch.ones(4)), restored.aggregate(steps[2], torch.ones(4))
    assert torch.equal(expected.direction, actual.direction) and torch.equal(expected.weights, actual.weights)
    if name in ("graddrop", "rgw"):  # without the checkpoint a fresh generator would repeat its first draws
        fresh = FACTORIES[name](4).aggregate(steps[2], torch.ones(4))
        assert not torch.equal(fresh.direction, expected.direction)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_one_step_on_a_model_in_both_modes(name: str) -> None:
    """Finite gradients on every parameter, the trunk moved, finite weights, in params and rep mode."""
    for mode in ("params", "rep"):
        model = tiny_signal_model()
        losses, ctx = signal_step(model)
        method = FACTORIES[name](2)
        method.task_names, method.mode = T2, mode
        weights = method.backward(losses, ctx)
        assert weights.shape == (2,) and torch.isfinite(weights).all()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        assert any(p.grad.abs().sum() > 0 for p in model.shared_parameters())
