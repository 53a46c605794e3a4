"""A run's own plots: every task's line stays visible when the values coincide."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from mtl_train.plots import plot_run, series_style, step_figure


def write_step_csv(path: Path, rows: list[list[float]]) -> None:
    path.write_text("step,rhythm,heart_rate,denoise\n" + "".join(
        ",".join([str(step), *map(str, row)]) + "\n" for step, row in enumerate(rows, start=1)))


def test_equal_task_weights_are_three_distinguishable_lines(tmp_path: Path) -> None:
    write_step_csv(tmp_path / "weights.csv", [[1.0, 1.0, 1.0]] * 16)
    fig = step_figure(tmp_path / "weights.csv", "task weight")
    lines = fig.axes[0].get_lines()
    assert [list(line.get_ydata()) for line in lines] == [[1.0] * 16] * 3
    assert len({(line.get_linestyle(), line.get_marker(), line.get_linewidth()) for line in lines}) == 3
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["rhythm", "heart_rate", "denoise"]
    plt.close(fig)


def test_markers_of_coinciding_lines_fall_on_different_steps() -> None:
    starts = [series_style(index, 3, 16)["markevery"] for index in range(3)]
    assert starts == [(0, 3), (1, 3), (2, 3)]  # every 3rd of 16 points, each series starting one step later
    assert [series_style(index, 3, 16)["linewidth"] for index in range(3)] == [2.5, 1.75, 1.0]


def test_plot_run_writes_both_pngs_with_a_log_loss_axis(tmp_path: Path) -> None:
    write_step_csv(tmp_path / "weights.csv", [[1.0, 0.5, 2.0], [1.0, 0.6, 1.8]])
    write_step_csv(tmp_path / "losses.csv", [[1.2, 130.0, 0.03], [1.1, 120.0, 0.02]])
    assert plot_run(tmp_path) == [tmp_path / "weights.png", tmp_path / "losses.png"]
    assert (tmp_path / "weights.png").stat().st_size > 0 and (tmp_path / "losses.png").stat().st_size > 0
    assert step_figure(tmp_path / "losses.csv", "training loss", log_scale=True).axes[0].get_yscale() == "log"
    plt.close("all")
