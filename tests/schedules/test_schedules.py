"""Training schedules: per-task factors on hand-computed steps, and their effect on a real run."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from conftest import compose_config

from mtl_train.errors import ConfigError
from mtl_train.schedules.alternating import AlternatingSchedule
from mtl_train.schedules.decay import DecaySchedule
from mtl_train.schedules.joint import JointSchedule
from mtl_train.schedules.pretrain_then_joint import PretrainThenJointSchedule
from mtl_train.train import train

TASKS = ["a", "b", "c"]


def test_joint_trains_everything() -> None:
    assert JointSchedule(TASKS).factors(7, 2.5).tolist() == [1.0, 1.0, 1.0]


def test_alternating_per_step_and_per_epoch() -> None:
    per_step = AlternatingSchedule(TASKS)
    assert [per_step.factors(s, 0.0).tolist() for s in range(4)] == [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]]
    per_epoch = AlternatingSchedule(TASKS, unit="epoch", order=["c", "a"])
    assert per_epoch.factors(0, 0.9).tolist() == [0, 0, 1] and per_epoch.factors(5, 1.2).tolist() == [1, 0, 0]


def test_pretrain_then_joint() -> None:
    schedule = PretrainThenJointSchedule(TASKS, tasks=["b"], epochs=2)
    assert schedule.factors(0, 1.99).tolist() == [0, 1, 0]
    assert schedule.factors(0, 2.0).tolist() == [1, 1, 1]


@pytest.mark.parametrize(("shape", "epoch", "expected"), [("linear", 1.0, 0.8), ("linear", 10.0, 0.0),
                                                           ("cosine", 2.5, 0.5), ("cosine", 0.0, 1.0)])
def test_decay_anneals_one_task(shape: str, epoch: float, expected: float) -> None:
    factors = DecaySchedule(TASKS, task="c", start=1.0, end=0.0, epochs=5.0, shape=shape).factors(0, epoch)
    assert factors[:2].tolist() == [1.0, 1.0] and factors[2].item() == pytest.approx(expected)


def test_unknown_task_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="schedule.task names 'x'"):
        DecaySchedule(TASKS, task="x")
    with pytest.raises(ConfigError, match="schedule.unit"):
        AlternatingSchedule(TASKS, unit="batch")


def test_alternating_run_records_the_active_task(tmp_path: Path) -> None:
    train(compose_config(["debug=smoke", "dataset.num_val=16", "schedule=alternating", "trainer.max_steps=4",
                          "weighting=static", "weighting.weights={rhythm:2.0,denoise:0.5}"], tmp_path))
    with open(tmp_path / "weights.csv", newline="") as file:
        rows = list(csv.reader(file))[1:]
    assert [[float(v) for v in r[1:]] for r in rows] == [[2.0, 0.0], [0.0, 0.5], [2.0, 0.0], [0.0, 0.5]]
