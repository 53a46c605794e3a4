"""MNIST-family datasets, on tiny IDX files written here (never the real data or the network, except the
one ``slow`` test, which reads the Debian Fashion-MNIST package when it is installed)."""

from __future__ import annotations

import gzip
import hashlib
import logging
import struct
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
from torch import Tensor

from mtl_train.data import image_family
from mtl_train.data.fashion_mnist import DEBIAN_DIR, FashionMNIST
from mtl_train.data.image_family import RawImages, make_split, read_idx
from mtl_train.data.mnist import MNIST
from mtl_train.errors import ConfigError, DataNotFoundError

N_TRAIN, N_TEST = 40, 10


def write_idx(path: Path, data: Tensor) -> Path:
    """Write a uint8 tensor as an IDX file, gzipped when ``path`` ends in ``.gz``."""
    payload = bytes([0, 0, 0x08, data.dim()]) + struct.pack(f">{data.dim()}I", *data.shape) + data.numpy().tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    with (gzip.open if path.suffix == ".gz" else open)(path, "wb") as f:
        f.write(payload)
    return path


def numbered_images(n: int, offset: int = 0) -> Tensor:
    """``n`` blank images whose pixel (0, 0) holds the row number plus ``offset`` (to tell rows apart)."""
    images = torch.zeros(n, 28, 28, dtype=torch.uint8)
    images[:, 0, 0] = torch.arange(n) + offset
    return images


def write_family(directory: Path, gz: bool, offset: int = 0) -> None:
    """The four IDX files of a tiny dataset: ``N_TRAIN`` / ``N_TEST`` numbered images, labels ``row % 10``."""
    suffix = ".gz" if gz else ""
    for stem, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        write_idx(directory / f"{stem}-images-idx3-ubyte{suffix}", numbered_images(n, offset))
        write_idx(directory / f"{stem}-labels-idx1-ubyte{suffix}", (torch.arange(n) % 10).to(torch.uint8))


def row_ids(split) -> list[int]:
    """The row numbers written by :func:`numbered_images`, read back from the clean-image target."""
    return (split.targets["image"][:, 0, 0, 0] * 255).round().long().tolist()


# --- IDX reader ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_read_idx_round_trips_3d(tmp_path: Path, name: str) -> None:
    data = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8)
    assert torch.equal(read_idx(write_idx(tmp_path / name, data)), data)


@pytest.mark.parametrize("name", ["labels-idx1-ubyte", "labels-idx1-ubyte.gz"])
def test_read_idx_round_trips_1d(tmp_path: Path, name: str) -> None:
    data = torch.tensor([0, 9, 255, 7], dtype=torch.uint8)
    assert torch.equal(read_idx(write_idx(tmp_path / name, data)), data)


def test_read_idx_rejects_wrong_magic(tmp_path: Path) -> None:
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(bytes([0, 0, 0x0D, 1]) + struct.pack(">I", 2) + bytes(8))  # 0x0D = float32, not uint8
    with pytest.raises(DataNotFoundError, match="magic number 0x00000d01") as err:
        read_idx(path)
    assert str(path) in str(err.value)


def test_read_idx_rejects_truncated_data(tmp_path: Path) -> None:
    path = tmp_path / "short-idx1-ubyte"
    path.write_bytes(bytes([0, 0, 0x08, 1]) + struct.pack(">I", 5) + bytes(3))
    with pytest.raises(DataNotFoundError, match="3 data bytes"):
        read_idx(path)


# --- targets ------------------------------------------------------------------------------------------------


def test_make_split_mask_image_and_inputs() -> None:
    image = torch.zeros(1, 28, 28, dtype=torch.uint8)
    image[0, 0, :4] = torch.tensor([0, 127, 128, 255], dtype=torch.uint8)  # 127/255 < 0.5 < 128/255
    split = make_split(image, torch.tensor([3]), mean=MNIST.mean, std=MNIST.std, mask_threshold=0.5)

    expected_mask = torch.zeros(1, 28, 28, dtype=torch.int64)
    expected_mask[0, 0, 2:4] = 4  # label 3 -> segmentation class 4
    assert split.targets["mask"].dtype == torch.int64
    assert torch.equal(split.targets["mask"], expected_mask)
    assert split.targets["label"].tolist() == [3] and split.targets["label"].dtype == torch.int64

    clean = split.targets["image"]
    assert clean.shape == (1, 1, 28, 28) and clean.dtype == torch.float32
    assert clean.min() == 0 and clean.max() == 1
    assert clean[0, 0, 0, 1].item() == pytest.approx(127 / 255)

    assert split.inputs.shape == (1, 1, 28, 28) and split.inputs.dtype == torch.float32
    assert split.inputs[0, 0, 0, 3].item() == pytest.approx((1.0 - 0.1307) / 0.3081, rel=1e-6)
    assert split.inputs[0, 0, 5, 5].item() == pytest.approx(-0.1307 / 0.3081, rel=1e-6)


def test_mask_threshold_moves_the_boundary() -> None:
    image = torch.full((1, 28, 28), 100, dtype=torch.uint8)
    low = make_split(image, torch.tensor([0]), 0.0, 1.0, mask_threshold=0.3).targets["mask"]
    high = make_split(image, torch.tensor([0]), 0.0, 1.0, mask_threshold=0.4).targets["mask"]
    assert bool((low == 1).all()) and bool((high == 0).all())


# --- splits -------------------------------------------------------------------------------------------------


def mnist_at(tmp_path: Path, **kwargs) -> MNIST:
    write_family(tmp_path / "MNIST" / "raw", gz=False)
    return MNIST(root=str(tmp_path), download=False, **kwargs)


def test_split_sizes_and_attributes(tmp_path: Path) -> None:
    data = mnist_at(tmp_path, val_size=8).build()
    assert (len(data.train), len(data.val), len(data.test)) == (N_TRAIN - 8, 8, N_TEST)
    assert data.in_channels == 1 and data.spatial_size == (28, 28)
    assert data.target_names == ["label", "mask", "image"]
    assert row_ids(data.test) == list(range(N_TEST))
    assert (MNIST.num_classes, MNIST.num_seg_classes, len(MNIST.class_names)) == (10, 11, 10)
    assert (FashionMNIST.num_classes, FashionMNIST.num_seg_classes) == (10, 11)
    assert FashionMNIST.class_names[0] == "T-shirt/top" and len(FashionMNIST.class_names) == 10


@pytest.mark.parametrize(
    ("num_train", "num_test", "sizes"),
    [(5, 3, (5, 5, 3)), (20, None, (20, 8, N_TEST)), (1000, 1000, (N_TRAIN - 8, 8, N_TEST))],
)
def test_num_train_and_num_test_cap_the_splits(tmp_path: Path, num_train, num_test, sizes) -> None:
    data = mnist_at(tmp_path, val_size=8, num_train=num_train, num_test=num_test).build()
    assert (len(data.train), len(data.val), len(data.test)) == sizes


def test_split_is_deterministic_per_seed_and_disjoint(tmp_path: Path) -> None:
    first = mnist_at(tmp_path, val_size=8, seed=1).build()
    again = MNIST(root=str(tmp_path), download=False, val_size=8, seed=1).build()
    other = MNIST(root=str(tmp_path), download=False, val_size=8, seed=2).build()
    assert row_ids(first.val) == row_ids(again.val) and row_ids(first.train) == row_ids(again.train)
    assert row_ids(first.val) != row_ids(other.val)
    train, val = set(row_ids(first.train)), set(row_ids(first.val))
    assert not train & val and train | val == set(range(N_TRAIN))
    assert first.train.targets["label"].tolist() == [i % 10 for i in row_ids(first.train)]


# --- where the files come from --------------------------------------------------------------------------


def test_fashion_mnist_reads_a_system_dir(tmp_path: Path) -> None:
    system = tmp_path / "system"
    write_family(system, gz=True)
    data = FashionMNIST(root=str(tmp_path / "root"), download=False, val_size=4, system_dirs=[str(system)]).build()
    assert (len(data.train), len(data.val), len(data.test)) == (N_TRAIN - 4, 4, N_TEST)
    assert data.test.inputs[0, 0, 5, 5].item() == pytest.approx(-0.2860 / 0.3530, rel=1e-6)


def test_fashion_mnist_prefers_the_root_layout(tmp_path: Path) -> None:
    system = tmp_path / "system"
    write_family(system, gz=True, offset=100)
    write_family(tmp_path / "FashionMNIST" / "raw", gz=False)
    data = FashionMNIST(root=str(tmp_path), download=False, val_size=4, system_dirs=[str(system)]).build()
    assert row_ids(data.test) == list(range(N_TEST))


@pytest.mark.parametrize("folder", ["", "raw", "FashionMNIST", "FashionMNIST/raw"])
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_idx_files_are_found_where_a_user_puts_them_and_recorded(tmp_path: Path, folder: str, gz: bool,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """``dataset.root`` may hold the IDX files itself, in ``raw/``, ``<Name>/`` or ``<Name>/raw/``; the data records
    (and logs) the absolute path and SHA-256 of each file it read, and no system copy is used."""
    directory = tmp_path / "root" / folder
    write_family(directory, gz=gz)
    system = tmp_path / "system"
    write_family(system, gz=True, offset=100)
    with caplog.at_level(logging.INFO, logger="mtl_train.data.sources"):
        data = FashionMNIST(root=str(tmp_path / "root"), download=False, val_size=4, system_dirs=[str(system)]).build()
    assert row_ids(data.test) == list(range(N_TEST))  # not the system copy (offset 100)
    suffix = ".gz" if gz else ""
    stems = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    paths = [directory / f"{stem}{suffix}" for stem in stems]
    assert data.sources == {"dataset": "FashionMNIST", "files": [
        {"path": str(path), "bytes": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
        for path in paths]}
    assert caplog.messages == [f"data: FashionMNIST from {directory}/{{{', '.join(p.name for p in paths)}}}"]


def test_a_system_copy_in_use_is_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    system = tmp_path / "system"
    write_family(system, gz=True)
    with caplog.at_level(logging.INFO, logger="mtl_train.data.sources"):
        data = FashionMNIST(root=str(tmp_path / "root"), download=False, val_size=4, system_dirs=[str(system)]).build()
    assert [Path(record["path"]).parent for record in data.sources["files"]] == [system] * 4
    assert caplog.messages[0].startswith(f"data: FashionMNIST from {system}/{{train-images-idx3-ubyte.gz, ")


def test_download_is_used_when_no_folder_has_the_files(tmp_path: Path, monkeypatch) -> None:
    def fake_download(name: str, root: Path) -> RawImages:
        assert (name, root) == ("MNIST", tmp_path)
        labels = torch.arange(N_TRAIN) % 10
        return RawImages(numbered_images(N_TRAIN), labels, numbered_images(N_TEST), labels[:N_TEST])

    monkeypatch.setattr(image_family, "download_with_torchvision", fake_download)
    data = MNIST(root=str(tmp_path), download=True, val_size=4).build()
    assert (len(data.train), len(data.val), len(data.test)) == (N_TRAIN - 4, 4, N_TEST)


@pytest.mark.parametrize("dataset_cls", [MNIST, FashionMNIST])
def test_missing_data_without_download_names_root_and_fixes(tmp_path: Path, dataset_cls) -> None:
    extra = {"system_dirs": [str(tmp_path / "system")]} if dataset_cls is FashionMNIST else {}
    with pytest.raises(DataNotFoundError) as err:
        dataset_cls(root=str(tmp_path), download=False, **extra).build()
    message = str(err.value)
    assert str(tmp_path / dataset_cls.name / "raw") in message
    assert "dataset.root" in message and "dataset.download" in message and "mtl-train" in message
    if dataset_cls is FashionMNIST:
        assert str(tmp_path / "system") in message and "apt-get install dataset-fashion-mnist" in message


def test_failed_download_becomes_data_not_found_with_reason(tmp_path: Path, monkeypatch) -> None:
    def no_network(name: str, root: Path) -> RawImages:
        raise URLError("Name or service not known")

    monkeypatch.setattr(image_family, "download_with_torchvision", no_network)
    with pytest.raises(DataNotFoundError, match="Download: failed: URLError: .*Name or service not known") as err:
        MNIST(root=str(tmp_path), download=True).build()
    assert str(tmp_path) in str(err.value)


def test_files_present_but_one_missing_is_reported(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    write_family(raw, gz=True)
    (raw / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataNotFoundError, match="missing t10k-labels-idx1-ubyte"):
        MNIST(root=str(tmp_path), download=False).build()


# --- config errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"val_size": 0}, "dataset.val_size"),
        ({"val_size": 60_000}, "dataset.val_size"),
        ({"num_train": 0}, "dataset.num_train"),
        ({"num_test": -1}, "dataset.num_test"),
        ({"mask_threshold": 0.0}, "dataset.mask_threshold"),
        ({"mask_threshold": 1.0}, "dataset.mask_threshold"),
        ({"mask_threshold": 1.5}, "dataset.mask_threshold"),
    ],
)
@pytest.mark.parametrize("dataset_cls", [MNIST, FashionMNIST])
def test_bad_values_raise_config_error(tmp_path: Path, dataset_cls, kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key) as err:
        dataset_cls(root=str(tmp_path), download=False, **kwargs)
    assert "must be" in str(err.value)


def test_val_size_larger_than_the_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=rf"dataset.val_size=40 .*\[1, {N_TRAIN - 1}\]"):
        mnist_at(tmp_path, val_size=N_TRAIN).build()


# --- real data ----------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not Path(DEBIAN_DIR).is_dir(), reason=f"{DEBIAN_DIR} absent: apt-get install dataset-fashion-mnist")
def test_real_debian_fashion_mnist(tmp_path: Path) -> None:
    data = FashionMNIST(root=str(tmp_path), download=False).build()
    assert (len(data.train), len(data.val), len(data.test)) == (55_000, 5_000, 10_000)
    for split in (data.train, data.val, data.test):
        labels = split.targets["label"]
        assert labels.min() == 0 and labels.max() == 9
        assert split.targets["mask"].max() <= 10
