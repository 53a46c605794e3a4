"""`dataset=files`: arrays from .npz / .npy / .pt files and tables from .csv / .parquet files, split by files, by a
split array (column) or by seeded fractions, normalised from train statistics only; a set exported to a file trains
exactly like the built-in path, and a CSV table trains through the command line."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config, run_cli_in_process

from mtl_train.data import files as files_module
from mtl_train.data.base import MultiTaskData
from mtl_train.data.files import SPLITS, FilesDataset, channel_statistics, fraction_indices
from mtl_train.data.synthetic_ecg import SyntheticECG
from mtl_train.errors import ConfigError
from mtl_train.train import train
from mtl_train.utils.instantiate import instantiate

REPO = Path(__file__).resolve().parents[2]


def load_export_script():
    spec = importlib.util.spec_from_file_location("export_to_files", REPO / "scripts" / "export_to_files.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ten_rows(tmp_path: Path) -> Path:
    """An .npz of 10 rows: inputs x = [[i, 10 i]], labels y = i % 3, values v = i / 2, split s (6/2/2 rows) and a
    split b of 0s and 1s (no test rows)."""
    i = np.arange(10)
    path = tmp_path / "ten.npz"
    split = np.array(["train"] * 6 + ["val", "test", "val", "test"])
    np.savez(path, x=np.stack([i, 10 * i], axis=1).astype(np.float32), y=i % 3, v=i / 2, s=split, b=i // 5)
    return path


def test_split_array_keeps_file_order_and_converts_dtypes(tmp_path: Path) -> None:
    data = FilesDataset(path=str(ten_rows(tmp_path)), inputs="x", targets={"label": "y", "value": "v"}, split="s",
                        normalize=False).build()
    assert data.train.inputs[:, 0].tolist() == [0, 1, 2, 3, 4, 5]
    assert data.val.inputs[:, 0].tolist() == [6, 8] and data.test.inputs[:, 0].tolist() == [7, 9]
    assert data.train.targets["label"].dtype == torch.int64 and data.train.targets["label"].tolist() == [0, 1, 2,
                                                                                                          0, 1, 2]
    assert data.test.targets["value"].dtype == torch.float32 and data.test.targets["value"].tolist() == [3.5, 4.5]
    assert data.in_channels == 2 and data.spatial_size == ()  # (N, F): 2 features


def test_split_array_of_codes_0_1_2(tmp_path: Path) -> None:
    np.savez(tmp_path / "codes.npz", x=np.arange(4.0).reshape(4, 1), y=np.zeros(4, dtype=np.int8),
             s=np.array([2, 0, 1, 0], dtype=np.uint8))
    data = FilesDataset(path=str(tmp_path / "codes.npz"), inputs="x", targets={"y": "y"}, split="s",
                        normalize=False).build()
    assert [data.train.inputs.flatten().tolist(), data.val.inputs.flatten().tolist(),
            data.test.inputs.flatten().tolist()] == [[1.0, 3.0], [2.0], [0.0]]


def test_fractions_are_a_seeded_permutation(tmp_path: Path) -> None:
    path = str(ten_rows(tmp_path))

    def rows_by_split(seed: int) -> list[list[float]]:
        data = FilesDataset(path=path, inputs="x", targets={"y": "y"}, fractions=[0.6, 0.2, 0.2], seed=seed,
                            normalize=False).build()
        return [split.inputs[:, 0].tolist() for split in (data.train, data.val, data.test)]

    first = rows_by_split(0)
    assert [len(rows) for rows in first] == [6, 2, 2]
    assert sorted(sum(first, [])) == list(range(10))  # every row in exactly one split
    assert rows_by_split(0) == first and rows_by_split(1) != first
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(0)).tolist()
    assert first == [perm[:6], perm[6:8], perm[8:]]
    assert [len(i) for i in fraction_indices(10, [0.8, 0.1, 0.1], 0).values()] == [8, 1, 1]  # default fractions


def test_normalisation_uses_train_statistics_only(tmp_path: Path) -> None:
    data = FilesDataset(path=str(ten_rows(tmp_path)), inputs="x", targets={"y": "y"}, split="s").build()
    # train rows 0..5: feature 0 has mean 2.5 and population std sqrt(35/12); feature 1 ten times both
    std = (35 / 12) ** 0.5
    stats = data.sources["normalization"]
    assert stats["mean"] == pytest.approx([2.5, 25.0]) and stats["std"] == pytest.approx([std, 10 * std])
    assert data.train.inputs.mean(0).abs().max() < 1e-6
    assert data.val.inputs[:, 0].tolist() == pytest.approx([(6 - 2.5) / std, (8 - 2.5) / std])
    assert data.test.inputs[:, 1].tolist() == pytest.approx([(70 - 25) / (10 * std), (90 - 25) / (10 * std)])


def test_channel_statistics_per_channel_over_rows_and_positions() -> None:
    inputs = torch.tensor([[[0.0, 2.0], [5.0, 5.0]], [[4.0, 6.0], [5.0, 5.0]]])  # (N=2, C=2, L=2)
    mean, std = channel_statistics(inputs)
    assert mean.tolist() == [3.0, 5.0]
    # channel 0 holds 0, 2, 4, 6; channel 1 is constant, so its std is 1 and it is only shifted
    assert std.tolist() == pytest.approx([5**0.5, 1.0])


def test_npy_folder_is_memory_mapped_and_channel_axis_added(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "arrays"
    folder.mkdir()
    images = np.arange(5 * 3 * 4, dtype=np.uint8).reshape(5, 3, 4)
    np.save(folder / "images.npy", images)
    np.save(folder / "labels.npy", np.array([0, 1, 0, 1, 1]))
    np.save(folder / "unused.npy", np.zeros(2))
    mmap_modes = []
    real_load = np.load

    def recording_load(*args, **kwargs):
        mmap_modes.append(kwargs.get("mmap_mode"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(files_module.np, "load", recording_load)
    data = FilesDataset(path=str(folder), inputs="images", targets={"label": "labels"}, fractions=[0.6, 0.2, 0.2],
                        add_channel_axis=True, normalize=False).build()
    assert set(mmap_modes) == {"r"}
    assert data.in_channels == 1 and data.spatial_size == (3, 4)
    perm = torch.randperm(5, generator=torch.Generator().manual_seed(0))
    assert data.train.inputs.dtype == torch.uint8 and data.train.input_rows.tolist() == perm[:3].tolist()  # on disk
    assert torch.equal(data.train.head(None).inputs[:, 0], torch.from_numpy(images[perm[:3].numpy()]).float())
    recorded = [record["path"] for record in data.sources["files"]]
    assert recorded == [str(folder / "images.npy"), str(folder / "labels.npy")]  # the files read, not unused.npy


def test_pt_dict_with_one_file_per_split(tmp_path: Path) -> None:
    for name, start in (("train", 0), ("val", 10), ("test", 20)):
        inputs = torch.arange(start, start + 4, dtype=torch.float64).view(4, 1, 1, 1).expand(4, 2, 2, 2)
        torch.save({"x": inputs.clone(), "mask": torch.zeros(4, 2, 2, dtype=torch.int32)}, tmp_path / f"{name}.pt")
    data = FilesDataset(train=str(tmp_path / "train.pt"), val=str(tmp_path / "val.pt"), test=str(tmp_path / "test.pt"),
                        inputs="x", targets={"mask": "mask"}).build()
    assert data.in_channels == 2 and data.spatial_size == (2, 2)
    assert data.sources["normalization"]["mean"] == [1.5, 1.5]  # the train file's rows 0..3 only
    assert data.val.inputs[:, 0, 0, 0].tolist() == pytest.approx([(v - 1.5) / 1.25**0.5 for v in range(10, 14)])
    assert data.test.targets["mask"].dtype == torch.int64
    record = data.sources["files"][0]
    assert record["sha256"] == hashlib.sha256((tmp_path / "train.pt").read_bytes()).hexdigest()


@pytest.mark.parametrize(("settings", "message"), [
    ({"path": "{tmp}/nowhere.npz"}, "dataset.path={tmp}/nowhere.npz does not exist"),
    ({"inputs": "images"}, "dataset.inputs='images' is not an array in {tmp}/ten.npz (dataset.path); it holds: b, s, "
                           "v, x, y; set dataset.inputs to one of them"),
    ({"targets": {"label": "z"}}, "dataset.targets.label='z' is not an array"),
    ({"split": None, "fractions": [0.5, 0.2, 0.2]}, "dataset.fractions=[0.5, 0.2, 0.2] must be three numbers >= 0"),
    ({"split": None, "fractions": [0.9, 0.1, 0.0]}, "leaves the test split empty"),
    ({"split": "b"}, "dataset.split='b' in {tmp}/ten.npz has no test rows"),
    ({"split": "v"}, "dataset.split='v' in {tmp}/ten.npz has dtype float64"),
    ({"fractions": [0.8, 0.1, 0.1]}, "dataset.split and dataset.fractions are both set"),
    ({"path": None}, "dataset.path is not set"),
    ({"train": "{tmp}/ten.npz"}, "dataset.path and dataset.train are both set"),
    ({"targets": {}}, "dataset.targets is empty"),
    ({"targets": {"label": "s"}}, "dataset.targets.label='s' in {tmp}/ten.npz has dtype <U5; a target must be"),
])
def test_bad_settings_name_the_key_and_the_fix(settings: dict, message: str, tmp_path: Path) -> None:
    path = ten_rows(tmp_path)
    kwargs = {"path": str(path), "inputs": "x", "targets": {"label": "y"}, "split": "s"}
    kwargs.update({key: value.replace("{tmp}", str(tmp_path)) if isinstance(value, str) else value
                   for key, value in settings.items()})
    with pytest.raises(ConfigError) as error:
        FilesDataset(**kwargs).build()
    assert message.replace("{tmp}", str(tmp_path)) in str(error.value)


def test_bad_arrays_name_the_array_and_the_fix(tmp_path: Path) -> None:
    x = np.ones((4, 2), dtype=np.float32)
    x[2, 1] = np.nan
    np.savez(tmp_path / "bad.npz", x=x, ok=np.zeros(4, dtype=np.int64))

    def build(inputs: str, target: str) -> None:
        FilesDataset(path=str(tmp_path / "bad.npz"), inputs=inputs, targets={"t": target},
                     fractions=[0.5, 0.25, 0.25]).build()

    with pytest.raises(ConfigError, match=r"dataset.inputs='x' in .*bad.npz holds NaN or infinite values \(1 in the "
                                          r"\w+ split, the first in row 2\); remove or impute them"):
        build("x", "ok")
    np.savez(tmp_path / "bad.npz", x=np.ones((4, 2)), short=np.zeros(3, dtype=np.int64), words=np.array(["a"] * 4))
    with pytest.raises(ConfigError, match=r"dataset.targets.t='short' .* has 3 rows, dataset.inputs='x' .* has 4; "
                                          "every target needs one row per input row"):
        build("x", "short")
    with pytest.raises(ConfigError, match=r"dataset.inputs='words' .* has dtype <U1; inputs must be a numeric"):
        build("words", "short")


def test_unreadable_files_name_the_file_and_the_format(tmp_path: Path) -> None:
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not a zip")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    (tmp_path / "objects").mkdir()
    np.save(tmp_path / "objects" / "x.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "table.txt").write_text("a,b\n")
    (tmp_path / "latin1.csv").write_bytes("x,y\n1,caf\xe9\n".encode("latin-1"))
    cases = {"broken.npz": "is not a readable .npz file", "list.pt": "holds a list, not a dict of tensors",
             "objects": "x.npy (in dataset.path) is not a readable numeric .npy file",
             "table.txt": "has an unknown format (.txt); set dataset.path to an .npz file, a .pt file (a dict of "
                          "tensors), a folder of .npy files or a table (.csv, .csv.gz, .parquet)",
             "latin1.csv": "is not a readable CSV file ('utf-8' codec can't decode"}
    for name, message in cases.items():
        with pytest.raises(ConfigError, match=re.escape(message)):
            FilesDataset(path=str(tmp_path / name), inputs="x", targets={"y": "y"}).build()


def test_yaml_defaults_construct_and_name_every_argument() -> None:
    cfg = compose_config(["dataset=files"])
    assert isinstance(FilesDataset(**{k: v for k, v in cfg.dataset.items() if k != "_target_"}), FilesDataset)


ECG_SIZES = ["dataset.num_train=16", "dataset.num_val=8", "dataset.num_test=8", "dataset.sample_rate=100",
             "dataset.duration_s=4.0"]
FILES_OVERRIDES = ["dataset=files", "dataset.split=split", "dataset.normalize=false",
                   "dataset.targets={rhythm: rhythm, clean: clean}"]


def export_small_ecg(path: Path) -> MultiTaskData:
    """A small synthetic ECG, built as a run builds it, exported to ``path`` by scripts/export_to_files.py."""
    node = compose_config(ECG_SIZES).dataset
    data = SyntheticECG(**{key: value for key, value in node.items() if key != "_target_"}).build()
    load_export_script().export_npz(data, ["clean", "rhythm"], path)
    return data


def test_exported_synthetic_ecg_reads_back_as_the_same_tensors(tmp_path: Path) -> None:
    built_in = export_small_ecg(tmp_path / "ecg.npz")
    node = compose_config([*FILES_OVERRIDES, f"dataset.path={tmp_path / 'ecg.npz'}"]).dataset
    from_files = instantiate(node, "dataset").build()
    for split in SPLITS:
        expected, got = getattr(built_in, split), getattr(from_files, split)
        assert torch.equal(got.inputs, expected.inputs)
        for name in ("clean", "rhythm"):
            assert got.targets[name].dtype == expected.targets[name].dtype
            assert torch.equal(got.targets[name], expected.targets[name])


@pytest.mark.slow
def test_exported_synthetic_ecg_trains_exactly_like_the_built_in_path(tmp_path: Path) -> None:
    """Issue 14's "Done when": the same seed gives the same metrics through `dataset=files` as through the
    built-in synthetic ECG."""
    export_small_ecg(tmp_path / "ecg.npz")
    run = ["trainer.max_steps=2", "trainer.batch_size=8", "trainer.device=cpu", "trainer.plots=false",
           "trainer.progress=none", "seed=3"]
    expected = train(compose_config([*ECG_SIZES, *run], tmp_path / "built_in"))
    got = train(compose_config([*FILES_OVERRIDES, f"dataset.path={tmp_path / 'ecg.npz'}", *run], tmp_path / "files"))
    assert got["final"] == expected["final"] and got["best"] == expected["best"]
    assert got["final"]["test"]["denoise"]["mse"] > 0
    assert got["data_sources"]["files"][0]["path"] == str(tmp_path / "ecg.npz")


# Tables: .csv, .csv.gz and .parquet.

PATIENTS = """age,bmi,bp,label,value,split
30,22.5,120,0,1.5,train
 40,"27.0",130,1,,train

50,31.5,140,2,3.25,val
60,24,125,1,-0.5,test
"""
"""A hand-written CSV: a blank line (skipped), a quoted cell, a leading space, and an empty float cell (NaN)."""


def write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def patients(path: str, **settings) -> MultiTaskData:
    """The PATIENTS table (or one like it) at ``path``, read with ``settings`` over the defaults below."""
    kwargs = {"path": path, "inputs": ["age", "bmi", "bp"], "targets": {"label": "label", "value": "value"},
              "split": "split", "normalize": False, **settings}
    return FilesDataset(**kwargs).build()


def test_csv_reads_back_the_exact_values(tmp_path: Path) -> None:
    data = patients(str(write_text(tmp_path / "patients.csv", PATIENTS)))
    assert data.train.inputs.tolist() == [[30.0, 22.5, 120.0], [40.0, 27.0, 130.0]]
    assert data.val.inputs.tolist() == [[50.0, 31.5, 140.0]] and data.test.inputs.tolist() == [[60.0, 24.0, 125.0]]
    assert data.train.inputs.dtype == torch.float32 and data.in_channels == 3 and data.spatial_size == ()
    labels = [getattr(data, split).targets["label"] for split in SPLITS]
    assert [t.tolist() for t in labels] == [[0, 1], [2], [1]] and labels[0].dtype == torch.int64
    values = data.train.targets["value"]
    assert values.dtype == torch.float32 and values[0] == 1.5 and math.isnan(values[1])  # the empty cell
    assert data.test.targets["value"].tolist() == [-0.5]
    assert data.sources["input_columns"] == ["age", "bmi", "bp"]


def test_pattern_inputs_match_in_file_order_without_the_target_and_split(tmp_path: Path) -> None:
    path = write_text(tmp_path / "f.csv", "f2,x,f1,f_y,s\n1,9,2,0,0\n3,9,4,1,1\n5,9,6,0,2\n")
    data = FilesDataset(path=str(path), inputs="f*", targets={"y": "f_y"}, split="s", normalize=False).build()
    assert data.sources["input_columns"] == ["f2", "f1"]  # file order; f_y is the target
    assert [getattr(data, split).inputs.tolist() for split in SPLITS] == [[[1.0, 2.0]], [[3.0, 4.0]], [[5.0, 6.0]]]
    assert data.val.targets["y"].tolist() == [1]
    single = FilesDataset(path=str(path), inputs="x", targets={"y": "f_y"}, split="s", normalize=False).build()
    assert single.train.inputs.tolist() == [[9.0]]  # a plain name is a pattern matching one column


def test_csv_normalisation_checksum_and_num_train_work_as_for_arrays(tmp_path: Path) -> None:
    rows = [f"{i},{10 * i},{i % 3},{'train' if i < 6 else 'val' if i % 2 == 0 else 'test'}" for i in range(10)]
    path = write_text(tmp_path / "ten.csv", "a,b,y,s\n" + "\n".join(rows) + "\n")
    data = FilesDataset(path=str(path), inputs=["a", "b"], targets={"y": "y"}, split="s").build()
    std = (35 / 12) ** 0.5  # as for the .npz of test_normalisation_uses_train_statistics_only: train rows 0..5
    assert data.sources["normalization"]["mean"] == pytest.approx([2.5, 25.0])
    assert data.sources["normalization"]["std"] == pytest.approx([std, 10 * std])
    assert data.val.inputs[:, 0].tolist() == pytest.approx([(6 - 2.5) / std, (8 - 2.5) / std])
    assert data.sources["files"] == [{"path": str(path), "bytes": path.stat().st_size,
                                      "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}]
    first = FilesDataset(path=str(path), inputs=["a", "b"], targets={"y": "y"}, split="s", normalize=False,
                         num_train=2).build()
    assert first.train.inputs[:, 0].tolist() == [0.0, 1.0] and len(first.val) == 2


def test_split_files_may_be_gzipped_and_order_their_columns_differently(tmp_path: Path) -> None:
    with gzip.open(tmp_path / "train.csv.gz", "wt") as file:
        file.write("a,b,y\n1,2,0\n3,4,1\n")
    write_text(tmp_path / "val.csv", "y,b,a\n1,6,5\n")
    write_text(tmp_path / "test.csv", "b,a,y\n8,7,0\n")
    data = FilesDataset(train=str(tmp_path / "train.csv.gz"), val=str(tmp_path / "val.csv"),
                        test=str(tmp_path / "test.csv"), inputs=["a", "b"], targets={"y": "y"},
                        normalize=False).build()
    assert [getattr(data, split).inputs.tolist() for split in SPLITS] == [[[1, 2], [3, 4]], [[5, 6]], [[7, 8]]]
    with pytest.raises(ConfigError, match=r"dataset.inputs='\*' gives the columns \['a', 'b'\] in .*train.csv.gz but "
                                          r"\['b', 'a'\] in .*val.csv; give every split's file the same input"):
        FilesDataset(train=str(tmp_path / "train.csv.gz"), val=str(tmp_path / "val.csv"),
                     test=str(tmp_path / "test.csv"), inputs="*", targets={"y": "y"}).build()


@pytest.mark.parametrize(("replace", "settings", "message"), [
    (None, {"targets": {"label": "lable"}}, "dataset.targets.label='lable' is not a column of {path} (dataset.path); "
                                            "did you mean 'label'? its columns: age, bmi, bp, label, value, split; "
                                            "set dataset.targets.label to one of them"),
    (None, {"inputs": ["age", "weight"]}, "dataset.inputs='weight' is not a column of {path}"),
    (None, {"split": "fold"}, "dataset.split='fold' is not a column of {path}"),
    (None, {"inputs": "x*"}, "dataset.inputs='x*' matches no column of {path} (dataset.path); its columns: age, bmi"),
    (None, {"inputs": "lab*"}, "dataset.inputs='lab*' matches no column of {path} (dataset.path) but target or split "
                               "columns, which are left out"),
    (None, {"inputs": ["age", "label"]}, "dataset.inputs lists 'label', the column of dataset.targets.label; a target "
                                         "among the inputs gives its answer away"),
    (None, {"inputs": []}, "dataset.inputs=[] must name each input column once"),
    (("22.5", "abc"), {}, "column 'bmi' of {path} (dataset.inputs) holds 'abc' in row 0 (line 2), not a number"),
    (("3.25", "n/a"), {}, "column 'value' of {path} (dataset.targets.value) holds 'n/a' in row 2 (line 4), not a "
                          "number; an input or target column holds numbers only (an empty cell for a missing"),
    (("31.5", ""), {}, "column 'bmi' of {path} (dataset.inputs) is empty, NaN or infinite in 1 of 4 rows, the first "
                       "row 2 (line 4); fill them in (impute) or remove those rows"),
    (("31.5", "nan"), {}, "column 'bmi' of {path} (dataset.inputs) is empty, NaN or infinite in 1 of 4 rows"),
    ((",2,", ",,"), {}, "column 'label' of {path} (dataset.targets.label) holds class labels (whole numbers) but is "
                        "empty in row 2 (line 4); write -1 in its empty cells and set task.<t>.missing_label=-1"),
    ((",val\n", ",\n"), {}, "column 'split' of {path} (dataset.split) is empty in row 2 (line 4); every row needs "
                        "train/val/test or 0/1/2"),
    ((",val\n", ",valid\n"), {}, "dataset.split='split' in {path} holds valid; its values must be train/val/test"),
    (("120,0", "120"), {}, "line 2 of {path} (dataset.path) has 5 cells, its header 6; give every line one cell per"),
    (("age,bmi,bp,label,value,split", "age;bmi;bp;label;value;split"), {},
     "{path} has one column, 'age;bmi;bp;label;value;split'; separate the columns with commas"),
    (("label,value", "label,bp"), {}, "{path} has more than one column named 'bp'; give every column its own name"),
])
def test_bad_tables_name_the_file_column_and_fix(replace: tuple[str, str] | None, settings: dict, message: str,
                                                 tmp_path: Path) -> None:
    text = PATIENTS.replace(" 40", "40").replace("\n\n", "\n")  # lines 2..5 hold rows 0..3
    path = write_text(tmp_path / "patients.csv", text.replace(*replace, 1) if replace else text)
    with pytest.raises(ConfigError) as error:
        patients(str(path), **settings)
    assert message.format(path=path) in str(error.value)


def test_empty_and_list_mismatches_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"empty.csv is empty; its first line must name the columns"):
        FilesDataset(path=str(write_text(tmp_path / "empty.csv", "")), targets={"y": "y"}).build()
    with pytest.raises(ConfigError, match=r"dataset.fractions=\[0.8, 0.1, 0.1\] of 0 rows leaves the train split"):
        FilesDataset(path=str(write_text(tmp_path / "header.csv", "x,y\n")), inputs="x", targets={"y": "y"}).build()
    with pytest.raises(ConfigError, match=r"dataset.inputs=\['x'\] is a list of columns, which only a table \(.csv, "
                                          r".parquet\) has; .*ten.npz holds arrays"):
        FilesDataset(path=str(ten_rows(tmp_path)), inputs=["x"], targets={"y": "y"}).build()


def test_parquet_reads_like_the_csv(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    parquet = pytest.importorskip("pyarrow.parquet")
    table = pa.table({"age": pa.array([30, 40, 50, 60], pa.int32()), "bmi": [22.5, 27.0, 31.5, 24.0],
                      "bp": [120.0, 130.0, 140.0, 125.0], "label": pa.array([0, 1, 2, 1], pa.uint8()),
                      "value": [1.5, None, 3.25, -0.5],
                      "split": pa.array(["train", "train", "val", "test"]).dictionary_encode()})
    parquet.write_table(table, tmp_path / "patients.parquet")
    from_csv = patients(str(write_text(tmp_path / "patients.csv", PATIENTS)))
    from_parquet = patients(str(tmp_path / "patients.parquet"))
    for split in SPLITS:
        expected, got = getattr(from_csv, split), getattr(from_parquet, split)
        assert torch.equal(got.inputs, expected.inputs) and torch.equal(got.targets["label"], expected.targets["label"])
        torch.testing.assert_close(got.targets["value"], expected.targets["value"], rtol=0, atol=0, equal_nan=True)
    assert math.isnan(from_parquet.train.targets["value"][1])  # the null
    parquet.write_table(table.set_column(3, "label", pa.array([0, None, 2, 1])), tmp_path / "nulls.parquet")
    with pytest.raises(ConfigError, match=r"column 'label' of .*nulls.parquet \(dataset.targets.label\) holds class "
                                          r"labels \(whole numbers\) but is empty in row 1; write -1"):
        patients(str(tmp_path / "nulls.parquet"))
    parquet.write_table(table.append_column("day", pa.array([0, 1, 2, 3], pa.date32())), tmp_path / "dates.parquet")
    with pytest.raises(ConfigError, match=r"column 'day' of .*dates.parquet \(dataset.inputs\) holds "
                                          r"datetime.date\(1970, 1, 1\) in row 0, not a number"):
        patients(str(tmp_path / "dates.parquet"), inputs=["age", "day"])
    (tmp_path / "broken.parquet").write_text("age,bmi\n")
    with pytest.raises(ConfigError, match=r"broken.parquet is not a readable Parquet file \(.*\); write it with"):
        patients(str(tmp_path / "broken.parquet"))


def test_parquet_without_pyarrow_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` raises ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    path = write_text(tmp_path / "patients.parquet", "")
    with pytest.raises(ConfigError) as error:
        patients(str(path))
    assert str(error.value) == f"reading {path} needs pyarrow: pip install 'mtl-train[tables]'"


def test_csv_trains_through_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tiny tabular problem: a class of two features' sum, and a regression value of a third with every tenth
    value missing (an empty cell, masked by missing_label=nan), through `mtl-train dataset=files` and an MLP."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3))
    label, value = (x[:, 0] + x[:, 1] > 0).astype(int), 2 * x[:, 2] - x[:, 0]
    lines = [f"{a:.4f},{b:.4f},{c:.4f},{y},{'' if i % 10 == 3 else f'{v:.4f}'}"
             for i, ((a, b, c), y, v) in enumerate(zip(x, label, value))]
    path = write_text(tmp_path / "tab.csv", "f0,f1,f2,label,value\n" + "\n".join(lines) + "\n")
    code = run_cli_in_process([
        "task=ecg_full", "~task.waves", "~task.denoise", "backbone=mlp", "dataset=files", f"dataset.path={path}",
        "dataset.inputs=f*", "dataset.targets={rhythm: label, heart_rate: value}", "task.rhythm.num_outputs=2",
        "task.heart_rate.offset=0", "task.heart_rate.scale=1", "+task.heart_rate.missing_label=nan",
        "trainer.max_epochs=5", "trainer.device=cpu", "trainer.plots=false", "trainer.progress=none",
        f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch)
    assert code == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 5 * math.ceil(240 / 64)  # fractions 0.8/0.1/0.1 of 300 rows, batch 64
    assert summary["data_sources"]["input_columns"] == ["f0", "f1", "f2"]
    test = summary["final"]["test"]
    assert test["rhythm"]["accuracy"] * 30 == pytest.approx(round(test["rhythm"]["accuracy"] * 30))  # of 30 rows
    assert test["rhythm"]["accuracy"] > 0.8  # chance is about 0.5
    assert 0 < test["heart_rate"]["rmse"] < 0.75 * value.std()  # better than predicting the mean
