"""Resolve ``trainer.device`` and ``trainer.amp`` into a torch device and an autocast dtype."""

from __future__ import annotations

import torch

from mtl_train.errors import ConfigError

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"trainer.device={name} but CUDA is not available on this machine; "
                "use trainer.device=auto (CUDA when present) or trainer.device=cpu"
            )
        return torch.device(name)
    raise ConfigError(f"trainer.device must be one of auto, cpu, cuda, got {name!r}")


def resolve_amp(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``trainer.amp`` (None = full precision). fp16 needs CUDA."""
    if name not in AMP_DTYPES:
        raise ConfigError(f"trainer.amp must be one of {', '.join(AMP_DTYPES)}, got {name!r}")
    if name == "fp16" and device.type != "cuda":
        raise ConfigError(
            "trainer.amp=fp16 needs a CUDA device (it relies on loss scaling on the GPU); "
            "use trainer.amp=bf16 on CPU, or trainer.amp=none"
        )
    return AMP_DTYPES[name]
