"""Data: raw readers, downloads, the synthetic generator and the Beam preprocessing."""

import os

# Same "One Keras" rule as bt_tf (DESIGN.md): set before TensorFlow is imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
