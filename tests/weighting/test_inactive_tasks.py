"""A task whose loss is exactly 0 in a step (switched off by the training schedule) is inactive for every weighting
method: the model is still updated from the active tasks, the inactive task's weight is 0 and finite, and neither
its head nor any state the method keeps for it moves.

The trainer-level tests run every configured method on the tiny trainer, with ``pretrain_then_joint`` (only task a
for the first 1.5 epochs: 3 steps of 8 of the 16 rows) and with every task off; the other tests are hand-computed
cases of the rules.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import CONFIG_DIR
from omegaconf import OmegaConf
from tiny_trainer import BATCH_SIZE, TASKS, first_batch, task_loss, tiny_trainer
from torch import Tensor

from mtl_train.schedules.base import TrainingSchedule
from mtl_train.schedules.pretrain_then_joint import PretrainThenJointSchedule
from mtl_train.utils.instantiate import instantiate
from mtl_train.weighting.aligned_mtl import AlignedMTL
from mtl_train.weighting.base import StepContext, Weighting
from mtl_train.weighting.db_mtl import DBMTL
from mtl_train.weighting.grad_norm_prop import GradNormProportional
from mtl_train.weighting.gradient_based import GradientWeighting
from mtl_train.weighting.gradvac import GradVac
from mtl_train.weighting.mgda import MGDA, mgda_weights
from mtl_train.weighting.pcgrad import PCGrad
from mtl_train.weighting.rlw import RandomLossWeighting
from mtl_train.weighting.upgrad import UPGrad
from mtl_train.weighting.uw import UncertaintyWeighting

ACTIVE, OFF = 0, 1  # task a trains alone while b is switched off
OFF_STEPS = 3  # pretrain_then_joint, epochs=1.5, 2 steps per epoch
WEIGHTINGS = sorted(p.stem for p in (CONFIG_DIR / "weighting").glob("*.yaml"))
GRADIENT_WEIGHTINGS = {p.stem for p in (CONFIG_DIR / "weighting").glob("*.yaml") if "jacobian:" in p.read_text()}
WITH_MODES = GRADIENT_WEIGHTINGS - {"db_mtl", "excess_mtl", "gradnorm", "moco"}  # these have no rep mode
CASES = [(name, mode) for name in WEIGHTINGS
         for mode in (("params", "rep") if name in WITH_MODES else (None,))]
# Methods whose weight of a lone active task is 1, so the shared update is exactly that task's gradient.
LONE_TASK_WEIGHT_ONE = {"aligned_mtl", "con_fig", "dualproj", "ew", "gls", "grad_norm_prop", "graddrop", "gradvac",
                        "inverse_loss", "loss_ratio", "max_entropy", "mc_dropout", "mgda", "pcgrad", "performance",
                        "rgw", "rlw", "static", "upgrad"}
# DB-MTL's update follows its EMA of past gradients: along task a's current gradient only at the first step.
DIRECTION_AT_FIRST_STEP_ONLY = {"db_mtl", "moco"}
# MoDo's and SDMGrad's update is, by default (sampling=three), the gradient on the last third of the batch (which
# tests/weighting/test_methods_catalogue_c.py checks); here they run with sampling=two, whose update is the whole
# batch's gradient, through the same handling of inactive tasks.
WHOLE_BATCH_UPDATE = {"modo": "two", "sdmgrad": "two"}


def build(name: str, mode: str | None) -> Weighting:
    """The method as ``configs/weighting/<name>.yaml`` defines it (with ``mode`` when given; ``${seed}`` = 0)."""
    config = OmegaConf.create({"seed": 0, "weighting": OmegaConf.load(CONFIG_DIR / "weighting" / f"{name}.yaml")})
    if mode is not None:
        config.weighting.mode = mode
    if name in WHOLE_BATCH_UPDATE:
        config.weighting.sampling = WHOLE_BATCH_UPDATE[name]
    return instantiate(config.weighting, "weighting", task_names=TASKS)


def record_applied_weights(weighting: Weighting) -> list[Tensor]:
    """The weights ``weighting.backward`` returns from now on (before the trainer multiplies them by the factors)."""
    applied: list[Tensor] = []
    backward = weighting.backward

    def recording(losses: Tensor, ctx: StepContext) -> Tensor:
        applied.append(backward(losses, ctx))
        return applied[-1]

    weighting.backward = recording
    return applied


def entries_of_task(tensor: Tensor, task: int) -> Tensor:
    """The entries of a state tensor at index ``task`` along any axis of the task count's size (for the GradVac
    targets, row and column)."""
    mask = torch.zeros(tensor.shape, dtype=torch.bool)
    for axis, size in enumerate(tensor.shape):
        if size == len(TASKS):
            mask.select(axis, task).fill_(True)
    return tensor.detach().cpu()[mask].clone()


def state_of_task(weighting: Weighting, task: int) -> dict[str, Tensor]:
    """Every parameter and buffer entry of ``weighting`` that belongs to task number ``task``."""
    return {name: entries_of_task(value, task) for name, value in weighting.state_dict().items()
            if isinstance(value, Tensor)}


def flat(tensors: list[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def assert_update_from_task_a(name: str, step: int, model: torch.nn.Module, expected: Tensor) -> None:
    """(1) The shared parameters' gradient is not zero and points along task a's gradient ``expected``."""
    shared = flat([p.grad for p in model.shared_parameters()])
    assert torch.isfinite(shared).all() and shared.norm() > 0, f"{name}: the shared part got no update"
    if step == 0 or name not in DIRECTION_AT_FIRST_STEP_ONLY:
        assert torch.cosine_similarity(shared, expected, dim=0).item() == pytest.approx(1.0, abs=1e-5)
    if name in LONE_TASK_WEIGHT_ONE:
        assert torch.allclose(shared, expected, rtol=1e-4, atol=1e-6)


def assert_state_kept(name: str, before: dict[str, Tensor], after: dict[str, Tensor]) -> None:
    """(3) No entry of the method's state that belongs to task b moved (a lazily created buffer is compared from
    its first step on)."""
    for key, value in before.items():
        if key in after and after[key].shape == value.shape:
            assert torch.equal(after[key], value), f"{name}: {key} moved for the switched-off task"


@pytest.mark.parametrize(("name", "mode"), CASES)
def test_a_switched_off_task_is_inactive_for_every_method(name: str, mode: str | None, tmp_path: Path) -> None:
    """While b is off: (1) the shared part is updated along a's gradient (exactly a's gradient where a lone task has
    weight 1), (2) b's weight is 0, (3) no state entry of b moves, (4) b's head does not move."""
    weighting = build(name, mode)
    schedule = PretrainThenJointSchedule(TASKS, tasks=["a"], epochs=1.5)
    trainer = tiny_trainer(weighting, tmp_path, schedule=schedule)
    applied = record_applied_weights(weighting)
    model, split = trainer.model, trainer.splits["train"]
    head_of_b = [p.detach().clone() for p in model.task_parameters("b")]
    for step in range(OFF_STEPS + 1):
        rows = slice(step % 2 * BATCH_SIZE, (step % 2 + 1) * BATCH_SIZE)
        inputs, targets = split.inputs[rows], {t: target[rows] for t, target in split.targets.items()}
        expected = flat(torch.autograd.grad(task_loss(model, inputs, targets, "a"), model.shared_parameters()))
        state_before = state_of_task(weighting, OFF)
        factors = schedule.factors(step, step / trainer.steps_per_epoch).tolist()

        _, weights = trainer.train_step(inputs, targets)
        trainer.step += 1

        if step == OFF_STEPS:  # the joint phase: b trains again, so the steps above really had it switched off
            assert factors == [1.0, 1.0]
            assert not all(torch.equal(p, q) for p, q in zip(model.task_parameters("b"), head_of_b))
            break
        assert factors == [1.0, 0.0]
        assert_update_from_task_a(name, step, model, expected)
        assert_state_kept(name, state_before, state_of_task(weighting, OFF))
        assert all(torch.equal(p, q) for p, q in zip(model.task_parameters("b"), head_of_b))  # (4)
        # (2) the weights the method applied, and those the trainer records
        assert torch.isfinite(applied[-1]).all() and torch.isfinite(weights).all()
        assert applied[-1][OFF].item() == 0.0 and weights[OFF].item() == 0.0
        if name in LONE_TASK_WEIGHT_ONE:
            assert applied[-1][ACTIVE].item() == pytest.approx(1.0, abs=1e-6)


class EveryTaskOff(TrainingSchedule):
    """Factors 0 for every task (e.g. a batch with no labels at all)."""

    def factors(self, step: int, epoch: float) -> Tensor:
        return torch.zeros(len(self.task_names))


@pytest.mark.parametrize(("name", "mode"), CASES)
def test_a_step_with_every_task_off_weighs_nothing_and_moves_nothing(name: str, mode: str | None,
                                                                    tmp_path: Path) -> None:
    """No 0/0 anywhere: weights 0 (finite), finite zero gradients, no state entry of either task moved."""
    weighting = build(name, mode)
    trainer = tiny_trainer(weighting, tmp_path, schedule=EveryTaskOff(TASKS))
    applied = record_applied_weights(weighting)
    state_before = [state_of_task(weighting, task) for task in range(len(TASKS))]
    inputs, targets = first_batch(trainer)

    trainer.train_step(inputs, targets)

    assert applied[-1].tolist() == [0.0, 0.0]
    assert all(p.grad is None or not p.grad.any() for p in trainer.model.parameters())
    for task, before in enumerate(state_before):
        assert_state_kept(name, before, state_of_task(weighting, task))


# ----------------------------------------------------------------------------------------- hand-computed rules

G_ONE_OFF = torch.tensor([[3.0, 4.0], [0.0, 0.0]])  # task a's gradient (norm 5) and b's, switched off
LOSSES_ONE_OFF = torch.tensor([2.0, 0.0])
GRADIENT_METHODS: dict[str, Callable[[], GradientWeighting]] = {
    "grad_norm_prop": lambda: GradNormProportional(TASKS),
    **{f"mgda-{n}": (lambda n=n: MGDA(TASKS, normalization=n)) for n in ("none", "l2", "loss", "loss+")},
    "pcgrad-sum": lambda: PCGrad(TASKS),
    "pcgrad-mean": lambda: PCGrad(TASKS, reduction="mean"),
    "aligned_mtl": lambda: AlignedMTL(TASKS),
    "gradvac": lambda: GradVac(TASKS),
    "upgrad": lambda: UPGrad(TASKS),
}


@pytest.mark.parametrize("name", list(GRADIENT_METHODS))
def test_with_one_task_off_the_update_is_the_other_tasks_gradient(name: str) -> None:
    """G = [(3, 4), 0] with b's loss 0: every rule reduces to the one active task, weights (1, 0), d = (3, 4).
    Before the fix, MGDA took the zero row as the min-norm point (weights (0, 1), d = 0), UPGrad averaged over both
    tasks (weights (1/2, 1/2), d = (1.5, 2)) and PCGrad weighted b's zero row with 1."""
    aggregation = GRADIENT_METHODS[name]().aggregate(G_ONE_OFF, LOSSES_ONE_OFF)
    assert aggregation.weights.tolist() == pytest.approx([1.0, 0.0], abs=1e-9)
    assert aggregation.direction.tolist() == pytest.approx([3.0, 4.0], abs=1e-6)


@pytest.mark.parametrize(("grads", "losses", "expected"), [
    ([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], [1.0, 1.0, 0.0], [0.5, 0.5, 0.0]),
    ([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], [0.0, 1.0, 1.0], [0.0, 0.5, 0.5]),  # the first active task is not 0
    ([[0.0, 0.0], [2.0, 0.0], [1.0, 1.0]], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0]),  # min norm at a vertex: (1, 1)
    ([[0.0, 0.0], [0.0, 0.0]], [0.0, 0.0], [0.0, 0.0]),  # nothing active: no weight, no NaN
])
def test_mgda_takes_the_min_norm_point_of_the_active_gradients(grads: list[list[float]], losses: list[float],
                                                              expected: list[float]) -> None:
    """Orthogonal unit gradients: their min-norm point is their mean; (2, 0) and (1, 1): (1, 1) has the least norm
    on the segment between them (its inner product with (2, 0) - (1, 1) is 0)."""
    aggregation = MGDA(["a", "b", "c"][:len(losses)]).aggregate(torch.tensor(grads), torch.tensor(losses))
    assert aggregation.weights.tolist() == pytest.approx(expected, abs=1e-9)
    assert torch.isfinite(aggregation.direction).all()


def test_mgda_with_more_than_8_tasks_ignores_the_inactive_ones() -> None:
    """k = 10 (the interior-point solver): 9 orthonormal gradients and one task off, alpha = 1/9 on the active ones."""
    grads = torch.cat([torch.eye(9, dtype=torch.float64), torch.zeros(1, 9, dtype=torch.float64)])
    active = torch.tensor([True] * 9 + [False])
    alpha = mgda_weights(grads @ grads.T, active=active)
    assert alpha.tolist() == pytest.approx([1 / 9] * 9 + [0.0], abs=1e-8)


def test_uw_a_switched_off_task_leaves_its_log_variance_alone() -> None:
    """s = (0, 0), L = (4, 0): only a's term 0.5 e^{-s_a} L_a + 0.5 s_a remains, so ds = (-0.5 * 4 + 0.5, 0) and
    the weights are (0.5, 0); b's regulariser 0.5 s_b (gradient 1/2 before the fix) is left out with its loss."""
    theta = torch.nn.Parameter(torch.tensor([2.0, 1.0]))
    method = UncertaintyWeighting(TASKS)
    weights = method.backward(torch.stack([theta[0] ** 2, 0.0 * theta[1]]), StepContext(None, 0, lambda x: x))
    assert method.log_variances.grad.tolist() == [-1.5, 0.0]
    assert weights.tolist() == [0.5, 0.0]
    assert theta.grad.tolist() == [2.0, 0.0]  # 0.5 * d(theta_0^2) = theta_0


@pytest.mark.parametrize("ema_update", ["always", "on_adjust"])
def test_gradvac_targets_of_a_switched_off_task_do_not_move(ema_update: str) -> None:
    """phi^ = 0.5 everywhere; b off: its pairs are not adjusted (before the fix a's row took a step
    ||g_a|| * 0.5 / 1e-8 along b's zero row) and their targets stay 0.5 (before: 0.5 * 0.5 + 0.5 * 0 = 0.25)."""
    method = GradVac(TASKS, beta=0.5, ema_update=ema_update)
    method.targets.fill_(0.5)
    aggregation = method.aggregate(G_ONE_OFF, LOSSES_ONE_OFF)
    assert aggregation.weights.tolist() == [1.0, 0.0]
    assert method.targets.tolist() == [[0.5, 0.5], [0.5, 0.5]]


def test_db_mtl_keeps_the_ema_of_a_switched_off_task() -> None:
    """beta = 0.9. Step 1, both active: g^ = 0.1 ((3, 0), (0, 1)) = ((0.3, 0), (0, 0.1)). Step 2, b off, g_a = (1, 0):
    g^_a = 0.27 + 0.1 = (0.37, 0), g^_b stays (0, 0.1) (before the fix: 0.9 * 0.1 = 0.09), and d = 0.37 * g^_a / 0.37
    over the active task only (before: 0.37 (1, 1), b's stale EMA included)."""
    method = DBMTL(TASKS)
    method.aggregate(torch.tensor([[3.0, 0.0], [0.0, 1.0]]), torch.ones(2))
    aggregation = method.aggregate(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.tensor([1.0, 0.0]))
    assert method.ema_grads.flatten().tolist() == pytest.approx([0.37, 0.0, 0.0, 0.1], abs=1e-7)
    assert aggregation.weights.tolist() == pytest.approx([1.0, 0.0], abs=1e-7)
    assert aggregation.direction.tolist() == pytest.approx([0.37, 0.0], abs=1e-7)


def test_upgrad_averages_over_the_active_tasks_only() -> None:
    """Three tasks, c off: the update is UPGrad's on a and b alone (the mean of their two projected rows)."""
    grads = torch.tensor([[1.0, 0.0, 1.0], [-1.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    with_off = UPGrad(["a", "b", "c"]).aggregate(grads, torch.tensor([1.0, 1.0, 0.0]))
    alone = UPGrad(["a", "b"]).aggregate(grads[:2], torch.ones(2))
    assert with_off.weights.tolist() == pytest.approx([*alone.weights.tolist(), 0.0], abs=1e-6)
    assert with_off.direction.tolist() == pytest.approx(alone.direction.tolist(), abs=1e-6)


@pytest.mark.parametrize("distribution", ["normal", "dirichlet"])
def test_rlw_draws_on_the_active_tasks(distribution: str) -> None:
    """The active tasks' draws rescaled to sum 1 (the softmax of their normal draws for ``normal``), b's weight 0;
    the generator advances by all k draws either way."""
    method = RandomLossWeighting(["a", "b", "c"], distribution=distribution, seed=5)
    theta = torch.nn.Parameter(torch.ones(3))
    weights = method.backward(theta * torch.tensor([1.0, 0.0, 2.0]), StepContext(None, 0, lambda x: x))
    drawn = RandomLossWeighting(["a", "b", "c"], distribution=distribution, seed=5)
    full = drawn.backward(torch.ones(3, requires_grad=True), StepContext(None, 0, lambda x: x))
    expected = torch.tensor([full[0], 0.0, full[2]]) / (full[0] + full[2])
    assert weights.tolist() == pytest.approx(expected.tolist(), abs=1e-7)
    assert math.isclose(weights.sum().item(), 1.0, abs_tol=1e-6)
    assert torch.equal(method.generator.get_state(), drawn.generator.get_state())


def without_labels_of_b(trainer, rows: slice) -> None:
    """Task b gets ``missing_label: -1`` and no label in training rows ``rows``."""
    trainer.tasks[OFF].missing_label = -1
    trainer.splits["train"].targets["b"][rows] = -1


@pytest.mark.parametrize(("name", "mode"), CASES)
def test_a_batch_without_labels_for_a_task_makes_it_inactive_for_every_method(name: str, mode: str | None,
                                                                            tmp_path: Path) -> None:
    """Missing labels: b's loss on a batch where no row has its label is exactly 0 with a zero gradient, so b is
    inactive in that step for every method (loss-based and gradient-based): (1) the shared part follows a's
    gradient, (2) b's weight is 0 and finite, (3) no state entry of b moves, (4) b's head does not move (plain SGD).
    The next batch, with b's labels, trains b again."""
    weighting = build(name, mode)
    trainer = tiny_trainer(weighting, tmp_path)
    without_labels_of_b(trainer, slice(0, BATCH_SIZE))
    applied = record_applied_weights(weighting)
    model, split = trainer.model, trainer.splits["train"]
    inputs, targets = first_batch(trainer)
    expected = flat(torch.autograd.grad(task_loss(model, inputs, targets, "a"), model.shared_parameters()))
    head_of_b = [p.detach().clone() for p in model.task_parameters("b")]
    state_before = state_of_task(weighting, OFF)

    losses, weights = trainer.train_step(inputs, targets)

    assert losses[OFF].item() == 0.0 and torch.isfinite(losses).all()
    assert_update_from_task_a(name, 0, model, expected)
    assert_state_kept(name, state_before, state_of_task(weighting, OFF))
    assert all(torch.equal(p, q) for p, q in zip(model.task_parameters("b"), head_of_b))
    assert torch.isfinite(applied[-1]).all() and torch.isfinite(weights).all()
    assert applied[-1][OFF].item() == 0.0 and weights[OFF].item() == 0.0
    trainer.step += 1
    labelled = slice(BATCH_SIZE, 2 * BATCH_SIZE)
    trainer.train_step(split.inputs[labelled], {t: target[labelled] for t, target in split.targets.items()})
    assert not all(torch.equal(p, q) for p, q in zip(model.task_parameters("b"), head_of_b))
