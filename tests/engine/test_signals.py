"""SIGINT/SIGTERM before training: one message and exit 128 + the signal, no traceback, nothing to resume."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from mtl_train.cli import main
from mtl_train.engine.signals import SetupSignals, StopSignals
from mtl_train.errors import TrainingInterrupted


@pytest.mark.parametrize(("signum", "exit_code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_while_a_run_is_set_up_stops_it_at_once_as_training_interrupted(signum: int, exit_code: int) -> None:
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(TrainingInterrupted) as error:
        with SetupSignals():
            signal.raise_signal(signum)
            pytest.fail("the signal did not interrupt")
    assert error.value.exit_code == exit_code
    assert str(error.value) == (f"{signal.Signals(signum).name} received before training started; nothing to resume: "
                                "run the same command again")
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # restored


def test_during_training_the_first_signal_is_only_recorded_and_a_second_interrupts() -> None:
    with StopSignals() as signals:
        signal.raise_signal(signal.SIGTERM)
        assert signals.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)


@pytest.mark.parametrize(("signal_name", "exit_code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_the_cli_stopped_while_loading_data_prints_one_line_and_exits_128_plus_the_signal(
    signal_name: str, exit_code: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    run_dir = tmp_path / "run"
    monkeypatch.setenv("COLUMNS", "400")
    monkeypatch.setattr(sys, "argv", ["mtl-train", "debug=smoke", f"hydra.run.dir={run_dir}",
                                      "dataset._target_=signalling_dataset.SignalDuringBuild",
                                      f"+dataset.signal_name={signal_name}"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == exit_code
    stderr = capsys.readouterr().err
    assert stderr.strip() == (f"error: {signal_name} received before training started; nothing to resume: run the same "
                              "command again")
    assert sorted(path.name for path in run_dir.iterdir()) == [".hydra"]  # its config, and no run's files
