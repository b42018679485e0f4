"""bt_tf: Barlow Twins user-sequence representations (TensorFlow, Keras 2).

"One Keras" (DESIGN.md): TensorFlow Recommenders needs Keras 2, so the whole
project runs with ``tf.keras`` = ``tf_keras``. The environment variable must be
set before TensorFlow is first imported, which is why it happens here, at the
top of the package, before any submodule imports TensorFlow.

Importing the package does not import TensorFlow itself (entry points silence
its start-up logs first, `bt_tf.cli`). When TensorFlow is already imported, the
check looks at what ``tf.keras`` is; otherwise it checks what TensorFlow will
pick when it is imported: ``TF_USE_LEGACY_KERAS`` set to true and ``tf_keras``
installed.
"""

import importlib.util
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

_FIX = (
    "Fix: `pip install tf-keras`, then `export TF_USE_LEGACY_KERAS=1` or import "
    "bt_tf before tensorflow."
)


def _check_one_keras() -> None:
    if "tensorflow" not in sys.modules:
        # What TensorFlow's lazy Keras loader will read when it is imported.
        if os.environ["TF_USE_LEGACY_KERAS"] not in ("true", "True", "1"):
            raise ImportError(
                "bt_tf needs Keras 2 (tf_keras) as tf.keras, but TF_USE_LEGACY_KERAS="
                f"{os.environ['TF_USE_LEGACY_KERAS']!r} selects Keras 3. " + _FIX
            )
        if importlib.util.find_spec("tf_keras") is None:
            raise ImportError("bt_tf needs Keras 2 (tf_keras), which is not installed. " + _FIX)
        return
    import tensorflow as tf

    where = tf.keras.layers.Dense.__module__
    if not where.startswith("tf_keras"):
        raise ImportError(
            f"bt_tf needs Keras 2 (tf_keras) as tf.keras, but tf.keras.layers.Dense "
            f"comes from {where!r} (Keras 3). TensorFlow was imported before bt_tf "
            "could set TF_USE_LEGACY_KERAS=1, or the variable is set to 0. " + _FIX
        )


_check_one_keras()
