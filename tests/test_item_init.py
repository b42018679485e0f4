"""``--item_init=svd`` and ``--freeze_item_embeddings``: the encoder's input item table.

The SVD table is computed here again from the batches the trainer would read
(dense numpy, sklearn directly), not through the trainer's own helpers.
"""

import dataclasses
import json

import numpy as np
import pytest
import tensorflow as tf
from sklearn.decomposition import TruncatedSVD

from bt_tf.data import dataset
from bt_tf.features import NUM_RESERVED
from bt_tf.serving import export
from bt_tf.training import trainer
from bt_tf.training.flags import parse
from pipelines import preprocess as pp
from tests.tiny import TINY_FLAGS

KERAS_RMS = 0.05 / np.sqrt(3.0)  # RandomUniform(-0.05, 0.05), Keras' Embedding default


# `tiny_data` (conftest.py): the tiny job's data, preprocessed once for the session.


def _config(tiny_data, run_dir, *extra):
    argv = [*TINY_FLAGS, f"--data_output_dir={tiny_data}", f"--output_dir={run_dir}"]
    return parse([*argv, "--epochs=1", "--no-probe", "--no-export", *extra])


def _binary_matrix(artifact_dir: str, splits, vocab_size: int, width: int) -> np.ndarray:
    """Dense ``[users, vocab]`` 0/1 matrix of the histories of ``splits`` (reserved ids out)."""
    rows = []
    for split in splits:
        ds = dataset.make_dataset(artifact_dir, split, 64, max_len=width, shuffle=False)
        for batch in ds:
            for items in batch["items"].numpy():
                row = np.zeros(vocab_size, np.float32)
                row[items[items >= NUM_RESERVED]] = 1.0
                rows.append(row)
    return np.stack(rows)


def _built(run) -> trainer.ModelState:
    """`trainer.build_model`, its encoder's variables created (Keras builds on first call)."""
    built = trainer.build_model(run)
    built.model.encoder(tf.fill([1, 1], NUM_RESERVED))
    if run.config.uses_de:
        built.model.item_embeddings()  # the DE's item tower
    return built


@pytest.mark.parametrize("train_users", ["train", "all"])
def test_svd_init_is_the_scaled_item_factors_of_the_pretraining_users(
    tmp_path, tiny_data, train_users
):
    config = _config(tiny_data, tmp_path / "run", "--item_init=svd", "--seed=3", "--model=bt+de")
    config = dataclasses.replace(config, train_users=train_users)
    run = trainer.prepare_run(config, pp.preprocess(config.data))
    table = _built(run).model.encoder.item_embedding.embeddings.numpy()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["item_init"] == "svd"

    splits = ("train",) if train_users == "train" else ("train", "eval", "test")
    width = trainer.data_width(config, run.meta)
    x = _binary_matrix(run.artifact_dir, splits, run.vocab_size, width)
    assert x.shape[0] == config.num_train_users(run.meta["num_users"])
    dim = config.encoder.dim
    svd = TruncatedSVD(dim, algorithm="randomized", n_iter=7, random_state=3).fit(x)
    seen = x.sum(axis=0) > 0
    factors = svd.components_.T[seen]  # [real items held by some history, dim]
    want = factors * KERAS_RMS / np.sqrt(np.mean(factors**2, axis=0))
    assert seen[:NUM_RESERVED].sum() == 0 and seen.sum() > 100
    np.testing.assert_allclose(table[seen], want, atol=2e-4 * KERAS_RMS, rtol=1e-3)
    np.testing.assert_allclose(np.sqrt(np.mean(table[seen] ** 2, axis=0)), KERAS_RMS, rtol=1e-4)
    # The reserved rows (pad, mask, OOV) and unseen items keep Keras' small random init.
    rest = table[~seen]
    assert np.all(np.abs(rest) <= 0.05) and np.std(rest) > 0.01


def _weights(model) -> dict:
    """The encoder's and (DE) the item tower's variables, by name."""
    layers = [model.encoder] + ([model.item_tower] if hasattr(model, "item_tower") else [])
    return {v.name: v.numpy().copy() for layer in layers for v in layer.variables}


# (bt, random): ~6 s on 2 quiet cores, slow; (bt+de, svd) freezes the table of both towers.
@pytest.mark.parametrize(
    "model,init", [pytest.param("bt", "random", marks=pytest.mark.slow), ("bt+de", "svd")]
)
def test_frozen_item_table_stays_bit_identical_while_the_rest_trains(
    tmp_path, tiny_data, model, init
):
    run_dir = tmp_path / "run"
    config = _config(
        tiny_data, run_dir, f"--model={model}", f"--item_init={init}", "--freeze_item_embeddings",
        "--no-tie_item_embeddings",  # else the DE's item side is this (frozen) table
    )  # fmt: skip
    run = trainer.prepare_run(config, pp.preprocess(config.data))
    built = _built(run)
    table = built.model.encoder.item_embedding.embeddings
    assert table.ref() not in {v.ref() for v in built.model.encoder.trainable_variables}
    before = _weights(built.model)
    trainer.fit(run, built, trainer.build_inputs(run, 0))
    after = _weights(built.model)
    assert np.array_equal(after[table.name], before[table.name])
    changed = [k for k in before if k != table.name and not np.array_equal(before[k], after[k])]
    assert any("encoder" in k for k in changed) and any("item_tower" in k for k in changed) == (
        model == "bt+de"
    )  # the DE's item tower is a table of its own: it trains

    # Restoring needs no SVD: the table comes back from the checkpoint as it was.
    encoder, recorded = export.restore_encoder(str(run_dir))
    assert (recorded["item_init"], recorded["freeze_item_embeddings"]) == (init, True)
    assert np.array_equal(encoder.item_embedding.embeddings.numpy(), before[table.name])


def test_random_init_trains_the_table_by_default(tmp_path, tiny_data):
    config = _config(tiny_data, tmp_path / "run")
    assert (config.item_init, config.freeze_item_embeddings) == ("random", False)
    run = trainer.prepare_run(config, pp.preprocess(config.data))
    built = _built(run)
    table = built.model.encoder.item_embedding.embeddings
    assert table.ref() in {v.ref() for v in built.model.encoder.trainable_variables}
    before = table.numpy().copy()
    trainer.fit(run, built, trainer.build_inputs(run, 0))
    assert not np.array_equal(table.numpy(), before)
