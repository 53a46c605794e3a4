"""The markdown files of ``scripts/gpu_check.sh``: ``full_budget.md`` (the full-budget runs: the comparison table,
each run's status and its exact command) and ``summary.md`` (the environment, each stage's status and time, the
CUDA tests' result line, every PASS/MISS target line of the bench and the full-budget table).

    python3 scripts/gpu_check_summary.py full-budget FULL_DIR OUT/full_budget.md --epochs 100 --deadline-s 425
    python3 scripts/gpu_check_summary.py summary OUT

Standard library only, so that it runs wherever ``gpu_check.sh`` does. What it reads, all written by
``gpu_check.sh`` (fields separated by tabs, one record a line):

* ``OUT/stages.tsv``: stage, exit status, seconds, time limit in seconds, log file (relative to OUT), status text;
* ``OUT/env.txt``: the environment line first;
* ``OUT/<stage>.md`` of each ``bench_*`` stage: the bench's markdown; its ``PASS``/``MISS`` lines are the target
  verdicts, ``INFO`` lines (peak memory) and ``note:`` lines are kept too;
* ``OUT/full_budget.md`` (for the summary);
* ``FULL_DIR/planned.tsv``: config (``stl`` or a weighting method), seed, run directory (relative to FULL_DIR),
  command, in launch order; ``FULL_DIR/outcomes.tsv``: config, seed, exit status, seconds, for every run that ended;
  the run directories' ``summary.json`` and ``metrics.jsonl``;
* ``FULL_DIR/report/comparison.md``: the table of ``mtl-train-report``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

TIMEOUT_CODES = (124, 137)  # `timeout`: the limit was reached (137: killed after the grace period)
SIGNAL_CODES = (130, 143)  # stopped by SIGINT / SIGTERM from outside (the check was interrupted)
LOG_TAIL_LINES = 8
BENCH_LINES = ("PASS ", "MISS ", "INFO ", "note: ")  # the bench's target verdicts, its peak-memory line, its notes


@dataclass(frozen=True)
class Stage:
    """One line of ``stages.tsv``."""

    name: str
    code: int
    seconds: int
    limit: int
    log: str
    status: str


@dataclass(frozen=True)
class PlannedRun:
    """One line of ``planned.tsv``: a full-budget run, with its outcome once it ended (``code`` None: it did not
    end, or was never started)."""

    config: str
    seed: str
    run_dir: str
    command: str
    code: int | None = None
    seconds: int | None = None


def read_tsv(path: Path) -> list[list[str]]:
    """The tab-separated fields of every non-empty line of ``path``; no lines when it does not exist."""
    if not path.is_file():
        return []
    return [line.split("\t") for line in path.read_text().splitlines() if line.strip()]


def read_stages(path: Path) -> list[Stage]:
    """The stages in the order they ended."""
    return [Stage(name, int(code), int(seconds), int(limit), log, status)
            for name, code, seconds, limit, log, status in read_tsv(path)]


def read_runs(full_dir: Path) -> list[PlannedRun]:
    """The planned runs in launch order, each with its exit status and seconds where it ended."""
    outcomes = {(config, seed): (int(code), int(seconds))
                for config, seed, code, seconds in read_tsv(full_dir / "outcomes.tsv")}
    runs = []
    for config, seed, run_dir, command in read_tsv(full_dir / "planned.tsv"):
        code, seconds = outcomes.get((config, seed), (None, None))
        runs.append(PlannedRun(config, seed, run_dir, command, code, seconds))
    return runs


def last_epoch(metrics_file: Path) -> int:
    """The epoch of the last validation in a run's ``metrics.jsonl`` (0 when there is none)."""
    if not metrics_file.is_file():
        return 0
    epochs = [0]
    for line in metrics_file.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a line cut short by a kill
            continue
        if record.get("split") == "val":
            epochs.append(int(record["epoch"]))
    return max(epochs)


def progress(run: PlannedRun, full_dir: Path, epochs: int) -> str:
    """How far a run got: the epochs validated, of its single-task models one after the other for ``stl``."""
    run_dir = full_dir / run.run_dir
    if run.config != "stl":
        return f"{last_epoch(run_dir / 'metrics.jsonl')} of {epochs} epochs"
    models = sorted(p for p in (run_dir / "stl").glob("*") if p.is_dir())
    done = ", ".join(f"{p.name} {last_epoch(p / 'metrics.jsonl')}" for p in models) or "none"
    return f"epochs per task model: {done} (of {epochs} each)"


def run_status(run: PlannedRun, full_dir: Path) -> str:
    """``finished`` (exit 0 and a ``summary.json``), stopped at the deadline or by an interruption, failed, not
    started, or (no outcome but a run directory) did not end."""
    if run.code is None:
        return "not started (deadline)" if not (full_dir / run.run_dir).exists() else "did not end"
    if run.code == 0 and (full_dir / run.run_dir / "summary.json").is_file():
        return "finished"
    if run.code in TIMEOUT_CODES:
        return "stopped at the deadline"
    if run.code in SIGNAL_CODES:
        return "stopped: the check was interrupted"
    return f"failed (exit {run.code})"


def full_budget_markdown(full_dir: Path, epochs: int, deadline_s: int) -> str:
    """``full_budget.md``: the comparison of the finished runs, each planned run's status, and the commands."""
    runs = read_runs(full_dir)
    statuses = [run_status(run, full_dir) for run in runs]
    finished = statuses.count("finished")
    lines = [f"# Full-budget runs: MultiFashion, Kurin et al.'s protocol, {epochs} epochs", "",
             f"{finished} of {len(runs)} planned runs finished before the deadline, {deadline_s} s after the start of "
             "the check. Δm is against the single-task baselines (`stl=true`) of the seeds that finished.", "",
             "## Comparison (`mtl-train-report` over the runs that finished, with `--baselines` the `stl=true` runs)",
             ""]
    comparison = full_dir / "report" / "comparison.md"
    if comparison.is_file():
        lines += comparison.read_text().rstrip("\n").splitlines()
    else:
        lines.append("No comparison: no run finished, or the report failed (logs/report.log).")
    lines += ["", "## Runs", "", "| run | seed | status | seconds | progress |", "|---|---|---|---|---|"]
    for run, status in zip(runs, statuses):
        seconds = "-" if run.seconds is None else str(run.seconds)
        how_far = "-" if status.startswith("not started") else progress(run, full_dir, epochs)
        lines.append(f"| {run.config} | {run.seed} | {status} | {seconds} | {how_far} |")
    lines += ["", "## Commands", "", "In launch order, from the repository root with the root on PYTHONPATH; each "
              "run's output is in `<run dir>.log`.", "", "```bash", *(run.command for run in runs), "```"]
    return "\n".join(lines) + "\n"


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last ``lines`` non-empty lines of ``path`` (none when it does not exist)."""
    if not path.is_file():
        return []
    return [line for line in path.read_text(errors="replace").splitlines() if line.strip()][-lines:]


def stage_section(out: Path, stages: list[Stage]) -> list[str]:
    """The stage table, then the end of the log of every stage that did not succeed."""
    lines = ["## Stages", "", "| stage | status | seconds | limit (s) | log |", "|---|---|---|---|---|"]
    lines += [f"| {s.name} | {s.status} | {s.seconds} | {s.limit} | {s.log} |" for s in stages]
    for stage in stages:
        tail = log_tail(out / stage.log) if stage.code != 0 else []
        if tail:
            lines += ["", f"End of `{stage.log}` ({stage.name}, {stage.status}):", "", "```text", *tail, "```"]
    return lines


def pytest_section(out: Path, stages: list[Stage]) -> list[str]:
    """The last line pytest printed, and the stage's status."""
    stage = next((s for s in stages if s.name == "pytest -m cuda"), None)
    if stage is None:
        return ["## CUDA tests (`pytest -m cuda`)", "", "Not run."]
    last = log_tail(out / stage.log, 1)
    return ["## CUDA tests (`pytest -m cuda`)", "", f"`{last[0] if last else '(no output)'}`: {stage.status}"]


def bench_section(out: Path, stages: list[Stage]) -> list[str]:
    """Every PASS/MISS/INFO line and note of each bench run's markdown (``<stage>.md``), in the order they ran."""
    lines = ["## Bench targets"]
    names = [stage.name for stage in stages if stage.name.startswith("bench_")]
    if not names:
        return lines + ["", "No bench run."]
    for name in names:
        path = out / f"{name}.md"
        text = path.read_text() if path.is_file() else ""
        picked = [line for line in text.splitlines() if line.startswith(BENCH_LINES)]
        lines += ["", f"### {path.name}", "", "```text", *(picked or ["(no target lines: see the stage's log)"]), "```"]
    return lines


def full_budget_section(out: Path) -> list[str]:
    """``full_budget.md`` up to its list of commands, one heading level down."""
    path = out / "full_budget.md"
    if not path.is_file():
        return ["## Full-budget runs", "", "No full_budget.md."]
    text = path.read_text().split("\n## Commands")[0].rstrip("\n")
    return [f"#{line}" if line.startswith("#") else line for line in text.splitlines()]


def first_line(path: Path) -> str:
    """The first line of ``path``, or a note that it is missing or empty."""
    lines = path.read_text().splitlines() if path.is_file() else []
    return lines[0] if lines else f"(no {path.name})"


def summary_markdown(out: Path) -> str:
    """``summary.md``: the environment line, the stages, the CUDA tests, the bench targets and the full-budget
    table."""
    stages = read_stages(out / "stages.tsv")
    lines = ["# GPU check summary", "", first_line(out / "env.txt"), "", *stage_section(out, stages), "",
             *pytest_section(out, stages), "", *bench_section(out, stages), "", *full_budget_section(out)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    full = commands.add_parser("full-budget", help="write full_budget.md from a full-budget folder")
    full.add_argument("full_dir", type=Path)
    full.add_argument("output", type=Path)
    full.add_argument("--epochs", type=int, required=True)
    full.add_argument("--deadline-s", type=int, required=True)
    summary = commands.add_parser("summary", help="write OUT/summary.md")
    summary.add_argument("out", type=Path)
    args = parser.parse_args()
    if args.command == "full-budget":
        args.output.write_text(full_budget_markdown(args.full_dir, args.epochs, args.deadline_s))
    else:
        (args.out / "summary.md").write_text(summary_markdown(args.out))


if __name__ == "__main__":
    main()
