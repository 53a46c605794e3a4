"""The per-step path of every gradient method never reads a tensor's value on the host: no ``.item()``, ``.cpu()``,
``.tolist()``, ``.numpy()``, and no Python branching on tensor values, so a GPU step never waits for the device.

On the CPU this is checked by running a whole ``backward`` (engine, rule and solver) and ``after_optimizer_step``
under ``FakeTensorMode``, whose tensors have shapes but no values: any data-dependent host read raises
``DataDependentOutputException``. ``.cpu()`` / ``.numpy()`` copies are not data-dependent for a fake tensor, so the
sources are also searched for them. On a GPU, ``torch.cuda.set_sync_debug_mode("error")`` checks the real thing.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import CONFIG_DIR, compose_config
from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode

import mtl_train.weighting
from mtl_train.backbones.cnn import hard_cnn
from mtl_train.heads.classification import ClassificationHead
from mtl_train.model import MultiTaskModel
from mtl_train.utils.instantiate import instantiate
from mtl_train.weighting.base import StepContext

TASKS = ["a", "b", "c"]
WEIGHTINGS = sorted(p.stem for p in (CONFIG_DIR / "weighting").glob("*.yaml") if "jacobian:" in p.read_text())
CASES = [(name, mode) for name in WEIGHTINGS for mode in ("params", "rep")
         if not (mode == "rep" and name in ("db_mtl", "excess_mtl", "gradnorm", "moco"))]  # no rep mode
HOST_READS = {"item", "cpu", "tolist", "numpy"}
CHECKPOINT_LOADING = {"set_extra_state", "_load_from_state_dict"}


def method(name: str, mode: str) -> torch.nn.Module:
    overrides = [] if name == "gradnorm" else [f"++weighting.mode={mode}"]
    if name == "nash_mtl":  # on the CPU its solver reads the Newton decrement to stop early; 0 is its GPU path
        overrides.append("++weighting.tolerance=0")
    return instantiate(compose_config([f"weighting={name}", *overrides]).weighting, "weighting", task_names=TASKS)


def prepare_step(weighting: torch.nn.Module, device: str = "cpu") -> Callable[[], torch.Tensor]:
    """A closure running one step of ``weighting`` on a tiny model with BatchNorm and dropout (the forward pass and
    the losses are computed here): backward, then after_optimizer_step; it returns the weights."""
    torch.manual_seed(0)
    with torch.device(device):
        backbone = hard_cnn(TASKS, in_channels=1, input_size=(16,), spatial_dims=1, channels=(4, 4), kernel_size=3)
        heads = {t: ClassificationHead(4, 1, num_classes=3, hidden=8, dropout=0.5) for t in TASKS}
        model = MultiTaskModel(backbone, heads).train()
        x, y = torch.randn(8, 1, 16), torch.randint(0, 3, (8,))
    z = model.encode(x)
    outputs = model.decode(z, x)
    losses = torch.stack([torch.nn.functional.cross_entropy(outputs[t], y) for t in TASKS])
    ctx = StepContext(model=model, step=0, scale=lambda loss: loss, shared_representation=z)

    def step() -> torch.Tensor:
        weights = weighting.backward(losses, ctx)
        weighting.after_optimizer_step(ctx)
        return weights

    return step


@pytest.mark.parametrize(("name", "mode"), CASES)
def test_a_step_needs_no_tensor_values_on_the_host(name: str, mode: str) -> None:
    with FakeTensorMode():
        weights = prepare_step(method(name, mode))()
    assert weights.shape == (len(TASKS),)


def test_fake_tensors_catch_host_reads() -> None:
    with FakeTensorMode():
        gram = torch.randn(3, 3)
        for read in (lambda: gram.sum().item(), lambda: gram.tolist(), lambda: bool(gram[0, 0] > 0)):
            with pytest.raises(DataDependentOutputException):
                read()


def test_the_sources_copy_nothing_to_the_host() -> None:
    """No call of ``.item()``, ``.cpu()``, ``.tolist()`` or ``.numpy()`` in any function of the engine, the solvers or
    a gradient method, except where a checkpoint is loaded."""
    package = Path(mtl_train.weighting.__file__).parent
    for module in ["gradients", "gradient_based", "solvers", *WEIGHTINGS]:
        tree = ast.parse((package / f"{module}.py").read_text())
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef) or function.name in CHECKPOINT_LOADING:
                continue
            reads = [node.func.attr for node in ast.walk(function) if isinstance(node, ast.Call)
                     and isinstance(node.func, ast.Attribute) and node.func.attr in HOST_READS]
            assert not reads, f"{module}.{function.name} calls {reads}"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize(("name", "mode"), CASES)
def test_no_host_synchronisation_on_cuda(name: str, mode: str) -> None:
    """Aligned-MTL is allowed one synchronisation: torch.linalg.eigh checks its convergence flag on the host."""
    weighting = method(name, mode).cuda()
    prepare_step(weighting, "cuda")()  # warm-up (lazy buffers, library handles)
    step = prepare_step(weighting, "cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn" if name == "aligned_mtl" else "error")
    try:
        weights = step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert weights.device.type == "cuda"
