"""What every backbone gives the model and the weighting methods, whatever its sharing scheme.

A backbone maps the input x to a representation z (:meth:`Backbone.encode`) and z to each task's features
(:meth:`Backbone.branch`, which also sees x, for input-dependent routing such as MMoE's gates). It says which of
its parameters all tasks depend on (:meth:`Backbone.shared_parameters`: what ``weighting.mode=params`` takes
per-task gradients over) and which only one task does (:meth:`Backbone.task_parameters`). Soft-sharing
schemes may add a penalty to the loss (:meth:`Backbone.penalty`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor, nn


class Backbone(nn.Module, ABC):
    """Base class of backbones.

    Attributes set by subclasses: ``out_channels`` (channels of the task features), ``spatial_dims`` (0 for
    flat feature vectors, 1 for signals, 2 for images), ``shares_representation`` (whether z is one tensor every
    task reads, so that per-task gradients w.r.t. z -- ``weighting.mode=rep`` -- are meaningful) and
    ``penalty_name`` (the ``losses.csv`` column of :meth:`penalty`, or None when the backbone has none).
    """

    out_channels: int
    spatial_dims: int
    shares_representation: bool = True
    penalty_name: str | None = None

    @abstractmethod
    def encode(self, x: Tensor) -> Tensor:
        """The representation z computed from the input."""

    @abstractmethod
    def branch(self, task: str, z: Tensor, x: Tensor) -> Tensor:
        """The features ``task``'s head reads, computed from z (and the input x, where routing depends on it)."""

    @abstractmethod
    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters every task's output depends on."""

    @abstractmethod
    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """Backbone parameters only ``task``'s output depends on."""

    @abstractmethod
    def last_shared_layer(self) -> nn.Module:
        """The last layer with a weight matrix/kernel among the shared parameters (GradNorm's W)."""

    def penalty(self) -> Tensor | None:
        """An extra loss term of the backbone's own (e.g. soft sharing's L2 distance), or None."""
        return None


def last_weighted_layer(module: nn.Module) -> nn.Module:
    """The last submodule of ``module`` whose ``weight`` is a matrix or kernel (normalisation layers' affine
    vectors are not a layer's weights)."""
    layers = [m for m in module.modules() if isinstance(getattr(m, "weight", None), nn.Parameter) and m.weight.dim() >= 2]
    return layers[-1]
