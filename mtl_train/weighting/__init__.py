"""Loss-weighting methods. The interface is :class:`mtl_train.weighting.base.Weighting`; one file per method."""
