"""Per-task evaluation metrics, one :class:`~mtl_train.metrics.base.TaskMetric` per task type."""
