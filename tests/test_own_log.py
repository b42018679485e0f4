"""`reproduce` on an own log without item categories or ratings: what it scores, what it
says it could not, the claim on the rest, the progress line and the times."""

import contextlib
import io
import json
import re

import pytest

from benchmarks import own_log
from bt_tf import evaluate, reproduce
from bt_tf.evaluation import progress

NO_GENRES = "no item has a genre/category (e.g. no --items_file)"
NO_RATINGS = "the data has no ratings (no --rating_col)"


# The tests on `reproduced` are slow: its reproduction takes ~30 s on 2 quiet cores. In the
# default suite: a reproduction end to end (test_reproduce.py::test_equal_budget_...), the
# own-log pipeline (test_interactions.py), the result cache (test_evaluate.py).
@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    """A tiny own log (customer, sku, ts only), BT and DE trained, evaluated."""
    root = tmp_path_factory.mktemp("own_log")
    log = root / "log.csv"
    own_log.write_own_log(str(log), own_log.OwnLogConfig(users=300, items=120, mean_length=12.0))
    argv = [
        "--dataset=interactions",
        f"--data_dir={log}",
        "--user_col=customer",
        "--item_col=sku",
        "--time_col=ts",
        "--num_shards=2",
        "--max_len=40",
        "--dim=16",
        "--num_blocks=1",
        "--batch_size=32",
        "--steps_per_epoch=4",
        "--projector=64-64",
        "--epochs=1",
        f"--data_output_dir={root / 'data'}",
        f"--output_dir={root / 'repro'}",
        "--models=bt,de",
        "--pretrain_seeds=1",
        "--no-ablation",
        "--no-floors",
        "--label_fractions=0.1,1.0",
        "--seeds=2",
        "--bootstrap_resamples=200",
    ]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        result = reproduce.main(argv)
    return root, result, out.getvalue(), err.getvalue()


@pytest.mark.slow
def test_tasks_the_log_cannot_support_are_named_with_why_and_the_claim_rests_on_the_others(
    reproduced,
):
    root, out, stdout, stderr = reproduced
    report_dir = root / "repro" / "report"
    results = json.loads((report_dir / "results.json").read_text())
    assert results["not_scored"] == {"favorite_genre": NO_GENRES, "liked_item": NO_RATINGS}
    assert {r["task"] for r in results["rows"]} == {"next_item"}
    claim = results["claim"]
    assert claim["decided_on"] == ["next_item"] and claim["needed"] == 1
    assert claim["not_scored"] == {"favorite_genre": NO_GENRES, "liked_item": NO_RATINGS}
    assert claim["verdict"] == claim["tasks"][0]["verdict"]  # one task left: it decides
    md = (report_dir / "report.md").read_text()
    assert "## Tasks not scored" in md
    assert f"- `favorite_genre`: {NO_GENRES}." in md and f"- `liked_item`: {NO_RATINGS}." in md
    assert "at least 1 of the 1 task(s) the data supports are (next_item; not scored: " in md
    assert f"| favorite_genre | not scored: {NO_GENRES} |" in md
    assert f"| liked_item | not scored: {NO_RATINGS} |" in md
    assert "decided on next_item only: favorite_genre not scored (no item has" in claim["note"]
    # Label seeds are repeated where they decide the claim (10%), not at 100%.
    seeds = {(r["fraction"], r["seed"]) for r in results["rows"] if r["model"] == "bt"}
    assert seeds == {(0.1, 0), (0.1, 1), (1.0, 0)}
    # The progress line (stderr is no terminal here: its last state, as a line) and the
    # times at the end.
    done = re.findall(r"evaluation: (\d+)/(\d+) probes, \S+ elapsed, ~\S+ left", stderr)
    assert done and done[-1][0] == done[-1][1] == "6", stderr[-2000:]  # 2 models x 3
    times = out["times"]
    assert times["runs"] == 2 and times["training_s"] > 0 and times["evaluation_wall_s"] > 0
    assert re.search(r"^training: \S+ \(2 runs; this invocation \S+\), evaluation: \S+$",
                     stdout, re.M)  # fmt: skip
    assert "## Time" in md


@pytest.mark.slow
def test_quiet_evaluation_prints_no_progress_line(reproduced, capsys):
    root = reproduced[0]
    runs = ",".join(str(root / "repro" / m) for m in ("bt", "de"))
    evaluate.main([f"--runs={runs}", f"--output_dir={root / 'quiet'}", "--no-floors",
                   "--label_fractions=1.0", "--bootstrap_resamples=200", "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert "probes" not in err and "next_item fraction=" not in err


def test_progress_line_counts_steps_and_weighs_the_time_left(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    stream = io.StringIO()
    line = progress.Progress("evaluation", 3, total_weight=10.0, unit="probes", stream=stream)
    now[0] += 10.0
    line.step(1.0, "first")
    now[0] += 10.0
    line.step(1.0)  # 2 of 10 weight in 20 s: the 8 left take 80 s
    assert line.time_left() == pytest.approx(80.0)
    assert line.line() == "evaluation: 2/3 probes, 20s elapsed, ~1m20s left"
    assert stream.getvalue() == ""  # not a terminal: a line every 30 s, and the last
    now[0] += 30.0
    line.step(8.0)
    assert stream.getvalue() == "evaluation: 3/3 probes, 50s elapsed, ~0s left\n"
    silent = io.StringIO()
    quiet = progress.Progress("evaluation", 2, enabled=False, stream=silent)
    quiet.step()
    quiet.step()
    assert silent.getvalue() == ""
    assert [progress.format_seconds(s) for s in (42, 425, 3725)] == ["42s", "7m05s", "1h02m"]


@pytest.mark.slow
def test_the_result_cache_is_kept_when_a_setting_of_another_task_changes(reproduced, tmp_path):
    from bt_tf.evaluation import runner
    from bt_tf.evaluation.settings import EvalSettings

    run = str(reproduced[0] / "repro" / "bt")
    kwargs = dict(label_fractions=[1.0], seeds=1, include_floors=False, write=False,
                  progress=False)  # fmt: skip
    first = runner.evaluate_runs([run], str(tmp_path), settings=EvalSettings(), **kwargs)
    cached = tmp_path / "cache" / "units" / "bt" / "next_item%7C1.0%7C0.npz"
    stamp = cached.stat().st_mtime_ns
    # c_grid and liked_threshold are the other tasks': next item's records are reused
    other = EvalSettings(c_grid=(1e-3,), liked_threshold=3.0)
    assert runner.evaluate_runs([run], str(tmp_path), settings=other, **kwargs) == first
    assert cached.stat().st_mtime_ns == stamp
    # its own sample size recomputes them
    runner.evaluate_runs([run], str(tmp_path), settings=EvalSettings(next_item_negatives=8),
                         **kwargs)  # fmt: skip
    assert cached.stat().st_mtime_ns != stamp
