"""Any torchvision classification CNN as a hard-shared image trunk (``backbone=torchvision``).

The model is built by ``torchvision.models.get_model(model, weights=weights)``: random initialisation with
``weights=None`` (offline), or the pretrained weights named by ``weights`` (``DEFAULT``, ``IMAGENET1K_V1``, ...),
which torchvision downloads once into the torch hub cache (``$TORCH_HOME/hub/checkpoints``).

Its classifier (pooling, dropout, fully connected layers) is dropped, and its feature extractor is cut into
*stages*:

- ResNet family (``resnet*``, ``resnext*``, ``wide_resnet*``; He et al., CVPR 2016): the stem
  (conv1, bn1, relu, maxpool), then ``layer1`` .. ``layer4``: 5 stages;
- models with a ``features`` Sequential (MobileNet v2/v3, EfficientNet, ConvNeXt, DenseNet, VGG, AlexNet,
  SqueezeNet) or a ``layers`` Sequential (MNASNet): its children;
- RegNet: the stem, then the children of ``trunk_output``.

Transformers (ViT, Swin, MaxViT) and GoogLeNet/Inception/ShuffleNet have no such layout and stop with a
ConfigError. The stages go into a :class:`~mtl_train.backbones.hard.HardSharedBackbone`: the first
``split_depth`` are shared, the others copied per task (each copy starts from the same, possibly pretrained,
weights). The shared representation z is the last shared stage's output, so ``weighting.mode=rep`` applies.

The task features keep their spatial map (``spatial_dims = 2``): the classification head averages it, dense and
reconstruction heads upsample it back to the input's size. ResNets and MobileNets downsample 32x, so 28x28
inputs give a 1x1 map (fine for classification; dense heads then decode from one vector per image) and 64x64
inputs a 2x2 map; a model that downsamples more than the input allows stops with a ConfigError.

Inputs whose channel count is not 3 (MNIST family: 1) get a new first convolution with ``in_channels`` inputs and
the original's kernel, stride and padding. Its kernel is the original's (pretrained or random) summed over the
RGB channels and divided by ``in_channels``: ``w_new[:, c] = sum_rgb(w) / in_channels``, so a grey image gives
the same first activations as that image repeated to RGB would through the original. Inputs are fed as the
dataset gives them (no ImageNet mean/std normalisation).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchvision
from torch import nn
from torchvision.models import get_model, get_model_weights, list_models

from mtl_train.backbones.hard import HardSharedBackbone
from mtl_train.errors import ConfigError

SUPPORTED = ("ResNet/ResNeXt/Wide ResNet, MobileNet v2/v3, EfficientNet, ConvNeXt, DenseNet, VGG, AlexNet, "
             "SqueezeNet, MNASNet or RegNet")


def torchvision_trunk(
    task_names: Sequence[str],
    in_channels: int,
    input_size: Sequence[int],
    model: str = "resnet18",
    weights: str | None = None,
    split_depth: int | None = None,
) -> HardSharedBackbone:
    """The feature stages of torchvision's ``model``, the first ``split_depth`` shared (all of them when None)."""
    if len(input_size) != 2:
        raise ConfigError(
            f"backbone=torchvision reads images, but the data's inputs are {len(input_size)}-D {tuple(input_size)}; "
            "use backbone=cnn1d or backbone=transformer1d for signals"
        )
    stages = feature_stages(build_model(model, weights))
    stages[0] = replace_first_conv(stages[0], in_channels)
    out_channels = probe(stages, in_channels, input_size, model)
    backbone = HardSharedBackbone(
        stages,
        task_names,
        split_depth=len(stages) if split_depth is None else split_depth,
        out_channels=out_channels,
        spatial_dims=2,
    )
    for branch in backbone.branches.values():  # an in-place op at a branch's start would overwrite z for all tasks
        for module in branch.modules():
            if hasattr(module, "inplace"):
                module.inplace = False
    return backbone


def build_model(model: str, weights: str | None) -> nn.Module:
    """torchvision's classification ``model`` with ``weights`` (None: random initialisation)."""
    models = list_models(module=torchvision.models)
    if model not in models:
        raise ConfigError(
            f"backbone.model={model!r} is not a torchvision classification model; choose one of {', '.join(models)}"
        )
    if weights is not None:
        names = ["DEFAULT", *(w.name for w in get_model_weights(model))]
        if weights not in names:
            raise ConfigError(f"backbone.weights={weights!r} is not a weight set of {model}; use one of "
                              f"{', '.join(names)}, or backbone.weights=null for random initialisation")
    try:
        return get_model(model, weights=weights)
    except OSError as error:  # no network (URLError), or the download failed
        url = get_model_weights(model)[weights].url
        cache = f"{torch.hub.get_dir()}/checkpoints"
        raise ConfigError(
            f"backbone.weights={weights}: the pretrained weights of {model} are not in the torch hub cache ({cache}) "
            f"and could not be downloaded ({error}); run once online, copy {url} into {cache}, or use "
            "backbone.weights=null (random initialisation)"
        ) from error


def feature_stages(model: nn.Module) -> list[nn.Module]:
    """The feature extractor of ``model`` as a list of stages, classifier left out (see the module docstring)."""
    if all(hasattr(model, name) for name in ("conv1", "bn1", "relu", "maxpool", "layer4")):
        stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
        return [stem, model.layer1, model.layer2, model.layer3, model.layer4]
    if isinstance(model, torchvision.models.SwinTransformer):  # its features give channels-last maps
        raise ConfigError(f"backbone.model: Swin Transformers are not supported; use a CNN ({SUPPORTED})")
    for name in ("features", "layers"):
        if isinstance(getattr(model, name, None), nn.Sequential):
            return list(getattr(model, name).children())
    if hasattr(model, "stem") and isinstance(getattr(model, "trunk_output", None), nn.Sequential):
        return [model.stem, *model.trunk_output.children()]
    raise ConfigError(f"backbone.model: {type(model).__name__} has no convolutional feature stages this backbone can "
                      f"split; use a CNN ({SUPPORTED})")


def replace_first_conv(stage: nn.Module, in_channels: int) -> nn.Module:
    """``stage`` with its first convolution taking ``in_channels`` inputs (unchanged when it already does)."""
    name, conv = next((n, m) for n, m in stage.named_modules() if isinstance(m, nn.Conv2d))
    if conv.in_channels == in_channels:
        return stage
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                    dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None)
    with torch.no_grad():
        new.weight.copy_(conv.weight.sum(dim=1, keepdim=True).expand_as(new.weight) / in_channels)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    if not name:  # the stage is the convolution itself (SqueezeNet, AlexNet, VGG, MNASNet)
        return new
    parent_name, _, attribute = name.rpartition(".")
    setattr(stage.get_submodule(parent_name), attribute, new)
    return stage


def probe(stages: Sequence[nn.Module], in_channels: int, input_size: Sequence[int], model: str) -> int:
    """The channels of the last stage's output on one zero image of the data's size (which must fit the model)."""
    trunk = nn.Sequential(*stages).eval()
    try:
        with torch.no_grad():
            out = trunk(torch.zeros(1, in_channels, *input_size))
    except RuntimeError as error:
        raise ConfigError(f"backbone.model={model} downsamples more than the input's size {tuple(input_size)} "
                          f"allows ({error}); use larger inputs or a model with less downsampling") from error
    finally:
        trunk.train()
    return out.shape[1]
