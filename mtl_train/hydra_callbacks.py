"""Hydra callback that summarises sweeps (see ../shared/STYLE.md, "Callbacks to aggregate sweep results").

``on_job_end`` appends one JSON line per finished job (completed or failed) to ``<sweep dir>/summary.jsonl``; it
runs where the job runs, so it also works with launchers that run jobs in other processes. ``on_multirun_end``
prints the comparison table and writes ``comparison.csv`` / ``comparison.md``. Hydra does not call
``on_multirun_end`` when a job failed; ``mtl-train-report <sweep dir>`` rebuilds the table then.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from mtl_train.report import report


class SweepSummary(Callback):
    """Appends ``summary.jsonl`` per job and writes the comparison at the end of a sweep."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
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
        with open(Path(config.hydra.sweep.dir) / "summary.jsonl", "a") as file:
            file.write(json.dumps(record) + "\n")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        report([sweep_dir], sweep_dir)
