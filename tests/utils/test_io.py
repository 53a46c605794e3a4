"""Crash-safe writes keep the previous file on failure and give the new one ordinary permissions."""

import os
import stat

import pytest

from mtl_train.utils.io import atomic_write, write_json


def test_a_written_file_has_the_permissions_of_a_new_file(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "summary.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "summary.json").stat().st_mode) == 0o644


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text("old")

    def fail(file):
        file.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, fail)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
