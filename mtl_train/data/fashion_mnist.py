"""Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017, "Fashion-MNIST: a Novel Image Dataset for Benchmarking
Machine Learning Algorithms", arXiv:1708.07747) as a three-task dataset: classification, segmentation and
reconstruction (targets described in :mod:`mtl_train.data.image_family`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from mtl_train.data.image_family import ImageFamilyDataset

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
"""Where the Debian/Ubuntu package ``dataset-fashion-mnist`` installs the gzipped IDX files."""


class FashionMNIST(ImageFamilyDataset):
    """60k train / 10k test 28x28 garment images in 10 classes; the train set is split into train and val.

    Search order: the folders under ``root`` (torchvision's layout ``<root>/FashionMNIST/raw``, then
    ``<root>/FashionMNIST``, ``<root>/raw`` and ``<root>``), then each of ``system_dirs`` (default:
    the Debian package's folder), then -- when ``download`` is true -- ``torchvision.datasets.FashionMNIST``'s
    download into ``<root>/FashionMNIST/raw``. IDX files may be plain or ``.gz``.

    Args:
        system_dirs: folders holding the four IDX files directly (e.g. from ``apt-get install
            dataset-fashion-mnist``), searched after ``root``.
        others: see :class:`~mtl_train.data.image_family.ImageFamilyDataset`.
    """

    name: ClassVar[str] = "FashionMNIST"
    mean: ClassVar[float] = 0.2860
    std: ClassVar[float] = 0.3530
    class_names: ClassVar[tuple[str, ...]] = (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    )

    def __init__(
        self,
        root: str = "data",
        download: bool = True,
        val_size: int = 5000,
        num_train: int | None = None,
        num_test: int | None = None,
        mask_threshold: float = 0.5,
        seed: int = 0,
        system_dirs: Sequence[str] = (DEBIAN_DIR,),
    ) -> None:
        super().__init__(root, download, val_size, num_train, num_test, mask_threshold, seed)
        self.system_dirs = [Path(directory).expanduser() for directory in system_dirs]

    def search_dirs(self) -> list[Path]:
        """The folders under ``root`` (:meth:`ImageFamilyDataset.search_dirs`), then the system dirs."""
        return [*super().search_dirs(), *self.system_dirs]

    def extra_fixes(self) -> list[str]:
        """Installing the Debian package, whose folder is searched by default."""
        return [f"install the Debian package: `sudo apt-get install dataset-fashion-mnist` (files in {DEBIAN_DIR})"]
