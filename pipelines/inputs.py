"""Which raw files a run reads, their fingerprints, and the version they make.

Also what a dataset says about itself before any record is read: its
attribute classes, what its item tags are called, and the per-file readers.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath

import tensorflow as tf

from pipelines import download, interactions_source, sources, synthetic, textio, tfds_source
from pipelines.config import PreprocessConfig

# The artifacts' format, part of every version digest: raise it whenever the same
# input and settings would write different bytes, so older artifacts are not reused.
# 2: a user's interactions with one timestamp in input order (`tie_order`);
# 1 (unnamed): by item id, then rating.
ARTIFACT_FORMAT = 2


def fingerprint(path: str) -> dict:
    """Size and the SHA-256 of the first MiB: cheap, and enough to tell files apart."""
    with textio.open_binary(path) as f:
        head = hashlib.sha256(f.read(1 << 20)).hexdigest()
    return {
        "file": os.path.basename(path),
        "bytes": tf.io.gfile.stat(path).length,
        "head_sha256": head,
    }


def resolve_inputs(config: PreprocessConfig) -> dict[str, str]:
    """Input label -> raw file path (downloading MovieLens when no data_dir is given).

    Labels are table names (``"interactions"``, ``"items"``, ``"users"``); for
    ``--dataset=interactions`` each interaction file is ``"interactions/<name>"``.
    """
    if config.dataset == "synthetic" or config.source == "tfds":
        return {}
    if config.dataset == "interactions":
        return interactions_source.resolve_files(
            config.interactions, os.path.expanduser(config.data_dir)
        )
    source = sources.get_source(config.dataset)
    data_dir = config.data_dir
    if data_dir is None:
        if config.dataset == "yelp":
            # resolve_files's error says where to get Yelp and where to put it.
            data_dir = os.path.join(config.cache_dir or "~/.cache/bt_tf", "yelp")
        else:
            data_dir = download.fetch_movielens(config.dataset, config.cache_dir)
    return sources.resolve_files(source, os.path.expanduser(data_dir))


def version_of(config: PreprocessConfig, files: dict[str, str]) -> str:
    """A digest of the output settings and input fingerprints: the version dir name."""
    key = {
        "format": ARTIFACT_FORMAT,
        "settings": config.output_settings(),
        "inputs": {t: fingerprint(p) for t, p in sorted(files.items())},
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return "v-" + digest[:12]


def artifact_dir(config: PreprocessConfig) -> str:
    """Where `preprocess(config)` writes (or has written) its artifacts."""
    files = resolve_inputs(config)
    return posixpath.join(
        os.path.expanduser(config.output_dir), config.dataset, version_of(config, files)
    )


def tie_order(config: PreprocessConfig) -> str:
    """How a user's interactions with the same timestamp are ordered (metadata.json)."""
    if config.dataset == "synthetic":
        return "generation order (block, row in the block)"
    if config.source == "tfds":
        return "TFDS example order (index in the train split)"
    return "input order (rank of the file in sorted name order, line or row number)"


def table_of(label: str) -> str:
    """Input label -> its table: ``"interactions/ratings.csv"`` -> ``"interactions"``."""
    return label.split("/", 1)[0]


def readers(config: PreprocessConfig, files: dict[str, str]) -> tuple[dict, dict]:
    """(path -> `sources.Table` of line-oriented files, path -> Parquet parser)."""
    if config.dataset != "interactions":
        source = sources.get_source(config.dataset)
        return {path: getattr(source, label) for label, path in files.items()}, {}
    text, parquet = {}, {}
    for label, path in files.items():
        f = interactions_source.describe(table_of(label), path)
        if f.format == "parquet":
            parquet[path] = interactions_source.row_parser(f, config.interactions)
        else:
            text[path] = interactions_source.text_table(f, config.interactions)
    return text, parquet


def attribute_classes(config: PreprocessConfig) -> dict[str, tuple[str, ...]]:
    """Attribute name -> ordered raw class values for this dataset/source.

    ``--dataset=interactions`` gives ``{}``: its classes come from the users
    file and are counted by the pipeline (`_attribute_classes`).
    """
    if config.dataset == "interactions":
        return {}
    if config.dataset == "synthetic":
        return dict(synthetic.ATTRIBUTES)
    if config.source == "tfds":
        return dict(tfds_source.tfds_attributes(config.dataset))
    return dict(sources.get_source(config.dataset).attributes)


def item_feature_name(config: PreprocessConfig) -> str:
    """What the item tags are: ``"genre"`` (MovieLens, synthetic) or ``"category"``
    (Yelp, your own interactions)."""
    if config.dataset == "synthetic":
        return "genre"
    if config.dataset == "interactions":
        return "category"
    return sources.get_source(config.dataset).item_feature
