"""SavedModel export: raw string ids in, the in-memory encoder's embeddings out.

The exported model is checked in a FRESH Python process that imports only
TensorFlow (what a serving job does), against the encoder in this process.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from bt_tf import export as export_cli
from bt_tf.features import NUM_RESERVED, OOV_ID, RESERVED_TOKENS
from bt_tf.modeling.barlow_twins import BarlowTwinsModel
from bt_tf.modeling.encoders import SequenceEncoder
from bt_tf.modeling.projector import build_projector
from bt_tf.serving import export as ex

MAX_LEN = 6
DIM = 8
K = 5
VOCAB = list(RESERVED_TOKENS) + [f"item{i:02d}" for i in range(30)]
SAVED_MODEL_CLI = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")

# Runs in a fresh interpreter with nothing but TensorFlow: argv[1] is a JSON
# request {"dir": ..., "batches": {name: rows}}; prints {name: outputs} as JSON.
_LOADER = """
import json, sys
import tensorflow as tf
request = json.load(open(sys.argv[1]))
loaded = tf.saved_model.load(request["dir"])
out = {}
for name, rows in request["batches"].items():
    ids = tf.constant(rows, tf.string)
    out[name] = {"embedding": loaded.signatures["serving_default"](item_ids=ids)
                 ["user_embedding"].numpy().tolist()}
    if "recommend" in loaded.signatures:
        top = loaded.signatures["recommend"](item_ids=ids)
        out[name]["item_ids"] = [[b.decode() for b in r] for r in top["item_ids"].numpy()]
        out[name]["scores"] = top["scores"].numpy().tolist()
print(json.dumps(out))
"""

BATCHES = {
    # different lengths, right-padded with ""
    "ragged": [
        ["item00", "item07", "item03", "", "", ""],
        ["item11", "", "", "", "", ""],
        ["item29", "item28", "item01", "item05", "item05", "item17"],
        ["", "", "", "", "", ""],
    ],
    # ids never seen in training
    "unknown": [
        ["item04", "never-seen", "item09", "", "", ""],
        ["???", "", "", "", "", ""],
    ],
    # 9 real items, more than MAX_LEN = 6
    "long": [
        ["item01", "item02", "item03", "item04", "item05", "item06", "item07", "item08", "item09"],
        ["item20", "item21", "", "", "", "", "", "", ""],
    ],
}


def _make_encoder(seed=0, kind="transformer"):
    tf.keras.utils.set_random_seed(seed)
    encoder = SequenceEncoder(
        len(VOCAB), max_len=MAX_LEN, dim=DIM, num_blocks=1, num_heads=2, dropout=0.0, kind=kind
    )
    encoder(tf.zeros([1, MAX_LEN], tf.int32))
    return encoder


def _to_ids(rows, keep_last=MAX_LEN):
    """Reference conversion in plain Python: raw rows -> right-padded int ids."""
    index = {v: i for i, v in enumerate(VOCAB) if i >= NUM_RESERVED}
    ids = [[index.get(v, OOV_ID) for v in row if v != ""][-keep_last:] for row in rows]
    width = max(1, max(len(r) for r in ids))
    return np.array([r + [0] * (width - len(r)) for r in ids], np.int32)


def _embed(encoder, ids):
    return encoder(tf.constant(ids), training=False).numpy()


def _start(args):
    """Starts a subprocess (TF import dominates its time, so they run side by side)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def _finish(process):
    stdout, stderr = process.communicate(timeout=180)
    assert process.returncode == 0, stderr[-3000:]
    return stdout


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """An export with `recommend`, checked by two fresh processes side by side.

    One loads it with nothing but TensorFlow and runs BATCHES through both
    signatures; the other is `saved_model_cli show --all`.
    """
    tmp = tmp_path_factory.mktemp("export")
    encoder = _make_encoder()
    rng = np.random.default_rng(0)
    item_embeddings = rng.normal(size=(len(VOCAB), DIM)).astype(np.float32)
    # Reserved rows get huge norms: if they were candidates they would win every top-k.
    item_embeddings[:NUM_RESERVED] *= 1000.0
    export_dir = str(tmp / "export")
    path = ex.export_encoder(
        encoder, VOCAB, export_dir, max_len=MAX_LEN, item_embeddings=item_embeddings, k=K
    )
    assert path == export_dir

    request = tmp / "request.json"
    request.write_text(json.dumps({"dir": export_dir, "batches": BATCHES}))
    loader = _start([sys.executable, "-c", _LOADER, str(request)])
    cli = _start([SAVED_MODEL_CLI, "show", "--dir", export_dir, "--all"])
    # docs/SERVING.md's `saved_model_cli run` call, verbatim but for the ids.
    run = _start(
        [SAVED_MODEL_CLI, "run", "--dir", export_dir, "--tag_set", "serve"]
        + ["--signature_def", "serving_default"]
        + ["--input_exprs", 'item_ids=[["item01","item02",""],["item03","",""]]']
    )
    return {
        "encoder": encoder,
        "dir": export_dir,
        "item_embeddings": item_embeddings,
        "results": json.loads(_finish(loader).strip().splitlines()[-1]),
        "cli": _finish(cli),
        "cli_run": _finish(run),
    }


def test_fresh_process_matches_in_memory_encoder(exported):
    got = np.array(exported["results"]["ragged"]["embedding"])
    ids = _to_ids(BATCHES["ragged"])
    assert ids.tolist()[0] == [3, 10, 6, 0, 0, 0]  # item00 = id 3, item07 = id 10
    want = _embed(exported["encoder"], ids)
    assert got.shape == (4, DIM)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # Rows really differ (the comparison is not trivially between constants),
    # and the all-padding row is the encoder's all-padding output: zeros.
    assert np.abs(got[0] - got[1]).max() > 1e-3
    np.testing.assert_array_equal(got[3], np.zeros(DIM))


def test_unknown_ids_embed_like_the_oov_id(exported):
    got = np.array(exported["results"]["unknown"]["embedding"])
    want = _embed(exported["encoder"], np.array([[7, OOV_ID, 12], [OOV_ID, 0, 0]], np.int32))
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_long_rows_keep_the_most_recent_max_len_items(exported):
    got = np.array(exported["results"]["long"]["embedding"])
    last = np.array([[7, 8, 9, 10, 11, 12], [23, 24, 0, 0, 0, 0]], np.int32)  # item04..item09
    np.testing.assert_allclose(got, _embed(exported["encoder"], last), atol=1e-5)
    first = np.array([[4, 5, 6, 7, 8, 9]], np.int32)  # item01..item06: must NOT be used
    assert np.abs(got[0] - _embed(exported["encoder"], first)[0]).max() > 1e-3


def test_lookup_inside_the_graph_in_process(exported):
    loaded = ex.load_export(exported["dir"])
    ids = loaded.lookup_ids(tf.constant([["item01", "", "x", "item29", "<mask>"]]))
    # "" is padding and dropped; unknown ids and reserved token names are OOV.
    np.testing.assert_array_equal(ids.numpy(), [[4, OOV_ID, 32, OOV_ID]])
    empty = loaded.signatures["serving_default"](item_ids=tf.zeros([2, 0], tf.string))
    np.testing.assert_array_equal(empty["user_embedding"].numpy(), np.zeros([2, DIM]))


def test_recommend_is_top_k_over_the_real_catalog(exported):
    for name, rows in BATCHES.items():
        result = exported["results"][name]
        ids, scores = result["item_ids"], np.array(result["scores"])
        assert np.array(ids).shape == (len(rows), K) and scores.shape == (len(rows), K)
        user = _embed(exported["encoder"], _to_ids(rows))
        catalog = exported["item_embeddings"][NUM_RESERVED:]
        all_scores = user @ catalog.T
        for row in range(len(rows)):
            assert all(i in VOCAB[NUM_RESERVED:] for i in ids[row]), ids[row]
            assert np.all(np.diff(scores[row]) <= 0), scores[row]
            if np.abs(user[row]).max() == 0:
                continue  # all-padding row: every score ties at 0
            want = np.argsort(-all_scores[row], kind="stable")[:K]
            assert ids[row] == [VOCAB[NUM_RESERVED + j] for j in want]
            np.testing.assert_allclose(scores[row], all_scores[row][want], rtol=1e-5, atol=1e-5)


def _signature_block(text, name):
    start = text.index(f"signature_def['{name}']")
    end = text.find("signature_def[", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_saved_model_cli_lists_the_signatures(exported):
    text = exported["cli"]
    serving = _signature_block(text, "serving_default")
    assert "inputs['item_ids']" in serving
    assert "DT_STRING" in serving.split("outputs[")[0]
    assert "outputs['user_embedding']" in serving
    assert f"shape: (-1, {DIM})" in serving
    recommend = _signature_block(text, "recommend")
    assert "inputs['item_ids']" in recommend
    assert "outputs['item_ids']" in recommend and "outputs['scores']" in recommend
    # (An export without item_embeddings has no `recommend`: see the atomic test.)


def test_saved_model_cli_runs_the_serving_signature(exported):
    out = exported["cli_run"]
    assert "Result for output key user_embedding:" in out
    values = (
        out.split("Result for output key user_embedding:")[1].replace("[", " ").replace("]", " ")
    )
    got = np.array(values.split(), np.float32).reshape(2, DIM)
    want = _embed(exported["encoder"], _to_ids([["item01", "item02", ""], ["item03", "", ""]]))
    np.testing.assert_allclose(got, want, atol=1e-4)


def _replay_warmup(export_dir):
    """{signature: (request inputs as numpy, outputs)}: each warmup request run on the reload."""
    loaded = ex.load_export(export_dir)
    replies = {}
    for log in ex.read_warmup_requests(export_dir):
        assert log.WhichOneof("log_type") == "predict_log"
        request = log.predict_log.request
        name = request.model_spec.signature_name
        assert name not in replies, f"two warmup requests for {name}"
        inputs = {key: tf.make_ndarray(proto) for key, proto in request.inputs.items()}
        outputs = loaded.signatures[name](**{k: tf.constant(v) for k, v in inputs.items()})
        replies[name] = (inputs, {k: v.numpy() for k, v in outputs.items()})
    return loaded, replies


def test_warmup_requests_replay_against_every_signature(exported):
    assert os.path.isfile(
        os.path.join(exported["dir"], "assets.extra", "tf_serving_warmup_requests")
    )
    loaded, replies = _replay_warmup(exported["dir"])
    assert sorted(replies) == sorted(loaded.signatures) == ["recommend", "serving_default"]
    inputs, outputs = replies["serving_default"]
    rows = inputs["item_ids"]
    assert list(inputs) == ["item_ids"] and rows.shape == (ex.WARMUP_ROWS, 3)
    assert rows.tolist()[1][1:] == [b"", b""]  # padding is part of the warmup
    assert sorted(outputs) == ["user_embedding"]
    assert outputs["user_embedding"].shape == (ex.WARMUP_ROWS, DIM)
    text_rows = [[v.decode() for v in row] for row in rows]
    want = _embed(exported["encoder"], _to_ids(text_rows))
    np.testing.assert_allclose(outputs["user_embedding"], want, atol=1e-5)
    inputs, outputs = replies["recommend"]
    assert inputs["item_ids"].tolist() == rows.tolist()
    assert outputs["item_ids"].shape == outputs["scores"].shape == (ex.WARMUP_ROWS, K)
    assert outputs["item_ids"].dtype == object and outputs["scores"].dtype == np.float32


def test_warmup_of_an_export_without_recommend_has_one_request(exported, tmp_path):
    export_dir = ex.export_encoder(exported["encoder"], VOCAB, str(tmp_path / "e"), max_len=2)
    loaded, replies = _replay_warmup(export_dir)
    assert sorted(replies) == ["serving_default"]
    assert replies["serving_default"][1]["user_embedding"].shape == (ex.WARMUP_ROWS, DIM)


def test_export_is_atomic_and_replaces_a_previous_export(exported, tmp_path):
    export_dir = str(tmp_path / "export")
    # A crashed export left a partial .tmp behind.
    os.makedirs(export_dir + ".tmp/variables")
    (tmp_path / "export.tmp" / "saved_model.pb").write_bytes(b"truncated")
    ex.export_encoder(
        exported["encoder"],
        VOCAB,
        export_dir,
        max_len=MAX_LEN,
        item_embeddings=exported["item_embeddings"],
        k=K,
    )
    assert sorted(os.listdir(tmp_path)) == ["export"]
    assert "recommend" in ex.load_export(export_dir).signatures

    # Exporting again over it replaces it (now without `recommend`, another encoder).
    other = _make_encoder(seed=1)
    ex.export_encoder(other, VOCAB, export_dir, max_len=MAX_LEN)
    assert sorted(os.listdir(tmp_path)) == ["export"]
    loaded = ex.load_export(export_dir)
    assert "recommend" not in loaded.signatures
    rows = BATCHES["ragged"]
    got = loaded.signatures["serving_default"](item_ids=tf.constant(rows))["user_embedding"]
    np.testing.assert_allclose(got.numpy(), _embed(other, _to_ids(rows)), atol=1e-5)
    with open(os.path.join(export_dir, ex.EXPORT_INFO_FILE)) as f:
        info = json.load(f)
    assert info["signatures"] == ["serving_default"] and info["max_len"] == MAX_LEN


def test_bad_arguments_say_what_is_wrong(exported, tmp_path):
    encoder = exported["encoder"]
    with pytest.raises(ValueError, match="reserved tokens"):
        ex.export_encoder(encoder, VOCAB[NUM_RESERVED:], str(tmp_path / "a"), max_len=MAX_LEN)
    with pytest.raises(ValueError, match="vocab_size=33"):
        ex.export_encoder(encoder, VOCAB[:-1], str(tmp_path / "b"), max_len=MAX_LEN)
    with pytest.raises(ValueError, match="positional table"):
        ex.export_encoder(encoder, VOCAB, str(tmp_path / "c"), max_len=MAX_LEN + 1)
    with pytest.raises(ValueError, match=r"expected \(33, 8\)"):
        ex.export_encoder(
            encoder, VOCAB, str(tmp_path / "d"), max_len=MAX_LEN, item_embeddings=np.zeros([33, 4])
        )
    assert not os.listdir(tmp_path)  # nothing half-written


class _DualEncoderLike(tf.keras.Model):
    """Stand-in for the DE model's checkpoint layout: `encoder` + `item_tower` table."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder
        self.item_tower = tf.keras.layers.Embedding(len(VOCAB), DIM)

    def call(self, items):
        return self.encoder(items), self.item_tower(items[:, 0])


def _write_run(run_dir, artifact_dir, model, model_name):
    os.makedirs(os.path.join(artifact_dir, "vocab"))
    with open(os.path.join(artifact_dir, "vocab", "items.txt"), "w") as f:
        f.write("\n".join(VOCAB) + "\n")
    encoder_kwargs = {
        "vocab_size": len(VOCAB),
        "max_len": MAX_LEN,
        "dim": DIM,
        "num_blocks": 1,
        "num_heads": 2,
        "dropout": 0.0,
    }
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        json.dump(
            {
                "artifact_dir": str(artifact_dir),
                "max_len": MAX_LEN,
                "encoder": encoder_kwargs,
                "model": model_name,
            },
            f,
        )
    optimizer = tf.keras.optimizers.Adam()
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(model=model, optimizer=optimizer),
        os.path.join(run_dir, "checkpoints"),
        max_to_keep=2,
    )
    manager.save()


def test_main_exports_a_bt_run_from_its_checkpoint(tmp_path):
    encoder = _make_encoder(seed=3)
    model = BarlowTwinsModel(encoder, build_projector("16-16", synchronized_bn=False))
    model.project(tf.zeros([2, MAX_LEN], tf.int32))
    run_dir = str(tmp_path / "run")
    _write_run(run_dir, str(tmp_path / "artifact"), model, "bt")

    assert export_cli.main([f"--run_dir={run_dir}"]) == 0
    loaded = ex.load_export(os.path.join(run_dir, "export"))
    assert sorted(loaded.signatures) == ["serving_default"]
    rows = BATCHES["ragged"]
    got = loaded.signatures["serving_default"](item_ids=tf.constant(rows))["user_embedding"]
    # A fresh encoder has other random weights: equality means the checkpoint was restored.
    np.testing.assert_allclose(got.numpy(), _embed(encoder, _to_ids(rows)), atol=1e-5)


def test_main_adds_recommend_for_a_de_run(tmp_path):
    encoder = _make_encoder(seed=4)
    model = _DualEncoderLike(encoder)
    model(tf.constant([[3, 4, 0]]))
    run_dir = str(tmp_path / "run")
    _write_run(run_dir, str(tmp_path / "artifact"), model, "de")

    export_cli.main([f"--run_dir={run_dir}", "--k=3"])
    loaded = ex.load_export(os.path.join(run_dir, "export"))
    rows = BATCHES["unknown"]
    top = loaded.signatures["recommend"](item_ids=tf.constant(rows))
    user = _embed(encoder, _to_ids(rows))
    table = model.item_tower.embeddings.numpy()[NUM_RESERVED:]
    want = np.argsort(-(user @ table.T), axis=1, kind="stable")[:, :3]
    assert top["item_ids"].numpy().astype(str).tolist() == [
        [VOCAB[NUM_RESERVED + j] for j in row] for row in want
    ]


def test_restore_rejects_a_checkpoint_without_the_encoder(tmp_path):
    other = tf.keras.Sequential([tf.keras.layers.Dense(2)])
    other(tf.zeros([1, 3]))
    run_dir = str(tmp_path / "run")
    _write_run(run_dir, str(tmp_path / "artifact"), other, "bt")
    with pytest.raises(ValueError, match="model/encoder"):
        ex.restore_encoder(run_dir)
    shutil.rmtree(os.path.join(run_dir, "checkpoints"))
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        ex.restore_encoder(run_dir)
