"""The typed run config: per-dataset flag defaults, hparams files, old config.json files."""

import argparse
import dataclasses
import json
import os
import subprocess
import sys

import pytest

from bt_tf import runs, train
from bt_tf.data.augment import AugmentPolicy
from bt_tf.errors import UserError
from bt_tf.modeling.projector import ProjectorConfig
from bt_tf.training import flags, trainer
from bt_tf.training.config import MODELS, RESUMABLE_CHANGES, TrainConfig, comparable_settings
from pipelines import config as data_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_dataset_defaults_apply_and_explicit_flags_win(tmp_path):
    synthetic = flags.parse([])
    assert synthetic.batch_size == TrainConfig().batch_size  # no defaults for synthetic
    ml100k = flags.parse(["--dataset=ml-100k"])
    recipe = flags.dataset_defaults("ml-100k")
    assert ml100k.batch_size == recipe["batch_size"] != synthetic.batch_size
    assert ml100k.max_len == recipe["max_len"]
    assert ml100k.augment == AugmentPolicy.from_string(recipe["augment"])
    assert ml100k.max_epochs == recipe["epochs"]
    assert ml100k.early_stopping_patience == recipe["early_stopping_patience"] == 10
    explicit = flags.parse(["--dataset", "ml-100k", "--batch_size=128", "--max_len=80"])
    assert explicit.batch_size == 128 and explicit.max_len == 80
    hparams = tmp_path / "h.json"
    hparams.write_text(json.dumps({"projector": "256-256"}))
    tuned = flags.parse(["--dataset=ml-100k", f"--hparams={hparams}"])
    assert tuned.projector == ProjectorConfig((256, 256))
    assert tuned.batch_size == recipe["batch_size"]


def test_every_dataset_default_is_a_flag_and_a_models_own_no_data_flag():
    parser = argparse.ArgumentParser()
    flags.add_flags(parser)
    dests = {a.dest for a in parser._actions}
    data_parser = argparse.ArgumentParser()
    data_config.add_flags(data_parser, output_dir_alias=False)
    data_flags = {a.dest for a in data_parser._actions} - {"help"}
    for dataset, values in flags.DATASET_DEFAULTS.items():
        own = values.get(flags.MODELS_KEY, {})
        assert set(values) - {flags.MODELS_KEY} <= dests, dataset
        assert set(own) <= set(MODELS), dataset
        for model, settings in own.items():
            assert set(settings) <= dests - data_flags, (dataset, model)


def test_a_models_own_dataset_defaults_apply_and_flags_and_hparams_win(own_recipes, tmp_path):
    shared = own_recipes
    de = flags.parse(["--dataset=ml-100k", "--model=de"])
    assert (de.batch_size, de.temperature, de.learning_rate, de.encoder.pooling) == (
        16,
        0.05,
        0.003,
        "last",
    )
    assert de.max_len == shared["max_len"] and de.projector == ProjectorConfig((512, 512))
    bt = flags.parse(["--dataset=ml-100k"])  # no own recipe: the shared defaults
    assert (bt.batch_size, bt.temperature, bt.encoder.pooling) == (
        shared["batch_size"],
        0.1,
        "mean",
    )
    assert flags.parse(["--dataset=ml-100k", "--model=bt+de"]).bt_weight == 0.5
    explicit = flags.parse(["--dataset=ml-100k", "--model=de", "--batch_size=128"])
    assert (explicit.batch_size, explicit.temperature) == (128, 0.05)
    hparams = tmp_path / "de.json"
    hparams.write_text(json.dumps({"model": "de", "temperature": 0.2}))
    tuned = flags.parse(["--dataset=ml-100k", f"--hparams={hparams}"])  # the file names de
    assert (tuned.model, tuned.temperature, tuned.batch_size) == ("de", 0.2, 16)
    assert flags.parse(["--dataset=ml-1m", "--model=de"]).temperature == 1.0  # no test recipe


def test_a_models_own_dataset_defaults_show_in_help(own_recipes):
    def help_text(*argv):
        return " ".join(train.build_parser(list(argv)).format_help().split())

    de = help_text("--dataset=ml-100k", "--model=de", "--help")
    assert "--temperature TEMPERATURE DE softmax temperature (scores / temperature) " in de
    assert "(scores / temperature) (default: 0.05)" in de
    assert "user vector from the positions (default: last)" in de
    assert "BT statistics over all of it) (default: 16)" in de
    bt = help_text("--dataset=ml-100k", "--help")
    assert "(scores / temperature) (default: 0.1)" in bt
    assert "BT statistics over all of it) (default: 64)" in bt


# A config.json as an older version wrote it: no min_steps_per_epoch/min_delta (it ran
# with LEGACY_DEFAULTS), the augment policy in the user's own order, and the derived
# keys beside the settings.
OLD_CONFIG = {
    "data": dataclasses.asdict(
        dataclasses.replace(TrainConfig().data, dataset="ml-100k", max_len=50)
    ),
    "run_dir": "runs/ml-100k_bt",
    "model": "bt",
    "encoder_kind": "transformer",
    "dim": 64,
    "num_blocks": 2,
    "num_heads": 2,
    "dropout": 0.1,
    "pooling": "mean",
    "projector": "512-512",
    "lambd": 0.005,
    "augment": "crop:0.6,mask:0.2,reorder:0.2",
    "temperature": 0.1,
    "bt_weight": 0.1,
    "de_candidates": 0,
    "de_logq": True,
    "batch_size": 64,
    "epochs": 30,
    "steps_per_epoch": 0,
    "learning_rate": 0.001,
    "seed": 0,
    "strategy": "auto",
    "jit_compile": False,
    "early_stopping_patience": 3,
    "bucket_boundaries": None,
    "cache_input": None,
    "mixed_precision": None,
    "steps_per_execution": 1,
    "probe": True,
    "export": True,
    "artifact_dir": "/tmp/bt_data/ml-100k/abc",
    "max_len": 50,
    "encoder": {"vocab_size": 10, "max_len": 50, "dim": 64},
}


def test_an_old_config_json_loads_typed_and_writes_back_readable():
    config = TrainConfig.from_json(OLD_CONFIG)
    assert config.projector == ProjectorConfig((512, 512))
    assert config.augment == AugmentPolicy(mask=0.2, reorder=0.2, crop=0.6)
    assert (config.encoder.kind, config.encoder.dim, config.max_len) == ("transformer", 64, 50)
    assert (config.min_steps_per_epoch, config.min_delta) == (1, 0.0)  # what it ran with
    assert config.uses_bt and not config.uses_de
    flat = config.to_json()
    assert flat["projector"] == "512-512" and flat["augment"] == "mask:0.2,reorder:0.2,crop:0.6"
    assert {k: flat[k] for k in ("encoder_kind", "dim", "lambd")} == {
        "encoder_kind": "transformer",
        "dim": 64,
        "lambd": 0.005,
    }
    assert TrainConfig.from_json(json.loads(json.dumps(flat))) == config
    # The same settings, spelled either way, decide reuse alike.
    new = comparable_settings(json.loads(json.dumps(flat)))
    old = comparable_settings(OLD_CONFIG)
    assert all(old[k] == new[k] for k in ("projector", "augment", "min_delta", "lambd"))


def test_an_old_run_directory_resumes_and_other_settings_are_refused(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / runs.CHECKPOINT_DIR).mkdir(parents=True)
    (run_dir / runs.CONFIG_FILE).write_text(json.dumps(OLD_CONFIG))
    config = TrainConfig.from_json(OLD_CONFIG)
    check = dict(comparable=comparable_settings, resumable=RESUMABLE_CHANGES)
    runs.check_resumable(str(run_dir), config.to_json(), **check)  # same run: fine
    longer = dataclasses.replace(config, epochs=60)  # a resumable change
    runs.check_resumable(str(run_dir), longer.to_json(), **check)
    other = dataclasses.replace(config, augment=AugmentPolicy(mask=0.5))
    with pytest.raises(UserError, match="different settings \\(augment\\)"):
        runs.check_resumable(str(run_dir), other.to_json(), **check)


def test_train_users_round_trips_reads_old_runs_as_train_and_refuses_a_changed_resume(tmp_path):
    everyone = dataclasses.replace(TrainConfig.from_json(OLD_CONFIG), train_users="all")
    flat = json.loads(json.dumps(everyone.to_json()))
    assert flat["train_users"] == "all" and TrainConfig.from_json(flat) == everyone
    assert TrainConfig.from_json(OLD_CONFIG).train_users == "train"  # what old runs did
    assert comparable_settings(OLD_CONFIG)["train_users"] == "train"
    run_dir = tmp_path / "run"
    (run_dir / runs.CHECKPOINT_DIR).mkdir(parents=True)
    (run_dir / runs.CONFIG_FILE).write_text(json.dumps(OLD_CONFIG))
    check = dict(comparable=comparable_settings, resumable=RESUMABLE_CHANGES)
    same = dataclasses.replace(everyone, train_users="train")
    runs.check_resumable(str(run_dir), same.to_json(), **check)
    with pytest.raises(UserError, match="different settings \\(train_users\\)"):
        runs.check_resumable(str(run_dir), everyone.to_json(), **check)
    with pytest.raises(ValueError, match="--train_users='eval'"):
        TrainConfig(train_users="eval")


def test_train_users_flag_and_the_users_an_epoch_counts():
    assert flags.parse([]).train_users == "train"
    config = flags.parse(["--train_users=all", "--batch_size=4", "--min_steps_per_epoch=1"])
    num_users = {"train": 30, "eval": 5, "test": 7}
    assert config.train_splits == ("train", "eval", "test")
    assert config.num_train_users(num_users) == 42 and config.steps_for(42) == 10
    train_only = dataclasses.replace(config, train_users="train")
    assert train_only.train_splits == ("train",) and train_only.num_train_users(num_users) == 30
    with pytest.raises(UserError, match="argument --train_users: invalid choice: 'eval'"):
        flags.parse(["--train_users=eval"])
    text = " ".join(flags.build_parser([]).format_help().split())
    assert "--train_users {train,all}" in text and "val_loss stays on eval (default: train)" in text


def test_an_old_hparams_file_loads(tmp_path):
    path = tmp_path / "best_hparams.json"
    path.write_text(json.dumps({"augment": "reorder:0.1,mask:0.25", "epochs": 4, "lambd": 0.01}))
    config = flags.parse([f"--hparams={path}"])
    assert config.augment == AugmentPolicy(mask=0.25, reorder=0.1)
    assert (config.epochs, config.lambd) == (4, 0.01)


def test_structured_values_are_typed_and_strings_are_refused_deep_inside():
    with pytest.raises(TypeError, match="from_settings"):
        TrainConfig(projector="8-8")
    with pytest.raises(ValueError, match="--projector='8-x'"):
        TrainConfig.from_settings({"projector": "8-x"})
    with pytest.raises(ValueError, match="--augment='blur:1'"):
        TrainConfig.from_settings({"augment": "blur:1"})
    with pytest.raises(ValueError, match="--encoder='lstm'"):
        TrainConfig.from_settings({"encoder_kind": "lstm"})
    models = {m: TrainConfig(model=m) for m in ("bt", "de", "bt+de")}
    assert [(c.uses_bt, c.uses_de) for c in models.values()] == [
        (True, False),
        (False, True),
        (True, True),
    ]


def test_importing_bt_tf_leaves_tensorflow_out_and_the_api_is_lazy():
    code = (
        "import sys, bt_tf; assert 'tensorflow' not in sys.modules; "
        "assert 'TrainConfig' in dir(bt_tf) and 'train' in bt_tf.__all__; print('ok')"
    )
    env = dict(os.environ, PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr
    import bt_tf

    assert bt_tf.TrainConfig is TrainConfig and bt_tf.AugmentPolicy is AugmentPolicy
    assert callable(bt_tf.train) and bt_tf.train.train is trainer.train


def test_a_flag_neither_we_nor_beam_know_is_an_error_naming_it():
    """Beam only logs "Discarding unparseable args" for a flag it does not know, so a typo
    (``--run_dir`` for ``--output_dir``) would silently be lost; Beam's own options pass."""
    with pytest.raises(UserError, match=r"unknown flag --run_dir: .*did you mean --output_dir\?"):
        flags.parse(["--dataset=synthetic", "--run_dir=/tmp/x"], prog="bt_tf.train")
    with pytest.raises(UserError, match=r"unknown argument stray: neither this command's flag"):
        flags.parse(["--dataset=synthetic", "--epochs", "1", "stray"], prog="bt_tf.train")
    config = flags.parse(
        ["--dataset=synthetic", "--direct_num_workers=2", "--runner", "DirectRunner"],
        prog="bt_tf.train",
    )
    assert config.data.beam_args == ("--direct_num_workers=2", "--runner", "DirectRunner")
    parser = argparse.ArgumentParser(prog="pipelines.preprocess")
    parser.add_argument("--dataset")
    with pytest.raises(UserError, match="unknown flag --epochs: neither this command's flag"):
        data_config.parse_with_beam_flags(parser, ["--dataset=synthetic", "--epochs=3"])
