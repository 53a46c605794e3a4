"""Shared fixtures: compose the real config tree with Hydra's compose API, and tiny offline image data."""

from __future__ import annotations

import gzip
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from mtl_train.cli import config_dir, main

CONFIG_DIR = Path(config_dir())


def compose_config(overrides: list[str], output_dir: Path | None = None) -> DictConfig:
    """The config `mtl-train <overrides>` would run, with its outputs sent to ``output_dir``."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose(config_name="train", overrides=overrides)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.output_dir = str(output_dir)
    return cfg


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzipped IDX file (the MNIST file format)."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as file:
        file.write(header + array.astype(np.uint8).tobytes())


def write_tiny_family(raw: Path, seed: int) -> None:
    """Four IDX files in ``raw``: 120 train and 40 test random 28x28 images with random labels 0..9."""
    raw.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", 120), ("t10k", 40)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, size=(n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, size=(n,)))


@pytest.fixture(autouse=True, scope="session")
def checksum_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Data checksums (mtl_train.data.sources) are cached in a temporary folder, not in the user's ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="session")
def tiny_fashion_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root holding a tiny random Fashion-MNIST in torchvision's layout (<root>/FashionMNIST/raw)."""
    root = tmp_path_factory.mktemp("data")
    write_tiny_family(root / "FashionMNIST" / "raw", seed=0)
    return root


@pytest.fixture(scope="session")
def tiny_mnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root holding tiny random MNIST and Fashion-MNIST (<root>/MNIST/raw, <root>/FashionMNIST/raw)."""
    root = tmp_path_factory.mktemp("mnist_data")
    write_tiny_family(root / "MNIST" / "raw", seed=1)
    write_tiny_family(root / "FashionMNIST" / "raw", seed=2)
    return root


def image_data_overrides(root: Path, dataset: str = "fashion_mnist") -> list[str]:
    """Overrides that point the MNIST-family task sets at the tiny offline data (``dataset``: its config name)."""
    return [f"dataset={dataset}", f"dataset.root={root}", "dataset.download=false", "dataset.system_dirs=[]",
            "dataset.val_size=20"]


def run_cli_in_process(args: list[str], monkeypatch: pytest.MonkeyPatch) -> int | str | None:
    """``mtl-train ARGS`` in this process (Hydra included): its exit status, 0 when it returned."""
    monkeypatch.setenv("COLUMNS", "400")  # one message line, not wrapped by rich
    monkeypatch.setattr(sys, "argv", ["mtl-train", *args])
    try:
        main()
    except SystemExit as exit_info:
        return exit_info.code
    return 0
