"""A schedule's factors reach the gradients: in a step where a task is switched off (factor 0), its head gets a zero
gradient and the shared trunk gets the gradient of the active task alone, with a loss-based and a gradient-based
weighting method."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from tiny_trainer import TASKS, first_batch, task_loss, tiny_trainer

from mtl_train.schedules.alternating import AlternatingSchedule
from mtl_train.schedules.base import TrainingSchedule
from mtl_train.schedules.pretrain_then_joint import PretrainThenJointSchedule
from mtl_train.weighting.base import Weighting
from mtl_train.weighting.ew import EqualWeighting
from mtl_train.weighting.pcgrad import PCGrad

# At step 0 each schedule trains one task: (schedule, the active task, the switched-off task).
SCHEDULES: dict[str, tuple[Callable[[], TrainingSchedule], str, str]] = {
    "pretrain_then_joint": (lambda: PretrainThenJointSchedule(TASKS, tasks=["a"], epochs=1.0), "a", "b"),
    "alternating": (lambda: AlternatingSchedule(TASKS, unit="step", order=["b", "a"]), "b", "a"),
}
WEIGHTINGS: dict[str, Callable[[], Weighting]] = {
    "ew": lambda: EqualWeighting(TASKS),
    # G = [g_active, 0]: no conflict with a zero row, so PCGrad's sum is g_active
    "pcgrad-params": lambda: PCGrad(TASKS, seed=0, mode="params"),
}


@pytest.mark.parametrize("weighting", list(WEIGHTINGS))
@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_a_switched_off_task_moves_nothing_and_the_active_task_trains_alone(schedule: str, weighting: str,
                                                                           tmp_path: Path) -> None:
    build_schedule, active, off = SCHEDULES[schedule]
    trainer = tiny_trainer(WEIGHTINGS[weighting](), tmp_path, schedule=build_schedule())
    model = trainer.model
    inputs, targets = first_batch(trainer)
    assert trainer.schedule.factors(0, 0.0).tolist() == [1.0 if t == active else 0.0 for t in TASKS]
    active_loss = task_loss(model, inputs, targets, active)
    expected_shared = torch.autograd.grad(active_loss, model.shared_parameters(), retain_graph=True)
    expected_own = torch.autograd.grad(active_loss, model.task_parameters(active))

    _, weights = trainer.train_step(inputs, targets)

    assert weights.tolist() == [1.0 if t == active else 0.0 for t in TASKS]
    off_grads = [p.grad for p in model.task_parameters(off) if p.grad is not None]
    assert not any(g.any() for g in off_grads), f"task {off!r} is off in this step, yet its parameters got gradients"
    for p, expected in zip(model.shared_parameters(), expected_shared):
        assert torch.allclose(p.grad, expected, rtol=1e-5, atol=1e-7)
    for p, expected in zip(model.task_parameters(active), expected_own):
        assert torch.allclose(p.grad, expected, rtol=1e-5, atol=1e-7)


def test_under_adam_a_switched_off_tasks_head_does_not_move_on_its_momentum(tmp_path: Path) -> None:
    """Alternating a, b, a, ...: at step 1 task a is off. Its head got an Adam step at step 0, so a zero gradient
    would still move it (momentum); the trainer drops the gradients of a switched-off task's own parameters."""
    trainer = tiny_trainer(EqualWeighting(TASKS), tmp_path, schedule=AlternatingSchedule(TASKS, unit="step"))
    trainer.optimizer = torch.optim.Adam(trainer.model.parameters(), lr=1e-2)
    trainer.scheduler = torch.optim.lr_scheduler.ConstantLR(trainer.optimizer, factor=1.0, total_iters=0)
    inputs, targets = first_batch(trainer)
    trainer.train_step(inputs, targets)
    trainer.step += 1
    head_a = [p.detach().clone() for p in trainer.model.task_parameters("a")]
    head_b = [p.detach().clone() for p in trainer.model.task_parameters("b")]
    trainer.train_step(inputs, targets)
    assert all(torch.equal(before, p) for before, p in zip(head_a, trainer.model.task_parameters("a")))
    assert not any(torch.equal(before, p) for before, p in zip(head_b, trainer.model.task_parameters("b")))
