"""Task losses beyond torch.nn's own (which configs can name directly, e.g. ``torch.nn.MSELoss``)."""
