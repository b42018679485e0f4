"""Whose labels chose the defaults the evaluated runs used: in-sample or out-of-sample.

A default chosen by reading labels (`bt_tf.training.flags.DEFAULTS_PROVENANCE`:
the dataset, the splits and the tasks whose labels chose it) makes a claim
scored on those same users in-sample: their labels took part in choosing the
settings the claim then judges. `used_provenance` lists the entries the runs
used (a run used a choice when its config holds one of the chosen values);
`chosen_users` marks the evaluated users whose labels took part. The claim
block (`scores.analyse`) reports ``selection``: ``out_of_sample`` when none of
its scored users is marked, else ``in_sample`` with their share.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["used_provenance", "chosen_users"]


def _same(name: str, chosen: Any, used: Any) -> bool:
    """Whether a run's config value ``used`` of flag ``name`` is the ``chosen`` one."""
    if used is None:
        return False
    if name in ("projector", "augment"):  # strings with more than one spelling
        from bt_tf.training.flags import STRUCTURED  # lazy: it imports TensorFlow

        try:
            return STRUCTURED[name](str(chosen)) == STRUCTURED[name](str(used))
        except ValueError:
            return False
    if isinstance(chosen, bool) or isinstance(used, bool):
        return bool(chosen) == bool(used)
    if isinstance(chosen, (int, float)) and isinstance(used, (int, float)):
        return math.isclose(float(chosen), float(used), rel_tol=1e-9)
    return chosen == used


def used_provenance(
    configs: Sequence[Mapping[str, Any]],
    names: Sequence[str],
    provenance_of: Callable[[str], Sequence[Any]] | None = None,
) -> list[dict]:
    """The provenance entries (`flags.Provenance`) the runs used, each once, with the
    ``runs`` (names, a model's pretraining seeds once) and ``used`` (setting ->
    value) that matched.

    A run (``config.json``) used an entry of its dataset's when the entry is its
    model's and the run's config holds at least one of the chosen values (from
    the default or given by hand: either way the labels chose what it ran with).
    ``provenance_of``: dataset -> its entries (default `flags.dataset_provenance`).
    """
    if provenance_of is None:
        from bt_tf.training.flags import dataset_provenance as provenance_of
    out: dict[int, dict] = {}
    for config, name in zip(configs, names):
        dataset = (config.get("data") or {}).get("dataset", "")
        model = config.get("model", "bt")
        for i, entry in enumerate(provenance_of(dataset)):
            if model not in entry.models:
                continue
            used = {k: v for k, v in entry.settings.items() if _same(k, v, config.get(k))}
            if not used:
                continue
            record = out.setdefault(i, {**entry.to_dict(), "runs": [], "used": {}})
            if name not in record["runs"]:
                record["runs"].append(name)
            record["used"].update(used)
    return [out[i] for i in sorted(out)]


def chosen_users(user_ids: np.ndarray, dataset: str, entries: Sequence[Mapping]) -> np.ndarray:
    """``[N]`` bool: the users (raw ids, bytes or str, of ``dataset``) whose labels chose
    one of ``entries`` (`used_provenance`): an entry of the same dataset, the user's
    split under the entry's ``split_percents`` among its ``splits``."""
    from pipelines.blocks import split_of  # the preprocessing's own split of an id

    ids = [u.decode() if isinstance(u, bytes) else str(u) for u in user_ids]
    chosen = np.zeros(len(ids), dtype=bool)
    for entry in entries:
        if entry["dataset"] != dataset:
            continue
        train, evaluation = (int(p) for p in entry["split_percents"])
        splits = set(entry["splits"])
        chosen |= np.array([split_of(u, train, evaluation) in splits for u in ids], dtype=bool)
    return chosen
