"""Customized Gate Control and Progressive Layered Extraction (Tang et al., RecSys 2020): sizes, gates, the mixture
each task reads, which gradients reach what, and gradient methods on them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from backbone_checks import SMOKE_WEIGHTINGS, check_gradient_methods, classifier, train_two_steps

from mtl_train.backbones.mmoe import mmoe_mlp
from mtl_train.backbones.ple import gate_weights, level_groups, ple_cnn, ple_mlp
from mtl_train.errors import ConfigError

TASKS = ["a", "b"]


def mlp_ple(num_levels: int, num_task_experts: int = 1, hidden: tuple[int, ...] = (4, 3)):
    torch.manual_seed(0)
    return ple_mlp(TASKS, in_channels=1, input_size=(6,), num_levels=num_levels, num_shared_experts=2,
                   num_task_experts=num_task_experts, hidden=hidden)


def count(params) -> int:
    return sum(p.numel() for p in params)


def test_blocks_split_into_levels_earlier_levels_taking_the_extra_block() -> None:
    assert level_groups(3, 2) == [range(0, 2), range(2, 3)]
    assert level_groups(4, 2) == [range(0, 2), range(2, 4)]
    assert level_groups(5, 3) == [range(0, 2), range(2, 4), range(4, 5)]
    assert level_groups(3, 1) == [range(0, 3)]
    for levels in (0, 4):
        with pytest.raises(ConfigError, match="backbone.num_levels must be between 1 and the number of blocks"):
            level_groups(3, levels)


def test_cgc_parameter_count() -> None:
    """Input 6, hidden (4, 3), 2 shared + 1 expert per task, 2 tasks. An expert: 6*4 + 4 + 4*3 + 3 = 43; 4 of them;
    a task gate Linear(6 -> 3): 21. Task params 43 + 21, shared 2 * 43."""
    backbone = mlp_ple(num_levels=1)
    assert count(backbone.parameters()) == 4 * 43 + 2 * 21
    assert [count(backbone.task_parameters(t)) for t in TASKS] == [64, 64]
    assert count(backbone.shared_parameters()) == 86


def test_ple_parameter_count() -> None:
    """Two levels: level-1 experts Linear(6 -> 4) = 28 (2 shared + 2 tasks' = 4 of them), level-2 experts
    Linear(4 -> 3) = 15 (4), task gates Linear(6 -> 3) = 21 and Linear(4 -> 3) = 15 (per task), the level-1 shared
    gate Linear(6 -> 4) = 28 over all 4 experts: 112 + 60 + 42 + 30 + 28 = 272. Task t owns its level-2 expert and
    gate (30); the rest is shared."""
    backbone = mlp_ple(num_levels=2)
    assert count(backbone.parameters()) == 272
    assert [count(backbone.task_parameters(t)) for t in TASKS] == [30, 30]
    assert count(backbone.shared_parameters()) == 212
    assert [g.out_features for g in backbone.shared_gates] == [4]


def test_every_gate_sums_to_one_per_sample() -> None:
    backbone = mlp_ple(num_levels=2)
    x = 3 * torch.randn(7, 1, 6)
    h = torch.randn(7, 4)
    for weights, n in [(gate_weights(backbone.task_gates["a"][0], x), 3),
                       (gate_weights(backbone.task_gates["b"][1], h), 3),
                       (gate_weights(backbone.shared_gates[0], x), 4)]:
        assert weights.shape == (7, n) and (weights > 0).all()
        assert torch.allclose(weights.sum(dim=1), torch.ones(7))


def test_cgc_without_task_experts_is_mmoe() -> None:
    """Same experts and gates: the same features."""
    cgc = mlp_ple(num_levels=1, num_task_experts=0)
    mmoe = mmoe_mlp(TASKS, 1, (6,), num_experts=2, hidden=(4, 3))
    with torch.no_grad():
        for source, target in [(mmoe.experts, cgc.shared_experts[0]), *((mmoe.gates[t], cgc.task_gates[t][0])
                                                                        for t in TASKS)]:
            for p, q in zip(source.parameters(), target.parameters(), strict=True):
                q.copy_(p)
    x = torch.randn(5, 1, 6)
    for task in TASKS:
        assert torch.allclose(cgc.branch(task, cgc.encode(x), x), mmoe.branch(task, mmoe.encode(x), x), atol=1e-6)


def test_ple_branch_is_the_two_level_mixture() -> None:
    """h_t = g_t,1(x) . [E_t,1(x); E_s,1(x)], h_s = g_s,1(x) . [E_a,1(x); E_b,1(x); E_s,1(x)], and task t reads
    g_t,2(h_t) . [E_t,2(h_t); E_s,2(h_s)]."""
    backbone = mlp_ple(num_levels=2)
    x = torch.randn(5, 1, 6)

    def mix(gate, h, outputs):
        return torch.einsum("bn,bnc->bc", gate_weights(gate, h), torch.stack(outputs, dim=1))

    shared_1 = [e(x) for e in backbone.shared_experts[0]]
    own_1 = {t: [e(x) for e in backbone.task_experts[t][0]] for t in TASKS}
    h = {t: mix(backbone.task_gates[t][0], x, own_1[t] + shared_1) for t in TASKS}
    h_shared = mix(backbone.shared_gates[0], x, own_1["a"] + own_1["b"] + shared_1)
    z = backbone.encode(x)
    assert z.shape == (5, 2 * 3 + 2 * 4)  # two shared level-2 outputs (3 each), then h_a and h_b (4 each)
    for task in TASKS:
        shared_2 = [e(h_shared) for e in backbone.shared_experts[1]]
        own_2 = [e(h[task]) for e in backbone.task_experts[task][1]]
        expected = mix(backbone.task_gates[task][1], h[task], own_2 + shared_2)
        assert torch.allclose(backbone.branch(task, z, x), expected, atol=1e-6)


def test_other_tasks_experts_reach_a_task_through_the_shared_gate_and_their_gates_do_not() -> None:
    """Task a's loss moves task b's level-1 expert (it feeds the shared gate, hence the shared experts) but neither
    task b's level-1 gate (it feeds b's own branch only) nor anything of b's last level."""
    backbone = mlp_ple(num_levels=2)
    x = torch.randn(4, 1, 6)
    loss_a = backbone.branch("a", backbone.encode(x), x).pow(2).sum()
    expert_b1 = list(backbone.task_experts["b"][0].parameters())
    gate_b1 = list(backbone.task_gates["b"][0].parameters())
    last_b = backbone.task_parameters("b")
    grads = torch.autograd.grad(loss_a, expert_b1 + gate_b1 + last_b, allow_unused=True)
    assert grads[0].abs().sum() > 0
    rest = grads[len(expert_b1):]
    assert all(g is None or g.abs().sum() == 0 for g in rest)


def test_parameter_split_and_gradnorms_layer() -> None:
    backbone = mlp_ple(num_levels=2)
    classifier(backbone, TASKS)  # shared and task parameters partition the model
    own = {id(p) for t in TASKS for p in backbone.task_parameters(t)}
    assert own == {id(p) for t in TASKS for p in [*backbone.task_experts[t][1].parameters(),
                                                     *backbone.task_gates[t][1].parameters()]}
    assert backbone.shares_representation is True
    assert [p.shape for p in backbone.last_shared_layer().parameters()] == [(3, 4), (3,)] * 2


def cnn_ple(num_levels: int):
    torch.manual_seed(0)
    return ple_cnn(["a", "b", "c"], in_channels=2, input_size=(16,), spatial_dims=1, num_levels=num_levels,
                   channels=(4, 6), kernel_size=3)


@pytest.mark.parametrize("num_levels", [1, 2])
def test_gradient_methods_run_on_it(num_levels: int) -> None:
    check_gradient_methods(lambda: classifier(cnn_ple(num_levels), ["a", "b", "c"]), torch.randn(6, 2, 16))


@pytest.mark.parametrize("weighting", SMOKE_WEIGHTINGS)
@pytest.mark.parametrize("backbone", ["cgc1d", "ple1d"])
def test_two_training_steps(backbone: str, weighting: str, tmp_path: Path, tiny_fashion_root: Path) -> None:
    train_two_steps(backbone, weighting, ["backbone.channels=[4,8]"], True, tmp_path, tiny_fashion_root)


def test_no_shared_expert_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="backbone.num_shared_experts must be >= 1"):
        ple_mlp(TASKS, 1, (6,), num_levels=1, num_shared_experts=0)
