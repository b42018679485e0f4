"""Training: the typed run config, its flags, and `train` (prepare, inputs, model, fit, finish)."""
