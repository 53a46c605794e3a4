"""A table of bad inputs: each gives one clear message naming the key (or path) and a non-zero exit.

The CLI runs in-process (``mtl_train.cli.main`` with ``sys.argv`` set), so the table covers Hydra's own
composition errors as well as mtl-train's :class:`~mtl_train.errors.UserError` messages.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from mtl_train.cli import main

SMOKE = ["debug=smoke"]
MISSING_FASHION = ["task=cls_seg", "dataset=fashion_mnist", "dataset.system_dirs=[]", "dataset.download=false"]
FILES = ["dataset=files", "dataset.path={tmp}/mine.npz", "dataset.inputs=x"]  # arrays written by prepare_bad_files
FILE_TARGETS = "dataset.targets={rhythm: rhythm, clean: clean}"

# (case id, overrides (``{tmp}`` becomes the test's temporary directory), a fragment of the message)
BAD_INPUTS = [
    ("unknown weighting", ["weighting=nope"], "Could not find 'weighting/nope'"),
    ("unknown task set", ["task=nope"], "Could not find 'task/nope'"),
    ("unknown key", ["trainer.foo=1"], "Key 'foo' is not in struct"),
    ("unknown key added with +", ["+trainer.max_epoch=1"],
     "error: trainer.max_epoch is not a trainer setting; valid keys: amp, batch_size, "),
    ("unknown top-level key", ["+sed=1"], "error: sed is not a top-level setting; valid keys: backbone, baselines, "),
    ("unknown method key", ["weighting=gradnorm", "+weighting.alpah=1"],
     "error: weighting.alpah is not a setting of GradNorm; valid keys: alpha, gradient_params, jacobian, "
     "jacobian_chunk, lr"),
    ("method value of the wrong type", ["weighting=gradnorm", "weighting.alpha=abc"],
     "error: weighting.alpha='abc' must be a float (number), e.g. weighting.alpha=1.5"),
    ("dataset value of the wrong type", ["dataset.seed=abc"], "error: dataset.seed='abc' must be an integer"),
    ("loss that does not fit the head", ["loss@task.rhythm.loss=mse"],
     "error: task.rhythm.loss=MSELoss does not fit task rhythm: head ClassificationHead outputs (N, 4), targets are "
     "class indices (N,); use loss@task.rhythm.loss=cross_entropy or focal"),
    ("head that does not fit the targets", ["heads@task.rhythm.head=dense"],
     "error: task.rhythm.head=DenseHead does not fit task rhythm: it outputs (N, 4, 2500), targets are class "
     "indices (N,), which need logits (N, C); use heads@task.rhythm.head=classification"),
    ("static weights for unknown tasks", ["weighting=static", "weighting.weights={rhythm: 1, typo: 2}"], "typo"),
    ("static weights of the wrong length", ["weighting=static", "weighting.weights=[1,2,3]"],
     "weighting.weights has 3 values but there are 2 tasks"),
    ("negative static weight", ["weighting=static", "weighting.weights=[1,-1]"], "weighting.weights must be >= 0"),
    ("zero learning rate", ["optimizer.lr=0"], "optimizer.lr must be a number > 0, got 0"),
    ("negative learning rate", ["optimizer=sgd", "optimizer.lr=-0.1"], "optimizer.lr must be a number > 0, got -0.1"),
    ("cuda without CUDA", ["trainer.device=cuda"], "trainer.device=cuda but CUDA is not available"),
    ("unknown device", ["trainer.device=tpu"], "trainer.device must be one of auto, cpu, cuda"),
    ("fp16 on CPU", ["trainer.amp=fp16"], "trainer.amp=fp16 needs a CUDA device"),
    ("unknown precision", ["trainer.amp=fp8"], "trainer.amp must be one of"),
    ("zero batch size", ["trainer.batch_size=0"], "trainer.batch_size must be >= 1"),
    ("zero epochs", ["trainer.max_steps=null", "trainer.max_epochs=0"], "trainer.max_epochs must be >= 1"),
    ("zero gradient clip", ["trainer.grad_clip=0"], "trainer.grad_clip must be > 0"),
    ("unknown non-finite policy", ["trainer.nonfinite=ignore"], "trainer.nonfinite must be one of abort, skip"),
    ("unknown scheduler interval", ["scheduler=step", "scheduler.interval=hourly"], "scheduler.interval must be"),
    ("unknown gradient mode", ["weighting=mgda", "weighting.mode=xyz"], "weighting.mode must be 'params'"),
    ("negative CAGrad c", ["weighting=cagrad", "weighting.c=-1"], "weighting.c must be >= 0"),
    ("split depth too deep", ["backbone.split_depth=9"], "backbone.split_depth must be between 1 and"),
    ("backbone of the wrong dimension", ["backbone=cnn2d"], "backbone.spatial_dims=2 does not fit the data's 1-D inputs"),
    ("missing dataset", [*MISSING_FASHION, "dataset.root={tmp}/nowhere"], "FashionMNIST data not found"),
    ("corrupt dataset", [*MISSING_FASHION, "dataset.root={tmp}/corrupt"], "delete it and fetch it again"),
    ("resume without a checkpoint", ["trainer.resume=true"], "no checkpoint at"),
    ("corrupt checkpoint", ["trainer.resume={tmp}/bad.pt"], "cannot resume from"),
    ("missing baselines", ["baselines={tmp}/nowhere"], "is not a baselines.json file or a directory holding one"),
    ("missing data file", [*FILES, FILE_TARGETS, "dataset.path={tmp}/nowhere.npz"],
     "nowhere.npz does not exist"),
    ("missing array", [*FILES, FILE_TARGETS, "dataset.inputs=images"],
     "dataset.inputs='images' is not an array in"),
    ("target of another length", [*FILES, "dataset.targets={rhythm: short, clean: clean}"],
     "has 7 rows, dataset.inputs='x'"),
    ("NaN in the inputs", [*FILES, FILE_TARGETS, "dataset.inputs=x_nan"],
     "holds NaN or infinite values (1 in the"),
    ("target of strings", [*FILES, "dataset.targets={rhythm: names, clean: clean}"],
     "a target must be an integer array (class indices) or a float array"),
    ("float class labels", [*FILES, "dataset.targets={rhythm: rhythm_float, clean: clean}"],
     "error: task.rhythm.head=ClassificationHead does not fit task rhythm"),
    ("fractions not summing to 1", [*FILES, FILE_TARGETS, "dataset.fractions=[0.5,0.2,0.2]"],
     "must be three numbers >= 0 (train, val, test) summing to 1"),
    ("an empty split", [*FILES, FILE_TARGETS, "dataset.fractions=[0.9,0.1,0.0]"], "leaves the test split empty"),
    ("class label above the class count", [*FILES, "dataset.targets={rhythm: rhythm_large, clean: clean}"],
     "hold class indices up to 7; set task.rhythm.num_outputs=8"),
    ("negative class label", [*FILES, "dataset.targets={rhythm: rhythm_negative, clean: clean}"],
     "holds the class index -2, outside [0, num_outputs); if -2 marks a missing label, set "
     "task.rhythm.missing_label=-2"),
    ("a task with no label in train", [*FILES, "dataset.targets={rhythm: rhythm_unlabelled, clean: clean}",
                                       "+task.rhythm.missing_label=-1"],
     "error: task rhythm (target 'rhythm') has no label in the train split"),
    ("NaN targets without missing_label", [*FILES, "dataset.targets={rhythm: rhythm, clean: clean_nan}"],
     "the train targets hold NaN; if NaN marks a missing label, set task.denoise.missing_label=nan"),
]


def prepare_bad_files(tmp: Path) -> None:
    raw = tmp / "corrupt" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / stem).write_bytes(b"\x00\x00\x08\x03truncated")
    (tmp / "bad.pt").write_bytes(b"not a checkpoint")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 1, 256)).astype(np.float32)
    rhythm = np.arange(8) % 4
    x_nan = x.copy()
    x_nan[5, 0, 9] = np.nan
    clean_nan = x.copy()
    clean_nan[:, 0, 0] = np.nan
    np.savez(tmp / "mine.npz", x=x, x_nan=x_nan, rhythm=rhythm,
             rhythm_float=rhythm.astype(np.float32), clean=x, short=rhythm[:7], names=np.array(["a"] * 8),
             rhythm_large=np.arange(8), rhythm_negative=np.where(np.arange(8) == 3, -2, rhythm),
             rhythm_unlabelled=np.full(8, -1), clean_nan=clean_nan)


@pytest.mark.parametrize(("overrides", "message"), [case[1:] for case in BAD_INPUTS], ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_gives_one_clear_message_and_a_non_zero_exit(
    overrides: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    prepare_bad_files(tmp_path)
    args = [o.replace("{tmp}", str(tmp_path)) for o in [*SMOKE, *overrides]]
    monkeypatch.setenv("COLUMNS", "400")  # one message line, not wrapped by rich
    monkeypatch.setattr(sys, "argv", ["mtl-train", *args, f"hydra.run.dir={tmp_path / 'run'}"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code not in (0, None)
    stderr = capsys.readouterr().err
    assert message in stderr
    assert "Traceback" not in stderr
    error_lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) <= 1  # mtl-train's own errors are one line; Hydra's name the key and the fix


def test_the_table_has_at_least_twenty_cases() -> None:
    assert len(BAD_INPUTS) >= 20
