"""Mixed precision: the global Keras dtype policy and the optimizer that goes with it."""

from __future__ import annotations

import tensorflow as tf

import bt_tf  # noqa: F401  (One Keras: sets TF_USE_LEGACY_KERAS before tensorflow)

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def set_precision(policy: str | None) -> None:
    """Sets the global Keras dtype policy (None = "float32"); call before building models.

    Under ``mixed_float16``/``mixed_bfloat16`` layers compute in 16 bits and
    keep float32 variables; the Barlow Twins cross-correlation and loss cast
    the projector outputs to float32 (`bt_tf.modeling.losses`).
    """
    tf.keras.mixed_precision.set_global_policy(policy or "float32")


def optimizer_for_policy(optimizer):
    """``optimizer`` wrapped in a dynamic `LossScaleOptimizer` under ``mixed_float16``.

    (float16 gradients underflow without loss scaling; bfloat16 has float32's
    range and needs none.) Wrapping here rather than letting `compile` do it
    puts the loss scale in the checkpoint beside the optimizer.
    """
    if tf.keras.mixed_precision.global_policy().name == "mixed_float16":
        return tf.keras.mixed_precision.LossScaleOptimizer(optimizer)
    return optimizer
