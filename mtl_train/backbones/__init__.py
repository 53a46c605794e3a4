"""Backbones, one module per sharing scheme or architecture: hard sharing with a split depth (``hard``: the CNN
``cnn``, the Transformer encoder ``transformer``, Sener's ``multi_lenet``), soft sharing (``soft``), cross-stitch
networks (``cross_stitch``) and multi-gate mixture-of-experts (``mmoe``). ``base`` is the interface they share."""
