"""Session-wide test setup.

TensorFlow's logical devices can only be configured before the runtime starts,
so the two logical CPU devices that the `tf.distribute` tests need ("one
replica equals two") are created here, once, for the whole session. Tests that
do not ask for a strategy see the default single device as usual.
"""

import bt_tf  # noqa: F401  (One Keras: must run before tensorflow is imported)
import tensorflow as tf

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
)
