"""scripts/gpu_check.sh and its summary builder, scripts/gpu_check_summary.py: the builder on hand-made stage outputs
and run folders (every line checked), the script's argument checks, and the whole script in its CPU dry mode."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
spec = importlib.util.spec_from_file_location("gpu_check_summary", ROOT / "scripts" / "gpu_check_summary.py")
gpu_check_summary = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = gpu_check_summary  # dataclasses look their module up there
spec.loader.exec_module(gpu_check_summary)

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
COMPARISON = "| config | seeds | delta_m_% |\n|---|---|---|\n| weighting=ew | 1 | -1.0000 ± 0.0000 |\n"


def write_lines(path: Path, rows: list[list[object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("\t".join(map(str, row)) + "\n" for row in rows))


def val_epochs(run_dir: Path, epochs: list[int]) -> None:
    """A metrics.jsonl with a validation and a test record per epoch, and a last line cut short by a kill."""
    run_dir.mkdir(parents=True, exist_ok=True)
    records = [json.dumps({"step": 10 * e, "epoch": e, "split": split, "metrics": {}})
               for e in epochs for split in ("val", "test")]
    (run_dir / "metrics.jsonl").write_text("\n".join(records) + '\n{"step": 99, "epo')


def full_budget_folder(full: Path) -> None:
    """Four planned runs: stl finished, ew stopped at the deadline after 3 epochs, pcgrad failed, mgda never
    started; with the report's comparison.md."""
    write_lines(full / "planned.tsv", [["stl", 0, "stl/seed0", "python3 -m mtl_train.cli stl=true seed=0"],
                                       ["ew", 0, "methods/ew/seed0", "python3 -m mtl_train.cli weighting=ew seed=0"],
                                       ["pcgrad", 0, "methods/pcgrad/seed0", "python3 -m mtl_train.cli weighting=pcgrad"
                                        ],
                                       ["mgda", 0, "methods/mgda/seed0", "python3 -m mtl_train.cli weighting=mgda"]])
    write_lines(full / "outcomes.tsv", [["pcgrad", 0, 1, 7], ["stl", 0, 0, 50], ["ew", 0, 124, 60]])
    val_epochs(full / "stl/seed0/stl/left", [1, 2])
    val_epochs(full / "stl/seed0/stl/right", [1, 2])
    (full / "stl/seed0/summary.json").write_text("{}")
    val_epochs(full / "methods/ew/seed0", [1, 2, 3])
    (full / "methods/pcgrad/seed0").mkdir(parents=True)
    (full / "report").mkdir()
    (full / "report" / "comparison.md").write_text(COMPARISON)


def test_last_epoch_is_the_last_validation_and_skips_a_cut_line(tmp_path: Path) -> None:
    val_epochs(tmp_path, [1, 2, 3])
    assert gpu_check_summary.last_epoch(tmp_path / "metrics.jsonl") == 3
    assert gpu_check_summary.last_epoch(tmp_path / "absent.jsonl") == 0


def test_full_budget_markdown_gives_each_run_its_status_and_progress(tmp_path: Path) -> None:
    full_budget_folder(tmp_path)

    text = gpu_check_summary.full_budget_markdown(tmp_path, epochs=5, deadline_s=425)

    assert text == "\n".join([
        "# Full-budget runs: MultiFashion, Kurin et al.'s protocol, 5 epochs",
        "",
        "1 of 4 planned runs finished before the deadline, 425 s after the start of the check. Δm is against the "
        "single-task baselines (`stl=true`) of the seeds that finished.",
        "",
        "## Comparison (`mtl-train-report` over the runs that finished, with `--baselines` the `stl=true` runs)",
        "",
        "| config | seeds | delta_m_% |",
        "|---|---|---|",
        "| weighting=ew | 1 | -1.0000 ± 0.0000 |",
        "",
        "## Runs",
        "",
        "| run | seed | status | seconds | progress |",
        "|---|---|---|---|---|",
        "| stl | 0 | finished | 50 | epochs per task model: left 2, right 2 (of 5 each) |",
        "| ew | 0 | stopped at the deadline | 60 | 3 of 5 epochs |",
        "| pcgrad | 0 | failed (exit 1) | 7 | 0 of 5 epochs |",
        "| mgda | 0 | not started (deadline) | - | - |",
        "",
        "## Commands",
        "",
        "In launch order, from the repository root with the root on PYTHONPATH; each run's output is in "
        "`<run dir>.log`.",
        "",
        "```bash",
        "python3 -m mtl_train.cli stl=true seed=0",
        "python3 -m mtl_train.cli weighting=ew seed=0",
        "python3 -m mtl_train.cli weighting=pcgrad",
        "python3 -m mtl_train.cli weighting=mgda",
        "```",
        "",
    ])


def test_run_status_of_an_interrupted_and_an_unfinished_run(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    run = gpu_check_summary.PlannedRun("ew", "0", "a", "cmd")
    assert gpu_check_summary.run_status(run, tmp_path) == "did not end"
    interrupted = gpu_check_summary.PlannedRun("ew", "0", "a", "cmd", code=143, seconds=3)
    assert gpu_check_summary.run_status(interrupted, tmp_path) == "stopped: the check was interrupted"
    no_summary = gpu_check_summary.PlannedRun("ew", "0", "a", "cmd", code=0, seconds=3)
    assert gpu_check_summary.run_status(no_summary, tmp_path) == "failed (exit 0)"


def test_summary_gathers_env_stages_test_line_bench_lines_and_the_full_budget_table(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "env.txt").write_text("GPU check, 2026-12-01 10:00 UTC: torch 2.11.0\n\nnvidia-smi output\n")
    write_lines(tmp_path / "stages.tsv", [
        ["env", 0, 3, 30, "logs/env.log", "ok"],
        ["bench_fp32_eager", 0, 41, 70, "logs/bench_fp32_eager.log", "ok"],
        ["bench_bf16_eager", 124, 70, 70, "logs/bench_bf16_eager.log", "timed out after 70 s"],
        ["pytest -m cuda", 0, 95, 180, "pytest_cuda.txt", "ok"],
    ])
    (tmp_path / "bench_fp32_eager.md").write_text(
        "# timings\n\nnote: graphs skipped\n\n| method | ms |\n|---|---|\n| ew | 3.0 |\n\n## Targets\n\n"
        "PASS MultiLeNet, k=4: EW / hand-written loop = 1.010 (target <= 1.05)\n"
        "MISS MultiLeNet, k=4: FAMO = 1.500 x EW (target <= 1.4)\nINFO MultiLeNet, k=8: peak memory\n")
    (tmp_path / "logs" / "bench_bf16_eager.log").write_text("".join(f"line {i}\n\n" for i in range(10)))
    (tmp_path / "pytest_cuda.txt").write_text("....s\n41 passed, 2 skipped, 2231 deselected in 60.00s\n\n")
    (tmp_path / "full_budget.md").write_text(
        "# Full-budget runs: x\n\nSome runs.\n\n## Runs\n\n| run |\n|---|\n| ew |\n\n## Commands\n\n```bash\nc\n```\n")

    text = gpu_check_summary.summary_markdown(tmp_path)

    assert text == "\n".join([
        "# GPU check summary",
        "",
        "GPU check, 2026-12-01 10:00 UTC: torch 2.11.0",
        "",
        "## Stages",
        "",
        "| stage | status | seconds | limit (s) | log |",
        "|---|---|---|---|---|",
        "| env | ok | 3 | 30 | logs/env.log |",
        "| bench_fp32_eager | ok | 41 | 70 | logs/bench_fp32_eager.log |",
        "| bench_bf16_eager | timed out after 70 s | 70 | 70 | logs/bench_bf16_eager.log |",
        "| pytest -m cuda | ok | 95 | 180 | pytest_cuda.txt |",
        "",
        "End of `logs/bench_bf16_eager.log` (bench_bf16_eager, timed out after 70 s):",
        "",
        "```text",
        *(f"line {i}" for i in range(2, 10)),  # the last 8 non-empty lines
        "```",
        "",
        "## CUDA tests (`pytest -m cuda`)",
        "",
        "`41 passed, 2 skipped, 2231 deselected in 60.00s`: ok",
        "",
        "## Bench targets",
        "",
        "### bench_fp32_eager.md",
        "",
        "```text",
        "note: graphs skipped",
        "PASS MultiLeNet, k=4: EW / hand-written loop = 1.010 (target <= 1.05)",
        "MISS MultiLeNet, k=4: FAMO = 1.500 x EW (target <= 1.4)",
        "INFO MultiLeNet, k=8: peak memory",
        "```",
        "",
        "### bench_bf16_eager.md",
        "",
        "```text",
        "(no target lines: see the stage's log)",
        "```",
        "",
        "## Full-budget runs: x",
        "",
        "Some runs.",
        "",
        "### Runs",
        "",
        "| run |",
        "|---|",
        "| ew |",
        "",
    ])


def test_summary_of_a_check_that_ran_nothing(tmp_path: Path) -> None:
    assert gpu_check_summary.summary_markdown(tmp_path) == "\n".join([
        "# GPU check summary", "", "(no env.txt)", "", "## Stages", "",
        "| stage | status | seconds | limit (s) | log |",
        "|---|---|---|---|---|", "", "## CUDA tests (`pytest -m cuda`)", "", "Not run.", "", "## Bench targets", "",
        "No bench run.", "", "## Full-budget runs", "", "No full_budget.md.", ""])


def run_script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, **(env or {})}, timeout=600)


def test_the_script_refuses_wrong_arguments_and_a_used_out_folder(tmp_path: Path) -> None:
    result = run_script()
    assert result.returncode == 2 and "usage: bash scripts/gpu_check.sh OUT [--dry]" in result.stderr
    result = run_script(str(tmp_path / "out"), "--fast")
    assert result.returncode == 2 and "wrong arguments" in result.stderr
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "summary.md").write_text("an earlier check")
    result = run_script(str(tmp_path / "used"), "--dry")
    assert result.returncode == 2 and "is not empty" in result.stderr
    result = run_script(str(tmp_path / "out dir"), "--dry")
    assert result.returncode == 2 and "characters other than" in result.stderr
    assert not (tmp_path / "out dir").exists()


@pytest.mark.slow
@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="needs Debian's dataset-fashion-mnist")
def test_dry_run_writes_the_summary_and_the_tarball_of_every_stage(tmp_path: Path) -> None:
    out = tmp_path / "out"

    result = run_script(str(out), "--dry", env={"FASHION_MNIST_DIR": str(FASHION_MNIST)})

    assert result.returncode == 0, result.stdout + result.stderr
    summary = (out / "summary.md").read_text()
    stages = [line.split("\t") for line in (out / "stages.tsv").read_text().splitlines()]
    assert [stage[1] for stage in stages] == ["0"] * 10  # every stage's exit status
    names = [stage[0] for stage in stages]
    benches = [f"bench_{p}_{part}" for p in ("fp32", "bf16") for part in ("eager", "graphs")]
    benches += ["bench_fp32_scaling", "bench_bf16_scaling"]
    assert names[:7] == ["env", *benches]
    assert set(names[7:]) == {"full-budget runs", "pytest -m cuda", "report"}
    full_budget = stages[names.index("full-budget runs")]
    assert full_budget[5] == "3 of 3 finished, 0 stopped at the deadline, 0 failed, 0 not started"
    assert summary.startswith("# GPU check summary\n\nDry run on CPU, ")
    test_line = summary.split("## CUDA tests (`pytest -m cuda`)\n\n")[1].splitlines()[0]
    assert re.fullmatch(r"`\d+ skipped, \d+ deselected in [\d.]+s`: ok", test_line)  # no GPU here
    assert any(line.startswith(("PASS MultiLeNet, k=2: EW / hand-written loop", "MISS MultiLeNet, k=2: EW / hand"))
               for line in summary.splitlines())
    assert "note: CUDA graphs need a CUDA device" in summary
    assert "| stl=true | 1 |" in summary and "| weighting=ew | 1 |" in summary and "| weighting=pcgrad | 1 |" in summary
    for run in ("| stl | 0 | finished |", "| ew | 0 | finished |", "| pcgrad | 0 | finished |"):
        assert run in summary
    assert "3 of 3 planned runs finished" in summary
    with tarfile.open(out / "gpu_check.tar.gz") as tar:
        names = set(tar.getnames())
    expected = {"./env.txt", "./stages.tsv", "./pytest_cuda.txt", "./full_budget.md", "./summary.md",
                *(f"./{name}.{ext}" for name in benches for ext in ("md", "json")), "full/planned.tsv",
                "full/outcomes.tsv", "full/stl/seed0/baselines.json", "full/methods/ew/seed0/summary.json",
                "full/methods/pcgrad/seed0.log", "full/report/comparison.md"}
    assert expected <= names
    assert not [name for name in names if name.endswith(".pt") or name.startswith("./work")]
