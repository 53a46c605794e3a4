"""The sweep callback's summary.jsonl: one parseable line per job, also when jobs of a parallel sweep end together."""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import time
from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from mtl_train.hydra_callbacks import SweepSummary

PAYLOAD = "x" * 20_000  # a long summary, so that interleaved writes would show as broken lines


def job_config(sweep_dir: Path, job: int) -> DictConfig:
    """The parts of a job's config the callback reads; the job's directory holds a ``summary.json``."""
    output_dir = sweep_dir / str(job)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "summary.json").write_text(json.dumps({"job": job, "payload": PAYLOAD}))
    return OmegaConf.create({"hydra": {"mode": RunMode.MULTIRUN, "runtime": {"output_dir": str(output_dir)},
                                       "job": {"num": job}, "sweep": {"dir": str(sweep_dir)}}})


def end_job(sweep_dir: Path, job: int) -> None:
    """What Hydra does when job ``job`` of the sweep completes."""
    job_return = JobReturn(overrides=[f"seed={job}"], status=JobStatus.COMPLETED, _return_value=None)
    SweepSummary().on_job_end(job_config(sweep_dir, job), job_return)


def end_jobs(sweep_dir: Path, jobs: range) -> None:
    for job in jobs:
        end_job(sweep_dir, job)


def test_parallel_jobs_append_every_line_whole(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=end_jobs, args=(tmp_path, range(start, start + 25))) for start in (0, 25, 50, 75)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    records = [json.loads(line) for line in (tmp_path / "summary.jsonl").read_text().splitlines()]
    assert sorted(r["job"] for r in records) == list(range(100))
    assert all(r["summary"] == {"job": r["job"], "payload": PAYLOAD} and r["overrides"] == [f"seed={r['job']}"]
               for r in records)


def test_a_job_appends_only_while_it_holds_the_lock(tmp_path: Path) -> None:
    summary_file = tmp_path / "summary.jsonl"
    summary_file.write_text("")
    context = multiprocessing.get_context("fork")
    with open(summary_file) as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another job is appending
        worker = context.Process(target=end_job, args=(tmp_path, 7))
        worker.start()
        time.sleep(1.0)
        assert summary_file.read_text() == ""  # the job waits for the lock
        fcntl.flock(held, fcntl.LOCK_UN)
        worker.join(timeout=60)
    assert worker.exitcode == 0
    assert [json.loads(line)["job"] for line in summary_file.read_text().splitlines()] == [7]


def test_single_runs_write_no_summary_jsonl(tmp_path: Path) -> None:
    config = job_config(tmp_path, 0)
    config.hydra.mode = RunMode.RUN
    SweepSummary().on_job_end(config, JobReturn(overrides=[], status=JobStatus.COMPLETED, _return_value=None))
    assert not (tmp_path / "summary.jsonl").exists()
