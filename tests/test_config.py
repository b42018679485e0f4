"""Per-dataset command-line defaults (the ML-100K recipe) and their precedence."""

import json

from bt_tf import config as cfg


def test_dataset_defaults_apply_and_explicit_flags_win(tmp_path):
    synthetic = cfg.parse([])
    assert synthetic.batch_size == cfg.TrainConfig().batch_size  # no defaults for synthetic
    ml100k = cfg.parse(["--dataset=ml-100k"])
    recipe = cfg.dataset_defaults("ml-100k")
    assert ml100k.batch_size == recipe["batch_size"] != synthetic.batch_size
    assert ml100k.max_len == recipe["max_len"] and ml100k.augment == recipe["augment"]
    assert ml100k.max_epochs == recipe["epochs"]
    explicit = cfg.parse(["--dataset", "ml-100k", "--batch_size=128", "--max_len=80"])
    assert explicit.batch_size == 128 and explicit.max_len == 80
    hparams = tmp_path / "h.json"
    hparams.write_text(json.dumps({"projector": "256-256"}))
    tuned = cfg.parse(["--dataset=ml-100k", f"--hparams={hparams}"])
    assert tuned.projector == "256-256" and tuned.batch_size == recipe["batch_size"]


def test_every_dataset_default_is_a_flag():
    parser = cfg.argparse.ArgumentParser()
    cfg.add_flags(parser)
    dests = {a.dest for a in parser._actions}
    for dataset, values in cfg.DATASET_DEFAULTS.items():
        assert set(values) <= dests, dataset
