"""A run never replaces another run's files by accident; a run that fails before training leaves them as they were.

The CLI runs in-process (``mtl_train.cli.main`` with ``sys.argv`` set), Hydra included: Hydra writes its record of
a run before mtl-train's code starts, so only the real command shows whether an earlier run's ``.hydra/`` survives.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import run_cli_in_process

from mtl_train.errors import ConfigError
from mtl_train.run_dir import PENDING_RECORD, RunDirectory, continues_run_in, previous_run_files

SMOKE = ["debug=smoke", "dataset.num_val=16", "trainer.plots=false", "trainer.progress=none"]


def snapshot(run_dir: Path) -> dict[str, tuple[bytes, int] | None]:
    """Every path under ``run_dir``: a file's bytes and modification time (ns), None for a folder."""
    return {str(path.relative_to(run_dir)): (path.read_bytes(), path.stat().st_mtime_ns) if path.is_file() else None
            for path in sorted(run_dir.rglob("*"))}


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-step run, trained through the CLI (tests work on copies of it)."""
    run_dir = tmp_path_factory.mktemp("earlier") / "run"
    with pytest.MonkeyPatch.context() as patch:
        assert run_cli_in_process([*SMOKE, f"hydra.run.dir={run_dir}"], patch) == 0
    return run_dir


@pytest.fixture
def run_dir(earlier_run: Path, tmp_path: Path) -> Path:
    """A copy of :func:`earlier_run` for one test to try to damage."""
    copy = tmp_path / "run"
    shutil.copytree(earlier_run, copy)
    return copy


# --- RunDirectory ---------------------------------------------------------------------------------------------


def test_only_the_files_of_a_run_that_trained_mark_an_earlier_run(tmp_path: Path) -> None:
    (tmp_path / ".hydra").mkdir()  # the record of a run that failed before training
    (tmp_path / "cli.log").touch()
    assert previous_run_files(tmp_path) == []
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "losses.csv").touch()
    assert previous_run_files(tmp_path) == ["losses.csv", "checkpoints"]


def test_resume_continues_this_run_when_it_names_this_directory_or_a_file_in_it(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert continues_run_in(True, run)
    assert continues_run_in(str(run), run) and continues_run_in(str(run / "checkpoints" / "last.pt"), run)
    assert not continues_run_in(False, run) and not continues_run_in(None, run)
    assert not continues_run_in(str(tmp_path / "other"), run) and not continues_run_in(str(tmp_path), run)


def test_check_refuses_an_earlier_run_unless_resumed_or_overwritten(tmp_path: Path) -> None:
    RunDirectory(tmp_path).check(resume=False, overwrite=False)  # empty: fine
    (tmp_path / "summary.json").write_text("{}")
    directory = RunDirectory(tmp_path)
    with pytest.raises(ConfigError, match=r"already holds a run \(summary.json\); continue it with "
                                          r"trainer.resume=true, replace it with trainer.overwrite=true"):
        directory.check(resume=False, overwrite=False)
    with pytest.raises(ConfigError, match="already holds a run"):
        directory.check(resume=str(tmp_path.parent / "elsewhere"), overwrite=False)
    directory.check(resume=True, overwrite=False)
    directory.check(resume=False, overwrite=True)
    with pytest.raises(ConfigError, match="trainer.overwrite must be true or false, got 'yes'"):
        directory.check(resume=False, overwrite="yes")


def write_pending_record(run_dir: Path, overrides: str) -> None:
    (run_dir / PENDING_RECORD).mkdir(parents=True)
    (run_dir / PENDING_RECORD / "overrides.yaml").write_text(overrides)


def test_the_pending_record_becomes_hydras_once_training_starts(tmp_path: Path) -> None:
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- old\n")
    (tmp_path / "losses.csv").touch()
    write_pending_record(tmp_path, "- new\n")
    directory = RunDirectory(tmp_path)
    directory.start_training()
    directory.close()
    assert (tmp_path / ".hydra" / "overrides.yaml").read_text() == "- new\n"
    assert not (tmp_path / PENDING_RECORD).exists()


@pytest.mark.parametrize(("earlier_run_there", "kept"), [(True, "- old\n"), (False, "- new\n")])
def test_a_run_that_never_trained_keeps_an_earlier_runs_record_else_its_own(tmp_path: Path, earlier_run_there: bool,
                                                                           kept: str) -> None:
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- old\n")
    if earlier_run_there:
        (tmp_path / "summary.json").write_text("{}")
    write_pending_record(tmp_path, "- new\n")
    RunDirectory(tmp_path).close()
    assert (tmp_path / ".hydra" / "overrides.yaml").read_text() == kept
    assert not (tmp_path / PENDING_RECORD).exists()


def test_overwrite_deletes_the_earlier_run_once_not_what_the_first_single_task_model_wrote(tmp_path: Path) -> None:
    """stl=true starts training once per task: the second start must not delete the first task's new stl/ run."""
    (tmp_path / "stl" / "old").mkdir(parents=True)
    directory = RunDirectory(tmp_path)
    directory.check(resume=False, overwrite=True)
    directory.start_training()
    assert not (tmp_path / "stl").exists()
    (tmp_path / "stl" / "a").mkdir(parents=True)
    (tmp_path / "stl" / "a" / "summary.json").write_text("{}")
    directory.start_training()
    assert (tmp_path / "stl" / "a" / "summary.json").read_text() == "{}"


@pytest.mark.parametrize("earlier_run_there", [False, True])
def test_the_log_follows_the_record_or_stops_with_it(tmp_path: Path, earlier_run_there: bool) -> None:
    """Hydra's file handler (opened lazily) writes into the pending record; after the record moves (or is deleted),
    a message must land in .hydra/cli.log (or nowhere), not fail on the vanished folder nor recreate it."""
    write_pending_record(tmp_path, "- new\n")
    if earlier_run_there:
        (tmp_path / "summary.json").write_text("{}")
    handler = logging.FileHandler(tmp_path / PENDING_RECORD / "cli.log", delay=True)
    log = logging.getLogger("mtl_train.test_run_dir")
    log.addHandler(handler)
    try:
        directory = RunDirectory(tmp_path)
        if not earlier_run_there:
            directory.start_training()
        directory.close()
        log.warning("after the move")
    finally:
        log.removeHandler(handler)
        handler.close()
    assert not (tmp_path / PENDING_RECORD).exists()
    if earlier_run_there:
        assert not (tmp_path / ".hydra" / "cli.log").exists()
    else:
        assert (tmp_path / ".hydra" / "cli.log").read_text() == "after the move\n"


def test_a_torchrun_rank_other_than_0_never_moves_the_record_and_deletes_a_refused_one(tmp_path: Path) -> None:
    fresh, earlier = tmp_path / "fresh", tmp_path / "earlier"
    write_pending_record(fresh, "- new\n")
    write_pending_record(earlier, "- new\n")
    (earlier / "summary.json").write_text("{}")
    directory = RunDirectory(fresh, is_main=False)
    directory.start_training()
    directory.close()
    RunDirectory(earlier, is_main=False).close()
    assert (fresh / PENDING_RECORD / "overrides.yaml").is_file() and not (fresh / ".hydra").exists()  # rank 0 moves it
    assert not (earlier / PENDING_RECORD).exists()


# --- through the CLI --------------------------------------------------------------------------------------------


def test_a_second_run_into_the_same_directory_is_refused_and_changes_nothing(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    before = snapshot(run_dir)
    assert ".hydra/config.yaml" in before and ".hydra/overrides.yaml" in before and "checkpoints/last.pt" in before
    assert run_cli_in_process([*SMOKE, "weighting=uw", f"hydra.run.dir={run_dir}"], monkeypatch) == 1
    stderr = capsys.readouterr().err
    assert error_lines(stderr) == [
        f"error: hydra.run.dir={run_dir} already holds a run (summary.json, metrics.jsonl, losses.csv, weights.csv, "
        "checkpoints); continue it with trainer.resume=true, replace it with trainer.overwrite=true, or choose another "
        "hydra.run.dir"]
    assert "Traceback" not in stderr
    assert snapshot(run_dir) == before


@pytest.mark.parametrize(("damage", "overrides", "message"), [
    ("corrupt checkpoint", [], "trainer.resume: cannot resume from"),
    (None, ["backbone.channels=[8,8,8,8]"], "the checkpoint does not fit this run's model"),
    (None, ["dataset._target_=signalling_dataset.SignalDuringBuild"], "SIGINT received before training started"),
], ids=["corrupt checkpoint", "checkpoint of another model", "Ctrl-C while the data loads"])
def test_a_resume_that_fails_before_training_leaves_every_file_as_it_was(
    run_dir: Path, damage: str | None, overrides: list[str], message: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture
) -> None:
    if damage == "corrupt checkpoint":
        (run_dir / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    before = snapshot(run_dir)
    status = run_cli_in_process([*SMOKE, "weighting=uw", "seed=3", *overrides, "trainer.resume=true", f"hydra.run.dir={run_dir}"],
                     monkeypatch)
    stderr = capsys.readouterr().err
    assert status != 0 and len(error_lines(stderr)) == 1 and message in stderr and "Traceback" not in stderr
    assert snapshot(run_dir) == before


def test_overwrite_replaces_the_earlier_run_and_deletes_what_it_does_not_write(run_dir: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    overrides = [*SMOKE, "weighting=uw", "trainer.checkpoint=false", "trainer.overwrite=true"]
    assert run_cli_in_process([*overrides, f"hydra.run.dir={run_dir}"], monkeypatch) == 0
    assert yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text()) == overrides
    assert '"weighting": "UncertaintyWeighting"' in (run_dir / "summary.json").read_text()
    assert not (run_dir / "checkpoints").exists()  # the earlier run's checkpoint would not fit these rows
    assert not (run_dir / PENDING_RECORD).exists()


def test_a_run_that_fails_in_a_fresh_directory_leaves_its_config_for_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    assert run_cli_in_process([*SMOKE, "trainer.batch_size=0", f"hydra.run.dir={run_dir}"], monkeypatch) == 1
    assert (run_dir / ".hydra" / "config.yaml").is_file() and not (run_dir / PENDING_RECORD).exists()
    assert previous_run_files(run_dir) == []  # so the same command, fixed, may run there


@pytest.mark.parametrize("key", ["hydra.run.dir", "hydra.sweep.dir"])
def test_an_output_directory_under_a_file_is_one_clear_error(
    key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "file").write_text("")
    sweep = ["-m"] if key == "hydra.sweep.dir" else []
    assert run_cli_in_process([*sweep, *SMOKE, f"{key}={tmp_path / 'file' / 'run'}"], monkeypatch) == 1
    stderr = capsys.readouterr().err
    assert error_lines(stderr) == [
        f"error: {key}={tmp_path / 'file' / 'run'} cannot be created (Not a directory); set {key} to a writable "
        f"directory, e.g. {key}={'multirun/my_sweep' if sweep else 'outputs/my_run'}"]
    assert "Traceback" not in stderr
