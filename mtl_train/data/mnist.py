"""MNIST handwritten digits (LeCun, Bottou, Bengio & Haffner, 1998, "Gradient-based learning applied to
document recognition", Proc. IEEE 86(11)) as a three-task dataset: classification, segmentation and
reconstruction (targets described in :mod:`mtl_train.data.image_family`)."""

from __future__ import annotations

from typing import ClassVar

from mtl_train.data.image_family import ImageFamilyDataset


class MNIST(ImageFamilyDataset):
    """60k train / 10k test 28x28 digit images; the train set is split into train and val.

    Files are read from ``<root>/MNIST/raw`` (torchvision's layout, IDX files plain or ``.gz``); when they are
    not there and ``download`` is true, ``torchvision.datasets.MNIST(root, download=True)`` fetches them into
    that folder. See :class:`~mtl_train.data.image_family.ImageFamilyDataset` for the arguments.
    """

    name: ClassVar[str] = "MNIST"
    mean: ClassVar[float] = 0.1307
    std: ClassVar[float] = 0.3081
    class_names: ClassVar[tuple[str, ...]] = tuple(str(digit) for digit in range(10))

    def extra_fixes(self) -> list[str]:
        return ["or train offline on real Fashion-MNIST images: add dataset=fashion_mnist "
                "(after `apt-get install dataset-fashion-mnist` on Debian/Ubuntu)"]
