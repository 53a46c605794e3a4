"""backbone=torchvision: torchvision CNNs cut into stages, hard-shared up to split_depth, on 1- and 3-channel images."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
from test_train import all_finite, read_csv_rows, smoke_config
from torchvision.models import MobileNet_V3_Small_Weights, get_model

from mtl_train.backbones.torchvision_trunk import torchvision_trunk
from mtl_train.errors import ConfigError
from mtl_train.heads.classification import ClassificationHead
from mtl_train.model import MultiTaskModel
from mtl_train.train import train
from mtl_train.weighting.base import StepContext
from mtl_train.weighting.gradients import task_gradient_matrix
from mtl_train.weighting.gradnorm import GradNorm
from mtl_train.weighting.mgda import MGDA
from mtl_train.weighting.pcgrad import PCGrad

TASKS = ["a", "b"]


def two_task_model(model: str, in_channels: int, size: tuple[int, int], split_depth: int | None) -> MultiTaskModel:
    """``model`` as the trunk of two 3-class classification tasks (MultiTaskModel checks the parameter partition)."""
    backbone = torchvision_trunk(TASKS, in_channels, size, model=model, split_depth=split_depth)
    heads = {t: ClassificationHead(backbone.out_channels, backbone.spatial_dims, num_classes=3, hidden=8)
             for t in TASKS}
    return MultiTaskModel(backbone, heads)


@pytest.mark.parametrize(("model", "in_channels", "size", "z_shape", "features_shape"), [
    ("resnet18", 1, (28, 28), (2, 64, 7, 7), (2, 512, 1, 1)),          # stem /4, layer2..4 /2 each: 32x
    ("resnet18", 3, (64, 64), (2, 64, 16, 16), (2, 512, 2, 2)),
    ("mobilenet_v3_small", 1, (28, 28), (2, 16, 7, 7), (2, 576, 1, 1)),  # features[0:2] shared: /4
    ("mobilenet_v3_small", 3, (64, 64), (2, 16, 16, 16), (2, 576, 2, 2)),
])
def test_shapes_of_z_task_features_and_logits(model: str, in_channels: int, size: tuple[int, int],
                                              z_shape: tuple, features_shape: tuple) -> None:
    torch.manual_seed(0)
    net = two_task_model(model, in_channels, size, split_depth=2)
    assert net.backbone.spatial_dims == 2 and net.backbone.out_channels == features_shape[1]
    x = torch.rand(2, in_channels, *size)
    z = net.encode(x)
    assert tuple(z.shape) == z_shape
    assert tuple(net.backbone.branch("a", z, x).shape) == features_shape
    outputs = net(x)
    assert {t: tuple(o.shape) for t, o in outputs.items()} == {"a": (2, 3), "b": (2, 3)}


def test_stages_and_split_depth() -> None:
    """ResNet: stem + layer1..layer4. The first split_depth stages are one module all tasks run; the others are
    per-task deep copies: distinct parameters, equal initial values."""
    torch.manual_seed(0)
    net = two_task_model("resnet18", 1, (28, 28), split_depth=3)
    backbone = net.backbone
    assert len(backbone.shared) == 3 and [len(b) for b in backbone.branches.values()] == [2, 2]
    a, b = backbone.branches["a"], backbone.branches["b"]
    assert {id(p) for p in a.parameters()}.isdisjoint(id(p) for p in b.parameters())
    assert all(torch.equal(pa, pb) for pa, pb in zip(a.state_dict().values(), b.state_dict().values()))
    shared_ids = {id(p) for p in net.shared_parameters()}
    assert shared_ids == {id(p) for p in backbone.shared.parameters()}
    # every parameter is shared or belongs to exactly one task (also checked by MultiTaskModel at construction)
    all_ids = shared_ids | {id(p) for t in TASKS for p in net.task_parameters(t)}
    assert all_ids == {id(p) for p in net.parameters()}
    assert isinstance(net.last_shared_layer(), torch.nn.Conv2d)
    assert net.last_shared_layer() is backbone.shared[2][-1].conv2  # layer2's last block's second convolution

    everything_shared = torchvision_trunk(TASKS, 1, (28, 28), model="resnet18")
    assert len(everything_shared.shared) == 5 and all(len(b) == 0 for b in everything_shared.branches.values())


@pytest.mark.parametrize("split_depth", [0, 6])
def test_split_depth_out_of_range_is_a_config_error(split_depth: int) -> None:
    with pytest.raises(ConfigError, match="backbone.split_depth must be between 1 and the number of blocks \\(5\\)"):
        torchvision_trunk(TASKS, 1, (28, 28), model="resnet18", split_depth=split_depth)


def test_one_channel_first_conv_sums_the_rgb_kernels() -> None:
    """The grey trunk's first kernel is the RGB kernels' sum, so a grey image gives what the RGB trunk gives on that
    image repeated to three channels."""
    torch.manual_seed(0)
    rgb = torchvision_trunk(TASKS, 3, (28, 28), model="resnet18").eval()
    torch.manual_seed(0)
    grey = torchvision_trunk(TASKS, 1, (28, 28), model="resnet18").eval()
    assert grey.shared[0][0].weight.shape == (64, 1, 7, 7)
    assert torch.allclose(grey.shared[0][0].weight, rgb.shared[0][0].weight.sum(dim=1, keepdim=True))
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(grey.encode(x), rgb.encode(x.repeat(1, 3, 1, 1)), atol=1e-5)


def test_branch_starting_with_an_in_place_relu_leaves_z_alone() -> None:
    """SqueezeNet's features are [Conv, ReLU(inplace), ...]: with split_depth=1 each task's branch starts with that
    ReLU, which must not overwrite the shared z the other tasks (and mode=rep's gradients) read."""
    net = two_task_model("squeezenet1_0", 1, (28, 28), split_depth=1)
    assert not net.backbone.branches["a"][0].inplace
    x = torch.rand(2, 1, 28, 28)
    z = net.encode(x)
    before = z.detach().clone()
    net.decode(z, x)
    assert torch.equal(z, before) and (before < 0).any()


def step_context(model: MultiTaskModel, z: torch.Tensor) -> StepContext:
    return StepContext(model=model, step=0, scale=lambda loss: loss, shared_representation=z)


@pytest.mark.parametrize("model", ["squeezenet1_1", pytest.param("resnet18", marks=pytest.mark.slow)])
@pytest.mark.parametrize(("method", "mode"), [("pcgrad", "params"), ("mgda", "rep")])
def test_gradient_methods_take_one_step(model: str, method: str, mode: str) -> None:
    """PCGrad over the shared parameters and MGDA-UB over z set finite gradients on every parameter, and the
    step moves the shared trunk (SqueezeNet 1.1: 1.2M parameters, a tenth of ResNet-18's fwd+bwd time on CPU)."""
    torch.manual_seed(0)
    net = two_task_model(model, 1, (32, 32), split_depth=3)
    x, y = torch.rand(2, 1, 32, 32), torch.tensor([0, 2])
    z = net.encode(x)
    outputs = net.decode(z, x)
    losses = torch.stack([torch.nn.functional.cross_entropy(outputs[t], y) for t in TASKS])
    grads = task_gradient_matrix(losses, net.shared_parameters())
    assert (grads.norm(dim=1) > 0).all()
    weighting = PCGrad(TASKS, mode=mode) if method == "pcgrad" else MGDA(TASKS, mode=mode)
    weights = weighting.backward(losses, step_context(net, z))
    assert weights.shape == (2,) and torch.isfinite(weights).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    first_kernel = next(net.backbone.shared.parameters())
    before = first_kernel.detach().clone()
    torch.optim.SGD(net.parameters(), lr=0.1).step()
    assert not torch.equal(first_kernel, before)


def test_gradnorm_on_the_last_shared_convolution() -> None:
    """SqueezeNet 1.1's stages are [Conv, ReLU, MaxPool, Fire, ...]: with split_depth=4 the last shared stage is a
    Fire module and GradNorm's W its last convolution (expand3x3), which both tasks' losses reach."""
    torch.manual_seed(0)
    net = two_task_model("squeezenet1_1", 1, (32, 32), split_depth=4)
    assert net.last_shared_layer() is net.backbone.shared[3].expand3x3
    x, y = torch.rand(2, 1, 32, 32), torch.tensor([0, 2])
    z = net.encode(x)
    outputs = net.decode(z, x)
    losses = torch.stack([torch.nn.functional.cross_entropy(outputs[t], y) for t in TASKS])
    grads = task_gradient_matrix(losses, list(net.last_shared_layer().parameters()))
    assert (grads.norm(dim=1) > 0).all()
    assert GradNorm(TASKS).backward(losses, step_context(net, z)).tolist() == [1.0, 1.0]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.fixture
def hub_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache, and no network: any download fails as it does offline."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))

    def offline(url: str, *args, **kwargs) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path


def test_pretrained_weights_come_from_the_hub_cache(hub_dir: Path) -> None:
    """weights=DEFAULT loads the cached file (offline): the trunk holds exactly its values."""
    torch.manual_seed(1)
    state = get_model("mobilenet_v3_small").state_dict()
    cached = hub_dir / "checkpoints" / Path(MobileNet_V3_Small_Weights.DEFAULT.url).name
    cached.parent.mkdir()
    torch.save(state, cached)
    backbone = torchvision_trunk(TASKS, 3, (32, 32), model="mobilenet_v3_small", weights="DEFAULT", split_depth=4)
    assert torch.equal(backbone.shared[0][0].weight, state["features.0.0.weight"])
    assert torch.equal(backbone.branches["b"][0].block[0][0].weight, state["features.4.block.0.0.weight"])
    grey = torchvision_trunk(TASKS, 1, (32, 32), model="mobilenet_v3_small", weights="IMAGENET1K_V1")
    assert torch.allclose(grey.shared[0][0].weight, state["features.0.0.weight"].sum(dim=1, keepdim=True))


def test_pretrained_weights_offline_and_not_cached_is_a_config_error(hub_dir: Path) -> None:
    with pytest.raises(ConfigError, match="backbone.weights=DEFAULT: the pretrained weights of resnet18 are not in "
                                          "the torch hub cache .*no network.*copy https://download.pytorch.org/"
                                          "models/resnet18-f37072fd.pth into .*backbone.weights=null"):
        torchvision_trunk(TASKS, 1, (28, 28), model="resnet18", weights="DEFAULT")


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(model="resnet_18"), "backbone.model='resnet_18' is not a torchvision classification model; choose one of "
                              "alexnet, "),
    (dict(model="resnet18", weights="IMAGENET"), "backbone.weights='IMAGENET' is not a weight set of resnet18; use "
                                                 "one of DEFAULT, IMAGENET1K_V1, or backbone.weights=null"),
    (dict(model="shufflenet_v2_x0_5"), "ShuffleNetV2 has no convolutional feature stages"),
    (dict(model="squeezenet1_0", input_size=(16, 16)), "backbone.model=squeezenet1_0 downsamples more than the "
                                                       "input's size \\(16, 16\\) allows"),
    (dict(model="resnet18", input_size=(2500,)), "backbone=torchvision reads images, but the data's inputs are 1-D"),
])
def test_bad_settings_are_config_errors(kwargs: dict, match: str) -> None:
    input_size = kwargs.pop("input_size", (28, 28))
    with pytest.raises(ConfigError, match=match):
        torchvision_trunk(TASKS, 1, input_size, **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("weighting", ["pcgrad", "mgda"])
def test_resnet18_smoke_train_on_fashion_mnist(weighting: str, tmp_path: Path, tiny_fashion_root: Path) -> None:
    """`mtl-train task=cls_rec dataset=fashion_mnist backbone=torchvision backbone.model=resnet18
    backbone.split_depth=4 debug=smoke` on tiny Fashion-MNIST-shaped data (PCGrad: mode=params, MGDA: mode=rep;
    ~16 s on 2 CPU cores)."""
    cfg = smoke_config("cls_rec", weighting, tmp_path, tiny_fashion_root,
                       ["backbone=torchvision", "backbone.model=resnet18", "backbone.split_depth=4"])
    summary = train(cfg)
    rows = read_csv_rows(tmp_path / "weights.csv")
    assert rows[0] == ["step", "cls", "rec"] and len(rows) == 3
    assert summary["steps"] == 2 and all_finite(summary["final"])
