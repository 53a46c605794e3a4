"""CUDA graphs for the training step (:mod:`mtl_train.engine.cuda_graphs`).

On the CPU, the runner's logic is checked with :class:`EagerStepGraph`, a stand-in for a CUDA graph that runs the
captured step's function at every replay: the keys (batch shape, scheduled tasks), the warm-up steps, the static
inputs and factors, the deferred finiteness check, the fall-back after a failed capture, and that the captured step
computes what the eager step does. The tests marked ``cuda`` compare real replays with eager steps on a GPU.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from tiny_trainer import TASKS, tiny_data, tiny_trainer

from mtl_train.engine.cuda_graphs import (MAX_GRAPHS, WARMUP_STEPS, graph_blockers, plain_optimizer_state,
                                          plain_scheduler_state, prepare_capturable_optimizer)
from mtl_train.engine.trainer import Trainer
from mtl_train.errors import ConfigError, NonFiniteLossError
from mtl_train.schedules.alternating import AlternatingSchedule
from mtl_train.schedules.decay import DecaySchedule
from mtl_train.weighting.cagrad import CAGrad
from mtl_train.weighting.ew import EqualWeighting
from mtl_train.weighting.mgda import MGDA
from mtl_train.weighting.pcgrad import PCGrad
from mtl_train.weighting.uw import UncertaintyWeighting

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")


class EagerStepGraph:
    """A CUDA graph's stand-in: constructing it records nothing; each replay runs the step and writes its results
    into the same output tensors, as a graph's replay does."""

    def __init__(self, body) -> None:
        self.body = body
        self.outputs = None

    def replay(self) -> None:
        results = self.body()
        if self.outputs is None:
            self.outputs = tuple(result.clone() for result in results)
        else:
            for output, result in zip(self.outputs, results):
                output.copy_(result)

    @staticmethod
    def warm_up(step):
        return step()


class FailingGraph(EagerStepGraph):
    def __init__(self, body) -> None:
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing\nmore detail")


def graphed(trainer: Trainer, graph_type: type = EagerStepGraph) -> Trainer:
    trainer.graphs = trainer._graph_runner(graph_type)
    return trainer


def rows(trainer: Trainer, steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (losses, weights) of ``steps`` training steps, over as many epochs as they take."""
    out = []
    while len(out) < steps:
        for inputs, targets, share in trainer._train_batches():
            out.append(trainer.train_step(inputs, targets, share))
            trainer.step += 1
            trainer.batch_in_epoch += 1
            if len(out) == steps:
                return out
        trainer.batch_in_epoch = 0
    return out


def assert_same_training(eager: Trainer, graphs: Trainer, steps: int) -> None:
    for (losses, weights), (graph_losses, graph_weights) in zip(rows(eager, steps), rows(graphs, steps), strict=True):
        torch.testing.assert_close(graph_losses, losses, rtol=0, atol=0)
        torch.testing.assert_close(graph_weights, weights, rtol=0, atol=0)
    torch.testing.assert_close(list(graphs.model.parameters()), list(eager.model.parameters()), rtol=0, atol=0)
    torch.testing.assert_close(list(graphs.weighting.parameters()), list(eager.weighting.parameters()), rtol=0, atol=0)


@pytest.mark.parametrize("weighting", [EqualWeighting, UncertaintyWeighting, lambda tasks: MGDA(tasks, mode="rep"),
                                       lambda tasks: CAGrad(tasks, mode="params", jacobian="batched")],
                         ids=["ew", "uw", "mgda-rep", "cagrad-params"])
def test_replays_train_as_eager_steps_do_with_a_graph_per_batch_shape(weighting, tmp_path: Path) -> None:
    """20 rows in batches of 8: two full batches and one of 4 per epoch, so two graphs; 18 steps are 3 warm-up
    steps and 9 replays of the full batch's graph, 3 and 3 of the last batch's."""
    data = tiny_data(num_train=20)
    eager = tiny_trainer(weighting(TASKS), tmp_path, data=data)
    graphs = graphed(tiny_trainer(weighting(TASKS), tmp_path, data=data))
    assert_same_training(eager, graphs, steps=18)
    assert graphs.graphs.summary() == {"used": True, "fallback": None, "graphs": 2, "graphed_steps": 12,
                                       "eager_steps": 2 * WARMUP_STEPS}


@pytest.mark.parametrize("schedule", [lambda: AlternatingSchedule(TASKS),
                                      lambda: DecaySchedule(TASKS, task="b", start=1.0, end=0.0, epochs=4.0)],
                         ids=["alternating", "decay"])
def test_a_graph_per_pattern_of_scheduled_tasks_and_factor_values_copied_in(schedule, tmp_path: Path) -> None:
    """The alternating schedule switches one task on per step: a graph per pattern, whose switched-off task's
    parameters stay untouched; the decay schedule lowers task b's factor every step (one graph while it is above 0,
    whose factor tensor follows) until it is 0 after epoch 4 (a second graph)."""
    eager = tiny_trainer(UncertaintyWeighting(TASKS), tmp_path, schedule=schedule())
    graphs = graphed(tiny_trainer(UncertaintyWeighting(TASKS), tmp_path, schedule=schedule()))
    assert_same_training(eager, graphs, steps=16)
    patterns = {key[1] for key in graphs.graphs.graphs}
    assert patterns == ({(True, False), (False, True)} if isinstance(graphs.schedule, AlternatingSchedule)
                        else {(True, True), (True, False)})


def test_no_more_than_max_graphs_are_captured(tmp_path: Path) -> None:
    """Batches of 1 to MAX_GRAPHS + 2 rows, each size for 4 steps: a graph for each of the first MAX_GRAPHS sizes
    (3 warm-up steps, a replay), eager steps for the last two."""
    trainer = graphed(tiny_trainer(EqualWeighting(TASKS), tmp_path, data=tiny_data(num_train=32)))
    batch = trainer.splits["train"]
    for size in range(1, MAX_GRAPHS + 3):
        for _ in range(WARMUP_STEPS + 1):
            trainer.train_step(batch.inputs[:size], {t: y[:size] for t, y in batch.targets.items()})
    assert len(trainer.graphs.graphs) == MAX_GRAPHS
    assert trainer.graphs.graphed_steps == MAX_GRAPHS
    assert trainer.graphs.eager_steps == MAX_GRAPHS * WARMUP_STEPS + 2 * (WARMUP_STEPS + 1)


def test_a_failed_capture_falls_back_to_eager_steps_with_one_warning(tmp_path: Path, caplog) -> None:
    """The capture raises at the 4th step: the method's state and the RNGs are put back, a warning names the
    error, and every step (that one too) runs eagerly, as a run without graphs."""
    eager = tiny_trainer(UncertaintyWeighting(TASKS), tmp_path)
    graphs = graphed(tiny_trainer(UncertaintyWeighting(TASKS), tmp_path), FailingGraph)
    with caplog.at_level(logging.WARNING):
        assert_same_training(eager, graphs, steps=8)
    assert graphs.cuda_graph_fallback == ("capturing the step failed (RuntimeError: CUDA error: operation not "
                                          "permitted when stream is capturing)")
    assert [r.message for r in caplog.records if "cuda_graphs" in r.message] == [
        f"trainer.cuda_graphs=true: {graphs.cuda_graph_fallback}; running eager steps from now on"]
    assert graphs.graphs.summary() == {"used": False, "fallback": graphs.cuda_graph_fallback, "graphs": 0,
                                       "graphed_steps": 0, "eager_steps": 8}


def test_a_non_finite_replay_stops_the_run_when_the_rows_are_written(tmp_path: Path, monkeypatch) -> None:
    """Replays read nothing on the host: a NaN batch at step 6 is found when the rows are flushed, the rows after it
    are dropped, and the error names step 6 as the eager check would."""
    trainer = graphed(tiny_trainer(EqualWeighting(TASKS), tmp_path))
    written = []
    monkeypatch.setattr(trainer.writer, "log_steps", lambda steps, losses, weights: written.extend(steps))
    split = trainer.splits["train"]
    inputs, targets = split.inputs[:8], {t: y[:8] for t, y in split.targets.items()}
    pending = []
    for step in range(1, 9):
        batch = torch.full_like(inputs, float("nan")) if step == 6 else inputs
        losses, weights = trainer.train_step(batch, targets)
        trainer.step += 1
        pending.append((trainer.step, losses, weights))
    with pytest.raises(NonFiniteLossError, match="the losses is not finite at step 6 .*trainer.nonfinite=abort"):
        trainer._flush_steps(pending, progress=type("Progress", (), {"update": lambda *args: None})())
    assert written == [1, 2, 3, 4, 5, 6]


def test_graphs_on_the_cpu_are_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="trainer.cuda_graphs=true needs a GPU .* training device is cpu"):
        tiny_trainer(EqualWeighting(TASKS), tmp_path, cuda_graphs=True)


def test_graph_blockers_name_the_key_to_change() -> None:
    params = [torch.nn.Parameter(torch.zeros(2))]
    adam = torch.optim.Adam(params)
    assert graph_blockers(torch.bfloat16, "abort", False, False, adam, EqualWeighting(TASKS)) == []
    reasons = graph_blockers(torch.float16, "skip", True, True, torch.optim.LBFGS(params), PCGrad(TASKS))
    assert [reason.split(" ")[0] for reason in reasons] == [
        "trainer.amp=fp16", "trainer.nonfinite=skip", "under", "the", "optimizer", "weighting"]
    assert "diagnostics=off" in reasons[3] and "LBFGS" in reasons[4] and "PCGrad" in reasons[5]


def test_the_learning_rate_becomes_a_tensor_the_scheduler_updates_in_place() -> None:
    """After :func:`prepare_capturable_optimizer` a replay reads the rate from a tensor: the scheduler fills that same
    tensor, and the steps are those of float rates; the checkpoint holds floats again and loads into a plain
    optimizer."""
    def build():
        p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
        optimizer = torch.optim.Adam([p], lr=0.1)
        return p, optimizer, torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.5)

    p, optimizer, scheduler = build()
    q, tensor_optimizer, tensor_scheduler = build()
    prepare_capturable_optimizer(tensor_optimizer, torch.device("cpu"))
    rate = tensor_optimizer.param_groups[0]["lr"]
    assert isinstance(rate, torch.Tensor)
    for _ in range(3):
        for param, opt, sched in ((p, optimizer, scheduler), (q, tensor_optimizer, tensor_scheduler)):
            param.grad = torch.tensor([1.0, 1.0])
            opt.step()
            sched.step()
    assert tensor_optimizer.param_groups[0]["lr"] is rate and float(rate) == pytest.approx(0.1 / 8)
    torch.testing.assert_close(q, p)
    state = plain_optimizer_state(tensor_optimizer.state_dict())
    assert state["param_groups"][0]["lr"] == pytest.approx(0.1 / 8) and type(state["param_groups"][0]["lr"]) is float
    assert state["param_groups"][0]["capturable"] is False
    assert all(type(v) is float for v in plain_scheduler_state(tensor_scheduler.state_dict())["_last_lr"])
    _, fresh, _ = build()
    fresh.load_state_dict(state)
    assert fresh.param_groups[0]["lr"] == pytest.approx(0.1 / 8)


@pytest.mark.cuda
@CUDA
@pytest.mark.parametrize("name", ["ew", "uw", "mgda-rep", "cagrad-params"])
@pytest.mark.parametrize("amp", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_cuda_graph_replays_match_eager_steps(name: str, amp, tmp_path: Path) -> None:
    """Real CUDA graphs against eager steps on a GPU: the same losses, weights and parameters over 18 steps (two
    graphs, Adam), to float tolerance (the kernels are the same; a library may pick another algorithm under
    capture)."""
    methods = {"ew": EqualWeighting, "uw": UncertaintyWeighting, "mgda-rep": lambda t: MGDA(t, mode="rep"),
               "cagrad-params": lambda t: CAGrad(t, mode="params")}
    trainers = []
    for graphs in (False, True):
        trainer = tiny_trainer(methods[name](TASKS), tmp_path, data=tiny_data(num_train=20), device="cuda",
                               amp_dtype=amp, optimizer="adam", lr=0.01, cuda_graphs=graphs)
        trainers.append(trainer)
    eager, graphs = trainers
    for (losses, weights), (graph_losses, graph_weights) in zip(rows(eager, 18), rows(graphs, 18), strict=True):
        torch.testing.assert_close(graph_losses, losses, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(graph_weights, weights, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(list(graphs.model.parameters()), list(eager.model.parameters()), rtol=1e-4, atol=1e-5)
    assert graphs.cuda_graphs_summary() == {"used": True, "fallback": None, "graphs": 2, "graphed_steps": 12,
                                            "eager_steps": 6}


@pytest.mark.cuda
@CUDA
def test_cuda_graphs_fall_back_for_an_unmarked_method(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        trainer = tiny_trainer(PCGrad(TASKS), tmp_path, device="cuda", optimizer="adam", cuda_graphs=True)
    rows(trainer, 5)
    assert "PCGrad is not marked CUDA-graph safe" in trainer.cuda_graph_fallback
    assert trainer.cuda_graphs_summary()["eager_steps"] == 5
