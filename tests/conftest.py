"""Session-wide test setup.

TensorFlow's logical devices can only be configured before the runtime starts,
so the two logical CPU devices that the `tf.distribute` tests need ("one
replica equals two") are created here, once, for the whole session. Tests that
do not ask for a strategy see the default single device as usual.
"""

import pytest
import tensorflow as tf

import bt_tf  # noqa: F401  (One Keras: must run before tensorflow is imported)
from bt_tf.training import flags

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(_cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)


@pytest.fixture(scope="session")
def two_replicas():
    """One MirroredStrategy over the two logical CPUs for the whole session.

    Every strategy numbers its collective ops from the same starting key, and
    the runtime remembers each key's op type process-wide: a second strategy
    in the same process would reuse key 100 for a different collective
    (all-gather after all-reduce) and abort. Sharing one strategy avoids it.
    """
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    return strategy


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> str:
    """A ``--data_output_dir`` holding the tiny job's data (`tests.tiny`), preprocessed once
    for the session: every test that trains on it with the tiny data flags reuses the
    version instead of rebuilding it (a preprocessing reuses a published version). Tests
    that change an artifact copy it first, or build their own."""
    from bt_tf.training.flags import parse
    from pipelines import preprocess
    from tests.tiny import TINY_FLAGS

    root = tmp_path_factory.mktemp("tiny_data")
    preprocess.preprocess(parse([*TINY_FLAGS, f"--data_output_dir={root}"]).data)
    return str(root)


@pytest.fixture(scope="session")
def runs(tmp_path_factory, tiny_data):
    """{"bt": run dir, "de": run dir} trained on the tiny artifact (`tiny_data`; 1 epoch of
    4 steps each), shared by the evaluation tests; tests that change a run copy it first."""
    from bt_tf.training import trainer
    from bt_tf.training.flags import parse
    from tests.tiny import TINY_FLAGS

    root = tmp_path_factory.mktemp("evaluate")
    out = {}
    for model in ("bt", "de"):
        config = parse(
            [
                *TINY_FLAGS,
                "--epochs=1",
                "--no-probe",
                "--no-export",
                f"--model={model}",
                f"--data_output_dir={tiny_data}",
                f"--output_dir={root / model}",
            ]
        )
        trainer.train(config)
        out[model] = str(root / model)
    return out


# A test-only recipe of the DE and of the joint model on top of ML-100K's shared defaults.
OWN_RECIPES = {
    "de": {"batch_size": 16, "temperature": 0.05, "learning_rate": 0.003, "pooling": "last"},
    "bt+de": {"bt_weight": 0.5},
}


@pytest.fixture
def own_recipes(monkeypatch):
    """ML-100K's flag defaults with `OWN_RECIPES` as the models' own; returns the shared ones."""
    shared = flags.dataset_defaults("ml-100k")
    monkeypatch.setitem(
        flags.DATASET_DEFAULTS, "ml-100k", {**shared, flags.MODELS_KEY: OWN_RECIPES}
    )
    return shared
