"""A small Transformer encoder for 1-D signals (ECG), hard-shared up to ``split_depth`` blocks.

Patch embedding as in ViT (Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021), applied to a signal:
a Conv1d with kernel = stride = ``patch_size`` turns ``(B, in_channels, L)`` into ``L // patch_size`` tokens of
width ``d_model`` (trailing samples that do not fill a patch are dropped, 4 of 2,500 with patch 16), plus a learned
positional embedding. Then ``num_layers`` pre-norm encoder layers (Vaswani et al., "Attention Is All You Need",
NeurIPS 2017; ``nn.TransformerEncoderLayer`` with ``norm_first=True``) and, as in pre-norm encoders, a final
LayerNorm inside the last block.

Every block maps ``(B, d_model, tokens)`` to the same shape, channels first like the CNN trunks, so the existing
heads apply: patch 16 downsamples 16x like cnn1d's four pooling blocks, so the ECG task sets' dense and
reconstruction heads (``upsample_stages: 4``) fit unchanged. The blocks are ``[patch embedding, layer_1, ...,
layer_n]`` in a :class:`~mtl_train.backbones.hard.HardSharedBackbone`: ``split_depth`` = 1 shares only the
embedding, the default (all blocks) shares the whole encoder.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mtl_train.backbones.cnn import check_downsampling
from mtl_train.backbones.hard import HardSharedBackbone
from mtl_train.errors import ConfigError


class PatchEmbedding(nn.Module):
    """``(B, in_channels, L)`` -> ``(B, d_model, L // patch_size)``: non-overlapping patches, linearly embedded, plus
    a learned positional embedding."""

    def __init__(self, in_channels: int, d_model: int, patch_size: int, num_patches: int) -> None:
        super().__init__()
        self.project = nn.Conv1d(in_channels, d_model, patch_size, stride=patch_size)
        self.position = nn.Parameter(torch.zeros(1, d_model, num_patches))
        nn.init.trunc_normal_(self.position, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        return self.project(x) + self.position


class EncoderBlock(nn.Module):
    """One pre-norm ``nn.TransformerEncoderLayer`` on channels-first tokens ``(B, d_model, tokens)``; with
    ``final_norm``, a LayerNorm on its output (the last block of a pre-norm encoder)."""

    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, dropout: float, final_norm: bool) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(
            d_model, num_heads, ffn_dim, dropout, batch_first=True, norm_first=True
        )
        self.norm = nn.LayerNorm(d_model) if final_norm else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.layer(x.transpose(1, 2))).transpose(1, 2)


def transformer_encoder(
    task_names: Sequence[str],
    in_channels: int,
    input_size: Sequence[int],
    d_model: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    ffn_dim: int = 128,
    dropout: float = 0.1,
    patch_size: int = 16,
    split_depth: int | None = None,
) -> HardSharedBackbone:
    """Patch embedding + ``num_layers`` encoder layers; the first ``split_depth`` blocks shared (all when None)."""
    if len(input_size) != 1:
        raise ConfigError(
            f"backbone=transformer1d reads 1-D signals, but the data's inputs are {len(input_size)}-D "
            f"{tuple(input_size)}; use a 2d backbone for images"
        )
    if num_layers < 1:
        raise ConfigError(f"backbone.num_layers must be >= 1, got {num_layers}")
    if d_model % num_heads:
        raise ConfigError(f"backbone.d_model ({d_model}) must be divisible by backbone.num_heads ({num_heads})")
    check_downsampling(input_size, patch_size, "backbone.patch_size")
    blocks = [
        PatchEmbedding(in_channels, d_model, patch_size, input_size[0] // patch_size),
        *(EncoderBlock(d_model, num_heads, ffn_dim, dropout, final_norm=i == num_layers - 1)
          for i in range(num_layers)),
    ]
    return HardSharedBackbone(
        blocks,
        task_names,
        split_depth=len(blocks) if split_depth is None else split_depth,
        out_channels=d_model,
        spatial_dims=1,
    )
