"""Shared loading for the MNIST family: 28x28 grey-scale images, ten classes, IDX files on disk.

A member dataset (:class:`~mtl_train.data.mnist.MNIST`, :class:`~mtl_train.data.fashion_mnist.FashionMNIST`)
only names its torchvision class, its pixel statistics and its class names; :class:`ImageFamilyDataset`
finds the four IDX files, splits them and derives three targets from every image:

* ``"label"`` -- ``(N,)`` int64, the class ``0..9``;
* ``"mask"``  -- ``(N, 28, 28)`` int64 semantic segmentation: ``0`` is background, ``label + 1`` marks the
  pixels brighter than ``mask_threshold`` (so ``num_seg_classes = 11``);
* ``"image"`` -- ``(N, 1, 28, 28)`` float32 in ``[0, 1]``, the clean image (a reconstruction target).

``inputs`` are the images normalised with the dataset's mean and standard deviation.

IDX format (LeCun et al., 1998): a big-endian header ``0x00 0x00 <type> <ndim>``, ``ndim`` big-endian
uint32 sizes, then the row-major data. The files may be gzipped (``.gz``) or plain.
"""

from __future__ import annotations

import gzip
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor

from mtl_train.data.base import MultiTaskData, TensorSplit
from mtl_train.data.sources import file_sources, log_sources
from mtl_train.errors import ConfigError, DataNotFoundError

IMAGE_SIZE = 28
OFFICIAL_TRAIN_ROWS = 60_000
IDX_UBYTE = 0x08
SPLIT_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
ALL_STEMS: tuple[str, ...] = tuple(stem for pair in SPLIT_FILES.values() for stem in pair)


def read_idx(path: str | Path) -> Tensor:
    """Read an unsigned-byte IDX file (gzipped when its name ends in ``.gz``) into a uint8 tensor.

    Raises :class:`DataNotFoundError` when the file is unreadable, is not an unsigned-byte IDX file
    (wrong magic number) or is shorter or longer than its header says.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise DataNotFoundError(f"cannot read IDX file {path}: {err}; delete it and fetch it again") from err
    if len(raw) < 4 or raw[:3] != bytes([0, 0, IDX_UBYTE]):
        raise DataNotFoundError(
            f"{path} is not an unsigned-byte IDX file: magic number 0x{raw[:4].hex()}, expected 0x000008NN "
            "(NN = number of dimensions); delete it and fetch it again"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataNotFoundError(f"IDX file {path} is truncated inside its header; delete it and fetch it again")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) - header != math.prod(dims):
        raise DataNotFoundError(
            f"IDX file {path} holds {len(raw) - header} data bytes, its header {dims} says {math.prod(dims)}; "
            "delete it and fetch it again"
        )
    return torch.frombuffer(bytearray(memoryview(raw)[header:]), dtype=torch.uint8).reshape(dims)


def find_idx(directory: Path, stem: str) -> Path | None:
    """``directory/stem`` or ``directory/stem.gz``, whichever exists first; None when neither does."""
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def missing_stems(directory: Path) -> list[str]:
    """The IDX file stems (train/test images and labels) that ``directory`` lacks in either form."""
    return [stem for stem in ALL_STEMS if find_idx(directory, stem) is None]


@dataclass
class RawImages:
    """The official splits as loaded: uint8 images ``(N, 28, 28)`` and integer labels ``(N,)``, and the files
    they were read from."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    files: tuple[Path, ...] = ()


def read_split(directory: Path, split: str) -> tuple[Tensor, Tensor]:
    """Images and int64 labels of ``split`` (``"train"`` or ``"test"``) from the IDX files in ``directory``."""
    image_stem, label_stem = SPLIT_FILES[split]
    images = read_idx(find_idx(directory, image_stem))
    labels = read_idx(find_idx(directory, label_stem)).long()
    if images.dim() != 3 or tuple(images.shape[1:]) != (IMAGE_SIZE, IMAGE_SIZE) or labels.shape != images.shape[:1]:
        raise DataNotFoundError(
            f"the {split} IDX files in {directory} hold images {tuple(images.shape)} and labels "
            f"{tuple(labels.shape)}; expected (N, {IMAGE_SIZE}, {IMAGE_SIZE}) and (N,)"
        )
    return images, labels


def idx_files(directory: Path) -> tuple[Path, ...]:
    """The IDX files of ``directory`` that :func:`read_split` reads (each stem plain, else ``.gz``), in
    :data:`ALL_STEMS` order; stems found in neither form are left out."""
    return tuple(path for path in (find_idx(directory, stem) for stem in ALL_STEMS) if path is not None)


def read_dir(directory: Path) -> RawImages:
    """All four IDX files of ``directory`` (see :func:`missing_stems` to check they are there)."""
    return RawImages(*read_split(directory, "train"), *read_split(directory, "test"), files=idx_files(directory))


def download_with_torchvision(dataset_name: str, root: Path) -> RawImages:
    """Download (or reuse) ``torchvision.datasets.<dataset_name>`` under ``root`` and return its tensors, with the
    files torchvision read (``<root>/<dataset_name>/raw``).

    Errors from torchvision (no network: ``URLError``/``OSError``; every mirror failed: ``RuntimeError``)
    propagate; the caller turns them into :class:`DataNotFoundError`.
    """
    import torchvision.datasets  # imported here: only downloads need it, and it is slow to import

    dataset_cls = getattr(torchvision.datasets, dataset_name)
    train = dataset_cls(str(root), train=True, download=True)
    test = dataset_cls(str(root), train=False, download=True)
    files = idx_files(root / dataset_name / "raw")
    return RawImages(train.data, train.targets.long(), test.data, test.targets.long(), files=files)


def split_indices(n_rows: int, val_size: int, seed: int) -> tuple[Tensor, Tensor]:
    """Train and val row indices of an ``n_rows`` training file: a seeded permutation, val = its first
    ``val_size`` entries, train = the rest (in permuted order, so any prefix of train is a random sample)."""
    perm = torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed))
    return perm[val_size:], perm[:val_size]


def make_split(images: Tensor, labels: Tensor, mean: float, std: float, mask_threshold: float) -> TensorSplit:
    """Inputs and the ``label`` / ``mask`` / ``image`` targets (module docstring) from uint8 ``(N, 28, 28)``
    ``images`` and their ``labels``."""
    image = images.unsqueeze(1).float().div_(255.0)
    labels = labels.long()
    mask = torch.where(image[:, 0] > mask_threshold, labels.view(-1, 1, 1) + 1, 0)
    inputs = image.sub(mean).div_(std)
    return TensorSplit(inputs, {"label": labels, "mask": mask, "image": image})


def check_range(
    key: str, value: object, low: float, high: float | None = None, *, integer: bool, open_ends: bool = False
) -> None:
    """Raise :class:`ConfigError` naming ``dataset.<key>`` unless ``value`` lies in ``[low, high]``
    (``(low, high)`` when ``open_ends``; no upper bound when ``high`` is None), and is an int when ``integer``."""
    is_number = not isinstance(value, bool) and isinstance(value, int if integer else (int, float))
    upper = math.inf if high is None else high
    inside = is_number and (low < value < upper if open_ends else low <= value <= upper)
    if not inside:
        kind = "an integer" if integer else "a number"
        if high is None:
            valid = f"{kind} >= {low}"
        else:
            valid = f"{kind} in " + (f"({low}, {high})" if open_ends else f"[{low}, {high}]")
        raise ConfigError(f"dataset.{key}={value!r} is invalid: it must be {valid}")


class ImageFamilyDataset:
    """Base of the MNIST-family datasets: finds the IDX files, splits them, builds tensors in memory.

    Args:
        root: folder holding the IDX files, directly or in ``<Name>/raw`` (torchvision's layout), ``<Name>`` or
            ``raw`` (:meth:`search_dirs`); downloads go to ``<root>/<Name>/raw``.
        download: download with torchvision when the files are found nowhere.
        val_size: rows of the official 60k training set held out for validation, chosen by a permutation
            seeded with ``seed`` (the rest is the train split).
        num_train: keep only the first ``num_train`` train rows (None: all). For quick runs the val split
            is capped at ``num_train`` rows too, so a smoke run stays small end to end.
        num_test: keep only the first ``num_test`` test rows (None: all).
        mask_threshold: a pixel (scaled to ``[0, 1]``) brighter than this belongs to the object in ``"mask"``.
        seed: seed of the train/val permutation.
    """

    name: ClassVar[str]
    """torchvision's class name, which is also the folder under ``root`` (``<root>/<name>/raw``)."""
    mean: ClassVar[float]
    std: ClassVar[float]
    class_names: ClassVar[tuple[str, ...]]
    num_classes: ClassVar[int] = 10
    num_seg_classes: ClassVar[int] = 11

    def __init__(
        self,
        root: str = "data",
        download: bool = True,
        val_size: int = 5000,
        num_train: int | None = None,
        num_test: int | None = None,
        mask_threshold: float = 0.5,
        seed: int = 0,
    ) -> None:
        check_range("val_size", val_size, 1, OFFICIAL_TRAIN_ROWS - 1, integer=True)
        if num_train is not None:
            check_range("num_train", num_train, 1, integer=True)
        if num_test is not None:
            check_range("num_test", num_test, 1, integer=True)
        check_range("mask_threshold", mask_threshold, 0.0, 1.0, integer=False, open_ends=True)
        self.root = Path(root).expanduser().absolute()
        self.download = download
        self.val_size = val_size
        self.num_train = num_train
        self.num_test = num_test
        self.mask_threshold = mask_threshold
        self.seed = seed

    def search_dirs(self) -> list[Path]:
        """Folders searched, in order, for the IDX files before downloading: torchvision's layout
        ``<root>/<Name>/raw``, then ``<root>/<Name>``, ``<root>/raw`` and ``<root>`` itself."""
        return [self.root / self.name / "raw", self.root / self.name, self.root / "raw", self.root]

    def extra_fixes(self) -> list[str]:
        """Dataset-specific fixes listed in the not-found message (besides download / root / synthetic)."""
        return []

    def offline_fallback(self) -> RawImages | None:
        """A substitute used when no search dir holds the files and no download worked; None: there is none."""
        return None

    def load_raw(self) -> RawImages:
        """The first search dir that holds all four IDX files; else a torchvision download when allowed;
        else :meth:`offline_fallback`; else :class:`DataNotFoundError` with :meth:`not_found_message`."""
        searched: list[tuple[Path, str]] = []
        for directory in self.search_dirs():
            missing = missing_stems(directory)
            if not missing:
                return read_dir(directory)
            why = "missing " + ", ".join(missing) if directory.is_dir() else "folder does not exist"
            searched.append((directory, why))
        download_error = None
        if self.download:
            try:
                return download_with_torchvision(self.name, self.root)
            except (OSError, RuntimeError) as err:  # URLError is an OSError
                download_error = err
        fallback = self.offline_fallback()
        if fallback is not None:
            return fallback
        raise DataNotFoundError(self.not_found_message(searched, download_error)) from download_error

    def not_found_message(self, searched: Sequence[tuple[Path, str]], download_error: Exception | None) -> str:
        """One multi-line message: the folders searched (each with why it did not do), why no download
        helped, and the fixes."""
        lines = [f"{self.name} data not found. Searched for its four IDX files (plain or .gz):"]
        lines += [f"  - {directory} ({why})" for directory, why in searched]
        if download_error is None:
            lines.append("Download: off (dataset.download=false).")
        else:
            reason = " ".join(str(download_error).split())
            lines.append(f"Download: failed: {type(download_error).__name__}: {reason}")
        raw_dir = self.root / self.name / "raw"
        lines += [
            "Fixes:",
            f"  - go online and run with dataset.download=true (files are saved under {raw_dir});",
            f"  - or set dataset.root to the folder holding the IDX files (or its {self.name}/raw subfolder);",
            *(f"  - or {fix};" for fix in self.extra_fixes()),
            "  - or train offline on synthetic data: run `mtl-train` (the default synthetic ECG task).",
        ]
        return "\n".join(lines)

    def build(self) -> MultiTaskData:
        """Load the data and return the train/val/test splits as tensors (see the module docstring), with the files
        read and their checksums as ``sources`` (also logged)."""
        raw = self.load_raw()
        sources = file_sources(self.name, raw.files)
        log_sources(sources)
        n_rows = raw.train_images.shape[0]
        if self.val_size >= n_rows:
            raise ConfigError(
                f"dataset.val_size={self.val_size} leaves no training rows: the {self.name} training set has "
                f"{n_rows} rows; it must be in [1, {n_rows - 1}]"
            )
        train_idx, val_idx = split_indices(n_rows, self.val_size, self.seed)
        train_idx, val_idx = train_idx[: self.num_train], val_idx[: self.num_train]
        test_rows = slice(None, self.num_test)
        stats = (self.mean, self.std, self.mask_threshold)
        return MultiTaskData(
            train=make_split(raw.train_images[train_idx], raw.train_labels[train_idx], *stats),
            val=make_split(raw.train_images[val_idx], raw.train_labels[val_idx], *stats),
            test=make_split(raw.test_images[test_rows], raw.test_labels[test_rows], *stats),
            sources=sources,
        )
