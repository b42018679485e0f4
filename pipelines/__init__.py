"""Data: raw readers, downloads, the synthetic generator and the Beam preprocessing."""

import os

# Same "One Keras" rule as bt_tf (DESIGN.md): set before TensorFlow is imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
