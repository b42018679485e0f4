"""One model's features through every task, one (task, fraction, seed) at a time, cached.

`EvalPlan` is what every model of one evaluation is probed on (the data, the
label fractions and seeds, the tasks, the settings, the cache dir, the clock);
`evaluate_features` probes one model's features with it (`tasks.evaluate_embeddings`),
reusing the rows of every finished (task, fraction, seed) from
``<cache_dir>/<model>.json`` (`ResultCache`) while the features' fingerprint
(e.g. the run's checkpoint) and the settings are unchanged, so an interrupted
evaluation resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bt_tf.evaluation.embedding_cache import cache_file, fingerprint_key, write_atomically
from bt_tf.evaluation.eval_data import EvalData
from bt_tf.evaluation.settings import EvalSettings
from bt_tf.evaluation.tasks import evaluate_embeddings
from bt_tf.evaluation.timing import StageClock

__all__ = ["EvalPlan", "ResultCache", "evaluate_features"]


@dataclasses.dataclass(frozen=True)
class EvalPlan:
    """What every model of one evaluation is probed on.

    Attributes:
        data: `eval_data.load_eval_data` output.
        fractions, seeds: label fractions of train users, sampling seeds.
        tasks: subset of ``data.labels``.
        settings: probe and task settings.
        cache_dir: where finished (task, fraction, seed) rows are stored and
            reused (None: no cache).
        clock: records the time of each stage.
    """

    data: EvalData
    fractions: tuple[float, ...]
    seeds: tuple[int, ...]
    tasks: tuple[str, ...]
    settings: EvalSettings = EvalSettings()
    cache_dir: str | None = None
    clock: StageClock = dataclasses.field(default_factory=StageClock)

    @staticmethod
    def make(
        data: EvalData,
        *,
        fractions: Sequence[float],
        seeds: Sequence[int],
        tasks: Sequence[str] | None = None,
        settings: EvalSettings = EvalSettings(),
        cache_dir: str | None = None,
        clock: StageClock | None = None,
    ) -> EvalPlan:
        """A plan on ``data``'s tasks by default."""
        return EvalPlan(
            data=data,
            fractions=tuple(fractions),
            seeds=tuple(seeds),
            tasks=tuple(data.labels if tasks is None else tasks),
            settings=settings,
            cache_dir=cache_dir,
            clock=clock or StageClock(),
        )


class ResultCache:
    """``<cache_dir>/<model>.json``: rows per "task|fraction|seed" under a
    fingerprint (features + settings); a changed fingerprint drops them."""

    def __init__(self, directory: str | None, model: str, fingerprint: Mapping[str, Any]):
        self.path = None
        self.entries: dict[str, list] = {}
        self.fingerprint = fingerprint_key(fingerprint)
        if directory is None:
            return
        self.path = cache_file(directory, model, ".json")
        if os.path.exists(self.path):
            with open(self.path) as f:
                stored = json.load(f)
            if stored.get("fingerprint") == self.fingerprint:
                self.entries = stored["rows"]

    @staticmethod
    def key(task: str, fraction: float, seed: int) -> str:
        return f"{task}|{float(fraction)!r}|{int(seed)}"

    def get(self, key: str) -> list[dict] | None:
        """The rows stored under ``key`` (NaN values restored), or None."""
        rows = self.entries.get(key)
        if rows is None:
            return None
        return [
            {k: (float("nan") if k == "value" and v is None else v) for k, v in r.items()}
            for r in rows
        ]

    def put(self, key: str, rows: list[dict]) -> None:
        """Stores ``rows`` under ``key`` (NaN -> null: strict JSON) and writes the file."""
        self.entries[key] = [
            {k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}
            for r in rows
        ]
        if self.path is None:
            return
        content = {"fingerprint": self.fingerprint, "rows": self.entries}
        write_atomically(self.path, "w", lambda f: json.dump(content, f))


def evaluate_features(
    plan: EvalPlan,
    model: str,
    emb: Mapping[str, Any],
    *,
    item_emb: np.ndarray | None = None,
    fingerprint: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    cache_name: str | None = None,
) -> list[dict]:
    """`tasks.evaluate_embeddings` for one model, one (task, fraction, seed) at a time.

    Args:
        plan: the data, fractions, seeds, tasks, settings, cache dir and clock.
        model: name in every row.
        emb: split -> ``[n_split, d]`` dense or sparse user features aligned
            with ``plan.data``.
        item_emb: ``[num_items, e]`` item embeddings for liked item (None ->
            one-hot items).
        fingerprint: identifies the features (e.g. the run's checkpoint) in
            the result cache.
        extra: fields added to every row (e.g. ``run_dir``, ``batch_size``), also
            to rows read from the cache.
        cache_name: the result cache's name (default ``model``): apart for runs
            that share a ``model`` name (e.g. its pretraining seeds).

    The clock records each task as stage ``"<cache_name>: <task>"``.
    """
    data = plan.data
    label = cache_name or model
    cache = ResultCache(
        plan.cache_dir,
        label,
        {
            "model": model,
            "features": dict(fingerprint or {}),
            "settings": dataclasses.asdict(plan.settings),
            "artifact_dir": data.artifact_dir,
            "width": data.width,
        },
    )
    rows: list[dict] = []
    for task in plan.tasks:
        with plan.clock(f"{label}: {task}"):
            for fraction in plan.fractions:
                for seed in plan.seeds:
                    key = cache.key(task, fraction, seed)
                    cached = cache.get(key)
                    if cached is None:
                        new = _probe(plan, model, emb, task, fraction, seed, item_emb, extra)
                        cache.put(key, new)
                        rows += new
                    else:
                        logging.info(
                            "%s %s fraction=%g seed=%d: cached", label, task, fraction, seed
                        )
                        # ``extra`` as of now: rows cached before a field existed get it too
                        rows += [dict(r, **(extra or {})) for r in cached]
    return rows


def _probe(plan, model, emb, task, fraction, seed, item_emb, extra) -> list[dict]:
    """Rows of one (task, fraction, seed), computed."""
    data, settings = plan.data, plan.settings
    new = evaluate_embeddings(
        emb,
        {task: data.labels[task]},
        model=model,
        fractions=[fraction],
        seeds=[seed],
        num_items=data.num_items,
        item_emb=item_emb,
        history=data.history,
        exclude_history=settings.exclude_history,
        k=settings.k,
        min_selection_users=settings.min_selection_users,
        probe_kwargs=settings.probe_kwargs(),
    )
    new = [dict(r, **(extra or {})) for r in new]
    values = ", ".join(f"{r['metric']}={r['value']:.4f}" for r in new)
    logging.info("%s %s fraction=%g seed=%d: %s", model, task, fraction, seed, values)
    return new
