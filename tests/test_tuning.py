"""Tuning with Hydra's Optuna sweeper: the per-method search space, the validation objective, the best trial's
overrides, and a tiny real study (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mtl_train.delta_m import load_baselines
from mtl_train.errors import ConfigError
from mtl_train.tuning import best_overrides, check_sweeper_installed, objective, register_search_space_resolver
from mtl_train.utils.instantiate import check_node, instantiate

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


class Knob:
    """A target without ``**kwargs``: building it with a ``search`` argument would fail."""

    def __init__(self, task_names: list[str], alpha: float = 1.0, mode: str = "a") -> None:
        self.task_names, self.alpha, self.mode = task_names, alpha, mode


def knob(search: object) -> object:
    return OmegaConf.create({"_target_": f"{__name__}.Knob", "alpha": 2.0, "search": search})


def test_the_search_key_is_checked_but_not_passed_to_the_target() -> None:
    built = instantiate(knob({"alpha": "interval(0.1, 3.0)", "mode": "choice(a, b)"}), "weighting", task_names=["x"])
    assert (built.alpha, built.mode) == (2.0, "a")
    gradnorm = OmegaConf.load(REPO / "configs/weighting/gradnorm.yaml")
    assert gradnorm.search.alpha == "interval(0.1, 3.0)"
    assert instantiate(gradnorm, "weighting", task_names=["a", "b"]).alpha == 1.5


@pytest.mark.parametrize(("search", "message"), [
    ({"alhpa": "interval(0.1, 3.0)"},
     "weighting.search.alhpa is not a setting to search over; valid keys: alpha, mode"),
    ({"alpha": 0.5},
     "weighting.search.alpha=0.5 is not a search expression; write interval(LOW, HIGH), tag(log, interval(LOW, "
     "HIGH)) or choice(A, B, ...), e.g. weighting.search.alpha='interval(0.1, 3.0)'"),
    ({"alpha": "interval(0.1"}, "weighting.search.alpha='interval(0.1' is not a search expression"),
    ("alpha", "weighting.search='alpha' must be a mapping from settings to search expressions"),
])
def test_a_bad_search_space_is_one_clear_error(search: object, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        check_node(knob(search), "weighting", ["task_names"])
    assert str(error.value).startswith(message)


def test_the_resolver_puts_each_groups_search_space_under_its_key() -> None:
    register_search_space_resolver()
    cfg = OmegaConf.create({
        "optimizer": {"lr": 1e-3, "search": {"lr": "tag(log, interval(1e-4, 1e-2))"}},
        "weighting": {"alpha": 1.5, "search": {"alpha": "interval(0.1, 3.0)"}},
        "schedule": {"warmup": 0},
        "params": "${mtl_search_space:optimizer,weighting,schedule}",
    })
    assert cfg.params == {"optimizer.lr": "tag(log, interval(1e-4, 1e-2))",
                          "weighting.alpha": "interval(0.1, 3.0)"}


def test_tuning_without_the_sweeper_installed_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    check_sweeper_installed(["weighting=gradnorm"])
    with pytest.raises(ConfigError, match=r"^experiment=tune needs Hydra's Optuna sweeper.*'mtl-train\[tune\]'"):
        check_sweeper_installed(["-m", "experiment=tune"])


def summary(val: dict, **extra: object) -> dict:
    return {
        "tasks": ["cls", "rec"],
        "final": {"val": val, "test": {"cls": {"accuracy": 0.0}, "rec": {"mse": 9.0}}},
        "primary_metric": {"cls": "accuracy", "rec": "mse"},
        "higher_is_better": {"cls": {"accuracy": True}, "rec": {"mse": False}},
        **extra,
    }


def test_without_baselines_the_objective_is_the_mean_signed_primary_val_metric() -> None:
    run = summary({"cls": {"accuracy": 0.8}, "rec": {"mse": 0.1}})
    assert objective(run, None) == (pytest.approx((0.8 - 0.1) / 2), "mean signed primary val metric")
    selected = summary({"cls": {"accuracy": 0.8}, "rec": {"mse": 0.1}},
                       selected={"val": {"cls": {"accuracy": 0.6}, "rec": {"mse": 0.2}}, "test": {}})
    assert objective(selected, None)[0] == pytest.approx((0.6 - 0.2) / 2)  # the reported (selected) model's


def test_with_baselines_the_objective_is_delta_m_on_val(tmp_path: Path) -> None:
    # cls: (0.8 - 0.5) / 0.5 = +60 %; rec (lower is better): -(0.1 - 0.2) / 0.2 = +50 %; mean 55 %. The test
    # metrics (accuracy 0, mse 9) would give -100 % and -4400 %: they are not read.
    for seed, (accuracy, mse) in enumerate([(0.4, 0.3), (0.6, 0.1)]):  # averaged: 0.5, 0.2
        (tmp_path / str(seed)).mkdir()
        (tmp_path / str(seed) / "baselines.json").write_text(json.dumps({
            "tasks": {"cls": {"accuracy": 0.9}, "rec": {"mse": 0.01}},
            "val": {"cls": {"accuracy": accuracy}, "rec": {"mse": mse}}}))
    run = summary({"cls": {"accuracy": 0.8}, "rec": {"mse": 0.1}})
    assert objective(run, load_baselines(tmp_path)) == (pytest.approx(55.0), "Δm on val (%)")

    (tmp_path / "2").mkdir()  # an older file without validation metrics: Δm on val is refused, with the fix
    (tmp_path / "2" / "baselines.json").write_text(json.dumps({"tasks": {"cls": {"accuracy": 0.9},
                                                                         "rec": {"mse": 0.01}}}))
    assert load_baselines(tmp_path)["val"] is None
    with pytest.raises(ConfigError, match=r"hold no validation metrics.*`mtl-train stl=true`"):
        objective(run, load_baselines(tmp_path))


def test_best_overrides_keep_the_sweeps_choices_and_add_the_best_parameters(tmp_path: Path) -> None:
    (tmp_path / "0" / ".hydra").mkdir(parents=True)
    (tmp_path / "0" / ".hydra" / "overrides.yaml").write_text(
        "- optimizer.lr=0.003\n- weighting.alpha=2.5\n- experiment=tune\n- weighting=gradnorm\n"
        "- trainer.max_epochs=1\n")
    (tmp_path / "optimization_results.yaml").write_text(
        "name: optuna\nbest_params:\n  optimizer.lr: 0.001\n  weighting.alpha: 0.5\nbest_value: 3.0\n")
    assert best_overrides(tmp_path) == ["weighting=gradnorm", "trainer.max_epochs=1", "optimizer.lr=0.001",
                                        "weighting.alpha=0.5"]


@pytest.mark.slow
def test_a_tiny_study_finds_the_best_trial_and_prints_its_overrides(tmp_path: Path) -> None:
    """Three GradNorm trials of two steps each (about 15 s on one CPU thread)."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="needs pip install 'mtl-train[tune]'")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [str(BIN / "mtl-train"), "-m", "experiment=tune", "weighting=gradnorm", "debug=smoke", "trainer.plots=false",
         "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    results = OmegaConf.load(sweep / "optimization_results.yaml")
    assert set(results.best_params) == {"optimizer.lr", "weighting.alpha"}
    assert 1e-4 <= results.best_params["optimizer.lr"] <= 1e-2 and 0.1 <= results.best_params["weighting.alpha"] <= 3
    values = [objective(json.loads((sweep / str(trial) / "summary.json").read_text()), None)[0] for trial in range(3)]
    assert results.best_value == pytest.approx(max(values))
    best = values.index(max(values))
    trial_overrides = OmegaConf.load(sweep / str(best) / ".hydra" / "overrides.yaml")
    sampled = {o.split("=")[0]: float(o.split("=")[1]) for o in trial_overrides
               if o.startswith(("optimizer.", "weighting."))}
    assert sampled == pytest.approx(dict(results.best_params))

    printed = subprocess.run([str(BIN / "mtl-train-best"), str(sweep)], env=env, capture_output=True, text=True)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.split() == ["weighting=gradnorm", "debug=smoke", "trainer.plots=False",
                                      *(f"{name}={value}" for name, value in results.best_params.items())]
