"""The 1-D Transformer encoder: shapes on 2,500-sample ECG segments, the ECG heads, and split_depth."""

from __future__ import annotations

import pytest
import torch

from mtl_train.backbones.transformer import transformer_encoder
from mtl_train.errors import ConfigError
from mtl_train.heads.classification import ClassificationHead
from mtl_train.heads.reconstruction import ReconstructionHead
from mtl_train.model import MultiTaskModel

# Default sizes (d_model 64, ffn 128, patch 16, 2,500 samples -> 156 tokens):
EMBEDDING = 1 * 64 * 16 + 64 + 64 * 156                      # Conv1d kernel and bias + positions = 11,072
LAYER = (3 * 64 * 64 + 3 * 64) + (64 * 64 + 64) + (64 * 128 + 128) + (128 * 64 + 64) + 2 * 2 * 64  # 33,472
FINAL_NORM = 2 * 64


def count(params) -> int:
    return sum(p.numel() for p in params)


def test_shapes_on_2500_sample_ecg_with_the_ecg_heads() -> None:
    torch.manual_seed(0)
    backbone = transformer_encoder(["rhythm", "denoise"], in_channels=1, input_size=(2500,))
    heads = {"rhythm": ClassificationHead(64, 1, num_classes=4),
             "denoise": ReconstructionHead(64, 1, out_channels=1, upsample_stages=4)}
    model = MultiTaskModel(backbone, heads)
    x = torch.randn(3, 1, 2500)
    z = model.encode(x)
    assert z.shape == (3, 64, 156)  # (B, d_model, 2500 // 16)
    outputs = model.decode(z, x)
    assert outputs["rhythm"].shape == (3, 4) and outputs["denoise"].shape == (3, 1, 2500)
    assert backbone.spatial_dims == 1 and backbone.out_channels == 64


@pytest.mark.parametrize("split_depth", [1, 2, 3])
def test_split_depth_moves_blocks_from_shared_to_per_task(split_depth: int) -> None:
    backbone = transformer_encoder(["a", "b"], in_channels=1, input_size=(2500,), split_depth=split_depth)
    blocks = [EMBEDDING, LAYER, LAYER + FINAL_NORM]
    assert count(backbone.shared_parameters()) == sum(blocks[:split_depth])
    assert count(backbone.task_parameters("a")) == sum(blocks[split_depth:])
    if split_depth < 3:
        x = torch.randn(2, 1, 2500)
        z = backbone.encode(x)
        assert backbone.branch("a", z, x).shape == backbone.branch("b", z, x).shape == (2, 64, 156)


def test_last_shared_layer_is_the_last_shared_feed_forward_matrix() -> None:
    backbone = transformer_encoder(["a", "b"], in_channels=1, input_size=(2500,), split_depth=2)
    layer = backbone.last_shared_layer()
    assert layer is backbone.shared[1].layer.linear2 and layer.weight.shape == (64, 128)
    embedding_only = transformer_encoder(["a", "b"], in_channels=1, input_size=(2500,), split_depth=1)
    assert embedding_only.last_shared_layer() is embedding_only.shared[0].project


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"input_size": (28, 28)}, "reads 1-D signals"), ({"input_size": (8,)}, "backbone.patch_size"),
     ({"input_size": (64,), "num_heads": 3}, "divisible by backbone.num_heads"),
     ({"input_size": (64,), "num_layers": 0}, "backbone.num_layers")],
)
def test_bad_settings_are_config_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        transformer_encoder(["a"], in_channels=1, **kwargs)
