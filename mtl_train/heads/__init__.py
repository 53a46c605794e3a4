"""Task heads.

Every head is built as ``Head(in_channels, spatial_dims, **own_config)``: the trainer injects the backbone's
output width and dimensionality, the head's YAML gives the rest. Every head is called as
``head(features, input_size)``, where ``input_size`` is the spatial size of the model's input, so dense heads
predict at the input's resolution.
"""
