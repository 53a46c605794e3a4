"""Training schedules: which tasks train when, orthogonal to the loss weighting.

A schedule gives per-task factors ``f_t`` (``(k,)``) for every step; the trainer multiplies the task losses by
them before the weighting method sees them, and records ``weights * factors`` in ``weights.csv``. A factor of 0
switches a task off for that step (its head gets no gradient); factors in (0, 1) anneal a task.
"""
