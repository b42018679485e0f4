"""Downstream report: mean ± std over seeds, Markdown tables, JSON and PNG plots.

Input rows are the dicts produced by `bt_tf.evaluation.tasks.evaluate_embeddings` and
the floors: ``{"model", "task", "metric", "fraction", "seed", "value", ...}``.
Aggregates are per (task, metric, model, fraction): the mean over seeds and
the sample standard deviation (ddof=1; 0 with one seed). NaN values (e.g. an
AUC on a one-class test set) are left out and shown as "n/a" when no value
remains. The paper states gains as relative improvement of a model ``m`` over
the baseline ``b``: ``(m - b) / b`` in percent, computed on the seed means.

Floors (`FLOORS`: majority class, popularity, bag-of-items, untrained encoder)
are the last rows of every table, so each learned model is read beside them;
a learned model whose mean is below a floor's mean at that fraction is marked
`BELOW_FLOOR` and the footnote under the table names the floor (every metric
here is higher-is-better). `below_floors` lists those cells.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from bt_tf.evaluation.settings import selection_rule

__all__ = [
    "FLOORS",
    "BELOW_FLOOR",
    "is_floor",
    "below_floors",
    "aggregate",
    "relative_improvement",
    "write_report",
    "json_safe",
    "plot_metric_vs_fraction",
    "plot_batch_size_ablation",
]

# Models drawn and listed after the learned ones ("untrained(<run>)" counts as "untrained").
FLOORS = ("untrained", "bag_of_items", "majority", "popularity")
BELOW_FLOOR = "▼"  # marks a learned model's cell whose mean is below a floor's


def is_floor(model: str) -> bool:
    """A floor: a name of `FLOORS`, or ``untrained(<run>)`` (one untrained encoder
    per architecture when runs differ)."""
    return model in FLOORS or model.startswith("untrained(")


def _floor_rank(model: str) -> tuple[int, str]:
    base = "untrained" if model.startswith("untrained(") else model
    return FLOORS.index(base), model


def _finite(values: Iterable[float]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def _mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    vals = _finite(values)
    if not vals:
        return float("nan"), float("nan"), 0
    std = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    return float(np.mean(vals)), std, len(vals)


def aggregate(rows: Sequence[Mapping[str, Any]]) -> list[dict]:
    """``[{"task", "metric", "model", "fraction", "mean", "std", "n_seeds"}]``,
    one per (task, metric, model, fraction), sorted by those keys."""
    groups = collections.defaultdict(list)
    for r in rows:
        missing = {"model", "task", "metric", "fraction", "value"} - set(r)
        if missing:
            raise ValueError(f"result row {r} lacks {sorted(missing)}.")
        groups[(r["task"], r["metric"], r["model"], float(r["fraction"]))].append(r["value"])
    out = []
    for (task, metric, model, fraction), values in sorted(groups.items()):
        mean, std, n = _mean_std(values)
        out.append(
            dict(
                task=task,
                metric=metric,
                model=model,
                fraction=fraction,
                mean=mean,
                std=std,
                n_seeds=n,
            )
        )
    return out


def relative_improvement(model_mean: float, baseline_mean: float) -> float:
    """``100 * (m - b) / b``; NaN if either is missing or ``b == 0``."""
    if not (math.isfinite(model_mean) and math.isfinite(baseline_mean)) or baseline_mean == 0:
        return float("nan")
    return 100.0 * (model_mean - baseline_mean) / baseline_mean


def _model_order(models: Iterable[str], baseline: str, compare: Sequence[str]) -> list[str]:
    models = set(models)
    floors = sorted((m for m in models if is_floor(m)), key=_floor_rank)
    head = [m for m in (*compare, baseline) if m in models and not is_floor(m)]
    rest = sorted(models - set(head) - set(floors))
    return head + rest + floors


def below_floors(aggs: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Learned-model cells whose mean is below a floor's mean at the same
    (task, metric, fraction).

    Args:
      aggs: `aggregate` output.

    Returns:
      ``[{"task", "metric", "fraction", "model", "mean", "floors": {floor:
      mean}}]`` in ``aggs`` order; ``floors`` holds every floor above the
      model, highest first. NaN means are never flagged.
    """
    floors: dict[tuple, dict[str, float]] = collections.defaultdict(dict)
    for a in aggs:
        if is_floor(a["model"]) and math.isfinite(a["mean"]):
            floors[(a["task"], a["metric"], a["fraction"])][a["model"]] = a["mean"]
    out = []
    for a in aggs:
        if is_floor(a["model"]) or not math.isfinite(a["mean"]):
            continue
        here = floors.get((a["task"], a["metric"], a["fraction"]), {})
        above = sorted(((v, f) for f, v in here.items() if a["mean"] < v), reverse=True)
        if above:
            out.append(
                dict(
                    task=a["task"],
                    metric=a["metric"],
                    fraction=a["fraction"],
                    model=a["model"],
                    mean=a["mean"],
                    floors={f: v for v, f in above},
                )
            )
    return out


def _fraction_label(f: float) -> str:
    return f"{100 * f:g}%"


def _cell(mean: float, std: float) -> str:
    return "n/a" if not math.isfinite(mean) else f"{mean:.3f} ± {std:.3f}"


def _pct(v: float) -> str:
    return "n/a" if not math.isfinite(v) else f"{v:+.1f}%"


def json_safe(x: Any) -> Any:
    """``x`` with NaN/inf -> None and numpy scalars -> Python ones, recursively (strict JSON)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.generic):
        return json_safe(x.item())
    return x


def write_report(
    rows: Sequence[Mapping[str, Any]],
    out_dir: str,
    *,
    baseline: str = "de",
    compare: Sequence[str] = ("bt", "bt+de"),
    title: str = "Downstream evaluation",
    protocol: str | None = None,
) -> dict[str, str]:
    """Writes ``report.md``, ``results.json`` and ``metrics_vs_fraction.png``.

    ``report.md`` states the selection protocol (``protocol``, default
    `bt_tf.evaluation.settings.selection_rule` with its defaults) and has, per task and
    metric, a table (rows = models then floors, columns = label fractions,
    cells "mean ± std", `BELOW_FLOOR` on a learned model below a floor, with
    a footnote naming the floor) and, when ``baseline`` is present, the
    relative improvement of each ``compare`` model over it. ``results.json``
    holds the raw rows, the aggregates, the improvements and the
    below-floor cells (`below_floors`) (NaN -> null).

    Returns ``{"markdown": path, "json": path, "plot": path}``.
    """
    if not rows:
        raise ValueError("write_report got no rows; run the evaluation first.")
    if protocol is None:
        protocol = selection_rule()
    os.makedirs(out_dir, exist_ok=True)
    aggs = aggregate(rows)
    flagged = below_floors(aggs)
    tables = _Tables(
        by_key={(a["task"], a["metric"], a["model"], a["fraction"]): a for a in aggs},
        flags={(b["task"], b["metric"], b["model"], b["fraction"]): b for b in flagged},
        baseline=baseline,
        compare=tuple(compare),
    )
    n_seeds = sorted({a["n_seeds"] for a in aggs})
    lines = [
        f"# {title}",
        "",
        f"Mean ± std (ddof=1) over seeds (seeds per cell: {', '.join(map(str, n_seeds))}); "
        "probes trained on the given fraction of train users' labels, selected on the "
        "same fraction of eval users, scored on test users. Relative improvement = "
        f"(m − b) / b on the means, b = `{baseline}`.",
        "",
        protocol,
        "",
        "Floors (" + ", ".join(f"`{f}`" for f in FLOORS) + ") are the last rows of every "
        f"table; {BELOW_FLOOR} marks a learned model whose mean is below a floor's mean at "
        "that fraction, and the note under the table names the floor.",
        "",
    ]
    improvements: list[dict] = []
    for task in dict.fromkeys(r["task"] for r in rows):  # first-seen order
        lines += [f"## {task}", ""]
        for metric in dict.fromkeys(r["metric"] for r in rows if r["task"] == task):
            cells = [a for a in aggs if a["task"] == task and a["metric"] == metric]
            lines += tables.metric(task, metric, cells)
            lines += tables.improvement(task, metric, cells, improvements)
    paths = {
        "markdown": os.path.join(out_dir, "report.md"),
        "json": os.path.join(out_dir, "results.json"),
        "plot": os.path.join(out_dir, "metrics_vs_fraction.png"),
    }
    with open(paths["markdown"], "w") as f:
        f.write("\n".join(lines))
    results = {
        "baseline": baseline,
        "compare": list(compare),
        "rows": [dict(r) for r in rows],
        "aggregates": aggs,
        "relative_improvement": improvements,
        "below_floor": flagged,
        "protocol": protocol,
    }
    with open(paths["json"], "w") as f:
        json.dump(json_safe(results), f, indent=1, allow_nan=False)
    plot_metric_vs_fraction(rows, paths["plot"], baseline=baseline, compare=compare)
    return paths


def _table_head(fractions: Sequence[float]) -> list[str]:
    return [
        "| model | " + " | ".join(_fraction_label(f) for f in fractions) + " |",
        "|---" * (len(fractions) + 1) + "|",
    ]


@dataclasses.dataclass(frozen=True)
class _Tables:
    """The Markdown tables of one report: per (task, metric), the models' cells
    and the relative improvement of the ``compare`` models over ``baseline``."""

    by_key: Mapping[tuple, Mapping[str, Any]]  # (task, metric, model, fraction) -> aggregate
    flags: Mapping[tuple, Mapping[str, Any]]  # the same key -> `below_floors` entry
    baseline: str
    compare: tuple[str, ...]

    def metric(self, task: str, metric: str, cells) -> list[str]:
        """Models x fractions, mean ± std, `BELOW_FLOOR` marks and their note."""
        fractions = sorted({a["fraction"] for a in cells})
        models = _model_order({a["model"] for a in cells}, self.baseline, self.compare)
        lines = [f"### {metric}", "", *_table_head(fractions)]
        notes = []
        for m in models:
            vals = []
            for f in fractions:
                a = self.by_key.get((task, metric, m, f))
                cell = _cell(a["mean"], a["std"]) if a else ""
                b = self.flags.get((task, metric, m, f))
                if b:
                    cell += f" {BELOW_FLOOR}"
                    below = ", ".join(f"`{fl}` {v:.4f}" for fl, v in b["floors"].items())
                    notes.append(f"`{m}` at {_fraction_label(f)} ({b['mean']:.4f}) < {below}")
                vals.append(cell)
            lines.append(f"| {m} | " + " | ".join(vals) + " |")
        lines.append("")
        if notes:
            lines += [f"{BELOW_FLOOR} below a floor: " + "; ".join(notes) + ".", ""]
        return lines

    def improvement(self, task: str, metric: str, cells, improvements: list) -> list[str]:
        """The relative-improvement table (none without the baseline or a compared
        model); appends its values to ``improvements``."""
        fractions = sorted({a["fraction"] for a in cells})
        models = {a["model"] for a in cells}
        present = [c for c in self.compare if c in models and c != self.baseline]
        if self.baseline not in models or not present:
            return []
        lines = [f"Relative improvement over `{self.baseline}`:", "", *_table_head(fractions)]
        for m in present:
            vals = []
            for f in fractions:
                a = self.by_key.get((task, metric, m, f))
                b = self.by_key.get((task, metric, self.baseline, f))
                v = relative_improvement(
                    a["mean"] if a else float("nan"), b["mean"] if b else float("nan")
                )
                improvements.append(
                    dict(
                        task=task,
                        metric=metric,
                        model=m,
                        baseline=self.baseline,
                        fraction=f,
                        relative_improvement_pct=v,
                    )
                )
                vals.append(_pct(v))
            lines.append(f"| {m} | " + " | ".join(vals) + " |")
        return lines + [""]


def _pyplot():
    """pyplot on the Agg backend, imported only when a plot is drawn (it is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_metric_vs_fraction(
    rows: Sequence[Mapping[str, Any]],
    out_path: str,
    *,
    baseline: str = "de",
    compare: Sequence[str] = ("bt", "bt+de"),
) -> str:
    """One panel per (task, metric): mean metric against label fraction (log
    x), one line per model with ±std error bars. Floors are dashed."""
    plt = _pyplot()
    aggs = aggregate(rows)
    panels = list(dict.fromkeys((r["task"], r["metric"]) for r in rows))
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.5 * ncols, 3.6 * nrows), squeeze=False)
    all_models = _model_order({a["model"] for a in aggs}, baseline, compare)
    colors = {m: f"C{i % 10}" for i, m in enumerate(all_models)}  # same colour in every panel
    for ax, (task, metric) in zip(axes.flat, panels):
        cells = [a for a in aggs if a["task"] == task and a["metric"] == metric]
        for m in _model_order({a["model"] for a in cells}, baseline, compare):
            pts = sorted((a["fraction"], a["mean"], a["std"]) for a in cells if a["model"] == m)
            x, y, e = (np.array(v, dtype=float) for v in zip(*pts))
            ax.errorbar(
                x, y, yerr=e, marker="o", ms=3, capsize=3, label=m, color=colors[m],
                linestyle="--" if is_floor(m) else "-",
            )  # fmt: skip
        fractions = sorted({a["fraction"] for a in cells})
        ax.set_xscale("log")
        ax.set_xticks(fractions, [_fraction_label(f) for f in fractions])
        ax.minorticks_off()
        ax.set_xlabel("label fraction of train users")
        ax.set_ylabel(metric)
        ax.set_title(f"{task}: {metric}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def plot_batch_size_ablation(
    rows: Sequence[Mapping[str, Any]],
    out_path: str,
    *,
    task: str,
    metric: str,
    fraction: float | None = None,
    x_key: str = "batch_size",
) -> str:
    """Metric against pretraining batch size (log2 x), one line per model.

    ``rows`` are result rows carrying ``x_key`` (the entry point adds the run's
    batch size to each row); only ``task``/``metric`` (and ``fraction`` when
    given) are drawn, mean ± std over seeds.
    """
    plt = _pyplot()
    groups = collections.defaultdict(list)
    for r in rows:
        if r["task"] != task or r["metric"] != metric or x_key not in r:
            continue
        if fraction is not None and not math.isclose(float(r["fraction"]), fraction):
            continue
        groups[(r["model"], float(r[x_key]))].append(r["value"])
    if not groups:
        raise ValueError(
            f"no rows with task={task!r}, metric={metric!r}, fraction={fraction} and a "
            f"{x_key!r} field; add the run's {x_key} to each row."
        )
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for m in sorted({k[0] for k in groups}):
        pts = sorted((x, *_mean_std(v)[:2]) for (mm, x), v in groups.items() if mm == m)
        x, y, e = (np.array(v, dtype=float) for v in zip(*pts))
        ax.errorbar(x, y, yerr=e, marker="o", ms=3, capsize=3, label=m)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(x_key.replace("_", " "))
    ax.set_ylabel(metric)
    ax.set_title(task + ("" if fraction is None else f" ({_fraction_label(fraction)} labels)"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path
