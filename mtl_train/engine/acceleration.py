"""Optional speed-ups applied to the model before training (``trainer.channels_last``).

``channels_last`` stores every 4-D parameter (the kernels of 2-D convolutions) in the NHWC memory format, so the
convolutions run in the layout oneDNN (CPU) and cuDNN (GPU tensor cores) prefer, and their outputs follow it; the
input batches need no conversion. Results are the same up to float rounding. Measured on this project's 2-core CPU
(MultiLeNet, batch 256, 4 tasks, one EW training step, one thread, a loaded machine): 46 ms -> 32 ms. Models
without 2-D convolutions (the 1-D ECG CNN, the Transformer) are left as they are.

``torch.compile`` is not offered. Compiling ``model.encode`` and ``model.decode`` sped an EW step up on this CPU
(MultiLeNet 46 -> 39 ms, ECG CNN 267 -> 181 ms, after 25-36 s of compilation), but it breaks the per-task gradient
engine of the gradient methods: AOTAutograd's compiled backward donates its buffers and refuses the
``retain_graph=True`` backwards that per-task gradients need (unless the private
``torch._functorch.config.donated_buffer`` is turned off), it cannot be batched with ``vmap``, and it turns the k
per-head backwards into k backwards of all the heads at once.
"""

from __future__ import annotations

import torch
from torch import nn


def accelerate(model: nn.Module, channels_last: bool = False) -> nn.Module:
    """``model`` with the requested speed-ups applied (in place); see the module docstring."""
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model
