"""SavedModel export of the user encoder (the serving artifact of a run).

Only the `SequenceEncoder` is exported (not the BT projector, the DE task or
any training scaffold), wrapped in a `tf.Module` whose functions are traced
from explicit `tf.TensorSpec`s. The item vocabulary lookup lives inside the
graph, so clients send raw item ids exactly as they appear in the source data.

Signatures (``saved_model_cli show --dir EXPORT --all``):

``serving_default``
    input ``item_ids``: string ``[batch, length]``, each row one user's
    history, oldest first, right-padded with ``""``;
    output ``user_embedding``: float32 ``[batch, d]``.

``recommend`` (only when candidate ``item_embeddings`` were given)
    input ``item_ids`` as above;
    outputs ``item_ids``: string ``[batch, k]`` raw ids of the ``k`` catalog
    items with the largest dot product with the user embedding, and
    ``scores``: float32 ``[batch, k]``, sorted descending. Only real catalog
    items (vocab ids >= 3) are candidates, never pad/mask/OOV. Items already
    in the user's history are NOT excluded (filter them client-side, or ask
    for more than you need).

Input handling, identical in both signatures:
  - ``""`` is padding wherever it occurs (empty strings are dropped; the real
    items keep their order);
  - ids not in the vocabulary map to the OOV id (2), like unseen items in
    preprocessing;
  - a row with more than ``max_len`` real items keeps its most recent
    ``max_len`` (the last ones), as `bt_tf.data.dataset` does for training;
  - a row with no real item gets the encoder's all-padding output (zeros).

Extra files (``assets.extra/``, which TF Serving reads and never serves):
``export_info.json`` (signatures, max_len, dim, vocab size, k) and
``tf_serving_warmup_requests``, a TFRecord of ``PredictionLog`` records, one
``PredictRequest`` per signature, that TF Serving replays when it loads the
model (`write_warmup_requests`).

Loading needs only TensorFlow (no bt_tf import)::

    loaded = tf.saved_model.load(export_dir)
    emb = loaded.signatures["serving_default"](item_ids=tf.constant([["12", "7", ""]]))

Run layout read by ``python -m bt_tf.export --run_dir=RUN`` (see `restore_encoder`):
``RUN/config.json`` with ``artifact_dir``, ``max_len``, ``encoder`` (the
`SequenceEncoder` kwargs) and ``model`` ("bt", "de" or "bt+de");
``RUN/checkpoints/`` object checkpoints written as
``tf.train.Checkpoint(model=model)`` where ``model.encoder`` is the encoder
(and, for DE runs, ``model.item_tower`` an item-embedding table); its latest
checkpoint is the run's weights (`bt_tf.train` keeps the best val_loss epoch
there, ``best_epoch`` in ``metrics.json``; the last epoch's training state is
in ``RUN/train_state/``, never exported). The export goes to ``RUN/export/``.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

import bt_tf  # noqa: F401  (One Keras: sets TF_USE_LEGACY_KERAS before tensorflow)
from bt_tf import runs
from bt_tf.data.dataset import load_vocab
from bt_tf.features import NUM_RESERVED, OOV_ID, PAD_ID, RESERVED_TOKENS
from bt_tf.modeling.encoders import SequenceEncoder

RECOMMEND_K = 10  # default number of items returned by the `recommend` signature

SERVING_SIGNATURE = "serving_default"
RECOMMEND_SIGNATURE = "recommend"
INPUT_KEY = "item_ids"
EMBEDDING_KEY = "user_embedding"
ITEM_IDS_KEY = "item_ids"
SCORES_KEY = "scores"

EXPORT_INFO_FILE = "assets.extra/export_info.json"  # SavedModel's place for extra files
# TF Serving replays these PredictionLog records when it loads the model (SavedModel warmup).
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
WARMUP_ROWS = 2  # users per warmup request

_INPUT_SPEC = tf.TensorSpec([None, None], tf.string, name=INPUT_KEY)
_ITEM_TOWER = "item_tower"
_VARIABLE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"


class _EncoderModule(tf.Module):
    """What gets saved: vocabulary table + encoder (+ optional TFRS BruteForce index).

    Args:
        encoder: callable `encoder(int32 [B, L], training=False) -> [B, d]`.
        item_vocab: raw item ids, index = vocab id; the first NUM_RESERVED are reserved.
        max_len: most recent real items kept per row.
        item_embeddings: float `[vocab_size, d]` candidate embeddings or None.
        k: items returned by `recommend`.
    """

    def __init__(self, encoder, item_vocab, max_len, item_embeddings, k):
        super().__init__(name="bt_tf_user_encoder")
        self.encoder = encoder
        self.max_len = max_len
        real = list(item_vocab[NUM_RESERVED:])
        # Only real catalog items and "" are keys: a raw id that happens to
        # read "<mask>" is just unknown (OOV), never the mask token.
        keys = tf.constant([""] + real, tf.string)
        values = tf.constant([PAD_ID] + list(range(NUM_RESERVED, len(item_vocab))), tf.int64)
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(keys, values), default_value=OOV_ID
        )
        self.index = None
        if item_embeddings is not None:
            candidates = tf.convert_to_tensor(item_embeddings[NUM_RESERVED:], tf.float32)
            self.index = tfrs.layers.factorized_top_k.BruteForce(k=k, name="recommend_index")
            self.index.index(candidates, tf.constant(real, tf.string))
            # Only a module with an index has (and saves) a `recommend` function.
            self.recommend = tf.function(self._recommend, input_signature=[_INPUT_SPEC])

    def _item_ids(self, raw: tf.Tensor) -> tf.Tensor:
        """string `[B, L]` → int32 `[B, min(max_len, longest row) or 1]`, right-padded."""
        ragged = tf.ragged.boolean_mask(raw, tf.not_equal(raw, ""))  # drop padding
        ragged = ragged[:, -self.max_len :]  # most recent max_len per row
        ids = tf.cast(self.table.lookup(ragged), tf.int32).to_tensor(default_value=PAD_ID)
        # Keep at least one column so an all-padding batch is still a valid input.
        return tf.pad(ids, [[0, 0], [0, tf.maximum(1 - tf.shape(ids)[1], 0)]])

    @tf.function(input_signature=[_INPUT_SPEC])
    def lookup_ids(self, item_ids):
        """Raw ids string `[B, L]` → the encoder's int32 input `[B, L']` (for debugging)."""
        return self._item_ids(item_ids)

    def _embed(self, raw):
        return tf.cast(self.encoder(self._item_ids(raw), training=False), tf.float32)

    @tf.function(input_signature=[_INPUT_SPEC])
    def serve(self, item_ids):
        """Raw ids string `[B, L]` → {"user_embedding": float32 `[B, d]`}."""
        return {EMBEDDING_KEY: self._embed(item_ids)}

    def _recommend(self, item_ids):
        """Raw ids string `[B, L]` → top-k {"item_ids": string, "scores": float32} `[B, k]`."""
        scores, ids = self.index(self._embed(item_ids))
        return {ITEM_IDS_KEY: ids, SCORES_KEY: scores}


def _check_vocab(item_vocab: Sequence[str], encoder) -> list[str]:
    vocab = [v.decode() if isinstance(v, bytes) else str(v) for v in item_vocab]
    if len(vocab) <= NUM_RESERVED:
        raise ValueError(
            f"item_vocab has {len(vocab)} entries; it needs the {NUM_RESERVED} reserved "
            f"tokens {RESERVED_TOKENS} followed by the items (bt_tf.data.dataset.load_vocab)."
        )
    if tuple(vocab[:NUM_RESERVED]) != RESERVED_TOKENS:
        raise ValueError(
            f"item_vocab starts with {vocab[:NUM_RESERVED]}, expected the reserved tokens "
            f"{RESERVED_TOKENS} (index = vocab id). Pass the list from "
            "bt_tf.data.dataset.load_vocab(artifact_dir), not the items alone."
        )
    real = vocab[NUM_RESERVED:]
    if "" in real:
        raise ValueError('item_vocab contains the empty string "", which means padding.')
    if len(set(real)) != len(real):
        dupes = sorted({v for v in real if real.count(v) > 1})[:5]
        raise ValueError(f"item_vocab has duplicate item ids, e.g. {dupes}.")
    vocab_size = getattr(encoder, "vocab_size", None)
    if vocab_size is not None and vocab_size != len(vocab):
        raise ValueError(
            f"The encoder was built for vocab_size={vocab_size} but item_vocab has "
            f"{len(vocab)} entries; export with the vocabulary of the artifact the "
            "encoder was trained on."
        )
    return vocab


def _replace_dir(src: str, dst: str) -> None:
    """Moves the finished `src` to `dst`, replacing an existing `dst`.

    `dst` is either the old complete export or the new complete one (or briefly
    absent), never a partial one.
    """
    old = dst + ".old"
    if tf.io.gfile.exists(old):
        tf.io.gfile.rmtree(old)
    if tf.io.gfile.exists(dst):
        tf.io.gfile.rename(dst, old)
    tf.io.gfile.rename(src, dst)
    if tf.io.gfile.exists(old):
        tf.io.gfile.rmtree(old)


def export_encoder(
    encoder,
    item_vocab: Sequence[str],
    export_dir: str,
    *,
    max_len: int,
    item_embeddings: tf.Tensor | np.ndarray | None = None,
    k: int = RECOMMEND_K,
) -> str:
    """Saves `encoder` as a SavedModel that takes raw item ids (see module docstring).

    Atomic: written to ``export_dir + ".tmp"`` (a stale one from a crashed run
    is removed first), then renamed; an existing `export_dir` is replaced.

    Args:
        encoder: a `SequenceEncoder` (or any trackable callable
            `encoder(int32 [B, L], training=False) -> [B, d]`).
        item_vocab: raw item-id strings, index = vocab id, the first three the
            reserved tokens ("<pad>", "<mask>", "<oov>"), e.g.
            `bt_tf.data.dataset.load_vocab(artifact_dir)`.
        export_dir: destination directory.
        max_len: most recent real items kept per user (the training `max_len`);
            at most `encoder.max_len`.
        item_embeddings: float `[vocab_size, d]` candidate embeddings (the DE
            item tower's output for every vocab id, d = encoder output width);
            enables the `recommend` signature. Rows 0-2 are ignored.
        k: items returned by `recommend` (<= number of real items).

    Returns:
        `export_dir`.
    """
    vocab = _check_vocab(item_vocab, encoder)
    if max_len < 1:
        raise ValueError(f"max_len={max_len} must be >= 1.")
    encoder_max_len = getattr(encoder, "max_len", None)
    if encoder_max_len is not None and max_len > encoder_max_len:
        raise ValueError(
            f"max_len={max_len} exceeds the encoder's max_len={encoder_max_len} (its "
            "positional table); export with the training max_len."
        )
    # Build the encoder's variables (a no-op if it has already run).
    probe = encoder(tf.fill([1, 1], NUM_RESERVED), training=False)
    dim = int(probe.shape[-1])
    if item_embeddings is not None:
        item_embeddings = np.asarray(item_embeddings, np.float32)
        if item_embeddings.shape != (len(vocab), dim):
            raise ValueError(
                f"item_embeddings has shape {item_embeddings.shape}, expected "
                f"({len(vocab)}, {dim}) = (vocab size, encoder output width): one "
                "candidate embedding per vocab id, reserved ids included."
            )
        num_items = len(vocab) - NUM_RESERVED
        if not 1 <= k <= num_items:
            raise ValueError(f"k={k} must be between 1 and the {num_items} catalog items.")

    module = _EncoderModule(encoder, vocab, max_len, item_embeddings, k)
    signatures = {SERVING_SIGNATURE: module.serve.get_concrete_function()}
    if module.index is not None:
        # TFRS trap: a BruteForce index must be called once before saving, or
        # its call is not traced and the SavedModel cannot serve it.
        module.index(probe)
        signatures[RECOMMEND_SIGNATURE] = module.recommend.get_concrete_function()
    module.lookup_ids.get_concrete_function()

    tmp = export_dir + ".tmp"
    if tf.io.gfile.exists(tmp):
        tf.io.gfile.rmtree(tmp)  # left over from an interrupted export
    tf.saved_model.save(module, tmp, signatures=signatures)
    info = {
        "signatures": sorted(signatures),
        "input": INPUT_KEY,
        "max_len": max_len,
        "dim": dim,
        "vocab_size": len(vocab),
        "k": k if module.index is not None else None,
        "excludes_history": False,
    }
    tf.io.gfile.makedirs(posixpath.dirname(posixpath.join(tmp, EXPORT_INFO_FILE)))
    with tf.io.gfile.GFile(posixpath.join(tmp, EXPORT_INFO_FILE), "w") as f:
        json.dump(info, f, indent=2)
    write_warmup_requests(posixpath.join(tmp, WARMUP_FILE), sorted(signatures), vocab)
    _replace_dir(tmp, export_dir)
    return export_dir


def warmup_batch(item_vocab: Sequence[str]) -> np.ndarray:
    """A small request batch of real catalog ids: string ``[WARMUP_ROWS, 3]``, rows
    of different lengths right-padded with ``""`` (so warmup also traces padding)."""
    real = list(item_vocab[NUM_RESERVED:])
    pick = [real[i % len(real)] for i in range(3)]
    return np.array([pick, [pick[-1], "", ""]][:WARMUP_ROWS], dtype=object)


def write_warmup_requests(path: str, signature_names: Sequence[str], item_vocab) -> str:
    """Writes TF Serving's SavedModel warmup file: a TFRecord of
    ``tensorflow_serving.apis.PredictionLog`` records, one ``PredictRequest`` per
    signature (``model_spec.signature_name`` set, model name left empty so any
    serving name matches), input ``item_ids`` = `warmup_batch(item_vocab)`.

    TF Serving runs them once when it loads a version, so the first real request
    does not pay for graph initialization. Returns `path`.
    """
    try:
        from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2
    except ImportError as err:  # declared in setup.py; only a broken install gets here
        raise ImportError(
            "Writing the TF Serving warmup file needs the tensorflow-serving-api package "
            "(pip install 'tensorflow-serving-api>=2.21,<2.22')."
        ) from err

    batch = tf.make_tensor_proto(warmup_batch(item_vocab), dtype=tf.string)
    with tf.io.TFRecordWriter(path) as writer:
        for name in signature_names:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(signature_name=name)
            )
            request.inputs[INPUT_KEY].CopyFrom(batch)
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
            writer.write(log.SerializeToString())
    return path


def read_warmup_requests(export_dir: str) -> list:
    """The warmup file of an export as a list of ``PredictionLog`` protos."""
    from tensorflow_serving.apis import prediction_log_pb2

    path = posixpath.join(export_dir, WARMUP_FILE)
    return [
        prediction_log_pb2.PredictionLog.FromString(record.numpy())
        for record in tf.data.TFRecordDataset(path)
    ]


def load_export(export_dir: str):
    """Loads an export; returns the object (``.signatures[...]``, ``.serve``, ``.recommend``)."""
    if not tf.saved_model.contains_saved_model(export_dir):
        raise FileNotFoundError(
            f"No SavedModel in {export_dir!r}; create one with bt_tf.export.export_encoder "
            "or `python -m bt_tf.export --run_dir=RUN`."
        )
    return tf.saved_model.load(export_dir)


def restore_encoder(run_dir: str):
    """Rebuilds the run's encoder and restores the run's weights (its best epoch).

    Expects ``RUN/checkpoints/`` written with ``tf.train.Checkpoint(model=model)``
    (optionally with an optimizer etc. beside it) where ``model.encoder`` is the
    `SequenceEncoder`; everything but the encoder is ignored.

    Returns:
        (encoder, config dict from ``RUN/config.json``).
    """
    config = runs.read_config(run_dir)
    encoder = SequenceEncoder(**config["encoder"])
    encoder(tf.fill([1, 1], NUM_RESERVED), training=False)  # create variables
    path = runs.latest_checkpoint(run_dir)
    status = tf.train.Checkpoint(model=tf.train.Checkpoint(encoder=encoder)).restore(path)
    try:
        status.expect_partial().assert_existing_objects_matched()
    except AssertionError as err:
        raise ValueError(
            f"Checkpoint {path} does not hold this encoder's weights under model/encoder "
            "(expected tf.train.Checkpoint(model=m) with m.encoder a SequenceEncoder built "
            f"with {config['encoder']}): {err}"
        ) from err
    return encoder, config


def restore_item_embeddings(run_dir: str, vocab_size: int, dim: int) -> np.ndarray:
    """The DE candidate table `[vocab_size, dim]` from the run's weights (its best epoch).

    Expects the item tower at ``model.item_tower`` holding exactly one
    `[vocab_size, dim]` variable (an embedding table, e.g. a
    `tf.keras.layers.Embedding`, possibly inside a Sequential).
    """
    path = runs.latest_checkpoint(run_dir)
    reader = tf.train.load_checkpoint(path)
    prefix = f"model/{_ITEM_TOWER}/"
    found = [
        key
        for key, shape in reader.get_variable_to_shape_map().items()
        if key.startswith(prefix)
        and key.endswith(_VARIABLE_SUFFIX)
        and ".OPTIMIZER_SLOT" not in key
        and list(shape) == [vocab_size, dim]
    ]
    if len(found) != 1:
        raise ValueError(
            f"Checkpoint {path}: expected exactly one [{vocab_size}, {dim}] variable under "
            f"{prefix!r} (the DE item tower's embedding table), found {found}. Export without "
            "`recommend` (--no-recommend) or pass item_embeddings to export_encoder."
        )
    return reader.get_tensor(found[0])


def run_item_embeddings(run_dir: str, config: dict, encoder) -> np.ndarray:
    """A DE run's candidate table ``[vocab_size, dim]``: the restored encoder's input item
    table when the run tied them (``tie_item_embeddings`` in config.json: one table,
    checkpointed under the encoder), else its item tower's (`restore_item_embeddings`)."""
    if config.get("tie_item_embeddings"):
        return encoder.item_embedding.embeddings.numpy()
    return restore_item_embeddings(run_dir, encoder.vocab_size, encoder.output_dim)


def export_run(run_dir: str, *, recommend: bool | None = None, k: int = RECOMMEND_K) -> str:
    """Exports the run's encoder to ``RUN/export/``.

    Args:
        run_dir: training run directory (see module docstring).
        recommend: add the `recommend` signature; None = only for DE runs
            ("de", "bt+de"), which have an item tower.
        k: items returned by `recommend`.
    """
    encoder, config = restore_encoder(run_dir)
    vocab = load_vocab(config["artifact_dir"])
    if recommend is None:
        recommend = "de" in config.get("model", "bt").split("+")  # config.json: a flat dict
    item_embeddings = None
    if recommend:
        item_embeddings = run_item_embeddings(run_dir, config, encoder)
    return export_encoder(
        encoder,
        vocab,
        posixpath.join(run_dir, runs.EXPORT_DIR),
        max_len=int(config["max_len"]),
        item_embeddings=item_embeddings,
        k=k,
    )
