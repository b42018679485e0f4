"""The cross-fitted protocol: folds, label samples, the contenders' probes, and no leakage."""

import dataclasses

import numpy as np
import pytest

from bt_tf.evaluation import contenders, metrics, tasks
from bt_tf.evaluation.contenders import Contender
from bt_tf.evaluation.labels import Pairs, item_counts, liked_item_pairs
from bt_tf.evaluation.protocol import Population, Protocol, fold_of, sample_fold_labels
from bt_tf.evaluation.settings import EvalSettings
from bt_tf.evaluation.tasks import (
    FAVORITE_GENRE,
    LIKED_ITEM,
    NEXT_ITEM,
    ProbeContext,
    probe_contender,
)

SIZES = {"train": 300, "eval": 60, "test": 60}
NUM_ITEMS = 33  # ids 3..32 in 3 genre blocks of 10


def _world(seed=0, signal=2.0):
    """Users in 3 taste clusters (class c); their histories, next item and liked items
    come from block c; embeddings are the cluster centre (times ``signal``) plus noise,
    item vectors the centre of the item's block."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(123).normal(size=(3, 8))
    ids, emb, fav, hist, nxt, liked = {}, {}, {}, {}, {}, {}
    for split, n in SIZES.items():
        c = rng.integers(0, 3, n)
        ids[split] = np.array([f"{split}-{i}".encode() for i in range(n)], dtype=object)
        emb[split] = (signal * centres[c] + rng.normal(size=(n, 8))).astype(np.float32)
        fav[split] = np.where(rng.random(n) < 0.05, -1, c)
        hist[split] = 3 + 10 * c[:, None] + rng.integers(0, 10, (n, 4))
        nxt[split] = 3 + 10 * c + rng.integers(0, 10, n)
        items = rng.integers(3, NUM_ITEMS, (n, 3))
        liked[split] = liked_item_pairs(items, ((items - 3) // 10 == c[:, None]) + 3.5)
    items = np.zeros((NUM_ITEMS, 8), np.float32)
    items[3:] = centres[(np.arange(3, NUM_ITEMS) - 3) // 10]
    return ids, emb, items, {FAVORITE_GENRE: fav, NEXT_ITEM: nxt, LIKED_ITEM: liked}, hist


def _context(protocol=Protocol(), seed=0, labels=None):
    ids, emb, items, raw, hist = _world(seed)
    pop = Population.make(ids, protocol.population_splits())
    history = pop.stack(hist)
    ctx = ProbeContext(
        population=pop,
        labels=labels or {t: pop.stack_labels(raw[t]) for t in raw},
        history=history,
        num_items=NUM_ITEMS,
        item_counts=item_counts(history, NUM_ITEMS),
        folds=protocol.folds(pop),
        settings=EvalSettings(),
        protocol=protocol,
    )
    return ctx, Contender("bt", 0, pop.stack(emb), items)


def test_folds_are_balanced_disjoint_and_follow_the_user_not_the_order():
    ids = np.array([f"u{i}".encode() for i in range(103)], dtype=object)
    fold = fold_of(ids, 5)
    assert sorted(np.bincount(fold).tolist()) == [20, 20, 21, 21, 21]
    perm = np.random.default_rng(0).permutation(103)
    np.testing.assert_array_equal(fold_of(ids[perm], 5), fold[perm])  # per user, any order
    pop = Population.make({"train": ids[:80], "eval": ids[80:90], "test": ids[90:]})
    folds = Protocol(probe_folds=5).folds(pop)
    scored = np.concatenate([f.scored for f in folds])
    assert sorted(scored.tolist()) == list(range(103))  # every user scored exactly once
    for f in folds:
        assert not set(f.pool) & set(f.scored)
        assert len(f.pool) + len(f.scored) == 103
    (only,) = Protocol(probe_folds=0).folds(pop)  # inductive: train + eval -> test
    assert only.pool.tolist() == list(range(90)) and only.scored.tolist() == list(range(90, 103))
    assert Protocol(users=("train", "eval")).population_splits() == ("train", "eval")
    with pytest.raises(ValueError, match="users"):
        Protocol(users=("valid",))


def test_population_stacks_splits_and_reindexes_pairs():
    ids = {"train": np.array([b"a", b"b"]), "eval": np.array([b"c"]), "test": np.array([b"d"])}
    pop = Population.make(ids)
    assert pop.size == 4 and pop.split_of.tolist() == ["train", "train", "eval", "test"]
    pairs = {
        "train": Pairs(np.array([1]), np.array([5]), np.array([1])),
        "eval": Pairs(np.array([0, 0]), np.array([6, 7]), np.array([0, 1])),
        "test": Pairs(np.array([0]), np.array([8]), np.array([1])),
    }
    stacked = pop.stack_labels(pairs)
    assert stacked.user_index.tolist() == [1, 2, 2, 3]  # eval's user 0 is row 2
    assert stacked.item_ids.tolist() == [5, 6, 7, 8]
    assert pop.stack_labels({s: np.arange(len(v)) for s, v in ids.items()}).tolist() == [0, 1, 0, 0]


def test_label_samples_come_from_the_pool_seeded_and_nested():
    ctx, _ = _context()
    y = ctx.labels[FAVORITE_GENRE]
    for fold in ctx.folds:
        small = sample_fold_labels(y, fold, 0.1, seed=3)
        big = sample_fold_labels(y, fold, 0.5, seed=3)
        assert set(small) <= set(big) <= set(fold.pool)
        assert np.all(y[big] >= 0)
        np.testing.assert_array_equal(small, sample_fold_labels(y, fold, 0.1, seed=3))
    # The folds draw their own samples from one seed.
    a = sample_fold_labels(y, ctx.folds[0], 0.1, seed=3)
    b = sample_fold_labels(y, ctx.folds[1], 0.1, seed=3)
    assert not np.array_equal(np.sort(a), np.sort(b))


def _poisoned(ctx, fold):
    """The context with every label of ``fold``'s scored users replaced."""
    rng = np.random.default_rng(9)
    scored = np.zeros(ctx.population.size, bool)
    scored[fold.scored] = True
    y = ctx.labels[FAVORITE_GENRE].copy()
    y[scored & (y >= 0)] = (y[scored & (y >= 0)] + 1) % 3
    t = ctx.labels[NEXT_ITEM].copy()
    t[scored] = rng.integers(3, NUM_ITEMS, scored.sum())
    p = ctx.labels[LIKED_ITEM]
    flip = scored[p.user_index]
    liked = Pairs(p.user_index, p.item_ids, np.where(flip, 1 - p.labels, p.labels))
    return dataclasses.replace(ctx, labels={FAVORITE_GENRE: y, NEXT_ITEM: t, LIKED_ITEM: liked})


@pytest.mark.parametrize("fraction", [0.1, 1.0])
def test_no_label_of_a_scored_user_reaches_its_probe_or_its_selection(fraction, monkeypatch):
    """Every label of a fold's scored users is replaced: that fold's probes predict the
    same classes, scores and item scores, and make the same selection."""
    ctx, bt = _context()
    captured = []
    ranks = metrics.target_ranks

    def capture(scores, targets, **kw):  # the score matrix the next-item probe ranks by
        captured.append(scores(0, len(targets)) if callable(scores) else scores)
        return ranks(scores, targets, **kw)

    monkeypatch.setattr(tasks.metrics, "target_ranks", capture)
    for fold in ctx.folds[:2]:
        bad = _poisoned(ctx, fold)
        for task in (FAVORITE_GENRE, LIKED_ITEM, NEXT_ITEM):
            t = tasks.get_task(task)
            captured.clear()
            units, info = t.score_fold(ctx, bt, fold, fraction, seed=1)
            units_bad, info_bad = t.score_fold(bad, bt, fold, fraction, seed=1)
            assert info == info_bad, task
            if task == FAVORITE_GENRE:
                np.testing.assert_array_equal(units.pred, units_bad.pred)
                assert not np.array_equal(units.label, units_bad.label)  # the labels did change
            elif task == LIKED_ITEM:
                np.testing.assert_array_equal(units.score, units_bad.score)
            else:
                np.testing.assert_array_equal(captured[0], captured[1])


def test_informative_embeddings_learn_every_task_at_a_tenth_of_the_labels():
    ctx, bt = _context()
    prior = contenders.prior(ctx.population.size)
    values = {}
    for c in (bt, prior):
        for task in (FAVORITE_GENRE, LIKED_ITEM, NEXT_ITEM):
            units, fits = probe_contender(ctx, c, task, 0.1, seed=0)
            assert len(fits) == 5 and sum(f["n_scored"] for f in fits) == len(units)
            values[(c.name, task)] = tasks.get_task(task).metric_values(units, 10)
            if c is bt:
                assert not any(f["prior_selected"] for f in fits), (task, fits)
    assert values[("bt", FAVORITE_GENRE)]["accuracy"] > 0.9  # majority ~0.35
    assert values[("prior", FAVORITE_GENRE)]["accuracy"] < 0.45
    assert values[("bt", LIKED_ITEM)]["auc"] > 0.9
    assert values[("prior", LIKED_ITEM)]["auc"] == 0.5
    # 10 items per block, history items excluded: a good ranking puts the target in
    # the top 10 unless it is in the history (then it cannot be ranked: a miss);
    # popularity (the prior) knows nothing of the user.
    t = ctx.labels[NEXT_ITEM]
    ceiling = np.mean([t[u] not in ctx.history[u] for u in range(t.size)])  # ~0.66
    assert values[("bt", NEXT_ITEM)]["hr@10"] > 0.95 * ceiling
    assert values[("prior", NEXT_ITEM)]["hr@10"] < 0.6 * ceiling


def test_noise_embeddings_stay_within_noise_of_the_prior():
    ctx, bt = _context()
    rng = np.random.default_rng(5)
    noise = Contender("noise", 0, rng.normal(size=bt.users.shape).astype(np.float32),
                      rng.normal(size=bt.items.shape).astype(np.float32))  # fmt: skip
    prior = contenders.prior(ctx.population.size)
    for task, metric in ((FAVORITE_GENRE, "accuracy"), (NEXT_ITEM, "hr@10")):
        got = [tasks.get_task(task).metric_values(probe_contender(ctx, c, task, 0.1, 0)[0], 10)
               [metric] for c in (noise, prior)]  # fmt: skip
        assert abs(got[0] - got[1]) < 0.06, (task, got)


def test_inductive_protocol_scores_the_test_users_only():
    ctx, bt = _context(Protocol(probe_folds=0))
    units, fits = probe_contender(ctx, bt, FAVORITE_GENRE, 0.5, seed=0)
    assert set(ctx.population.split_of[units.user]) == {"test"} and len(fits) == 1


def test_floors_have_the_embeddings_size_and_the_same_item_side_inputs():
    ctx, bt = _context()
    everyone = np.arange(ctx.population.size)
    svd = contenders.svd(ctx.history, NUM_ITEMS, everyone, dim=8)
    assert svd.users.shape == (ctx.population.size, 8) and svd.items.shape == (NUM_ITEMS, 8)
    bag = contenders.bag_of_items(ctx.history, NUM_ITEMS, everyone)
    assert bag.users.shape == (ctx.population.size, NUM_ITEMS)
    assert np.allclose(np.diag(bag.knn), 0) and bag.knn.shape == (NUM_ITEMS, NUM_ITEMS)
    # Liked item: every contender's pair features end with the same one-hot of the item.
    pairs = ctx.labels[LIKED_ITEM]
    for c in (bt, svd, bag):
        x = c.pair_features(pairs, NUM_ITEMS)
        assert x.width == NUM_ITEMS and np.array_equal(x.ids, pairs.item_ids)
    assert bt.pair_features(pairs, NUM_ITEMS).shape[1] == 3 * 8 + NUM_ITEMS  # [u, v, u * v, 1]
    assert contenders.prior(5).pair_features(pairs, NUM_ITEMS).shape[1] == 0
    # The history floors learn the planted blocks too (their histories reveal them).
    hr = {}
    for c in (svd, bag, contenders.prior(ctx.population.size)):
        units, _ = probe_contender(ctx, c, NEXT_ITEM, 0.1, seed=0)
        hr[c.name] = tasks.get_task(NEXT_ITEM).metric_values(units, 10)["hr@10"]
    assert hr["svd"] > hr["prior"] + 0.1 and hr["bag_of_items"] > hr["prior"] + 0.1, hr
