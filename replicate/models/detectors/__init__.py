"""One module per dense detector: its head, targets, losses and decoding, beside its paper."""
