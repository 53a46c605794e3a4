"""Backbones, one module per sharing scheme or architecture: hard sharing with a split depth (``hard``: the CNN
``cnn``, the Transformer encoder ``transformer``, Sener's ``multi_lenet``, the vector ``mlp``, a ``torchvision_trunk``),
soft sharing (``soft``), cross-stitch networks (``cross_stitch``), gated mixtures of experts (``mmoe``; CGC and PLE in
``ple``; ``dselect_k``), per-task attention over a shared trunk (``mtan``) and learned branching (``ltb``). ``base``
is the interface they share."""
