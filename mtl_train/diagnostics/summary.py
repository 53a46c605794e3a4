"""``summary.json``'s ``diagnostics`` block, from the run's ``gradients.csv`` / ``affinity.csv`` (so a resumed
run's means cover every part of it)."""

from __future__ import annotations

from pathlib import Path

from mtl_train.diagnostics.affinity import affinity_summary
from mtl_train.diagnostics.gradients import DiagnosticsSettings, gradients_summary
from mtl_train.diagnostics.sampling import AFFINITY, GRADIENTS


def diagnostics_summary(output_dir: Path, settings: DiagnosticsSettings) -> dict:
    """``{"gradients": {...}, "affinity": {...}}``, each part only when it is on."""
    summary = {}
    if settings.every > 0:
        summary["gradients"] = gradients_summary(Path(output_dir) / f"{GRADIENTS}.csv", settings)
    if settings.affinity_every > 0:
        summary["affinity"] = affinity_summary(Path(output_dir) / f"{AFFINITY}.csv", settings.affinity_every)
    return summary
