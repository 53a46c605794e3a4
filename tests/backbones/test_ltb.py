"""Learning to Branch (Guo, Lee & Ulbricht, ICML 2020): sizes, the branching (parent choice, what sharing a parent
means), the sampling and its schedule, seeding and checkpoints, and gradient methods on it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from backbone_checks import SMOKE_WEIGHTINGS, check_gradient_methods, classifier, train_two_steps
from conftest import compose_config

from mtl_train.backbones.ltb import LearningToBranch
from mtl_train.errors import ConfigError
from mtl_train.train import train

TASKS = ["a", "b"]


def ltb(channels: tuple[int, ...] = (3, 4), tasks: list[str] = TASKS, seed: int = 0, **settings) -> LearningToBranch:
    torch.manual_seed(seed)
    return LearningToBranch(tasks, in_channels=1, input_size=(16,), spatial_dims=1, channels=channels, kernel_size=3,
                            **settings)


def count(params) -> int:
    return sum(p.numel() for p in params)


def set_logits(backbone: LearningToBranch, level: int, slot: int, values: list[float]) -> None:
    with torch.no_grad():
        backbone.logits[level - 1][slot].copy_(torch.tensor(values))


def test_parameter_counts() -> None:
    """Blocks (1-D, kernel 3): 1 -> 3: 9 + 6 = 15, 3 -> 4: 36 + 8 = 44, 4 -> 5: 60 + 10 = 70, in each of 2 towers,
    plus 2 slots x 2 parent logits per level after the first. Task t owns its tower's last block and its last
    parent logits."""
    two = ltb((3, 4))
    assert count(two.parameters()) == 2 * (15 + 44) + 4
    assert [count(two.task_parameters(t)) for t in TASKS] == [46, 46]
    three = ltb((3, 4, 5))
    assert count(three.parameters()) == 2 * (15 + 44 + 70) + 8
    assert [count(three.task_parameters(t)) for t in TASKS] == [72, 72]
    assert count(three.shared_parameters()) == 2 * (15 + 44) + 4
    classifier(three, TASKS)  # shared and task parameters partition the model


def test_eval_takes_the_most_likely_parent() -> None:
    """Both slots' most likely parent at level 1 is slot a's block: task b reads tower b's block 1 on tower a's
    block 0, and tree() reports it."""
    backbone = ltb().eval()
    set_logits(backbone, 1, 0, [2.0, 0.0])
    set_logits(backbone, 1, 1, [0.5, -1.0])
    assert backbone.tree() == [[0, 0]]
    x = torch.randn(4, 1, 16)
    z = backbone.encode(x)
    assert z.shape == (4, 2, 3, 8)  # (B, slots, C, L / 2)
    assert torch.equal(backbone.branch("b", z, x), backbone.towers[1][1](backbone.towers[0][0](x)))
    assert torch.equal(backbone.branch("a", z, x), backbone.towers[0][1](backbone.towers[0][0](x)))


def test_a_block_no_slot_chooses_gets_no_gradient() -> None:
    """With both slots on parent a, tower b's first block is unused: shared by nobody, it gets no gradient, while
    tower a's first block (shared by both tasks) gets both tasks'."""
    backbone = ltb().eval()
    set_logits(backbone, 1, 0, [1.0, 0.0])
    set_logits(backbone, 1, 1, [1.0, 0.0])
    x = torch.randn(4, 1, 16)
    z = backbone.encode(x)
    for task in TASKS:
        loss = backbone.branch(task, z, x).pow(2).sum()
        unused, used = torch.autograd.grad(loss, [backbone.towers[1][0][0].weight, backbone.towers[0][0][0].weight],
                                           retain_graph=True)
        assert unused.abs().sum() == 0 and used.abs().sum() > 0


def test_training_draws_one_parent_with_the_logits_probabilities() -> None:
    """Logits (log 3, 0): parent a with probability 3/4. Each draw is one-hot; 4,000 draws land within 0.03."""
    backbone = ltb().train()
    set_logits(backbone, 1, 1, [math.log(3.0), 0.0])
    backbone.encode(torch.randn(2, 1, 16))
    torch.manual_seed(1)
    draws = torch.stack([backbone.parents(1, 1) for _ in range(4000)]).detach()
    assert ((draws == 0) | (draws == 1)).all() and (draws.sum(dim=1) == 1).all()
    assert draws[:, 0].mean().item() == pytest.approx(0.75, abs=0.03)


def test_the_sample_passes_a_gradient_to_the_logits() -> None:
    backbone = ltb().train()
    x = torch.randn(4, 1, 16)
    backbone.branch("b", backbone.encode(x), x).pow(2).sum().backward()
    assert backbone.logits[0][1].grad is not None and backbone.logits[0][1].grad.abs().sum() > 0


def test_warmup_feeds_the_sum_of_all_parents_then_one() -> None:
    backbone = ltb(warmup_steps=2).train()
    x = torch.randn(3, 1, 16)
    for _ in range(2):
        backbone.encode(x)
        assert backbone.parents(1, 0).tolist() == [1.0, 1.0]
    backbone.encode(x)
    assert sorted(backbone.parents(1, 0).tolist()) == [0.0, 1.0]


def test_only_training_forwards_with_gradients_advance_the_temperature() -> None:
    """temperature 4, anneal_steps 1: the third training forward (n = 2) samples at tau = 4 / sqrt(3); eval and
    no-grad forwards (FAMO's re-evaluation) do not count."""
    backbone = ltb(temperature=4.0, anneal_steps=1)
    x = torch.randn(3, 1, 16)
    backbone.train()
    for _ in range(3):
        backbone.encode(x)
    with torch.no_grad():
        backbone.encode(x)
    backbone.eval()
    backbone.encode(x)
    assert int(backbone.forwards) == 3
    step, tau = backbone.schedule()
    assert int(step) == 2 and tau.item() == pytest.approx(4 / math.sqrt(3))


def test_seeded_and_a_checkpoint_round_trip_resumes_exactly() -> None:
    """Same seed, same draws; a fresh model loading the state dict (logits, blocks, the forward counter) continues
    with the same draws from the same random state."""
    x = torch.randn(4, 1, 16)
    first = ltb(temperature=2.0, anneal_steps=3).train()
    for _ in range(2):
        first.encode(x)
    resumed = ltb(seed=5, temperature=2.0, anneal_steps=3).train()
    resumed.load_state_dict(first.state_dict())
    assert int(resumed.forwards) == 2
    torch.manual_seed(7)
    expected = [first.branch(t, first.encode(x), x) for t in TASKS]
    torch.manual_seed(7)
    got = [resumed.branch(t, resumed.encode(x), x) for t in TASKS]
    assert all(torch.equal(a, b) for a, b in zip(expected, got))
    assert torch.equal(first.schedule()[1], resumed.schedule()[1])


def test_a_resumed_training_run_repeats_the_uninterrupted_one(tmp_path: Path) -> None:
    """5 steps (an epoch) with a 2-step warm-up, stopped after step 3 and resumed: the same losses and weights (the
    forward counter is in the checkpoint, the Gumbel draws come from the checkpointed random state)."""
    run = ["debug=smoke", "dataset.num_train=36", "dataset.num_val=16", "trainer.max_steps=null",
           "trainer.max_epochs=1", "trainer.eval_every=null", "trainer.plots=false", "backbone=ltb1d",
           "backbone.channels=[4,8,8]", "backbone.warmup_steps=2", "backbone.anneal_steps=2", "weighting=pcgrad"]
    train(compose_config(run, tmp_path / "reference"))
    train(compose_config([*run, "trainer.max_steps=3"], tmp_path / "resumed"))
    train(compose_config([*run, "trainer.resume=true"], tmp_path / "resumed"))
    for name in ("losses.csv", "weights.csv"):
        assert (tmp_path / "resumed" / name).read_text() == (tmp_path / "reference" / name).read_text()


def test_gradient_methods_run_on_it() -> None:
    check_gradient_methods(lambda: classifier(ltb((3, 4, 5), tasks=["a", "b", "c"]), ["a", "b", "c"]),
                           torch.randn(6, 1, 16))


@pytest.mark.parametrize("weighting", SMOKE_WEIGHTINGS)
def test_two_training_steps(weighting: str, tmp_path: Path, tiny_fashion_root: Path) -> None:
    train_two_steps("ltb1d", weighting, ["backbone.channels=[4,8]"], True, tmp_path, tiny_fashion_root)


@pytest.mark.parametrize(("settings", "match"), [
    (dict(channels=(3,)), "backbone.channels must list at least 2 block widths"),
    (dict(temperature=0.0), "backbone.temperature must be > 0"),
    (dict(anneal_steps=0), "backbone.anneal_steps >= 1"),
])
def test_bad_settings_are_config_errors(settings: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ltb(**settings)
