"""Hydra callback that summarises sweeps.

Hydra calls a callback's ``on_job_end`` in the process that ran the job, and ``on_multirun_end`` once in the
process that launched the sweep, after every job succeeded. ``on_job_end`` appends one JSON line per finished job
(completed or failed) to ``<sweep dir>/summary.jsonl``, so the file fills with any launcher, also one that runs the
jobs in parallel processes: each line is written in one call under an exclusive lock on the file.
``on_multirun_end`` prints the comparison table and writes ``comparison.csv`` / ``comparison.md``, the plots and
``report.html`` (all of them in one self-contained page).
When a job failed, Hydra skips ``on_multirun_end``; ``mtl-train-report <sweep dir>`` rebuilds the table then.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from mtl_train.report import report


def append_line(path: Path, line: str) -> None:
    """Append ``line`` and a newline to ``path`` in a single write, holding an exclusive ``flock`` on the file so
    that processes appending at the same time neither interleave nor lose lines."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def job_record(config: DictConfig, job_return: JobReturn) -> dict:
    """The ``summary.jsonl`` record of a finished job: its number, overrides, status, output directory, and its
    ``summary.json`` (completed) or the error it raised (failed)."""
    output_dir = Path(config.hydra.runtime.output_dir)
    record = {"job": config.hydra.job.num, "overrides": list(job_return.overrides or []),
              "status": job_return.status.name, "output_dir": str(output_dir)}
    summary_file = output_dir / "summary.json"
    if job_return.status == JobStatus.COMPLETED and summary_file.is_file():
        record["summary"] = json.loads(summary_file.read_text())
    elif job_return.status == JobStatus.FAILED:
        try:
            job_return.return_value  # re-raises the job's exception
        except Exception as error:  # noqa: BLE001  (any job error is recorded, not handled)
            record["error"] = repr(error)
    else:
        record["error"] = None
    return record


class SweepSummary(Callback):
    """Appends ``summary.jsonl`` per job and writes the comparison at the end of a sweep."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        append_line(Path(config.hydra.sweep.dir) / "summary.jsonl", json.dumps(job_record(config, job_return)))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        report([sweep_dir], sweep_dir, html=True)
