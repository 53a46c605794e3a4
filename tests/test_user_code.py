"""A user's own configs and Python package, installed nowhere, trained with ``mtl-train --config-dir configs``.

The project (tests/user_project.py) is written into a temporary folder: a dataset, a backbone, a head and a metric
class in ``my_mtl/``, and ``configs/`` with their YAMLs, a task set and an experiment. The end-to-end run goes
through the installed command in a subprocess, as a user would; the error and help cases run the CLI in-process.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from user_project import write_user_project
from conftest import run_cli_in_process

from mtl_train.cli import main
from mtl_train.help import groups_help
from mtl_train.utils.instantiate import locate

MTL_TRAIN = str(Path(sys.executable).parent / "mtl-train")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    write_user_project(tmp_path)
    return tmp_path


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``PYTHONPATH=<cwd> mtl-train ARGS`` in ``cwd``."""
    env = {**os.environ, "PYTHONPATH": str(cwd), "COLUMNS": "120"}
    return subprocess.run([MTL_TRAIN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_user_metric_counts_predictions_within_the_tolerance(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(project))
    from my_mtl.metrics import WithinTolerance

    metric = WithinTolerance(tolerance=0.5)
    metric.update(torch.tensor([0.0, 1.0, 2.0]), torch.tensor([0.0, 1.5, 2.6]))  # |errors| 0, 0.5, 0.6
    metric.update(torch.tensor([5.0]), torch.tensor([-5.0]))                      # 10
    assert metric.compute() == {"within": 0.5}  # 2 of 4
    metric.reset()
    with pytest.raises(ValueError, match="before any update"):
        metric.compute()


def test_user_loss_is_log_cosh_of_the_error(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(project))
    from my_mtl.losses import LogCosh

    errors = torch.tensor([0.0, 1.0, -1.0, 30.0])
    expected = (0.0 + 2 * math.log(math.cosh(1.0)) + 30.0 - math.log(2)) / 4  # cosh(30) = e^30 / 2 in float64
    assert LogCosh()(errors, torch.zeros(4)).item() == pytest.approx(expected, rel=1e-6)


def test_user_project_trains_through_the_cli_with_its_own_classes(project: Path) -> None:
    result = run_cli("--config-dir", "configs", "experiment=my_exp", "hydra.run.dir=run", cwd=project)
    assert result.returncode == 0, result.stderr
    summary = json.loads((project / "run" / "summary.json").read_text())
    assert summary["tasks"] == ["direction", "total"]
    assert summary["steps"] == 4 * 512 // 64  # my_exp: 4 epochs of 512 rows, batch 64
    assert summary["data_sources"] == {"generator": "my_mtl.data.Blobs", "seed": 0}
    assert summary["primary_metric"] == {"direction": "accuracy", "total": "within"}
    assert summary["higher_is_better"]["total"]["within"] is True
    within = summary["final"]["test"]["total"]["within"]
    assert within * 128 == pytest.approx(round(within * 128))  # a share of the 128 test rows
    assert within > 0.6  # most rows within 0.5 of the sum of 8 N(0, 1) values (whose std is 2.8)
    assert summary["final"]["test"]["direction"]["accuracy"] > 0.8  # chance is 1/3


def test_help_lists_the_users_options_beside_the_packages(project: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    assert run_cli_in_process(["--config-dir", str(project / "configs"), "--help"], monkeypatch) in (0, None)
    groups = capsys.readouterr().out.split("== Config groups: group=option ==\n")[1].split("\n\n")[0]
    entries = " ".join(groups.split())
    for user, ours in (("my_data", "synthetic_ecg"), ("my_net", "cnn1d"), ("linear", "classification"),
                       ("my_tasks", "ecg_cls_rec"), ("my_exp", "ecg_asymmetric")):
        assert f"{user}," in entries or f"{user} " in entries
        assert ours in entries


def test_searchpath_and_a_users_own_group_work_like_config_dir(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (project / "configs" / "sizes").mkdir()
    (project / "configs" / "sizes" / "small.yaml").write_text("rows: 48\n")  # a group of the user's own
    monkeypatch.syspath_prepend(str(project))
    code = run_cli_in_process([f"hydra.searchpath=[file://{project / 'configs'}]", "experiment=my_exp", "+sizes=small",
                           "dataset.num_train=${sizes.rows}", "trainer.max_steps=2", "trainer.batch_size=16",
                           f"hydra.run.dir={project / 'run'}"], monkeypatch)
    assert code == 0
    summary = json.loads((project / "run" / "summary.json").read_text())
    assert summary["steps"] == 2
    config = (project / "run" / ".hydra" / "config.yaml").read_text()
    assert "num_train: ${sizes.rows}" in config and "rows: 48" in config


def test_groups_help_merges_the_options_of_every_config_folder(tmp_path: Path) -> None:
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    for folder, group, option in ((ours, "dataset", "ecg"), (ours, "optimizer", "adam"), (theirs, "dataset", "mine"),
                                  (theirs, "dataset", "ecg"), (theirs, "sizes", "small"), (theirs, "hydra", "x")):
        (folder / group).mkdir(parents=True, exist_ok=True)
        (folder / group / f"{option}.yaml").write_text("{}\n")
    (ours / "train.yaml").write_text("defaults:\n  - dataset: ecg\n  - _self_\n")
    assert groups_help(ours, [theirs]) == ("  dataset                 ecg (default), mine\n"
                                           "  optimizer               adam\n"
                                           "  sizes                   small")


def test_locate_names_what_is_missing() -> None:
    assert locate("torch.nn.Linear") is torch.nn.Linear
    assert locate("mtl_train.cli.main") is main
    with pytest.raises(ModuleNotFoundError, match="No module named 'absent_pkg'"):
        locate("absent_pkg.data.Blobs")
    with pytest.raises(AttributeError, match="module 'mtl_train.metrics.base' has no attribute 'Absent'"):
        locate("mtl_train.metrics.base.Absent")


@pytest.mark.parametrize(("args", "message"), [
    (["--config-dir", "{tmp}/nowhere", "experiment=my_exp"],
     "error: --config-dir {tmp}/nowhere: no such directory ({tmp}/nowhere); give the folder that holds your config "
     "groups, e.g. --config-dir ./configs with ./configs/dataset/my_data.yaml for dataset=my_data"),
    (["--config-dir", "{tmp}/configs", "experiment=my_exp", "dataset._target_=absent_pkg.data.Blobs"],
     "error: dataset._target_='absent_pkg.data.Blobs' cannot be imported (ModuleNotFoundError: No module named "
     "'absent_pkg'); if it is your own code, run mtl-train with the folder holding its package on PYTHONPATH "
     "(PYTHONPATH=. mtl-train --config-dir configs ...), else pick an option of the config group"),
    (["--config-dir", "{tmp}/configs", "experiment=my_exp", "task.total.metric._target_=my_mtl.metrics.Absent"],
     "error: task.total.metric._target_='my_mtl.metrics.Absent' cannot be imported (AttributeError: module "
     "'my_mtl.metrics' has no attribute 'Absent'); if it is your own code"),
    (["--config-dir", "{tmp}/configs", "experiment=my_exp", "+backbone.width=3"],
     "error: backbone.width is not a setting of MLPTrunk; valid keys: depth, hidden"),
    (["--config-dir", "{tmp}/configs", "experiment=my_exp", "task.total.metric.tolerance=wide"],
     "error: task.total.metric.tolerance='wide' must be a float"),
], ids=["missing config dir", "module not on the path", "class not in the module", "unknown key of a user class",
        "user class value of the wrong type"])
def test_bad_user_inputs_give_one_clear_line(args: list[str], message: str, project: Path,
                                             monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.syspath_prepend(str(project))
    code = run_cli_in_process([arg.replace("{tmp}", str(project)) for arg in [*args, "hydra.run.dir={tmp}/run"]],
                          monkeypatch)
    assert code == 1
    stderr = capsys.readouterr().err
    assert stderr.startswith(message.replace("{tmp}", str(project))), stderr
    assert len(stderr.strip().splitlines()) == 1, stderr


@pytest.mark.slow
def test_a_sweep_over_seeds_of_the_user_project_writes_one_summary_line_per_job(project: Path) -> None:
    result = run_cli("-m", "--config-dir", "configs", "experiment=my_exp", "seed=0,1", "trainer.max_steps=4",
                     "hydra.sweep.dir=sweep", cwd=project)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in (project / "sweep" / "summary.jsonl").read_text().splitlines()]
    assert len(lines) == 2
    summaries = [line["summary"] for line in lines]
    assert sorted(summary["seed"] for summary in summaries) == [0, 1]
    assert all(summary["steps"] == 4 and summary["tasks"] == ["direction", "total"] for summary in summaries)
    assert (project / "sweep" / "comparison.md").is_file()
