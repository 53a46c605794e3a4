"""Per-run diagnostics (``diagnostics=...``): how the task gradients relate (:mod:`.gradients`) and how a step on
one task moves the others' losses (:mod:`.affinity`), sampled during training and drawn at its end (:mod:`.plots`)."""
