"""check_config: every key of a run's config is known and every value has its documented type."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from conftest import CONFIG_DIR, compose_config
from omegaconf import DictConfig, OmegaConf, open_dict

from mtl_train.config_checks import CONFIG_GROUPS, TOP_LEVEL_KEYS, TRAINER_RUN_KEYS, check_config, trainer_types
from mtl_train.engine.trainer import TrainerSettings
from mtl_train.errors import ConfigError
from mtl_train.tasks import TASK_SETTINGS


@pytest.fixture(scope="module")
def default_config(tmp_path_factory: pytest.TempPathFactory) -> DictConfig:
    """The config of a bare ``mtl-train`` (ECG, rhythm + denoise), composed once."""
    return compose_config([], output_dir=tmp_path_factory.mktemp("run"))


def changed(cfg: DictConfig, key: str, value: object) -> DictConfig:
    """A copy of ``cfg`` with the dotted ``key`` set to ``value`` (added when it is new, as ``+key=value`` does)."""
    copy = cfg.copy()
    with open_dict(copy):
        OmegaConf.update(copy, key, value, force_add=True)
    return copy


def test_the_default_config_passes(default_config: DictConfig) -> None:
    check_config(default_config)


def test_the_known_keys_are_those_of_the_shipped_yamls(default_config: DictConfig) -> None:
    """TOP_LEVEL_KEYS + groups and the trainer keys match configs/train.yaml and configs/trainer/default.yaml, so
    a key added to a YAML without its type here (or the other way round) fails this test, not a user's run."""
    train_yaml = OmegaConf.load(CONFIG_DIR / "train.yaml")
    assert set(train_yaml.keys()) - {"defaults"} == set(TOP_LEVEL_KEYS)
    assert set(default_config.keys()) == set(TOP_LEVEL_KEYS) | set(CONFIG_GROUPS)
    trainer_yaml = OmegaConf.load(CONFIG_DIR / "trainer" / "default.yaml")
    assert set(trainer_yaml.keys()) == set(trainer_types())
    assert set(trainer_types()) == {f.name for f in dataclasses.fields(TrainerSettings)} | set(TRAINER_RUN_KEYS)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("sed", 1, "sed is not a top-level setting; valid keys: backbone, baselines, dataset, diagnostics, optimizer, "
               "output_dir, schedule, scheduler, seed, stl, task, trainer, weighting"),
    ("trainer.max_epoch", 1, "trainer.max_epoch is not a trainer setting; valid keys: amp, batch_size, "),
    ("scheduler.intervall", "epoch", "scheduler.intervall is not a scheduler setting; valid keys: build, interval"),
    ("task.rhythm.num_output", 4, "task.rhythm.num_output is not a task setting; valid keys: activation, head, "),
    ("weighting.alpha", 1.5, "weighting.alpha is not a setting of EqualWeighting; valid keys: lr"),
    ("dataset.num_trian", 8, "dataset.num_trian is not a setting of SyntheticECG; valid keys: duration_s, "
                             "noise_level, num_test, num_train, num_val, sample_rate, seed"),
    ("backbone.dropout", 0.5, "backbone.dropout is not a setting of hard_cnn; valid keys: channels, first_stride, "
                              "kernel_size, spatial_dims, split_depth"),
    ("optimizer.momentum", 0.9, "optimizer.momentum is not a setting of Adam; valid keys: amsgrad, betas, "),
    ("scheduler.build.gama", 0.5, "scheduler.build.gama is not a setting of ConstantLR; valid keys: factor, "
                                  "last_epoch, total_iters"),
    ("task.denoise.metric.num_classes", 4, "task.denoise.metric.num_classes is not a setting of ReconstructionMetrics; "
                                           "valid keys: data_range"),
    ("task.rhythm.loss.delta", 5.0, "task.rhythm.loss.delta is not a setting of CrossEntropy; valid keys: "
                                    "class_weights, label_smoothing, reduction; if a task set or experiment sets it for another "
                                    "option, remove it with ~task.rhythm.loss.delta"),
])
def test_an_unknown_key_names_itself_and_the_valid_keys(default_config: DictConfig, key: str, value: object,
                                                        message: str) -> None:
    with pytest.raises(ConfigError) as error:
        check_config(changed(default_config, key, value))
    assert str(error.value).startswith(message)


def test_injected_arguments_are_not_listed_as_keys(default_config: DictConfig) -> None:
    """train_model passes the task names, input shape and parameters itself; they are no config keys."""
    with pytest.raises(ConfigError) as error:
        check_config(changed(default_config, "backbone.split", 1))
    assert "task_names" not in str(error.value) and "in_channels" not in str(error.value)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("seed", "abc", "seed='abc' must be an integer"),
    ("stl", "yes", "stl='yes' must be true or false"),
    ("trainer.batch_size", 8.5, "trainer.batch_size=8.5 must be an integer"),
    ("trainer.grad_clip", "abc", "trainer.grad_clip='abc' must be a float (number) or null"),
    ("trainer.channels_last", 1, "trainer.channels_last=1 must be true or false"),
    ("trainer.resume", 3, "trainer.resume=3 must be true or false or a string or null"),
    ("dataset.seed", "abc", "dataset.seed='abc' must be an integer, e.g. dataset.seed=0"),
    ("dataset.noise_level", [1], "dataset.noise_level=[1] must be a float (number), e.g. dataset.noise_level=1.0"),
    ("backbone.channels", [16, "x"], "backbone.channels=[16, 'x'] must be a list of integers"),
    ("backbone.split_depth", 1.5, "backbone.split_depth=1.5 must be an integer or null"),
    ("optimizer.betas", [0.9], "optimizer.betas=[0.9] must be a list of 2 numbers"),
    ("task.rhythm.target", 3, "task.rhythm.target=3 must be a string"),
    ("task.rhythm.num_outputs", "four", "task.rhythm.num_outputs='four' must be an integer"),
    ("task.rhythm.loss.label_smoothing", "abc",
     "task.rhythm.loss.label_smoothing='abc' must be a float (number), e.g. task.rhythm.loss.label_smoothing=0.0"),
])
def test_a_value_of_the_wrong_type_names_the_key_and_the_type(default_config: DictConfig, key: str, value: object,
                                                              message: str) -> None:
    with pytest.raises(ConfigError) as error:
        check_config(changed(default_config, key, value))
    assert str(error.value) == message


def test_a_value_taken_from_a_task_setting_says_where_it_came_from(default_config: DictConfig) -> None:
    """The head reads ``num_classes: ${..num_outputs}``; a bad task size is reported at the task key first, and a
    head setting given as a bad interpolation names the interpolation."""
    bad = changed(default_config, "task.rhythm.head.hidden", "${..target}")
    with pytest.raises(ConfigError, match=r"^task\.rhythm\.head\.hidden='rhythm' \(from \$\{\.\.target\}\) must be an "
                                          r"integer, e.g. task\.rhythm\.head\.hidden=64$"):
        check_config(bad)


def test_an_interpolation_to_a_missing_key_is_one_message(default_config: DictConfig) -> None:
    cfg = default_config.copy()
    with open_dict(cfg):
        del cfg.task.rhythm["num_outputs"]
    with pytest.raises(ConfigError) as error:
        check_config(cfg)
    message = str(error.value)
    assert message.startswith("task.rhythm.head.num_classes=${..num_outputs} cannot be resolved (")
    assert message.endswith("); set the key it refers to, or give task.rhythm.head.num_classes a value")
    assert "\n" not in message


def test_a_required_value_left_unset_is_named(tmp_path: Path) -> None:
    cfg = compose_config(["schedule=decay"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"^schedule\.task is required but not set \(\?\?\? in the config\); set it, "
                                          r"e\.g\. schedule\.task=VALUE$"):
        check_config(cfg)


def test_a_task_without_a_loss_is_named(default_config: DictConfig) -> None:
    cfg = default_config.copy()
    with open_dict(cfg):
        del cfg.task.denoise["loss"]
    with pytest.raises(ConfigError, match=r"^task\.denoise lacks loss: every task needs"):
        check_config(cfg)


def test_every_task_setting_of_the_shipped_task_sets_is_declared() -> None:
    for path in (CONFIG_DIR / "task").glob("*.yaml"):
        for name, node in OmegaConf.load(path).task.items():
            assert set(node.keys()) <= set(TASK_SETTINGS), f"{path.name}: task.{name}"
