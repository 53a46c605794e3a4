"""The installed `mtl-train` command, run in a subprocess as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MTL_TRAIN = str(Path(sys.executable).parent / "mtl-train")


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "120"}
    return subprocess.run([MTL_TRAIN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_help_lists_the_config_groups(tmp_path: Path) -> None:
    result = run("--help", cwd=tmp_path)
    assert result.returncode == 0
    groups = {line.split(":")[0].strip(): line.split(":", 1)[1] for line in result.stdout.splitlines() if ": " in line}
    for group in ("task", "dataset", "backbone", "heads", "loss", "weighting", "schedule", "optimizer", "scheduler",
                  "trainer", "experiment", "debug"):
        assert group in groups, group
    assert {"ew", "gradnorm", "static", "uw"} <= {name.strip() for name in groups["weighting"].split(",")}
    assert "ecg_cls_rec" in groups["task"] and "smoke" in groups["debug"]


def test_cfg_job_prints_the_composed_config(tmp_path: Path) -> None:
    result = run("task=cls_seg", "weighting=gradnorm", "--cfg", "job", cwd=tmp_path)
    assert result.returncode == 0
    assert "_target_: mtl_train.weighting.gradnorm.GradNorm" in result.stdout
    assert "_target_: mtl_train.data.mnist.MNIST" in result.stdout


def test_smoke_run_writes_outputs_and_prints_the_table(tmp_path: Path) -> None:
    result = run("debug=smoke", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "rhythm" in result.stdout and "psnr" in result.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 2
    assert (tmp_path / "run" / ".hydra" / "config.yaml").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["weighting=static", "weighting.weights=[1,2,3]"], "weighting.weights has 3 values but there are 2 tasks"),
        (["trainer.amp=fp16"], "trainer.amp=fp16 needs a CUDA device"),
        (["trainer.batch_size=0"], "trainer.batch_size must be >= 1"),
        (["task=cls_seg", "dataset=fashion_mnist", "dataset.root=nowhere", "dataset.system_dirs=[]",
          "dataset.download=false"], "FashionMNIST data not found"),
    ],
)
def test_user_errors_give_one_message_and_exit_1(tmp_path: Path, args: list[str], message: str) -> None:
    result = run("debug=smoke", f"hydra.run.dir={tmp_path / 'run'}", *args, cwd=tmp_path)
    assert result.returncode == 1
    assert f"error: {message}" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_missing_data_message_names_the_root_and_the_fixes(tmp_path: Path) -> None:
    result = run("debug=smoke", f"hydra.run.dir={tmp_path / 'run'}", "task=cls_seg", "dataset=fashion_mnist",
                 f"dataset.root={tmp_path / 'nodata'}", "dataset.system_dirs=[]", "dataset.download=false", cwd=tmp_path)
    assert result.returncode == 1
    for text in (str(tmp_path / "nodata" / "FashionMNIST" / "raw"), "dataset.download=true", "dataset.root=",
                 "apt-get install dataset-fashion-mnist", "mtl-train"):
        assert text in result.stderr


def test_unknown_group_option_lists_the_available_ones(tmp_path: Path) -> None:
    result = run("weighting=nope", cwd=tmp_path)
    assert result.returncode == 1
    assert "Could not find 'weighting/nope'" in result.stderr and "gradnorm" in result.stderr


def test_plain_wheel_install_finds_its_configs(tmp_path: Path) -> None:
    """`pip install .` (not editable) ships configs/ inside the package as mtl_train/configs."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "wheel"), str(REPO)],
                   check=True, capture_output=True)
    wheel = next((tmp_path / "wheel").glob("mtl_train-*.whl"))
    assert "mtl_train/configs/train.yaml" in zipfile.ZipFile(wheel).namelist()
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(tmp_path / "site"),
                    str(wheel)], check=True, capture_output=True)
    code = ("import sys; sys.argv = ['mtl-train', 'debug=smoke', '--cfg', 'job'];"
            "import mtl_train.cli as cli; print('CONFIG_DIR', cli.config_dir()); cli.main()")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"CONFIG_DIR {tmp_path / 'site' / 'mtl_train' / 'configs'}" in result.stdout
    assert "max_steps: 2" in result.stdout
