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

The public API is re-exported here lazily (PEP 562: imported on first use, so
``import bt_tf`` stays free of TensorFlow), the way TFRS exposes
``tfrs.tasks.Retrieval``::

    import bt_tf
    config = bt_tf.TrainConfig.from_settings({"projector": "512-512", "augment": "mask:0.3"})
    metrics = bt_tf.train(config)          # preprocess if needed, train, probe, export

Where each concept lives: ARCHITECTURE.md.
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


# name -> (module, attribute) of the public API, imported on first access.
_PUBLIC = {
    "AugmentPolicy": ("bt_tf.data.augment", "AugmentPolicy"),
    "BarlowTwinsModel": ("bt_tf.modeling.barlow_twins", "BarlowTwinsModel"),
    "DualEncoderModel": ("bt_tf.modeling.dual_encoder", "DualEncoderModel"),
    "EncoderConfig": ("bt_tf.training.config", "EncoderConfig"),
    "ProjectorConfig": ("bt_tf.modeling.projector", "ProjectorConfig"),
    "SequenceEncoder": ("bt_tf.modeling.encoders", "SequenceEncoder"),
    "TrainConfig": ("bt_tf.training.config", "TrainConfig"),
    "barlow_twins_loss": ("bt_tf.modeling.losses", "barlow_twins_loss"),
    "build_projector": ("bt_tf.modeling.projector", "build_projector"),
    "export_encoder": ("bt_tf.serving.export", "export_encoder"),
    # The entry-point module `bt_tf.train` shares the name: it is callable, and
    # ``bt_tf.train(config)`` calls `bt_tf.training.trainer.train` (see bt_tf/train.py).
    "train": ("bt_tf.train", None),
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    """The public API (`_PUBLIC`), imported when first used (keeps TensorFlow out of import)."""
    if name not in _PUBLIC:
        raise AttributeError(f"module 'bt_tf' has no attribute {name!r}")
    module, attribute = _PUBLIC[name]
    value = importlib.import_module(module)
    value = value if attribute is None else getattr(value, attribute)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
