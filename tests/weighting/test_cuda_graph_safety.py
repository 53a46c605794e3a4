"""Every method marked ``cuda_graph_safe`` keeps the contract a CUDA-graph replay needs, checked on the CPU.

A replay runs the kernels recorded at the capture and nothing else (:mod:`mtl_train.engine.cuda_graphs`): Python
code of the method does not run again, a host value read at the capture stays what it was, and a tensor the method
rebinds to a new one is not what the recorded kernels read and write. So after a few warm-up steps, a marked
method's steps must (1) leave its Python-side state and its random generators as they were, (2) update its tensors
in place (the same storage), also in ``after_epoch`` and ``after_evaluation``, which run between replays,
(3) give the same result whatever ``ctx.step`` and ``ctx.epoch`` say, and never need ``ctx.recompute_losses``, and
(4) read no tensor value on the host (``FakeTensorMode``, as in test_host_sync.py). On a GPU,
tests/engine/test_cuda_graphs.py compares real replays with eager steps.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from conftest import CONFIG_DIR, compose_config
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from torch._subclasses.fake_tensor import FakeTensorMode

from mtl_train.backbones.cnn import hard_cnn
from mtl_train.heads.classification import ClassificationHead
from mtl_train.model import MultiTaskModel
from mtl_train.utils.instantiate import instantiate
from mtl_train.weighting.base import StepContext, Weighting

TASKS = ["a", "b", "c"]
METHODS = sorted(p.stem for p in (CONFIG_DIR / "weighting").glob("*.yaml"))
#: The methods marked safe (:data:`EXPECTED_MARKED`). Not marked, each failing a check below: a random generator on
#: the host (pcgrad, gradvac, graddrop, rgw, rlw), the epoch read in the step (stch, excess_mtl), the losses after
#: the update (famo); and aligned_mtl, whose torch.linalg.eigh checks its convergence on the host on a GPU. Nash-MTL
#: is marked when it updates its weights every step (its default), without its Python step counter.


@functools.cache
def method_config(name: str) -> DictConfig:
    overrides = ["++weighting.tolerance=0"] if name == "nash_mtl" else []  # its CUDA path: no early stop on the host
    return compose_config([f"weighting={name}", *overrides]).weighting


def method(name: str) -> Weighting:
    return instantiate(method_config(name), "weighting", task_names=TASKS)


def is_marked(name: str) -> bool:
    """The class's flag, or, where a property decides it from the settings (Nash-MTL), the default instance's."""
    flag = get_class(OmegaConf.load(CONFIG_DIR / "weighting" / f"{name}.yaml")._target_).cuda_graph_safe
    return method(name).cuda_graph_safe if isinstance(flag, property) else flag


MARKED = sorted(name for name in METHODS if is_marked(name))
WARMUP_STEPS = 3
METRICS = {t: {"accuracy": 0.5, "loss": 1.0} for t in TASKS}




class Harness:
    """A tiny model (BatchNorm, no dropout), a fixed batch, Adam over the model and the method's own parameters; a
    step is forward, ``backward``, the optimizer step and ``after_optimizer_step``, with ``ctx.recompute_losses``
    absent, as in a captured step."""

    def __init__(self, weighting: Weighting) -> None:
        torch.manual_seed(0)
        backbone = hard_cnn(TASKS, in_channels=1, input_size=(16,), spatial_dims=1, channels=(4, 4), kernel_size=3)
        heads = {t: ClassificationHead(4, 1, num_classes=3, hidden=8, dropout=0.0) for t in TASKS}
        self.model = MultiTaskModel(backbone, heads).train()
        self.weighting = weighting
        self.optimizer = torch.optim.Adam([{"params": list(self.model.parameters())}, *weighting.optimizer_groups()],
                                          lr=1e-2)
        self.x, self.y = torch.randn(8, 1, 16), torch.randint(0, 3, (8,))

    def step(self, step: int = 0, epoch: int = 0) -> torch.Tensor:
        z = self.model.encode(self.x)
        outputs = self.model.decode(z, self.x)
        losses = torch.stack([torch.nn.functional.cross_entropy(outputs[t], self.y) for t in TASKS])
        ctx = StepContext(model=self.model, step=step, epoch=epoch, scale=lambda loss: loss, inputs=self.x,
                          shared_representation=z, outputs=outputs, class_logits={t: True for t in TASKS})
        self.optimizer.zero_grad(set_to_none=True)
        weights = self.weighting.backward(losses, ctx)
        self.optimizer.step()
        self.weighting.after_optimizer_step(ctx)
        return weights

    def between_steps(self, epoch: int) -> None:
        """What runs eagerly between replays: the end of an epoch and a validation."""
        self.weighting.after_epoch(epoch, torch.tensor([1.0, 2.0, 3.0]))
        self.weighting.after_evaluation(METRICS)


def python_state(weighting: Weighting) -> dict:
    """The method's attributes that are not registered tensors or modules: plain values as they are, random
    generators by their state, other tensors by their storage."""
    state = {}
    for name, value in vars(weighting).items():
        if name.startswith("_") or name in ("training", "kept_gradients"):
            continue
        if isinstance(value, torch.Generator):
            state[name] = value.get_state()
        elif isinstance(value, torch.Tensor):
            state[name] = ("storage", value.data_ptr())
        elif hasattr(value, "__dict__") and not isinstance(value, torch.nn.Module):  # e.g. the TrunkJacobian
            state[name] = (type(value).__name__, copy.deepcopy(vars(value)))
        else:
            state[name] = copy.deepcopy(value)
    return state


def storages(weighting: Weighting) -> dict[str, int]:
    return {name: tensor.data_ptr() for name, tensor in weighting.state_dict(keep_vars=True).items()
            if isinstance(tensor, torch.Tensor)}


def assert_same_python_state(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for name in before:
        if isinstance(before[name], torch.Tensor):
            assert torch.equal(before[name], after[name]), name
        else:
            assert before[name] == after[name], name


def warmed_up(name: str) -> Harness:
    harness = Harness(method(name))
    for step in range(WARMUP_STEPS):
        harness.step(step)
        harness.between_steps(step + 1)
    return harness


#: (ctx.step, ctx.epoch) pairs a recorded step may meet: the first step, a typical warm-up/nadir epoch, much later.
COUNTERS = [(0, 0), (WARMUP_STEPS, 4), (10_000, 5), (1_000_000, 500)]
#: Checked by the default suite; the other marked methods by ``pytest -m slow``.
FAST = {"ew", "uw", "dwa", "mgda", "cagrad", "gradnorm"}
CASES = [pytest.param(name, marks=() if name in FAST else pytest.mark.slow) for name in MARKED]


def check_host_state_and_storage(harness: Harness) -> None:
    """Checks (1) and (2): three more steps, each followed by an epoch end and a validation, change neither the
    method's Python-side state nor the storage of its tensors."""
    python, tensors = python_state(harness.weighting), storages(harness.weighting)
    for step in range(WARMUP_STEPS, WARMUP_STEPS + 3):
        harness.step(step)
        harness.between_steps(step + 1)
        assert_same_python_state(python, python_state(harness.weighting))
        assert storages(harness.weighting) == tensors


def check_counters_ignored(harness: Harness) -> None:
    """Check (3): from the same state and random seed, a step gives the same weights, model and method state
    whatever ``ctx.step`` and ``ctx.epoch`` say."""
    results = []
    for step, epoch in COUNTERS:
        copied = copy.deepcopy(harness)
        torch.manual_seed(1)
        weights = copied.step(step=step, epoch=epoch)
        results.append((weights, [p.detach() for p in copied.model.parameters()],
                        [v for v in copied.weighting.state_dict().values() if isinstance(v, torch.Tensor)]))
    for weights, parameters, state in results[1:]:
        torch.testing.assert_close(weights, results[0][0], rtol=0, atol=0)
        torch.testing.assert_close(parameters, results[0][1], rtol=0, atol=0)
        torch.testing.assert_close(state, results[0][2], rtol=0, atol=0)


@pytest.mark.parametrize("name", CASES)
def test_a_marked_method_keeps_the_graph_contract(name: str) -> None:
    check_counters_ignored(warmed_up(name))
    check_host_state_and_storage(warmed_up(name))
    with FakeTensorMode(allow_non_fake_inputs=True):  # check (4)
        harness = Harness(method(name))
        for step in range(2):
            weights = harness.step(step)
    assert weights.shape == (len(TASKS),)


def test_the_checks_catch_what_breaks_a_replay() -> None:
    """Each check fails on a method known to break it: PCGrad's host generator moves (1), STCH reads the epoch
    (3), and FAMO needs the losses after the update."""
    with pytest.raises(AssertionError, match="generator"):
        check_host_state_and_storage(warmed_up("pcgrad"))
    with pytest.raises(AssertionError):
        check_counters_ignored(warmed_up("stch"))
    with pytest.raises(RuntimeError, match="recompute_losses"):
        warmed_up("famo")


def test_nash_mtl_is_marked_only_when_it_updates_every_step() -> None:
    """With ``update_weights_every`` > 1 its Python step counter decides the step, which a replay would not run."""
    assert method("nash_mtl").cuda_graph_safe
    every_other = instantiate(method_config("nash_mtl"), "weighting", task_names=TASKS, update_weights_every=2)
    assert not every_other.cuda_graph_safe
    harness = Harness(every_other)
    harness.step()
    with pytest.raises(AssertionError, match="calls"):
        check_host_state_and_storage(harness)


def test_the_marked_methods() -> None:
    """The list changes only on purpose: a newly marked method must pass the checks above, and an unmarked one
    falls back to eager steps with a warning."""
    assert MARKED == EXPECTED_MARKED


EXPECTED_MARKED = ["cagrad", "con_fig", "db_mtl", "dualproj", "dwa", "ew", "fairgrad", "gls", "grad_norm_prop", "gradnorm",
                   "imtl", "inverse_loss", "loss_ratio", "max_entropy", "mc_dropout", "mgda", "moco", "modo",
                   "nash_mtl", "pcd", "performance", "sdmgrad", "static", "upgrad", "uw"]
