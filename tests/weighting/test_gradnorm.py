"""GradNorm (Chen et al., ICML 2018) on hand-computed cases and on a tiny model."""

from __future__ import annotations

import pytest
import torch

from mtl_train.backbones.cnn import hard_cnn
from mtl_train.errors import ConfigError
from mtl_train.heads.classification import ClassificationHead
from mtl_train.model import MultiTaskModel
from mtl_train.weighting.base import StepContext
from mtl_train.weighting.gradients import task_gradient_matrix
from mtl_train.weighting.gradnorm import GradNorm, gradnorm_loss


def test_gradnorm_loss_hand_computed() -> None:
    """Norms ||g|| = (2, 1), w = (1, 1), equal loss ratios: Gbar = 1.5, targets (1.5, 1.5),
    L_grad = |2 - 1.5| + |1 - 1.5| = 1; dL/dw = (sign(0.5) * 2, sign(-0.5) * 1) = (2, -1)."""
    weights = torch.ones(2, requires_grad=True)
    grads = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.6, 0.8]])
    loss = gradnorm_loss(weights, grads, torch.tensor([0.5, 0.5]), alpha=1.5)
    loss.backward()
    assert loss.item() == pytest.approx(1.0)
    assert weights.grad.tolist() == pytest.approx([2.0, -1.0])


def test_gradnorm_loss_is_zero_when_norms_match_the_training_rates() -> None:
    """Loss ratios (2, 1) -> r = (4/3, 2/3); alpha = 1: targets 1.5 * r = (2, 1) = the norms, so L_grad = 0."""
    loss = gradnorm_loss(torch.ones(2), torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([2.0, 1.0]), alpha=1.0)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_gradnorm_loss_is_invariant_to_how_rows_are_flattened() -> None:
    grads = torch.randn(3, 10)
    permutation = torch.randperm(10)
    args = (torch.tensor([0.5, 1.0, 1.5]), torch.tensor([1.0, 0.7, 0.4]), 1.5)
    assert gradnorm_loss(args[0], grads, *args[1:]).item() == pytest.approx(
        gradnorm_loss(args[0], grads[:, permutation], *args[1:]).item(), rel=1e-6)


def tiny_model() -> MultiTaskModel:
    torch.manual_seed(0)
    backbone = hard_cnn(["a", "b"], in_channels=1, input_size=(16,), spatial_dims=1, channels=(4, 4), kernel_size=3)
    heads = {t: ClassificationHead(4, 1, num_classes=3, hidden=8) for t in ("a", "b")}
    return MultiTaskModel(backbone, heads)


def model_losses(model: MultiTaskModel) -> tuple[torch.Tensor, torch.Tensor]:
    """(losses, z) of one random batch, with z the representation the outputs were decoded from."""
    x, y = torch.randn(8, 1, 16), torch.randint(0, 3, (8,))
    z = model.encode(x)
    outputs = model.decode(z, x)
    return torch.stack([torch.nn.functional.cross_entropy(outputs[t], y) for t in ("a", "b")]), z


def test_gradnorm_step_on_a_model() -> None:
    model = tiny_model()
    losses, z = model_losses(model)
    method = GradNorm(["a", "b"], alpha=1.5)
    with torch.no_grad():
        method.weights.copy_(torch.tensor([1.5, 0.5]))
    layer = list(model.last_shared_layer().parameters())
    expected_model_grad = task_gradient_matrix(losses, layer).T @ torch.tensor([1.5, 0.5])
    grads = task_gradient_matrix(losses, layer)
    ctx = StepContext(model=model, step=0, scale=lambda loss: loss, shared_representation=z)
    weights = method.backward(losses, ctx)

    assert weights.tolist() == [1.5, 0.5]
    assert torch.allclose(torch.cat([p.grad.reshape(-1) for p in layer]), expected_model_grad, atol=1e-6)
    # first step: L(0) = L, so all ratios are 1 and the target is the mean weighted norm
    norms = grads.norm(dim=1) * torch.tensor([1.5, 0.5])
    expected_w_grad = torch.sign(norms - norms.mean()) * grads.norm(dim=1)
    assert torch.allclose(method.weights.grad, expected_w_grad, atol=1e-5)
    assert method.initial_losses.tolist() == pytest.approx(losses.tolist())

    with torch.no_grad():
        method.weights.copy_(torch.tensor([3.0, 1.0]))
    method.after_optimizer_step(ctx)
    assert method.weights.tolist() == pytest.approx([1.5, 0.5])  # renormalised to sum to k = 2


def test_last_shared_layer_is_the_last_shared_convolution() -> None:
    model = tiny_model()
    assert isinstance(model.last_shared_layer(), torch.nn.Conv1d)
    assert model.last_shared_layer() is model.backbone.shared[-1][0]


def test_gradnorm_over_all_shared_parameters_uses_their_norms() -> None:
    model = tiny_model()
    losses, z = model_losses(model)
    norms = task_gradient_matrix(losses, model.shared_parameters()).norm(dim=1)
    method = GradNorm(["a", "b"], gradient_params="shared")
    method.backward(losses, StepContext(model=model, step=0, scale=lambda loss: loss, shared_representation=z))
    # w = (1, 1), ratios 1: dL/dw_i = sign(n_i - mean(n)) * n_i
    assert torch.allclose(method.weights.grad, torch.sign(norms - norms.mean()) * norms, atol=1e-5)


def test_gradnorm_rejects_unknown_gradient_params() -> None:
    with pytest.raises(ConfigError, match="weighting.gradient_params"):
        GradNorm(["a", "b"], gradient_params="everything")


def test_gradnorm_loss_over_active_tasks_only() -> None:
    """Task b switched off: norms (2, 0), only a is active, so Gbar = 2 and r_a = 1: L_grad = |2 - 2| = 0, and neither
    weight gets a gradient (b's ratio 0 / 0 is never read)."""
    weights = torch.ones(2, requires_grad=True)
    loss = gradnorm_loss(weights, torch.tensor([[2.0, 0.0], [0.0, 0.0]]), torch.tensor([0.8, float("nan")]), alpha=1.5,
                         active=torch.tensor([True, False]))
    loss.backward()
    assert loss.item() == 0.0 and weights.grad.tolist() == [0.0, 0.0]


def schedule_step(method: GradNorm, model: MultiTaskModel,
                  factors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One backward of ``method`` on a fresh batch with the schedule's ``factors`` applied; returns (scheduled losses,
    the rows of G w.r.t. the last shared layer, the weights returned). The model's gradients are cleared first."""
    model.zero_grad(set_to_none=True)
    method.weights.grad = None
    losses, z = model_losses(model)
    losses = losses * factors
    grads = task_gradient_matrix(losses, list(model.last_shared_layer().parameters()))
    ctx = StepContext(model=model, step=0, scale=lambda loss: loss, shared_representation=z)
    return losses.detach(), grads, method.backward(losses, ctx)


def test_gradnorm_under_a_schedule_takes_a_late_task_initial_loss_at_its_first_active_step() -> None:
    """pretrain_then_joint: task b is off in step 0 (loss exactly 0), on from step 1. L_b(0) is b's step-1 loss, step 1
    has the ratios (L_a(1) / L_a(0), 1), and the weight gradients are the hand formula's, finite and distinct."""
    model, method = tiny_model(), GradNorm(["a", "b"], alpha=1.5)
    first, _, _ = schedule_step(method, model, torch.tensor([1.0, 0.0]))
    assert method.weights.grad.tolist() == [0.0, 0.0]  # one active task: it trains at its own rate
    method.after_optimizer_step(None)
    second, grads, _ = schedule_step(method, model, torch.tensor([1.0, 1.0]))
    assert method.initial_losses.tolist() == pytest.approx([first[0].item(), second[1].item()])

    norms = grads.norm(dim=1)  # w = (1, 1)
    ratios = torch.stack([second[0] / first[0], torch.tensor(1.0)])
    target = norms.mean() * (ratios / ratios.mean()) ** 1.5
    expected = torch.sign(norms - target) * norms
    assert torch.isfinite(method.weights.grad).all()
    assert torch.allclose(method.weights.grad, expected, atol=1e-6)
    assert method.weights.grad[0] != method.weights.grad[1]


def test_gradnorm_leaves_a_switched_off_task_weight_unmoved() -> None:
    """Task b off: its applied weight is 0. The optimizer moved the weights to (3, 0.7) (e.g. Adam momentum): the
    active weight is renormalised to sum to the active count (a -> 1), b keeps its value from before the step (1)."""
    model, method = tiny_model(), GradNorm(["a", "b"])
    _, _, applied = schedule_step(method, model, torch.tensor([1.0, 0.0]))
    assert applied.tolist() == [1.0, 0.0]
    with torch.no_grad():
        method.weights.copy_(torch.tensor([3.0, 0.7]))
    method.after_optimizer_step(None)
    assert method.weights.tolist() == pytest.approx([1.0, 1.0])


def test_gradnorm_reads_old_checkpoints_with_one_initial_loss_flag() -> None:
    """One flag for all tasks, and L_b(0) = 0 (b was off at the first step): b's L(0) counts as not recorded."""
    method = GradNorm(["a", "b"])
    state = method.state_dict()
    state["has_initial_losses"] = torch.tensor(True)
    state["initial_losses"] = torch.tensor([2.0, 0.0])
    method.load_state_dict(state)
    assert method.has_initial_losses.tolist() == [True, False]


def test_gradnorm_over_all_shared_parameters_needs_only_k_trunk_backwards() -> None:
    """``gradient_params: shared``: the k trunk backwards that build G also give the update (w @ G on the shared
    parameters, w_i times task i's own gradient on its parameters): the first shared layer's weight sees k = 2
    backward passes, not k + 1, and every .grad equals that of the two-pass computation (a backward of
    sum_i w_i L_i)."""
    model = tiny_model()
    losses, z = model_losses(model)
    method = GradNorm(["a", "b"], gradient_params="shared", jacobian="loop")
    with torch.no_grad():
        method.weights.copy_(torch.tensor([1.5, 0.5]))
    params = list(model.parameters())
    expected = torch.autograd.grad((method.weights.detach() * losses).sum(), params, retain_graph=True)
    trunk_passes = []
    model.backbone.shared[0][0].weight.register_hook(lambda grad: trunk_passes.append(1))
    method.backward(losses, StepContext(model=model, step=0, scale=lambda loss: loss, shared_representation=z))
    assert len(trunk_passes) == 2
    for p, grad in zip(params, expected):
        torch.testing.assert_close(p.grad, grad, rtol=0, atol=1e-6)
