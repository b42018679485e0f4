"""Whose labels chose the defaults: `DEFAULTS_PROVENANCE` and in- / out-of-sample claims."""

import dataclasses

import numpy as np
import pytest

from bt_tf.evaluation import selection
from bt_tf.training import flags
from bt_tf.training.config import MODELS
from pipelines.blocks import split_of


def test_every_provenance_entry_names_values_its_dataset_defaults_hold():
    """An entry says which values were chosen on labels; they must be the defaults the
    dataset's runs get (a default changed without its provenance fails here)."""
    assert set(flags.DEFAULTS_PROVENANCE) <= set(flags.DATASET_DEFAULTS)
    for dataset, entries in flags.DEFAULTS_PROVENANCE.items():
        assert entries, dataset
        for entry in entries:
            assert set(entry.models) <= set(MODELS) and entry.splits and entry.labels
            assert entry.dataset in flags.DATASET_DEFAULTS and entry.how
            for model in entry.models:
                defaults = flags.dataset_defaults(dataset, model)
                for name, value in entry.settings.items():
                    assert defaults[name] == value, (dataset, model, name)
    # The ones that exist today: all chosen on ML-100K's train + eval users.
    chose = {e.chose.split(" (")[0] for e in flags.dataset_provenance("ml-100k")}
    assert chose == {"the MovieLens recipe", "the DE's recipe", "the stopping rule"}
    assert {(e.dataset, e.splits) for es in flags.DEFAULTS_PROVENANCE.values() for e in es} == {
        ("ml-100k", ("train", "eval"))
    }  # fmt: skip
    assert flags.dataset_provenance("synthetic") == ()


def _config(model="bt", dataset="ml-100k", **settings):
    config = {"model": model, "data": {"dataset": dataset}}
    config.update(flags.dataset_defaults(dataset, model))
    config.update(settings)
    return config


def test_a_run_used_an_entry_when_its_config_holds_a_chosen_value():
    runs = [_config("bt"), _config("de"), _config("bt", seed=1)]
    used = selection.used_provenance(runs, ["bt", "de", "bt"])
    by = {u["chose"].split(" (")[0]: u for u in used}
    assert by["the DE's recipe"]["runs"] == ["de"]  # bt does not use the DE's recipe
    assert by["the MovieLens recipe"]["runs"] == ["bt", "de"]  # a name once per model
    assert by["the stopping rule"]["used"] == {"early_stopping_patience": 0, "epochs": 30}
    # An equivalent spelling of the augment policy is the chosen one.
    canon = _config("bt", augment="mask:0.2,crop:0.6,reorder:0.2")
    assert selection.used_provenance([canon], ["bt"])[0]["used"]["augment"]
    # Every chosen value overridden: nothing was chosen on labels for that run.
    own = _config("bt", batch_size=32, projector="64-64", augment="mask:0.3", max_len=40,
                  early_stopping_patience=3, epochs=5)  # fmt: skip
    assert selection.used_provenance([own], ["bt"]) == []
    assert selection.used_provenance([_config("bt", dataset="synthetic")], ["bt"]) == []
    # ML-1M's defaults were chosen on ML-100K users: recorded, but no ML-1M user chose.
    ml1m = selection.used_provenance([_config("de", dataset="ml-1m")], ["de"])
    assert {u["dataset"] for u in ml1m} == {"ml-100k"}
    ids = np.array([str(i).encode() for i in range(1, 200)], dtype=object)
    assert not selection.chosen_users(ids, "ml-1m", ml1m).any()


def test_chosen_users_are_the_entry_splits_users_by_the_preprocessing_hash():
    used = selection.used_provenance([_config("de")], ["de"])
    ids = np.array([str(i).encode() for i in range(1, 944)], dtype=object)  # ML-100K's ids
    chosen = selection.chosen_users(ids, "ml-100k", used)
    splits = np.array([split_of(str(i), 80, 10) for i in range(1, 944)])
    np.testing.assert_array_equal(chosen, np.isin(splits, ["train", "eval"]))
    assert 0.85 < chosen.mean() < 0.95  # ~848 of 943
    # Another split of the same users: the hash under the entry's percents decides.
    entry = dataclasses.replace(flags.dataset_provenance("ml-100k")[1], split_percents=(50, 0))
    half = selection.chosen_users(ids, "ml-100k", [{**entry.to_dict()}])
    assert half.mean() == pytest.approx(0.5, abs=0.06) and not np.array_equal(half, chosen)


def test_claim_users_test_scores_the_test_split_and_all_users_beside_it():
    from bt_tf.evaluation import runner
    from bt_tf.evaluation.protocol import Population, Protocol

    ids = {
        "train": np.array([b"a", b"b"]),
        "eval": np.array([b"c"]),
        "test": np.array([b"d", b"e"]),
    }
    pop = Population.make(ids)
    assert runner.claim_populations(pop, "all") == [("all", None)]
    (name, rows), everyone = runner.claim_populations(pop, "test")
    assert name == "test" and rows.tolist() == [3, 4] and everyone == ("all", None)
    tuner = Population.make(ids, ("train", "eval"))  # a search never reads test
    with pytest.raises(ValueError, match="none of that split"):
        runner.claim_populations(tuner, "test")
    with pytest.raises(ValueError, match="claim_users='test'"):
        runner.evaluate_runs(["unused"], None, protocol=Protocol(users=("train", "eval")),
                             claim_users="test")  # fmt: skip
