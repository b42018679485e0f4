"""Per-dataset command-line defaults (the ML-100K recipe) and their precedence."""

import argparse
import json

from bt_tf.data.augment import AugmentPolicy
from bt_tf.modeling.projector import ProjectorConfig
from bt_tf.training import flags
from bt_tf.training.config import TrainConfig


def test_dataset_defaults_apply_and_explicit_flags_win(tmp_path):
    synthetic = flags.parse([])
    assert synthetic.batch_size == TrainConfig().batch_size  # no defaults for synthetic
    ml100k = flags.parse(["--dataset=ml-100k"])
    recipe = flags.dataset_defaults("ml-100k")
    assert ml100k.batch_size == recipe["batch_size"] != synthetic.batch_size
    assert ml100k.max_len == recipe["max_len"]
    assert ml100k.augment == AugmentPolicy.from_string(recipe["augment"])
    assert ml100k.max_epochs == recipe["epochs"]
    explicit = flags.parse(["--dataset", "ml-100k", "--batch_size=128", "--max_len=80"])
    assert explicit.batch_size == 128 and explicit.max_len == 80
    hparams = tmp_path / "h.json"
    hparams.write_text(json.dumps({"projector": "256-256"}))
    tuned = flags.parse(["--dataset=ml-100k", f"--hparams={hparams}"])
    assert tuned.projector == ProjectorConfig((256, 256))
    assert tuned.batch_size == recipe["batch_size"]


def test_every_dataset_default_is_a_flag():
    parser = argparse.ArgumentParser()
    flags.add_flags(parser)
    dests = {a.dest for a in parser._actions}
    for dataset, values in flags.DATASET_DEFAULTS.items():
        assert set(values) <= dests, dataset
