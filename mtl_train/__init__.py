"""mtl-train: a Hydra-configured multi-task learning trainer for PyTorch."""

__version__ = "0.1.0"
