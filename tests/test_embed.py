"""`python -m bt_tf.embed`: every user's embedding out, from a tiny trained run or its export."""

import json
import os
import shutil
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorboard.plugins import projector

from bt_tf import cli
from bt_tf import embed as embed_cli
from bt_tf import features as F
from bt_tf.data import dataset
from bt_tf.data.embeddings import embed_split
from bt_tf.errors import UserError
from bt_tf.evaluation import labels
from bt_tf.serving import embed, export

# Parts of 128 users (2 batches) so train's ~310 users span three parts.
FLAGS = ["--batch_size=64", "--part_size=100", "--no-progress"]
PROJECTOR_USERS = 150  # fewer than the ~400 users: the projector holds a sample


@pytest.fixture(scope="module")
def run(runs, tmp_path_factory):
    """A tiny trained BT run (the shared `runs["bt"]`, copied, with its export) and its
    embeddings written from the run dir."""
    root = tmp_path_factory.mktemp("embed")
    run_dir, out = str(root / "run"), str(root / "out")
    shutil.copytree(runs["bt"], run_dir)
    export.export_run(run_dir)
    with open(os.path.join(run_dir, "config.json")) as f:
        run_config = json.load(f)
    assert (
        embed_cli.main(
            [
                f"--run_dir={run_dir}",
                f"--output_dir={out}",
                f"--projector_users={PROJECTOR_USERS}",
                *FLAGS,
            ]
        )
        == 0
    )
    return {"dir": run_dir, "out": out, "config": run_config, "root": root}


@pytest.fixture(scope="module")
def reference(run):
    """split -> (user ids, embeddings, kept features) from `embed_split` on the restored encoder."""
    encoder, config = export.restore_encoder(run["dir"])
    keep = [F.USER_ID, F.FUTURE_GENRE_IDS, "attr_segment", F.HISTORY_RAW_ITEM_IDS]
    out = {}
    for split in F.SPLITS:
        emb, kept = embed_split(
            encoder, config["artifact_dir"], split, max_len=config["max_len"], keep=keep
        )
        out[split] = ([u.decode() for u in kept[F.USER_ID]], emb, kept)
    return out


def _files(directory):
    """{relative path: bytes} of every file below `directory` but the lock's (its holder)."""
    out = {}
    for root, _, names in os.walk(directory):
        for name in names:
            if name.startswith(".lock"):
                continue
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = f.read()
    return out


def test_embeddings_equal_the_encoder_and_every_user_appears_once(run, reference):
    ids, splits, vectors = embed.read_embeddings(run["out"])
    counts = dataset.load_metadata(run["config"]["artifact_dir"])["num_users"]
    assert vectors.shape == (sum(counts.values()), run["config"]["dim"])
    assert vectors.dtype == np.float32
    start = 0
    for split in F.SPLITS:
        want_ids, want, _ = reference[split]
        n = len(want_ids)
        assert n == counts[split]
        assert list(splits[start : start + n]) == [split] * n
        got_ids = list(ids[start : start + n])
        assert got_ids == want_ids  # same users, once each, in file order
        assert len(set(got_ids)) == n
        np.testing.assert_allclose(vectors[start : start + n], want, atol=1e-6)
        start += n
    assert start == len(ids)
    assert np.abs(vectors[0] - vectors[1]).max() > 1e-3  # not all the same vector

    info = json.load(open(os.path.join(run["out"], "embed_info.json")))
    assert list(info["splits"]) == list(F.SPLITS)
    assert [os.path.basename(p) for p in info["splits"]["train"]["parts"]] == [
        "train-00000.parquet",
        "train-00001.parquet",
        "train-00002.parquet",
    ]
    assert info["settings"]["part_size"] == 128 and info["dim"] == run["config"]["dim"]


def test_parquet_is_readable_with_pyarrow_alone(run, reference):
    table = pq.read_table(os.path.join(run["out"], "embeddings"))
    assert table.schema.field("user_id").type == pa.string()
    assert table.schema.field("split").type == pa.string()
    assert table.schema.field("embedding").type == pa.list_(pa.float32())
    assert table.num_rows == sum(len(r[0]) for r in reference.values())
    rows = {
        u: (s, e) for u, s, e in zip(*(table.column(c).to_pylist() for c in table.column_names))
    }
    want_ids, want, _ = reference["test"]
    assert rows[want_ids[3]][0] == "test"
    np.testing.assert_allclose(rows[want_ids[3]][1], want[3], atol=1e-6)
    # Row groups are written as batches come: a part has row groups, not one blob.
    assert (
        pq.ParquetFile(os.path.join(run["out"], "embeddings", "test-00000.parquet")).num_row_groups
        >= 1
    )


def test_projector_metadata_rows_align_with_the_vectors(run, reference):
    folder = os.path.join(run["out"], "projector")
    # What TensorBoard's projector reads: config, latest checkpoint, metadata.
    with open(os.path.join(folder, "projector_config.pbtxt")) as f:
        config = text_format.Parse(f.read(), projector.ProjectorConfig())
    (entry,) = config.embeddings
    assert entry.metadata_path == "metadata.tsv"
    checkpoint = tf.train.latest_checkpoint(folder)
    assert checkpoint == os.path.join(folder, "embeddings.ckpt")
    vectors = tf.train.load_checkpoint(checkpoint).get_tensor(entry.tensor_name)
    with open(os.path.join(folder, entry.metadata_path)) as f:
        lines = f.read().splitlines()
    header, rows = lines[0].split("\t"), [line.split("\t") for line in lines[1:]]
    assert header == ["user_id", "split", "favorite_genre", "segment"]
    assert vectors.shape == (PROJECTOR_USERS, run["config"]["dim"]) and len(rows) == PROJECTOR_USERS

    artifact = run["config"]["artifact_dir"]
    genres = dataset.load_vocab(artifact, "genres")
    classes = dataset.load_metadata(artifact)["attributes"]["segment"]["classes"]
    by_user = {}
    for split, (ids, emb, kept) in reference.items():
        favorite = labels.favorite_genre(kept[F.FUTURE_GENRE_IDS])
        for i, user in enumerate(ids):
            genre = genres[favorite[i]] if favorite[i] >= 0 else ""
            by_user[split, user] = (emb[i], genre, classes[kept["attr_segment"][i]])
    assert len({(r[1], r[0]) for r in rows}) == PROJECTOR_USERS  # a sample without repeats
    assert {r[1] for r in rows} == set(F.SPLITS)
    for (user, split, genre, segment), vector in zip(rows, vectors):
        want_vector, want_genre, want_segment = by_user[split, user]
        np.testing.assert_allclose(vector, want_vector, atol=1e-6)
        assert (genre, segment) == (want_genre, want_segment)


def test_rerun_resumes_a_deleted_part_with_the_same_bytes(run, tmp_path):
    out = str(tmp_path / "out")
    shutil.copytree(run["out"], out)
    before = _files(out)
    part = os.path.join(out, "embeddings", "train-00001.parquet")
    kept = os.path.join(out, "embeddings", "train-00002.parquet")
    os.utime(kept, ns=(1, 1))  # a part that is not rewritten keeps this mtime
    os.remove(part)
    shutil.rmtree(os.path.join(out, "projector"))
    args = [
        f"--run_dir={run['dir']}",
        f"--output_dir={out}",
        f"--projector_users={PROJECTOR_USERS}",
    ]
    assert embed_cli.main([*args, *FLAGS]) == 0
    assert _files(out) == before
    assert os.stat(kept).st_mtime_ns == 1

    # Other settings into the same directory: a one-line usage error, nothing touched.
    with pytest.raises(SystemExit) as exit_info:
        cli.run_main(embed_cli.main, [*args, *FLAGS, "--format=tfrecord"])
    assert exit_info.value.code == 2
    assert _files(out) == before


def test_saved_model_alone_gives_the_run_dirs_vectors(run, tmp_path):
    # The export copied away from its run: nothing but the SavedModel and the artifacts.
    alone = str(tmp_path / "model")
    shutil.copytree(os.path.join(run["dir"], "export"), alone)
    out = str(tmp_path / "out")
    artifact = run["config"]["artifact_dir"]
    args = [f"--saved_model={alone}", f"--artifact_dir={artifact}", f"--output_dir={out}"]
    assert embed_cli.main([*args, *FLAGS, "--format=tfrecord", "--projector_users=0"]) == 0
    assert not os.path.exists(os.path.join(out, "projector"))
    want_ids, want_splits, want = embed.read_embeddings(run["out"])
    ids, splits, got = embed.read_embeddings(out)
    assert list(ids) == list(want_ids) and list(splits) == list(want_splits)
    np.testing.assert_allclose(got, want, atol=1e-5)

    # The TFRecord parts read with plain tf.data as well.
    path = os.path.join(out, "embeddings", "eval-00000.tfrecord")
    records = list(tf.data.TFRecordDataset(path).as_numpy_iterator())
    first = tf.train.Example.FromString(records[0]).features.feature
    assert first["user_id"].bytes_list.value[0].decode() == ids[list(splits).index("eval")]
    assert first["split"].bytes_list.value == [b"eval"]
    assert len(first["embedding"].float_list.value) == run["config"]["dim"]
    assert len(records) == list(splits).count("eval")

    # Without --artifact_dir, an export inside a run dir finds the run's artifacts.
    source = embed.saved_model_source(
        os.path.join(run["dir"], "export"),
        embed.default_artifact_dir(os.path.join(run["dir"], "export")),
    )
    assert source.artifact_dir == artifact
    assert embed.default_artifact_dir(alone) is None


def test_input_file_users(run, reference, tmp_path):
    ids, emb, kept = reference["eval"]
    histories = [[v.decode() for v in row if v] for row in kept[F.HISTORY_RAW_ITEM_IDS][:3]]
    path = tmp_path / "users.jsonl"
    lines = [json.dumps({"user_id": f"me{i}", "item_ids": h}) for i, h in enumerate(histories)]
    lines.insert(1, "")  # blank lines are skipped
    lines.append(json.dumps({"user_id": 7, "item_ids": [*histories[0], "never-seen"]}))
    path.write_text("\n".join(lines) + "\n")
    out = str(tmp_path / "out")
    export_dir = os.path.join(run["dir"], "export")
    assert (
        embed_cli.main(
            [
                f"--saved_model={export_dir}",
                f"--input={path}",
                f"--output_dir={out}",
                "--no-progress",
            ]
        )
        == 0
    )
    got_ids, splits, got = embed.read_embeddings(out)
    assert list(got_ids) == ["me0", "me1", "me2", "7"] and set(splits) == {"input"}
    np.testing.assert_allclose(got[:3], emb[:3], atol=1e-5)
    assert np.abs(got[3] - got[0]).max() > 1e-4  # an extra unknown item changes the embedding
    with open(os.path.join(out, "projector", "metadata.tsv")) as f:
        assert f.read().splitlines() == [
            "user_id\tsplit",
            "me0\tinput",
            "me1\tinput",
            "me2\tinput",
            "7\tinput",
        ]

    path.write_text('{"user_id": "a", "item_ids": ["1"]}\n{"user_id": "b", "item_ids": "1 2"}\n')
    with pytest.raises(UserError, match=r"item_ids must be a list .* \(.*users.jsonl:2\)$"):
        list(embed.read_input_file(str(path)))


def test_input_checks_are_counted_and_on_unknown_decides(run, reference, tmp_path, capsys):
    """Unknown item ids, empty histories, repeated and empty user ids: counted in
    embed_info.json and said on stderr; --on_unknown=oov embeds unknown ids as the OOV
    item, skip drops them (and users left with nothing), error names the line."""
    _, emb, kept = reference["eval"]
    known = [v.decode() for v in kept[F.HISTORY_RAW_ITEM_IDS][0] if v]
    users = [
        ("me0", known),
        ("me0", known),  # line 2: a repeated user id
        ("", known),  # line 3: an empty user id
        ("lost", ["never-1", "never-2"]),  # line 4: only unknown ids
        ("part", [*known, "never-3"]),  # line 5: one unknown id
        ("nothing", []),  # line 6: an empty history
    ]
    path = tmp_path / "users.jsonl"
    path.write_text("".join(json.dumps({"user_id": u, "item_ids": h}) + "\n" for u, h in users))
    export_dir = os.path.join(run["dir"], "export")

    def embed_with(policy: str):
        out = str(tmp_path / policy)
        argv = [f"--saved_model={export_dir}", f"--input={path}", f"--output_dir={out}"]
        code = cli_code(embed_cli.main, [*argv, f"--on_unknown={policy}", "--no-progress"])
        return code, out, capsys.readouterr().err

    code, out, err = embed_with("oov")
    assert code == 0
    checks = json.load(open(os.path.join(out, "embed_info.json")))["splits"]["input"]["checks"]
    assert checks == {
        "on_unknown": "oov",
        "users_read": 6,
        "users_written": 6,
        "unknown_item_ids": 3,
        "unknown_items": 2,
        "only_unknown_items": 1,
        "empty_histories": 1,
        "duplicate_user_ids": 1,
        "empty_user_ids": 1,
        "skipped": 0,
        "first_lines": {
            "unknown_items": [4, 5],
            "only_unknown_items": [4],
            "empty_histories": [6],
            "duplicate_user_ids": [2],
            "empty_user_ids": [3],
        },
    }
    (warning,) = err.splitlines()
    assert warning.startswith(f"warning: {path}: 6 users read, 6 written; 2 users with 3 item")
    assert "1 repeated user ids (written again)" in warning and "1 empty user ids" in warning
    ids, _, vectors = embed.read_embeddings(out)
    assert list(ids) == [u for u, _ in users]  # written as they come
    np.testing.assert_allclose(vectors[0], emb[0], atol=1e-5)
    assert np.abs(vectors[4] - vectors[0]).max() > 1e-4  # the OOV item counts in "part"

    code, out, err = embed_with("skip")
    assert code == 0
    checks = json.load(open(os.path.join(out, "embed_info.json")))["splits"]["input"]["checks"]
    assert (checks["users_written"], checks["skipped"]) == (4, 2)
    assert checks["first_lines"]["skipped"] == [4, 6]
    ids, _, vectors = embed.read_embeddings(out)
    assert list(ids) == ["me0", "me0", "", "part"]
    np.testing.assert_allclose(vectors[3], emb[0], atol=1e-5)  # "part" without its unknown id

    code, out, err = embed_with("error")
    assert code == 2 and err.count("\n") == 1
    assert err == (
        "error: item id 'never-1' is not in the model's vocabulary (--on_unknown=error) "
        f"({path}:4)\n"
    )


def cli_code(main, argv) -> int:
    """The exit code of ``main(argv)`` run as the command line runs it."""
    with pytest.raises(SystemExit) as exit_info:
        cli.run_main(main, argv)
    return exit_info.value.code


def test_flag_errors_exit_with_code_2(run, tmp_path, capsys):
    bad = [
        [f"--run_dir={run['dir']}", f"--input={tmp_path / 'x.jsonl'}"],
        [f"--saved_model={tmp_path}"],  # not in a run dir, no --artifact_dir
        [f"--run_dir={tmp_path / 'missing'}"],
        [f"--run_dir={run['dir']}", "--part_size=0"],
    ]
    for flags in bad:
        with pytest.raises(SystemExit) as exit_info:
            cli.run_main(embed_cli.main, [*flags, f"--output_dir={tmp_path / 'out'}"])
        assert exit_info.value.code == 2, flags
    err = capsys.readouterr().err
    assert "--input and --artifact_dir" not in err and "go with --saved_model" in err
    assert "--artifact_dir=ART" in err and "No config.json" in err and "--part_size=0" in err
    lines = err.splitlines()  # one line per error, no traceback
    assert len(lines) == len(bad) and all(line.startswith("error: ") for line in lines)


def test_progress_falls_back_to_a_stderr_counter_without_tqdm(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # `from tqdm import tqdm` raises ImportError
    bar = embed._progress(5, "train", True)
    bar.update(3)
    bar.update(2)
    bar.close()
    assert capsys.readouterr().err.endswith("train: 5/5 users\n")
