"""The installed `mtl-train` command, run in a subprocess as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import CONFIG_DIR, compose_config

from mtl_train.help import commented_keys, default_choices

REPO = Path(__file__).resolve().parents[1]
MTL_TRAIN = str(Path(sys.executable).parent / "mtl-train")


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "120"}
    return subprocess.run([MTL_TRAIN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def help_text(tmp_path_factory: pytest.TempPathFactory) -> str:
    result = run("--help", cwd=tmp_path_factory.mktemp("help"))
    assert result.returncode == 0, result.stderr
    return result.stdout


def help_section(text: str, title: str) -> dict[str, str]:
    """The entries of the ``== title ==`` section of --help: name -> its text, continuation lines joined."""
    body = text.split(f"== {title} ==\n", 1)[1].split("\n\n", 1)[0]
    entries: dict[str, str] = {}
    for line in body.splitlines():
        if line.startswith("  ") and not line.startswith("   "):
            name, _, rest = line.strip().partition(" ")
            entries[name] = rest.strip()
        else:
            entries[name] += " " + line.strip()
    return entries


def test_help_lists_the_config_groups_and_their_options(help_text: str) -> None:
    groups = help_section(help_text, "Config groups: group=option")
    for group in ("task", "dataset", "backbone", "heads", "loss", "weighting", "schedule", "optimizer", "scheduler",
                  "trainer", "experiment", "debug"):
        options = [name.strip() for name in groups[group].split(",")]
        assert options == sorted(p.stem + (" (default)" if p.stem == default_choices(CONFIG_DIR).get(group) else "")
                                 for p in (CONFIG_DIR / group).glob("*.yaml")), group
    assert "ew (default)" in groups["weighting"] and "gradnorm" in groups["weighting"]


@pytest.mark.parametrize(("file", "prefix"), [("trainer/default.yaml", "trainer."), ("train.yaml", "")])
def test_help_explains_every_key_with_its_yaml_comment(help_text: str, file: str, prefix: str) -> None:
    keys = help_section(help_text, "Main keys: key=value")
    in_file = yaml.safe_load((CONFIG_DIR / file).read_text())
    scalars = [key for key, value in in_file.items() if not isinstance(value, (dict, list))]
    assert scalars and all(prefix + key in keys for key in scalars)
    for key, default, comment in commented_keys(CONFIG_DIR / file):
        assert comment, f"{file}: {key} has no comment to explain it in --help"
        assert keys[prefix + key] == f"{comment} [default: {default}]"


def test_help_shows_the_per_task_loss_and_head_syntax_and_the_report(help_text: str) -> None:
    for text in ("mtl-train loss@task.<name>.loss=<loss option>", "mtl-train heads@task.<name>.head=<heads option>",
                 "mtl-train-report DIR... [--out OUT] [--baselines DIR]", "mtl-train --hydra-help"):
        assert text in help_text


def test_help_examples_compose(help_text: str) -> None:
    examples = [line.split("#")[0].split()[1:] for line in help_text.splitlines()
                if line.startswith("  mtl-train ") and "<" not in line and " -m " not in line]
    assert len(examples) >= 4
    for overrides in examples:
        compose_config(overrides)


def test_help_fits_80_columns(help_text: str) -> None:
    assert max(len(line) for line in help_text.splitlines()) <= 80


def test_cfg_job_prints_the_composed_config(tmp_path: Path) -> None:
    result = run("task=cls_seg", "weighting=gradnorm", "--cfg", "job", cwd=tmp_path)
    assert result.returncode == 0
    assert "_target_: mtl_train.weighting.gradnorm.GradNorm" in result.stdout
    assert "_target_: mtl_train.data.mnist.MNIST" in result.stdout


def test_smoke_run_writes_outputs_then_a_second_run_there_is_refused(tmp_path: Path) -> None:
    result = run("debug=smoke", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "rhythm" in result.stdout and "psnr" in result.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 2
    assert (tmp_path / "run" / ".hydra" / "config.yaml").is_file()
    files = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in (tmp_path / "run").rglob("*")
             if path.is_file()}
    again = run("debug=smoke", "weighting=uw", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert again.returncode == 1 and "Traceback" not in again.stderr
    assert again.stderr.startswith(f"error: hydra.run.dir={tmp_path / 'run'} already holds a run")
    assert {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in (tmp_path / "run").rglob("*")
            if path.is_file()} == files


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
    for text in (str(tmp_path / "nodata" / "FashionMNIST" / "raw"), "dataset.download=true", "set dataset.root",
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
