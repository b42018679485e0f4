"""bt_tf: Barlow Twins user-sequence representations (TensorFlow, Keras 2).

"One Keras" (DESIGN.md): TensorFlow Recommenders needs Keras 2, so the whole
project runs with ``tf.keras`` = ``tf_keras``. The environment variable must be
set before TensorFlow is first imported, which is why it happens here, at the
top of the package, before any submodule imports TensorFlow.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _check_one_keras() -> None:
    import tensorflow as tf

    where = tf.keras.layers.Dense.__module__
    if not where.startswith("tf_keras"):
        raise ImportError(
            f"bt_tf needs Keras 2 (tf_keras) as tf.keras, but tf.keras.layers.Dense "
            f"comes from {where!r} (Keras 3). TensorFlow was imported before bt_tf "
            "could set TF_USE_LEGACY_KERAS=1, or the variable is set to 0. Fix: "
            "`pip install tf-keras`, then `export TF_USE_LEGACY_KERAS=1` or import "
            "bt_tf before tensorflow."
        )


_check_one_keras()
