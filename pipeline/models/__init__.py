"""Model definitions, training and the Triton model repository."""
