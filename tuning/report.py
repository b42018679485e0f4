"""Search outputs, read back from the KerasTuner project on disk.

* ``best_hparams.json``: the best trial's searched and pinned values under
  `bt_tf.train` flag names (``python -m bt_tf.train --hparams=FILE``);
* ``trials.md``: one row per trial (hyperparameters, objective, epochs,
  wall time, status);
* ``objective_vs_lambda.png``: objective against lambda (log x), one colour
  per projector width.

Everything is computed from the ``trial_*/trial.json`` files, so the chief of a
distributed search, a resumed search, or anyone with the directory can
rewrite the reports.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence

from keras_tuner.engine.trial import Trial

from bt_tf import atomic
from tuning import space
from tuning.objective import OBJECTIVES, claim_columns

BEST_HPARAMS = "best_hparams.json"
TRIALS_MD = "trials.md"
PLOT = "objective_vs_lambda.png"


def load_trials(project_dir: str, objective_name: str) -> list[dict]:
    """Every trial of the project, ordered by trial id.

    Returns dicts ``{"trial_id", "status", "values" (hyperparameters incl.
    Fixed and tuner/*), "flags" (`space.train_flags`), "objective" (float or
    None), "epochs", "wall_seconds", "message", "metrics" (every reported
    value, by name)}``.
    """
    rows = []
    for path in sorted(glob.glob(os.path.join(project_dir, "trial_*", "trial.json"))):
        trial = Trial.load(path)
        values = dict(trial.hyperparameters.values)

        def last(name):
            if trial.metrics.exists(name):
                return trial.metrics.get_last_value(name)
            return None

        rows.append(
            {
                "trial_id": trial.trial_id,
                "status": trial.status,
                "values": values,
                "flags": space.train_flags(values),
                "objective": last(objective_name),
                "epochs": last("epochs"),
                "wall_seconds": last("wall_seconds"),
                "message": trial.message,
                "metrics": {name: last(name) for name in trial.metrics.metrics},
            }
        )
    return rows


def completed(trials: Sequence[dict]) -> list[dict]:
    return [t for t in trials if t["status"] == "COMPLETED" and t["objective"] is not None]


def best_trial(trials: Sequence[dict]) -> dict | None:
    """The completed trial with the highest objective (first trial id on ties)."""
    done = completed(trials)
    return max(done, key=lambda t: t["objective"]) if done else None


def best_hparams(trial: dict, *, include_epochs: bool = False) -> dict:
    """`bt_tf.train --hparams` content: searched/pinned values as flag names.

    ``include_epochs``: also the trial's epoch count (Hyperband chooses it).
    """
    out = dict(trial["flags"])
    if include_epochs and trial["epochs"] is not None:
        out["epochs"] = int(trial["epochs"])
    return out


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _interval(metrics: dict, name: str) -> str:
    """``"1.032 [0.981, 1.085]"`` from ``name``, ``name_lo``, ``name_hi`` (empty if unset)."""
    values = [metrics.get(k) for k in (name, f"{name}_lo", f"{name}_hi")]
    if any(v is None for v in values):
        return ""
    return "{:.3f} [{:.3f}, {:.3f}]".format(*values)


def trials_table(trials: Sequence[dict], objective_name: str) -> str:
    """Markdown table, one row per trial; the best trial's id is bold."""
    best = best_trial(trials)
    flag_names = [f for f in space.SEARCHABLE_FLAGS if any(f in t["flags"] for t in trials)]
    hyperband = any("tuner/epochs" in t["values"] for t in trials)
    reported = {name for t in trials for name in t.get("metrics", {})}
    ranged = [n for n in claim_columns(sorted(reported))
              if {f"{n}_lo", f"{n}_hi"} <= reported]  # fmt: skip
    header = ["trial", *flag_names, objective_name, *(f"{n} [95%]" for n in ranged),
              "epochs", "wall time (s)", "status"]  # fmt: skip
    if hyperband:
        header.insert(len(flag_names) + 1, "continues")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for t in trials:
        trial_id = f"**{t['trial_id']}**" if best and t is best else t["trial_id"]
        cells = [trial_id, *(_fmt(t["flags"].get(f)) for f in flag_names)]
        if hyperband:
            cells.append(_fmt(t["values"].get("tuner/trial_id")))
        epochs = None if t["epochs"] is None else int(t["epochs"])
        status = t["status"]
        if status != "COMPLETED" and t["message"]:
            status += ": " + t["message"].strip().splitlines()[-1][:80].replace("|", "/")
        cells += [_fmt(t["objective"]), *(_interval(t.get("metrics", {}), n) for n in ranged),
                  _fmt(epochs), _fmt(t["wall_seconds"]), status]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_objective_vs_lambda(trials: Sequence[dict], objective_name: str, path: str) -> None:
    """Scatter of the objective against lambda (log x): colour = projector output
    width, marker = projector depth; the best trial is circled in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import NullFormatter

    done = [t for t in completed(trials) if "lambd" in t["flags"]]

    def shape(t):
        widths = t["flags"].get("projector", "0").split("-")
        return int(widths[-1]), len(widths)

    widths = sorted({shape(t)[0] for t in done})
    depths = sorted({shape(t)[1] for t in done})
    markers = dict(zip(depths, "o^sDvp*"))
    cmap = plt.get_cmap("viridis", max(2, len(widths)))
    colors = {w: cmap(i) for i, w in enumerate(widths)}
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for t in done:
        width, depth = shape(t)
        ax.scatter(
            t["flags"]["lambd"],
            t["objective"],
            color=colors[width],
            marker=markers[depth],
            edgecolors="black",
            linewidths=0.5,
            s=45,
        )
    best = best_trial(done)
    if best is not None:
        ax.scatter(
            best["flags"]["lambd"], best["objective"], s=180, facecolors="none", edgecolors="red"
        )
    handles = [
        Line2D([], [], ls="", marker="o", color=colors[w], mec="black", label=f"width {w}")
        for w in widths
    ]
    handles += [
        Line2D([], [], ls="", marker=markers[d], color="grey", mec="black", label=f"depth {d}")
        for d in depths
    ]
    if best is not None:
        handles.append(Line2D([], [], ls="", marker="o", mfc="none", mec="red", label="best"))
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("lambda (off-diagonal weight, log scale)")
    ax.set_ylabel(objective_name)
    ax.set_title(f"{len(done)} completed trials")
    if handles:
        ax.legend(handles=handles, title="projector", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    with atomic.replacing(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def write_reports(
    project_dir: str, output_dir: str, objective_name: str, *, include_epochs: bool = False
) -> dict:
    """Writes best_hparams.json (when a trial completed), trials.md and the plot.

    Returns ``{"trials": [...], "best": trial or None, "best_hparams": dict or None}``.
    """
    trials = load_trials(project_dir, objective_name)
    best = best_trial(trials)
    hparams = None
    if best is not None:
        hparams = best_hparams(best, include_epochs=include_epochs)
        atomic.write_json(os.path.join(output_dir, BEST_HPARAMS), hparams, indent=2, sort_keys=True)
    n_done = len(completed(trials))
    header = f"# Trials ({n_done} completed of {len(trials)}; objective {objective_name}, max)\n\n"
    if best is not None:
        header += (
            f"Best: trial {best['trial_id']}, {objective_name} = {best['objective']:.4f}, "
            + ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(hparams.items()))
            + "\n\n"
        )
    if objective_name == OBJECTIVES["claim"]:
        header += (
            "Ratios to the `svd` floor (claim metric per task, mean over the objective's "
            "label fractions; the objective is their mean), cross-fitted over the train and "
            "eval users, with 95% paired bootstrap intervals (users and label seeds "
            "resampled; one pretraining seed per trial).\n\n"
        )
    atomic.write_text(
        os.path.join(output_dir, TRIALS_MD), header + trials_table(trials, objective_name)
    )
    plot_objective_vs_lambda(trials, objective_name, os.path.join(output_dir, PLOT))
    return {"trials": trials, "best": best, "best_hparams": hparams}
