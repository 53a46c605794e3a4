"""Export a built-in dataset, as a run would build it, to one .npz file that `dataset=files` reads.

    python scripts/export_to_files.py OUT.npz [OVERRIDE ...]

The overrides compose the config as `mtl-train` does (`task=cls_seg dataset=fashion_mnist dataset.num_train=2000`).
The file holds `inputs` (exactly the tensors the built-in path trains on), one array per target that the task set
uses (integer targets in the smallest integer dtype that holds them, which `dataset=files` reads back as int64),
and `split` (0 train, 1 val, 2 test, rows in the built-in split order). The script prints the command that trains
on it; with `dataset.normalize=false` it trains on the same tensors as the built-in path.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir

from mtl_train.cli import config_dir
from mtl_train.data.base import MultiTaskData
from mtl_train.data.files import SPLITS
from mtl_train.utils.instantiate import instantiate

USAGE = "usage: python scripts/export_to_files.py OUT.npz [OVERRIDE ...]"


def compact(values: torch.Tensor) -> np.ndarray:
    """``values`` as a numpy array; integers in the smallest dtype that holds their range."""
    array = values.numpy()
    if values.is_floating_point() or array.size == 0:
        return array
    return array.astype(np.result_type(np.min_scalar_type(array.min()), np.min_scalar_type(array.max())))


def export_npz(data: MultiTaskData, targets: list[str], path: Path) -> None:
    """Write ``data``'s inputs, the ``targets`` and a ``split`` array (0/1/2) to the compressed .npz ``path``."""
    parts = [data.train, data.val, data.test]
    arrays = {"inputs": torch.cat([part.inputs for part in parts]).numpy()}
    for name in targets:
        arrays[name] = compact(torch.cat([part.targets[name] for part in parts]))
    arrays["split"] = np.concatenate([np.full(len(part), code, dtype=np.uint8) for code, part in enumerate(parts)])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)


def main(argv: list[str]) -> None:
    if not argv or argv[0].startswith("-") or not argv[0].endswith(".npz"):
        sys.exit(USAGE)
    out, overrides = Path(argv[0]), argv[1:]
    with initialize_config_dir(version_base="1.3", config_dir=config_dir()):
        cfg = compose(config_name="train", overrides=overrides)
    data = instantiate(cfg.dataset, "dataset").build()
    targets = sorted({str(node.target) for node in cfg.task.values()})
    missing = [name for name in targets if name not in data.target_names]
    if missing:
        sys.exit(f"the task set needs targets {missing}, which {cfg.dataset._target_} lacks; pick a matching task=")
    export_npz(data, targets, out)
    sizes = ", ".join(f"{name} {len(getattr(data, name))}" for name in SPLITS)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): rows {sizes}; arrays inputs, {', '.join(targets)}, split")
    task = [o for o in overrides if o.startswith("task=")]
    mapping = ", ".join(f"{name}: {name}" for name in targets)
    print("train on it with:\n  mtl-train " + " ".join([*task, "dataset=files", f"dataset.path={out}",
          "dataset.split=split", "dataset.normalize=false", f"'dataset.targets={{{mapping}}}'"]))


if __name__ == "__main__":
    main(sys.argv[1:])
