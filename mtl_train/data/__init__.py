"""Datasets: each module builds a :class:`~mtl_train.data.base.MultiTaskData` held in memory as tensors."""
