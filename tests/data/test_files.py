"""`dataset=files`: arrays from .npz / .npy / .pt files, split by files, by a split array or by seeded fractions,
normalised from train statistics only; and a set exported to a file trains exactly like the built-in path."""

from __future__ import annotations

import hashlib
import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config

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
    assert torch.equal(data.train.inputs[:, 0], torch.from_numpy(images[perm[:3].numpy()]).float())
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
    (tmp_path / "table.csv").write_text("a,b\n")
    cases = {"broken.npz": "is not a readable .npz file", "list.pt": "holds a list, not a dict of tensors",
             "objects": "x.npy (in dataset.path) is not a readable numeric .npy file",
             "table.csv": "has an unknown format (.csv); set dataset.path to an .npz file, a .pt file"}
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
