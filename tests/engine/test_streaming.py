"""The streaming data path: the same batches, parameters and resumes as the in-memory path; memory-mapped inputs
standardised per batch; the in-memory/streaming decision; its settings' errors."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config
from interrupt import interrupt_at
from tiny_trainer import TASKS, tiny_data, tiny_trainer

from mtl_train.data.base import MultiTaskData, TensorSplit, mapped_tensor, normalized
from mtl_train.engine.batches import BackgroundFetch, StreamingLoader, eval_index_batches, place_data
from mtl_train.engine.distributed import Distributed
from mtl_train.engine.trainer import Trainer, TrainerSettings
from mtl_train.errors import ConfigError, TrainingInterrupted
from mtl_train.train import train
from mtl_train.weighting.ew import EqualWeighting

CPU = torch.device("cpu")


def write_npy(path: Path, array: np.ndarray) -> np.ndarray:
    """``array`` written to ``path`` as an ``.npy`` file, opened again memory-mapped, read-only."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=array.dtype, shape=array.shape)
    out[:] = array
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


def fitted(data: MultiTaskData | None, tmp_path: Path, **settings: object) -> tuple[Trainer, dict]:
    """A tiny EW trainer fitted for 5 steps (16 rows, batch 8: two epochs and a half), evaluated on val at step 3
    (mid-epoch 2, while the training pass is suspended) and at the epochs' ends."""
    trainer = tiny_trainer(EqualWeighting(TASKS), tmp_path, max_steps=5, data=data, eval_every=3, **settings)
    return trainer, trainer.fit()


def assert_same_parameters(first: Trainer, second: Trainer) -> None:
    for (name, a), b in zip(first.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_streamed_training_gives_the_in_memory_parameters(tmp_path: Path) -> None:
    memory, memory_result = fitted(None, tmp_path, data_on_device=True)
    streamed, streamed_result = fitted(None, tmp_path, data_on_device=False, num_workers=0)
    assert (memory_result["data_loading"]["path"], streamed_result["data_loading"]["path"]) == ("in_memory", "streaming")
    assert streamed.step == memory.step == 5 and streamed.batch_in_epoch == 1
    assert_same_parameters(streamed, memory)
    assert streamed_result["final"] == memory_result["final"] and streamed_result["best"] == memory_result["best"]


@pytest.mark.parametrize("rank", [0, 1])
def test_each_rank_streams_the_rows_it_gathers_in_memory(rank: int, tmp_path: Path) -> None:
    """Rank ``rank`` of 2 (no collective is needed to cut batches): the same training rows and shares, from a
    resumed position too, and the same every-other row of val."""
    trainers = [tiny_trainer(EqualWeighting(TASKS), tmp_path, distributed=Distributed(rank, 2), data_on_device=on)
                for on in (True, False)]
    for trainer in trainers:
        trainer.batch_in_epoch = 1  # the second (last) batch of epoch 1
    memory, streamed = ([(x, t, share) for x, t, share in trainer._train_batches()] for trainer in trainers)
    assert len(memory) == len(streamed) == 1 and memory[0][2] == streamed[0][2] == 1.0
    assert torch.equal(memory[0][0], streamed[0][0]) and len(streamed[0][0]) == 4
    assert all(torch.equal(memory[0][1][t], streamed[0][1][t]) for t in TASKS)
    val = [torch.cat([x for x, _ in trainer._eval_batches("val")]) for trainer in trainers]
    assert torch.equal(val[0], val[1]) and torch.equal(val[1], tiny_data().val.inputs[rank::2])
    trainers[1].close_loaders()


def test_background_fetch_keeps_the_order_raises_the_sources_error_and_stops_early() -> None:
    assert list(BackgroundFetch(iter(range(5)), depth=2)) == [0, 1, 2, 3, 4]

    def failing():
        yield 1
        raise IndexError("row 9 is out of range")

    with pytest.raises(IndexError, match="row 9 is out of range"):
        list(BackgroundFetch(failing(), depth=1))
    endless = BackgroundFetch(iter(lambda: 0, 1), depth=1)
    assert next(iter(endless)) == 0
    endless.close()
    assert not endless.thread.is_alive()


def mapped_tiny_data(tmp_path: Path) -> MultiTaskData:
    """:func:`tiny_data`'s labels with uint8 inputs in one memory-mapped .npy file: train, val and test are rows
    of it in a shuffled order, standardised per feature with fixed statistics."""
    reference = tiny_data()
    rows = [reference.train, reference.val, reference.test]
    raw = np.random.default_rng(0).integers(0, 256, size=(sum(len(s) for s in rows), 6), dtype=np.uint8)
    inputs = mapped_tensor(write_npy(tmp_path / "inputs.npy", raw))
    order = torch.randperm(len(raw), generator=torch.Generator().manual_seed(1))
    mean, std = torch.linspace(100.0, 150.0, 6), torch.linspace(50.0, 80.0, 6)
    whole = TensorSplit(inputs, {t: torch.cat([s.targets[t] for s in rows]) for t in TASKS}, mean=mean, std=std)
    train, val, test = (whole.select(order[index]) for index in torch.arange(len(raw)).split([16, 8, 8]))
    return MultiTaskData(train, val, test)


def test_two_workers_stream_a_memory_map_to_the_in_memory_parameters_and_leave_the_global_rng(tmp_path: Path) -> None:
    data = mapped_tiny_data(tmp_path)
    memory, memory_result = fitted(data, tmp_path, data_on_device=True)
    assert memory.splits["train"].prepared and memory.splits["train"].inputs.dtype == torch.float32
    rng = torch.get_rng_state()
    streamed, streamed_result = fitted(data, tmp_path, data_on_device=False, num_workers=2, prefetch_factor=1)
    assert torch.equal(torch.get_rng_state(), rng)  # the loader seeds its workers from a generator of its own
    assert streamed.splits["train"].inputs.dtype == torch.uint8  # still the memory map: never prepared in memory
    assert streamed_result["data_loading"] == {
        "path": "streaming", "prepared_mb": 32 * (6 * 4 + 2 * 8) / 2 ** 20, "num_workers": 2, "prefetch_factor": 1,
        "pin_memory": False, "reason": "streamed to cpu: trainer.data_on_device=false (the splits take 0.0 MiB prepared)"}
    assert streamed.loaders == {}  # fit stopped the workers
    assert_same_parameters(streamed, memory)
    assert streamed_result["final"] == memory_result["final"]


def test_memory_mapped_rows_are_standardised_per_batch(tmp_path: Path) -> None:
    """(N=4, C=2, L=2) uint8 inputs, mean (1, 10), std (2, 5); the split is file rows 3 and 1."""
    raw = np.array([[[0, 2], [10, 20]], [[4, 6], [0, 5]], [[1, 1], [15, 10]], [[3, 5], [10, 0]]], dtype=np.uint8)
    array = write_npy(tmp_path / "x.npy", raw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "not writable" warning from torch
        inputs = mapped_tensor(array)
    assert inputs.data_ptr() == array.ctypes.data and inputs.dtype == torch.uint8  # the map itself, nothing read
    whole = TensorSplit(inputs, {"y": torch.tensor([0, 1, 2, 3])}, mean=torch.tensor([1.0, 10.0]),
                        std=torch.tensor([2.0, 5.0]))
    split = whole.select(torch.tensor([3, 1]))
    assert len(split) == 2 and split.input_rows.tolist() == [3, 1] and not split.prepared
    assert split.prepared_bytes == 2 * 4 * 4 + 2 * 8
    x, targets = split.batch(torch.tensor([1, 0]))
    assert x.dtype == torch.float32 and targets["y"].tolist() == [1, 3]
    assert x.tolist() == [[[1.5, 2.5], [-2.0, -1.0]], [[1.0, 2.0], [0.0, -2.0]]]
    assert split.head(1).inputs.tolist() == [[[1.0, 2.0], [0.0, -2.0]]] and split.head(1).prepared
    prepared = split.to(CPU)
    assert prepared.prepared and torch.equal(prepared.inputs, split.batch(torch.arange(2))[0])


def test_streamed_batches_of_a_memory_map_equal_the_materialised_normalised_ones(tmp_path: Path) -> None:
    raw = np.random.default_rng(3).integers(0, 256, size=(50, 3, 4, 4), dtype=np.uint8)
    mean, std = torch.tensor([120.0, 130.0, 125.0]), torch.tensor([70.0, 60.0, 75.0])
    rows = torch.randperm(50, generator=torch.Generator().manual_seed(0))[:37]
    labels = torch.arange(50)
    split = TensorSplit(mapped_tensor(write_npy(tmp_path / "x.npy", raw)), {"y": labels}, mean=mean, std=std)
    split = split.select(rows)
    materialised = normalized(torch.from_numpy(raw).float()[rows], mean, std)  # what files.py builds today
    loader = StreamingLoader({"val": split}, CPU, num_workers=0, prefetch_factor=2, pin_memory=False)
    batches = list(loader.batches("val", eval_index_batches(len(split), 16)))
    assert [len(x) for x, _ in batches] == [16, 16, 5]
    assert torch.equal(torch.cat([x for x, _ in batches]), materialised)
    assert torch.equal(torch.cat([t["y"] for _, t in batches]), labels[rows])


def test_the_data_goes_in_memory_within_the_budget_and_streams_over_it(tmp_path: Path) -> None:
    """:func:`tiny_data` prepared: 32 rows of 6 float32 features and two int64 labels, 32 * (24 + 16) = 1280 B."""
    splits = [tiny_data().train, tiny_data().val, tiny_data().test]
    within = place_data("auto", 1280 / 2 ** 20, splits, CPU)
    over = place_data("auto", 1279 / 2 ** 20, splits, CPU)
    assert (within.streaming, over.streaming, within.prepared_bytes) == (False, True, 1280)
    assert over.reason == ("streamed to cpu: the splits take 0.0 MiB prepared, over trainer.data_budget_mb=0.00121975 "
                           "(trainer.data_on_device=auto)")
    assert place_data(True, 0, splits, CPU).streaming is False and place_data(False, 1e9, splits, CPU).streaming
    trainer = tiny_trainer(EqualWeighting(TASKS), tmp_path, data_budget_mb=1279 / 2 ** 20)
    assert trainer.placement.streaming and trainer.splits["train"].inputs.device == CPU


@pytest.mark.parametrize(("key", "value", "message"), [
    ("data_on_device", "sometimes", "trainer.data_on_device must be auto, true or false, got 'sometimes'"),
    ("pin_memory", "yes", "trainer.pin_memory must be auto, true or false, got 'yes'"),
    ("data_budget_mb", -1, "trainer.data_budget_mb must be >= 0 (MiB), got -1"),
    ("num_workers", -1, "trainer.num_workers must be >= 0 (0: batches are gathered in the training process), got -1"),
    ("prefetch_factor", 0, "trainer.prefetch_factor must be >= 1, got 0"),
])
def test_a_bad_data_loading_setting_names_the_key(key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        TrainerSettings(**{key: value})
    assert str(error.value) == message


def test_a_bad_data_loading_setting_stops_a_run_with_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="^trainer.data_on_device must be auto, true or false, got 'sometimes'$"):
        train(compose_config(["debug=smoke", "trainer.data_on_device=sometimes"], tmp_path))


# As tests/engine/test_resume.py: 36 training segments, batch 8 -> 5 steps per epoch; 3 epochs, val every epoch.
RUN = ["debug=smoke", "dataset.num_train=36", "dataset.num_val=16", "trainer.max_steps=null", "trainer.max_epochs=3",
       "trainer.eval_every=null", "trainer.log_every=2", "trainer.plots=false"]
STREAMED = ["trainer.data_on_device=false", "trainer.num_workers=0"]


def test_a_streamed_run_interrupted_mid_epoch_resumes_to_the_in_memory_runs_parameters(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reference = train(compose_config(RUN, tmp_path / "reference"))
    assert reference["data_loading"]["path"] == "in_memory"
    run_dir = tmp_path / "streamed"
    with monkeypatch.context() as patch:
        interrupt_at(patch, 7)  # SIGINT during step 7, the second batch of epoch 2: training stops right after it
        with pytest.raises(TrainingInterrupted):
            train(compose_config([*RUN, *STREAMED], run_dir))
    checkpoint = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    assert (checkpoint["loop"]["step"], checkpoint["loop"]["batch_in_epoch"]) == (7, 2)
    resumed = train(compose_config([*RUN, *STREAMED, "trainer.resume=true"], run_dir))
    assert resumed["data_loading"]["path"] == "streaming" and resumed["steps"] == 15
    for name in ("losses.csv", "weights.csv", "metrics.jsonl"):
        assert (run_dir / name).read_text() == (tmp_path / "reference" / name).read_text(), name
    assert resumed["final"] == reference["final"]
    models = [torch.load(d / "checkpoints" / "last.pt", weights_only=False)["model"] for d in (run_dir, tmp_path / "reference")]
    assert all(torch.equal(a, b) for a, b in zip(models[0].values(), models[1].values()))
