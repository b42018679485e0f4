"""Training recipes compared with intervals: `python -m tuning.compare`.

    python -m tuning.compare --dataset=ml-100k --data_dir=DATA/ml-100k --model=de \\
        --variants='b128:batch_size=128;t0.05:temperature=0.05;last:pooling=last' \\
        --pretrain_seeds=2 --output_dir=tuning_runs/de_recipe

Trains the base recipe (every `bt_tf.train` flag given, the dataset's defaults
for ``--model`` otherwise; named ``base``) and each variant (``name:flag=value,
flag=value``, variants separated by ``;``) with ``--pretrain_seeds`` seeds
each, under the same budget, then evaluates them TOGETHER with the
cross-fitted probes of `bt_tf.evaluate` on the train and eval users only
(``--users``; the test split is never read, so a recipe chosen here leaves
the final report's test users unseen). Every variant is compared with the
base on the same users: per task of the claim (next item NDCG@10, favorite
genre balanced accuracy, liked item AUC) the variant / base ratio, the mean
over ``--label_fractions`` (default 5% and 10%), with its 95% paired bootstrap
interval. A variant is ``ahead`` on a task when the interval's low end is
above 1, ``behind`` when its high end is below 1.

Under ``--protocol=leave_one_out`` there are no downstream labels: every recipe is
judged on the validation item (item n-1, the one training already selects epochs on;
`bt_tf.evaluation.recommender.score_run` with ``stage="val"``) of every user, by
full-ranking NDCG@10 (primary) and HR@10 and sampled HR@10 / NDCG@10 beside it, each
variant / base with its 95% interval, users and seeds resampled and paired over users
(`reproduction.recommend_and_compare`). The test item is never scored: the runs train
with ``--no-score_test``.

Writes ``<output_dir>/compare.md`` and ``compare.json`` beside the runs
(``<output_dir>/<variant>/seed<k>``) and the evaluation
(``<output_dir>/report/``); rerunning reuses finished runs and probes.
"""

from __future__ import annotations

import sys

from bt_tf import cli

if __name__ in cli.MAIN_NAMES:  # also a spawned probe worker's import of this module
    cli.startup(sys.argv[1:])  # before TensorFlow and Beam are imported: quiet unless --verbose

import argparse
import dataclasses
import json
import logging
import os
from collections.abc import Sequence

import bt_tf  # noqa: F401  (One Keras)
from bt_tf import atomic, evaluate, locks
from bt_tf.data import dataset
from bt_tf.errors import UserError
from bt_tf.evaluation import recommender, report, reproduction, scores
from bt_tf.evaluation.intervals import CLAIM_FRACTIONS
from bt_tf.evaluation.protocol import Protocol
from bt_tf.evaluation.reproduction import equal_budget_steps
from bt_tf.evaluation.runner import evaluate_records
from bt_tf.evaluation.tasks import CLAIM_METRICS
from bt_tf.training import flags, trainer
from bt_tf.training.config import TrainConfig
from pipelines import preprocess

__all__ = ["BASE", "parse_variants", "variant_configs", "compare", "compare_recommenders", "main"]

BASE = "base"
_TRAINING_DESCRIPTION = "tuning.compare training flags"  # their parser's description


def parse_variants(text: str) -> list[tuple[str, dict[str, str]]]:
    """``"b128:batch_size=128;t:temperature=0.05,learning_rate=3e-4;q:no-de_logq"`` ->
    ``[("b128", {"batch_size": "128"}), ("t", {...}), ("q", {"no-de_logq": None})]``
    (values stay strings; a bare flag has the value None)."""
    out = []
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        name, sep, body = part.partition(":")
        if not sep or not name.strip() or name.strip() == BASE:
            raise ValueError(f"variant {part!r}: write it as NAME:flag=value[,flag=value]")
        settings = {}
        for item in (i.strip() for i in body.split(",") if i.strip()):
            key, eq, value = item.partition("=")
            if not key.strip().lstrip("-"):
                raise ValueError(f"variant {name}: {item!r} is not flag=value")
            settings[key.strip().lstrip("-")] = value.strip() if eq else None  # bare: no-de_logq
        out.append((name.strip(), settings))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise ValueError(f"variant names repeat: {names}")
    return out


def variant_configs(
    argv: Sequence[str], variants, output_dir: str, pretrain_seeds: int
) -> list[tuple[str, TrainConfig]]:
    """(variant name, config) of every run: the base and each variant, each seed.

    A variant's flags are appended to the training command line, so they are
    parsed, checked and defaulted exactly as `bt_tf.train` would. The budget is
    `bt_tf.reproduce`'s: a variant with another batch size trains as many users
    per epoch as the base (`reproduction.equal_budget_steps`).
    """
    parsed = []  # every recipe's flags are checked before the data is preprocessed
    # argparse keeps its flags in `_actions` only; there is no public list of them.
    known = {o.lstrip("-") for a in flags.build_parser([])._actions for o in a.option_strings}
    for name, settings in [(BASE, {})] + list(variants):
        unknown = sorted(k for k in settings if k not in known)
        if unknown:  # else it would pass on to Beam as an option, and change nothing
            raise UserError(f"--variants: {name} sets {unknown}, not training flags")
        extra = [f"--{k}" if v is None else f"--{k}={v}" for k, v in settings.items()]
        parsed.append((name, flags.parse([*argv, *extra], description=_TRAINING_DESCRIPTION)))
    base = parsed[0][1]
    other = [name for name, config in parsed if config.protocol != base.protocol]
    if other:  # recipes are compared on one protocol's figures
        raise UserError(f"--variants: {other} change --protocol; compare within one protocol")
    users = base.num_train_users(
        dataset.load_metadata(preprocess.preprocess(base.data))["num_users"]
    )
    examples = base.steps_for(users) * base.batch_size
    out = []
    for name, config in parsed:
        if config.batch_size != base.batch_size and not base.steps_per_epoch:
            steps = equal_budget_steps(examples, config.batch_size)
            config = dataclasses.replace(config, steps_per_epoch=steps)
        for k in range(pretrain_seeds):
            run_dir = os.path.join(output_dir, name, f"seed{k}")
            out.append((name, dataclasses.replace(config, seed=config.seed + k, run_dir=run_dir)))
    return out


def compare(configs, output_dir: str, args: argparse.Namespace, *, users: Sequence[str]) -> dict:
    """Trains every config (finished runs are reused), evaluates them together, and
    returns ``{"fractions", "users", "variants": {name: {task: {"metric", "ratio",
    "ci95", "position"}}}, "settings"}`` (``args``: the evaluation flags)."""
    for name, config in configs:
        logging.info("== %s seed %d: %s", name, config.seed, config.run_dir)
        trainer.train(config)
    protocol = Protocol(probe_folds=args.probe_folds, users=tuple(users),
                        inner_folds=args.inner_folds)  # fmt: skip
    tasks = evaluate.tasks_from_flags(args) or list(CLAIM_METRICS)
    records = evaluate_records(
        [c.run_dir for _, c in configs],
        os.path.join(output_dir, "report"),
        names=[n for n, _ in configs],
        label_fractions=args.label_fractions,
        seeds=args.seeds,
        tasks=[t for t in tasks if t in CLAIM_METRICS],
        include_floors=False,
        settings=evaluate.settings_from_flags(args),
        protocol=protocol,
    ).records
    names = list(dict.fromkeys(n for n, _ in configs))
    out = {"fractions": list(args.label_fractions), "users": list(users), "variants": {}}
    for name in names[1:]:
        pair = [r for r in records if r.model in (BASE, name)]  # the bootstrap of these two only
        analysis = scores.analyse(pair, 10, baseline=BASE, claim_models=(name, BASE),
                                  claim_fractions=args.label_fractions,
                                  n_resamples=args.bootstrap_resamples)  # fmt: skip
        claim = analysis["claim"] or {"tasks": []}
        out["variants"][name] = {
            t["task"]: {"metric": t["metric"], "ratio": t["ratio"], "ci95": t["ci95"],
                        "position": _position(t["ci95"])}
            for t in claim["tasks"]
        }  # fmt: skip
    out["settings"] = {n: dict(s) for n, s in args.variants}
    return out


def compare_recommenders(configs, output_dir: str) -> dict:
    """Leave-one-out recipes: trains every config (finished runs are reused), scores each
    on the validation item and compares every variant with the base (module docstring).
    Returns ``{"protocol", "stage", "figures", "models": {name: {figure: {"mean",
    "ci95"}}}, "variants": {name: {figure: {"ratio", "ci95", "per_seed_ratios",
    "position"}}}}``; the popularity ranking is among the models, as a floor."""
    # No run ranks its test item: nothing about it is computed while recipes are chosen.
    configs = [(name, dataclasses.replace(c, score_test=False)) for name, c in configs]
    for name, config in configs:
        logging.info("== %s seed %d: %s", name, config.seed, config.run_dir)
        trainer.train(config)
    report_dir = os.path.join(output_dir, "report")
    reproduction.recommend_and_compare(configs, report_dir, baseline=BASE, stage="val")
    with open(os.path.join(report_dir, recommender.JSON_FILE)) as f:
        contenders = json.load(f)["contenders"]
    figures = list(contenders)
    out = {"protocol": "leave_one_out", "stage": "val", "figures": figures,
           "models": {}, "variants": {}}  # fmt: skip
    for figure, block in contenders.items():
        for name, model in block["models"].items():
            cell = {"mean": model["mean"], "ci95": model["ci95"], "seeds": model["seeds"]}
            out["models"].setdefault(name, {})[figure] = cell
        for name, c in block["comparisons"].items():
            if name == "popularity":
                continue
            out["variants"].setdefault(name, {})[figure] = {
                "ratio": c["ratio"], "ci95": c["ci95"],
                "per_seed_ratios": c["per_seed_ratios"], "position": _position(c["ci95"]),
            }  # fmt: skip
    return out


def _position(ci) -> str:
    lo, hi = ci
    if lo is not None and lo == lo and lo > 1.0:
        return "ahead"
    if hi is not None and hi == hi and hi < 1.0:
        return "behind"
    return "within noise"


def _ratio_cell(c: dict | None) -> str:
    if c is None:
        return ""
    lo, hi = c["ci95"]
    return f"{c['ratio']:.3f} [{lo:.3f}, {hi:.3f}] {c['position']}"


def _settings_text(settings: dict) -> str:
    return ", ".join(k if v is None else f"{k}={v}" for k, v in settings.items())


def _recommender_lines(result: dict) -> list[str]:
    """compare.md of a leave-one-out comparison: one column per figure."""
    figures = result["figures"]
    lines = [
        "# Recipes against the base, on the validation item (leave-one-out)",
        "",
        "Variant / base with its 95% interval (every user's item n-1, users and training "
        "seeds resampled, paired over users); the base's own figures in its row. The test "
        "item is not scored.",
        "",
        "| variant | settings | " + " | ".join(figures) + " |",
        "|---|---|" + "---|" * len(figures),
    ]
    base = result["models"][BASE]
    cells = [report.value_cell(base[f]["mean"], base[f]["ci95"], ".4f") for f in figures]
    lines.append(f"| {BASE} | | " + " | ".join(cells) + " |")
    for name, per_figure in result["variants"].items():
        cells = [_ratio_cell(per_figure.get(f)) for f in figures]
        lines.append(f"| {name} | {_settings_text(result['settings'][name])} | "
                     + " | ".join(cells) + " |")  # fmt: skip
    return lines


def write_outputs(result: dict, output_dir: str) -> str:
    atomic.write_json(os.path.join(output_dir, "compare.json"), result, indent=1)
    path = os.path.join(output_dir, "compare.md")
    if result.get("protocol") == "leave_one_out":
        atomic.write_text(path, "\n".join(_recommender_lines(result)) + "\n")
        return path
    tasks = list(CLAIM_METRICS)
    fr = ", ".join(f"{100 * f:g}%" for f in result["fractions"])
    lines = [
        "# Recipes against the base",
        "",
        f"Variant / base, the mean over {fr} labels, with its 95% paired bootstrap interval "
        f"(users of the {', '.join(result['users'])} split(s), cross-fitted probes).",
        "",
        "| variant | settings | " + " | ".join(f"{t} ({CLAIM_METRICS[t]})" for t in tasks) + " |",
        "|---|---|" + "---|" * len(tasks),
    ]
    for name, per_task in result["variants"].items():
        cells = [_ratio_cell(per_task.get(t)) for t in tasks]
        settings = _settings_text(result["settings"][name])
        lines.append(f"| {name} | {settings} | " + " | ".join(cells) + " |")
    atomic.write_text(path, "\n".join(lines) + "\n")
    return path


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        "tuning.compare", description=cli.summary(__doc__), usage="%(prog)s [--flag=VALUE ...]",
        epilog="Every other --flag is a training flag of bt_tf.train, for every run.",
    )  # fmt: skip
    add = parser.add_argument
    add("--output_dir", required=True, help="root of the runs and the comparison")
    add(
        "--variants",
        type=flags.flag_type(parse_variants),
        required=True,
        help="NAME:flag=value[,flag=value];NAME:... (each against the base recipe)",
    )
    add("--pretrain_seeds", type=int, default=2, help="training seeds per recipe")
    add("--users", default="train,eval", help="splits whose users are scored (not test; "
        "under leave_one_out every user's validation item is)")
    group = parser.add_argument_group("evaluation flags (bt_tf.evaluate)")
    evaluate.add_flags(group)
    parser.set_defaults(label_fractions=list(f for f in CLAIM_FRACTIONS if f >= 0.05))
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    argv = list(sys.argv[1:] if argv is None else argv)
    args, rest = build_parser(argv).parse_known_args(argv)
    users = [u.strip() for u in args.users.split(",") if u.strip()]
    if "test" in users:
        raise UserError("--users: a recipe is never chosen on test users")
    if args.pretrain_seeds < 1:
        raise UserError("--pretrain_seeds must be >= 1")
    configs = variant_configs(rest, args.variants, args.output_dir, args.pretrain_seeds)
    with locks.hold_dir(args.output_dir, hint=" or choose another --output_dir"):
        if configs[0][1].protocol == "leave_one_out":
            result = compare_recommenders(configs, args.output_dir)
            result["settings"] = {n: dict(s) for n, s in args.variants}
        else:
            result = compare(configs, args.output_dir, args, users=users)
        print(write_outputs(result, args.output_dir))
    return result


if __name__ == "__main__":
    cli.run_main(main)
elif __name__ == cli.SPAWNED_MAIN:
    cli.end_startup()  # a probe worker: its log lines show
