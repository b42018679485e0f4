"""KerasTuner search over Barlow Twins hyperparameters (python -m tuning.search)."""

import bt_tf  # noqa: F401  (applies the One Keras rule first)
