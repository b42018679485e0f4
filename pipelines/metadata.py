"""What a run says about its output: statistics, their checks, metadata.json, schema.pbtxt."""

from __future__ import annotations

import posixpath
from collections.abc import Iterable

from tensorflow_metadata.proto.v0 import schema_pb2

from bt_tf import features as F
from bt_tf.errors import UserError
from pipelines.config import PreprocessConfig
from pipelines.examples import TOO_SHORT
from pipelines.inputs import ARTIFACT_FORMAT, fingerprint, item_feature_name, tie_order


def merge_stats(entries: Iterable[tuple[str, object]]) -> dict:
    """The pipeline's (key, value) stat entries -> one dict (sums, maxima, lists)."""
    out: dict = {"kcore": [], "bad_records": {}, "vocab_size": {}, "lines": {}}
    for key, value in entries:
        if key == "kcore":
            out["kcore"].append(value)
        elif key in ("bad_records", "vocab_size"):
            out[key].update(value)
        elif key == "attributes":
            out[key] = value
        elif key.startswith("max_"):
            out[key] = max(out.get(key, 0), value)
        elif key == "lines":
            table, n = value
            out["lines"][table] = out["lines"].get(table, 0) + n
        else:
            out[key] = out.get(key, 0) + value
    out["kcore"].sort(key=lambda s: s["iteration"])
    return out


def schema_for(attributes: Iterable[str]):
    """The tensorflow_metadata Schema of the per-user Examples."""
    schema = schema_pb2.Schema()
    scalars = {F.USER_ID: schema_pb2.BYTES, F.HISTORY_LENGTH: schema_pb2.INT}
    scalars.update({F.ATTRIBUTE_PREFIX + a: schema_pb2.INT for a in attributes})
    lists = {}
    for prefix in ("HISTORY", "FUTURE"):
        lists[getattr(F, f"{prefix}_ITEM_IDS")] = schema_pb2.INT
        lists[getattr(F, f"{prefix}_RAW_ITEM_IDS")] = schema_pb2.BYTES
        lists[getattr(F, f"{prefix}_TIMESTAMPS")] = schema_pb2.INT
        lists[getattr(F, f"{prefix}_RATINGS")] = schema_pb2.FLOAT
        lists[getattr(F, f"{prefix}_GENRE_IDS")] = schema_pb2.INT
        lists[getattr(F, f"{prefix}_GENRE_COUNTS")] = schema_pb2.INT
    for name, kind in scalars.items():
        feature = schema.feature.add(name=name, type=kind)
        feature.shape.dim.add(size=1)
        feature.presence.min_fraction = 1.0
    for name, kind in lists.items():
        feature = schema.feature.add(name=name, type=kind)
        feature.value_count.min = 0
        feature.presence.min_fraction = 1.0
    return schema


class BadRecordsError(UserError):
    """More unparsable input lines than --max_bad_fraction allows."""


class KCoreNotConvergedError(UserError):
    """k-core filtering needed more than --kcore_max_iterations rounds."""


def check_stats(stats: dict, config: PreprocessConfig, tmp: str) -> None:
    """Fails the run: too many bad records, or a k-core that did not converge."""
    bad = sum(stats["bad_records"].values())
    total = sum(stats["lines"].values())
    if total == 0:
        raise UserError(f"no input records were read for --dataset={config.dataset}")
    if bad / total > config.max_bad_fraction:
        where = posixpath.join(tmp, F.BAD_RECORDS_DIR)
        per_file = ", ".join(f"{f}: {n}" for f, n in sorted(stats["bad_records"].items()))
        raise BadRecordsError(
            f"{bad} of {total} input records ({bad / total:.4%}) could not be parsed "
            f"({per_file}), more than --max_bad_fraction={config.max_bad_fraction}. "
            f"Each is listed with its file, line and reason in {where}/. Fix the input, "
            f"or raise --max_bad_fraction to skip them (they stay counted)."
        )
    last = stats["kcore"][-1]
    if last["users_removed"] or last["items_removed"]:
        raise KCoreNotConvergedError(
            f"k-core filtering did not converge in --kcore_max_iterations="
            f"{config.kcore_max_iterations} rounds (a further round would remove "
            f"{last['users_removed']} users and {last['items_removed']} items); "
            "raise --kcore_max_iterations."
        )


def metadata(
    config: PreprocessConfig, files: dict, stats: dict, attributes: dict, version: str
) -> dict:
    """The contents of metadata.json."""
    vocab = stats["vocab_size"]
    rounds = [s for s in stats["kcore"] if s["users_removed"] or s["items_removed"]]
    return {
        "dataset": config.dataset,
        "source": config.source,
        "version": version,
        "format": ARTIFACT_FORMAT,
        "settings": config.output_settings(),
        # A user's interactions: by timestamp, ties in this order.
        "tie_order": tie_order(config),
        "max_len": config.max_len,
        "max_history_len": stats.get("max_history_len", 0),  # longest history written
        "future_len": config.future_len,
        "item_feature": item_feature_name(config),
        # False when --dataset=interactions has no --rating_col (ratings written as 0).
        "has_ratings": config.dataset != "interactions" or config.interactions.has_ratings,
        "num_users": {s: stats.get(f"users_{s}", 0) for s in F.SPLITS},
        "num_interactions": {s: stats.get(f"interactions_{s}", 0) for s in F.SPLITS},
        "vocab_sizes": {"items": vocab[F.ITEM_VOCAB_FILE], "genres": vocab[F.GENRE_VOCAB_FILE]},
        "reserved_ids": {"pad": F.PAD_ID, "mask": F.MASK_ID, "oov": F.OOV_ID},
        "attributes": {name: {"classes": list(c)} for name, c in attributes.items()},
        "kcore": {
            "min_user_interactions": config.min_user_interactions,
            "min_item_interactions": config.min_item_interactions,
            "iterations": len(rounds),
            "rounds": stats["kcore"][:-1],
        },
        "split": {
            "train_percent": config.train_percent,
            "eval_percent": config.eval_percent,
            "test_percent": 100 - config.train_percent - config.eval_percent,
            "by": "sha256(user_id) % 100",
        },
        "num_shards": config.num_shards,
        "dropped_users": {TOO_SHORT: stats.get(TOO_SHORT, 0)},
        "items_without_metadata": stats.get("items_without_metadata", 0),
        "input_records": stats["lines"],
        "bad_records": {
            "total": sum(stats["bad_records"].values()),
            "by_file": stats["bad_records"],
            "max_bad_fraction": config.max_bad_fraction,
        },
        "source_files": {t: fingerprint(p) for t, p in sorted(files.items())},
    }
