"""The generated parts of `mtl-train --help` (the whole text, through the CLI, is in tests/test_cli.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtl_train.help import commented_keys, entry, groups_help, help_part, types_help
from mtl_train.task_types import TASK_TYPES


def test_commented_keys_reads_defaults_and_comments_and_joins_continued_comments(tmp_path: Path) -> None:
    path = tmp_path / "trainer.yaml"
    path.write_text(
        "# a header comment\n"
        "defaults:\n"
        "  - x: y              # a list entry, not a key\n"
        "device: auto          # auto | cpu\n"
        "batch_size: 64\n"
        "selection: final      # final | best_val\n"
        "                      #   (best_val: the best one)\n"
        "output_dir: ${hydra:runtime.output_dir}   # every file\n"
    )
    assert commented_keys(path) == [
        ("device", "auto", "auto | cpu"),
        ("batch_size", "64", ""),
        ("selection", "final", "final | best_val (best_val: the best one)"),
        ("output_dir", "${hydra:runtime.output_dir}", "every file"),
    ]


def test_entry_puts_the_text_in_a_column_and_wraps_it_at_80() -> None:
    text = "mixed precision: none | bf16 (CPU or CUDA) | fp16 (CUDA, with loss scaling) [default:\u00a0none]"
    assert entry("trainer.amp", text).splitlines() == [
        "  trainer.amp             mixed precision: none | bf16 (CPU or CUDA) | fp16",
        "                          (CUDA, with loss scaling) [default: none]",
    ]
    assert entry("a.very_long_key_name_indeed", "x").splitlines() == [
        "  a.very_long_key_name_indeed",
        "                          x",
    ]


def test_groups_list_each_folders_options_with_the_default_marked(tmp_path: Path) -> None:
    for group, options in (("optimizer", ["sgd", "adam"]), ("hydra", ["default"]), ("debug", ["smoke"])):
        (tmp_path / group).mkdir()
        for option in options:
            (tmp_path / group / f"{option}.yaml").write_text("{}\n")
    (tmp_path / "train.yaml").write_text("defaults:\n  - optimizer: adam\n  - debug: null\n  - _self_\n")
    assert groups_help(tmp_path) == ("  debug                   smoke\n"
                                     "  optimizer               adam (default), sgd")


def test_help_parts_double_the_dollar_for_hydras_template(tmp_path: Path) -> None:
    (tmp_path / "trainer").mkdir()
    (tmp_path / "train.yaml").write_text("defaults:\n  - _self_\noutput_dir: ${hydra:runtime.output_dir}  # here\n")
    (tmp_path / "trainer" / "default.yaml").write_text("seed: 0  # the seed\n")
    assert help_part(tmp_path, "keys") == (
        "  output_dir              here [default: $${hydra:runtime.output_dir}]\n"
        "  trainer.seed            the seed [default: 0]")
    with pytest.raises(ValueError, match="unknown part 'nope'; use one of groups, keys"):
        help_part(tmp_path, "nope")


def test_help_lists_every_task_type_with_its_head_loss_and_metric() -> None:
    text = types_help()
    assert all(len(line) <= 80 for line in text.splitlines())
    flat = " ".join(text.split())
    for name, kind in TASK_TYPES.items():
        assert f"{name} {kind.target_text()}: heads={kind.head}, loss={kind.loss}" in flat
    assert "binary 0/1 labels (N,): heads=binary, loss=bce, BinaryMetrics" in flat
