"""The comparison plots' structure: shared axes, lines that stay apart, means over seeds, the trade-off's arrow."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.collections import PathCollection, PolyCollection

from mtl_train.report import Run
from mtl_train.report_plots import (SeedMean, front_staircase, metric_curves, seed_mean, tradeoff,
                                    weights_comparison)

HIGHER = {"rhythm": {"accuracy": True}, "heart_rate": {"mae": False}}
PRIMARY = {"rhythm": "accuracy", "heart_rate": "mae"}


@pytest.fixture(autouse=True)
def close_figures() -> Iterator[None]:
    yield
    plt.close("all")


def make_run(run_dir: Path, label: str, seed: int, weights: dict[str, list[float]], test: dict[str, float]) -> Run:
    """A run of the tasks rhythm (accuracy) and heart_rate (MAE): per-step ``weights`` (and the same losses), val
    metrics at every step equal to ``test``."""
    run_dir.mkdir(parents=True)
    steps = range(1, len(weights["rhythm"]) + 1)
    lines = ["step,rhythm,heart_rate"]
    lines += [f"{s},{weights['rhythm'][s - 1]},{weights['heart_rate'][s - 1]}" for s in steps]
    for name in ("weights.csv", "losses.csv"):
        (run_dir / name).write_text("\n".join(lines) + "\n")
    metrics = {"rhythm": {"accuracy": test["rhythm"]}, "heart_rate": {"mae": test["heart_rate"]}}
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "split": "val", "metrics": metrics}) + "\n"
                                                   for s in steps))
    summary = {"tasks": ["rhythm", "heart_rate"], "seed": seed, "primary_metric": PRIMARY, "higher_is_better": HIGHER,
               "final": {"test": metrics}}
    return Run(run_dir, [label, f"seed={seed}"], summary, label)


@pytest.fixture
def runs(tmp_path: Path) -> list[Run]:
    """EW (every weight 1) and UW (weights that differ between its two seeds), two seeds each."""
    equal = {"rhythm": [1.0, 1.0, 1.0], "heart_rate": [1.0, 1.0, 1.0]}
    return [
        make_run(tmp_path / "0", "weighting=ew", 0, equal, {"rhythm": 0.6, "heart_rate": 5.0}),
        make_run(tmp_path / "1", "weighting=ew", 1, equal, {"rhythm": 0.8, "heart_rate": 3.0}),
        make_run(tmp_path / "2", "weighting=uw", 0, {"rhythm": [0.5, 0.4, 0.3], "heart_rate": [0.5, 0.6, 0.7]},
                 {"rhythm": 0.9, "heart_rate": 4.0}),
        make_run(tmp_path / "3", "weighting=uw", 1, {"rhythm": [0.5, 0.2, 0.1], "heart_rate": [0.5, 0.8, 0.9]},
                 {"rhythm": 0.7, "heart_rate": 6.0}),
    ]


def test_weight_panels_share_their_axes_and_draw_the_mean_over_seeds(runs: list[Run]) -> None:
    plot = weights_comparison(runs)
    ew, uw = [ax for ax in plot.figure.axes if ax.get_title()]
    assert ew.get_shared_x_axes().joined(ew, uw) and ew.get_shared_y_axes().joined(ew, uw)
    assert ew.get_ylim() == uw.get_ylim()
    assert [ax.get_title() for ax in (ew, uw)] == ["weighting=ew (2 seeds)", "weighting=uw (2 seeds)"]
    assert "mean over seeds" in plot.figure.get_suptitle()
    rhythm, heart_rate = uw.get_lines()
    assert list(rhythm.get_ydata()) == pytest.approx([0.5, 0.3, 0.2])  # (0.5 + 0.5) / 2, (0.4 + 0.2) / 2, ...
    assert list(heart_rate.get_ydata()) == pytest.approx([0.5, 0.7, 0.8])
    assert sum(isinstance(c, PolyCollection) for c in uw.collections) == 2  # a ± std band per task
    assert ["weighting=uw", 2, "rhythm", pytest.approx(0.3), pytest.approx(0.2 / math.sqrt(2)), 2] in plot.rows
    assert [t.get_text() for t in plot.figure.legends[0].get_texts()] == ["rhythm", "heart_rate"]


def test_equal_weight_lines_stay_distinguishable(runs: list[Run]) -> None:
    ew = next(ax for ax in weights_comparison(runs).figure.axes if ax.get_title().startswith("weighting=ew"))
    rhythm, heart_rate = ew.get_lines()
    assert list(rhythm.get_ydata()) == list(heart_rate.get_ydata()) == [1.0, 1.0, 1.0]
    assert rhythm.get_linestyle() != heart_rate.get_linestyle() and rhythm.get_marker() != heart_rate.get_marker()
    assert rhythm.get_linewidth() > heart_rate.get_linewidth()  # the line drawn first shows around the later one


def test_metric_curves_have_a_panel_per_task_sharing_the_step_axis(runs: list[Run]) -> None:
    plot = metric_curves(runs)
    rhythm, heart_rate = [ax for ax in plot.figure.axes if ax.get_title()]
    assert rhythm.get_title() == "rhythm accuracy ↑ (val)" and heart_rate.get_title() == "heart_rate mae ↓ (val)"
    assert rhythm.get_shared_x_axes().joined(rhythm, heart_rate)
    assert [list(line.get_ydata()) for line in heart_rate.get_lines()] == [[4.0] * 3, [5.0] * 3]  # EW, UW means


def test_tradeoff_shows_each_seed_the_mean_and_the_better_corner(runs: list[Run]) -> None:
    plot = tradeoff(runs)
    ax = plot.figure.axes[0]
    assert ax.get_xlabel() == "rhythm accuracy ↑ (test)" and ax.get_ylabel() == "heart_rate mae ↓ (test)"
    seeds = [c.get_offsets().tolist() for c in ax.collections if isinstance(c, PathCollection)]
    assert seeds == [[[0.6, 5.0], [0.8, 3.0]], [[0.9, 4.0], [0.7, 6.0]]]
    means = [(list(bars.lines[0].get_xdata()), list(bars.lines[0].get_ydata())) for bars in ax.containers]
    assert means == [([pytest.approx(0.7)], [4.0]), ([pytest.approx(0.8)], [5.0])]
    x_caps = sorted(cap.get_xdata()[0] for cap in ax.containers[0].lines[1] if cap.get_marker() == "|")
    assert x_caps == pytest.approx([0.7 - 0.2 / math.sqrt(2), 0.7 + 0.2 / math.sqrt(2)])  # EW's accuracy ± its std
    assert ax.get_title(loc="right") == "better ↘"  # higher accuracy (right), lower MAE (down)
    assert [t.get_text() for t in plot.figure.legends[0].get_texts()] == ["weighting=ew (2 seeds)",
                                                                        "weighting=uw (2 seeds)"]


def test_seed_mean_keeps_the_steps_every_seed_reached() -> None:
    curve = seed_mean([{1: 1.0, 2: 2.0, 3: 3.0}, {1: 3.0, 2: 4.0}])
    assert isinstance(curve, SeedMean) and curve.seeds == 2
    assert curve.steps.tolist() == [1, 2] and curve.mean.tolist() == [2.0, 3.0]
    assert curve.std.tolist() == pytest.approx([math.sqrt(2), math.sqrt(2)])


def test_tradeoff_marks_the_front_with_a_staircase_and_filled_markers(runs: list[Run]) -> None:
    # means: EW (accuracy 0.7, MAE 4), UW (0.8, 5); EW has the better MAE, UW the better accuracy
    ax = tradeoff(runs, front=["weighting=ew", "weighting=uw"]).figure.axes[0]
    staircase = next(line for line in ax.get_lines() if line.get_label() == "Pareto front of the means")
    # up from EW at its accuracy to UW's MAE, then right to UW: the bound of what the two dominate
    assert list(staircase.get_xdata()) == pytest.approx([0.7, 0.7, 0.8])
    assert list(staircase.get_ydata()) == pytest.approx([4.0, 5.0, 5.0])
    ax = tradeoff(runs, front=["weighting=ew"]).figure.axes[0]
    ew, uw = (bars.lines[0] for bars in ax.containers)
    assert ew.get_markerfacecolor() != "white" and uw.get_markerfacecolor() == "white"
    assert [t.get_text() for t in ax.figure.legends[0].get_texts()][:2] == ["weighting=ew (2 seeds), front",
                                                                           "weighting=uw (2 seeds)"]


def test_the_staircase_follows_each_metric_s_direction() -> None:
    # both lower-is-better: ordered from worst to best first objective (x descending)
    corners = front_staircase(np.array([[1.0, 3.0], [3.0, 1.0], [2.0, 2.0]]), [False, False])
    assert corners.tolist() == [[3.0, 1.0], [3.0, 2.0], [2.0, 2.0], [2.0, 3.0], [1.0, 3.0]]
