"""Label sampling and derivation, linear probes, the task registry's driver and the floors."""

import inspect

import numpy as np
import pytest
import scipy.sparse

from bt_tf.evaluation import metrics
from bt_tf.evaluation.floors import bag_of_items_features, majority_floor, popularity_floor
from bt_tf.evaluation.labels import (
    Pairs,
    favorite_genre,
    first_future_item,
    item_counts,
    liked_item_pairs,
    sample_label_fraction,
    sample_selection_users,
)
from bt_tf.evaluation.probe import log_prior, train_pair_probe, train_softmax_probe
from bt_tf.evaluation.settings import DEFAULT_FRACTIONS, DEFAULT_L2_GRID, MIN_SELECTION_USERS
from bt_tf.evaluation.tasks import (
    DEFAULT_TASKS,
    TASKS,
    ClassificationTask,
    LikedItemTask,
    NextItemTask,
    ResultRow,
    evaluate_embeddings,
    get_task,
)
from bt_tf.features import NUM_RESERVED

FAST = dict(max_epochs=40, patience=5, learning_rate=0.05)


def _clusters(n, *, seed, d=8, num_classes=3, sep=2.0, weights=None):
    """Gaussian clusters with fixed centres (seed 123); labels drawn by `seed`."""
    centres = np.random.default_rng(123).normal(size=(num_classes, d)) * sep
    rng = np.random.default_rng(seed)
    y = rng.choice(num_classes, size=n, p=weights)
    return (centres[y] + rng.normal(size=(n, d))).astype(np.float32), y


# --------------------------------------------------------------------------
# sample_label_fraction
# --------------------------------------------------------------------------

LABELS = np.array([0] * 50 + [1] * 30 + [2] * 20 + [3] * 1 + [-1] * 9)
rng_ = np.random.default_rng(5)
LABELS = LABELS[rng_.permutation(LABELS.size)]


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.25, 0.5, 1.0])
def test_stratified_sample_proportions_range_and_unknowns(fraction):
    idx = sample_label_fraction(LABELS, fraction, seed=0)
    assert idx.dtype == np.int64 and np.all(np.diff(idx) > 0)  # sorted, unique
    assert idx.min() >= 0 and idx.max() < LABELS.size  # only indices of the given array
    assert np.all(LABELS[idx] >= 0)  # -1 (unknown) never taken
    for c, n_c in ((0, 50), (1, 30), (2, 20), (3, 1)):
        taken = int(np.sum(LABELS[idx] == c))
        assert taken >= 1  # every present class at least once
        # within +-1 of exact, except the at-least-one rule for tiny classes
        assert abs(taken - fraction * n_c) <= 1 or taken == 1
    if fraction == 0.1:  # round half up: 5, 3, 2, max(1, 0.1 -> 0) = 1
        assert np.bincount(LABELS[idx]).tolist() == [5, 3, 2, 1]
    if fraction == 1.0:
        np.testing.assert_array_equal(idx, np.flatnonzero(LABELS >= 0))


def test_sample_seeded_and_nested():
    a = sample_label_fraction(LABELS, 0.25, seed=1)
    np.testing.assert_array_equal(a, sample_label_fraction(LABELS, 0.25, seed=1))
    assert not np.array_equal(a, sample_label_fraction(LABELS, 0.25, seed=2))
    small = sample_label_fraction(LABELS, 0.1, seed=1)
    assert set(small) <= set(a)  # nested across fractions for one seed


def test_unstratified_sample_size():
    y = np.zeros(1000, dtype=int)
    y[::7] = -1  # 142 unknown -> 858 labelled
    idx = sample_label_fraction(y, 0.05, seed=0, stratify=False)
    assert idx.size == 43  # floor(0.05 * 858 + 0.5) = floor(43.4) = 43
    assert np.all(y[idx] == 0)
    assert sample_label_fraction(y, 0.0001, seed=0, stratify=False).size == 1
    with pytest.raises(ValueError, match="fraction"):
        sample_label_fraction(y, 0.0, seed=0)


# --------------------------------------------------------------------------
# sample_selection_users: the eval users that select a probe
# --------------------------------------------------------------------------

EVAL_LABELS = np.random.default_rng(6).permutation(
    np.array([0] * 120 + [1] * 50 + [2] * 20 + [3] * 6 + [4] * 4 + [-1] * 10)
)  # 200 labelled eval users in 5 classes, 10 unknown


@pytest.mark.parametrize("fraction", [0.01, 0.05, 0.1, 0.25, 1.0])
def test_selection_sample_size_is_the_fraction_with_a_minimum(fraction):
    idx = sample_selection_users(EVAL_LABELS, fraction, seed=0)
    assert idx.dtype == np.int64 and np.all(np.diff(idx) > 0)
    assert np.all(EVAL_LABELS[idx] >= 0)  # -1 never taken
    # k = min(200, max(10, floor(f * 200 + 0.5))): 1% -> 2 -> the minimum 10;
    # 5% -> 10; 10% -> 20; 25% -> 50; 100% -> all 200.
    expected = {0.01: 10, 0.05: 10, 0.1: 20, 0.25: 50, 1.0: 200}[fraction]
    assert idx.size == expected
    # Stratified without an at-least-one-per-class rule: class c gets k * n_c / n
    # within +-1 (at 10%: 12, 5, 2, 0.6, 0.4).
    counts = np.bincount(EVAL_LABELS[idx], minlength=5)
    for c, n_c in enumerate((120, 50, 20, 6, 4)):
        assert abs(counts[c] - expected * n_c / 200) < 1, (c, counts)


def test_selection_sample_seeded_nested_and_apart_from_the_train_sample():
    a = sample_selection_users(EVAL_LABELS, 0.25, seed=3)
    np.testing.assert_array_equal(a, sample_selection_users(EVAL_LABELS, 0.25, seed=3))
    assert not np.array_equal(a, sample_selection_users(EVAL_LABELS, 0.25, seed=4))
    assert set(sample_selection_users(EVAL_LABELS, 0.1, seed=3)) <= set(a)  # nested
    # Its own random stream: not the train sampler's draw on the same array.
    train_like = sample_label_fraction(EVAL_LABELS, 0.25, seed=3)
    assert not np.array_equal(a, train_like)
    # Unstratified (next item, liked item): uniform over labelled users.
    flat = np.where(EVAL_LABELS >= 0, 0, -1)
    u = sample_selection_users(flat, 0.1, seed=3, stratify=False)
    assert u.size == 20 and np.all(flat[u] == 0)
    assert sample_selection_users(flat, 0.1, seed=3, stratify=False, min_users=50).size == 50
    assert sample_selection_users(flat[:7], 0.1, seed=3).size == 7  # fewer than the min
    with pytest.raises(ValueError, match="fraction"):
        sample_selection_users(flat, 1.5, seed=0)
    with pytest.raises(ValueError, match="min_users"):
        sample_selection_users(flat, 0.5, seed=0, min_users=0)


# --------------------------------------------------------------------------
# Label derivation and features
# --------------------------------------------------------------------------


def test_favorite_genre_all_layouts():
    ragged = [[3, 4, 4], [5, 3, 5, 3], [], [0, 1, 2], [2, 6]]
    # user 0: 4 twice -> 4; user 1: 3 and 5 twice each -> tie -> smaller, 3;
    # user 2: none -> -1; user 3: only reserved ids -> -1; user 4: OOV ignored -> 6.
    expected = [4, 3, -1, -1, 6]
    assert favorite_genre(ragged).tolist() == expected
    padded = np.zeros((5, 4), dtype=np.int64)
    for i, r in enumerate(ragged):
        padded[i, : len(r)] = r
    assert favorite_genre(padded).tolist() == expected
    flat = np.concatenate([np.asarray(r, dtype=np.int64) for r in ragged])
    lengths = [len(r) for r in ragged]
    assert favorite_genre(flat, row_lengths=lengths).tolist() == expected


def test_liked_pairs_targets_and_counts():
    items = [[5, 2, 7], [], [4]]
    ratings = [[4.0, 5.0, 3.5], [], [5.0]]
    p = liked_item_pairs(items, ratings)
    # OOV item 2 dropped; 4.0 >= 4 liked, 3.5 not.
    assert p.user_index.tolist() == [0, 0, 2]
    assert p.item_ids.tolist() == [5, 7, 4]
    assert p.labels.tolist() == [1, 0, 1]
    padded = np.array([[5, 2, 7], [0, 0, 0], [4, 0, 0]])
    p2 = liked_item_pairs(padded, np.array([[4.0, 5, 3.5], [0, 0, 0], [5, 0, 0]]))
    assert p2.labels.tolist() == [1, 0, 1]
    assert first_future_item(items).tolist() == [5, 0, 4]
    assert first_future_item(padded).tolist() == [5, 0, 4]
    # counts: ids 4, 5, 7 once each; OOV 2 and padding 0 count 0.
    assert item_counts(padded, 8).tolist() == [0, 0, 0, 0, 1, 1, 0, 1]


def test_bag_of_items_features():
    hist = np.array([[3, 3, 4, 0], [0, 0, 0, 0], [5, 1, 0, 0]])
    x = bag_of_items_features(hist, 6)
    assert scipy.sparse.issparse(x) and x.shape == (3, 6)
    # user 0: counts (id3: 2, id4: 1) / sqrt(5); user 1 empty; user 2: mask id 1 dropped.
    np.testing.assert_allclose(
        x.toarray(),
        [[0, 0, 0, 2 / 5**0.5, 1 / 5**0.5, 0], [0] * 6, [0, 0, 0, 0, 0, 1]],
        rtol=1e-6,
    )
    z = bag_of_items_features(hist, 6, projection_dim=4, seed=3)
    assert z.shape == (3, 4) and z.dtype == np.float32
    np.testing.assert_array_equal(z, bag_of_items_features(hist, 6, projection_dim=4, seed=3))
    with pytest.raises(ValueError, match="vocab_size"):
        bag_of_items_features(hist, 5)


# --------------------------------------------------------------------------
# Probes
# --------------------------------------------------------------------------


def test_probe_learns_planted_clusters_and_not_random_labels():
    x_tr, y_tr = _clusters(300, seed=1)
    x_ev, y_ev = _clusters(200, seed=2)
    x_te, y_te = _clusters(2000, seed=3)
    majority = np.mean(y_te == metrics.majority_class(y_tr))  # ~0.33-0.36
    probe = train_softmax_probe(x_tr, y_tr, x_ev, y_ev, 3, seed=0, **FAST)
    acc = metrics.accuracy(y_te, probe.predict(x_te))
    assert acc > majority + 0.3, (acc, majority)  # planted: ~0.9+ vs ~0.35
    # Same features, labels independent of them: no better than majority + 0.06
    # (the std of an accuracy near 1/3 on 2000 users is ~0.011).
    rand = np.random.default_rng(9)
    yr_tr, yr_ev, yr_te = (rand.integers(0, 3, n) for n in (300, 200, 2000))
    probe_r = train_softmax_probe(x_tr, yr_tr, x_ev, yr_ev, 3, seed=0, **FAST)
    acc_r = metrics.accuracy(yr_te, probe_r.predict(x_te))
    majority_r = np.mean(yr_te == metrics.majority_class(yr_tr))
    assert acc_r < max(majority_r, 1 / 3) + 0.06, (acc_r, majority_r)


def test_probe_same_seed_same_weights_and_minibatches():
    x_tr, y_tr = _clusters(300, seed=1)
    x_ev, y_ev = _clusters(100, seed=2)
    kw = dict(FAST, batch_size=64, max_epochs=5)
    a = train_softmax_probe(x_tr, y_tr, x_ev, y_ev, 3, seed=4, **kw)
    b = train_softmax_probe(x_tr, y_tr, x_ev, y_ev, 3, seed=4, **kw)
    np.testing.assert_array_equal(a.weights, b.weights)
    np.testing.assert_array_equal(a.bias, b.bias)
    c = train_softmax_probe(x_tr, y_tr, x_ev, y_ev, 3, seed=5, **kw)
    assert not np.array_equal(a.weights, c.weights)  # minibatch order follows the seed


def test_l2_is_selected_on_eval_not_test():
    # No test data can reach the probe: there is no such argument.
    params = inspect.signature(train_softmax_probe).parameters
    assert not [p for p in params if "test" in p]
    # Imbalanced separable train data (70% class 0). Eval labels are FLIPPED, so
    # eval prefers a probe that ignores the features: the strong penalty (10.0)
    # shrinks W to ~0 and predicts the majority class 0 -> eval accuracy ~0.3,
    # while the weak one (1e-4) fits -> ~0.0 on flipped eval but ~1.0 on a test
    # set drawn like train. Selection must follow eval: l2 = 10.0 (or the prior
    # predictor, reported as the strongest L2 at epoch 0). The grid is given
    # weak-first; the probe sorts it strongest-first.
    x_tr, y_tr = _clusters(400, seed=1, num_classes=2, sep=3.0, weights=[0.7, 0.3])
    x_ev, y_ev = _clusters(300, seed=2, num_classes=2, sep=3.0, weights=[0.7, 0.3])
    x_te, y_te = _clusters(300, seed=3, num_classes=2, sep=3.0, weights=[0.7, 0.3])
    probe = train_softmax_probe(
        x_tr, y_tr, x_ev, 1 - y_ev, 2, l2_grid=(1e-4, 10.0), max_epochs=150, patience=150,
        learning_rate=0.05, seed=0,
    )  # fmt: skip
    assert probe.l2 == 10.0, probe.selection
    by_l2 = {s["l2"]: s["eval_metric"] for s in probe.selection}
    assert by_l2[10.0] > by_l2[1e-4]
    # The recorded eval metric is the final probe's mean log-likelihood of the eval
    # labels (the default select metric; it was accuracy before selection moved to
    # a proper scoring rule).
    z = probe.predict_scores(x_ev).astype(np.float64)
    loglik = z[np.arange(len(y_ev)), 1 - y_ev] - np.log(np.exp(z).sum(axis=1))
    assert probe.eval_metric == pytest.approx(loglik.mean(), rel=1e-5)
    assert [s["l2"] for s in probe.selection] == [10.0, 1e-4]
    # On test the other L2 would have won (it separates the clusters); the chosen
    # probe is no better than majority there.
    assert metrics.accuracy(y_te, probe.predict(x_te)) < 0.8


# 8 classes with an imbalanced prior (majority 0.5) and 64-d features.
PRIOR_8 = np.array([0.5, 0.2, 0.1, 0.06, 0.05, 0.04, 0.03, 0.02])


def _prior_world(signal: float, *, seed: int = 0, sizes=(750, 100, 1000), d: int = 64):
    """ML-100K-sized splits (750 train, 100 eval users): labels drawn from `PRIOR_8`,
    features Gaussian noise plus ``signal`` times a fixed class centre."""
    centres = np.random.default_rng(7).normal(size=(PRIOR_8.size, d))
    rng = np.random.default_rng(seed)
    emb, y = {}, {}
    for split, n in zip(("train", "eval", "test"), sizes):
        y[split] = rng.choice(PRIOR_8.size, n, p=PRIOR_8)
        emb[split] = (rng.normal(size=(n, d)) + signal * centres[y[split]]).astype(np.float32)
    return emb, {"favorite_genre": y}


def _probe_vs_majority(emb, labels, fractions=DEFAULT_FRACTIONS, seeds=(0, 1, 2)):
    """{(fraction, seed): (probe accuracy, majority floor accuracy)} on test users."""
    rows = evaluate_embeddings(emb, labels, model="x", fractions=fractions, seeds=seeds)
    floor = majority_floor(labels, fractions=fractions, seeds=seeds)
    acc = {(r["fraction"], r["seed"]): r["value"] for r in rows if r["metric"] == "accuracy"}
    maj = {(r["fraction"], r["seed"]): r["value"] for r in floor if r["metric"] == "accuracy"}
    return {key: (acc[key], maj[key]) for key in acc}


def test_uninformative_embedding_scores_the_majority_class_at_every_fraction():
    # Pure noise: nothing to learn, so the probe must come within noise of the
    # majority floor (the prior predictor it starts from). Tolerance: 2 binomial
    # standard errors of an accuracy near 0.5 on the 1000 test users
    # (2 * sqrt(0.25 / 1000) = 0.032) + 0.01 slack. Before the prior bias, the
    # strong-L2 grid, log-likelihood selection and the SE rule, a probe on noise
    # picked by 10 eval users' accuracy scored as low as 0.26 against 0.46.
    emb, labels = _prior_world(signal=0.0)
    n_test = len(labels["favorite_genre"]["test"])
    tolerance = 2 * np.sqrt(0.25 / n_test) + 0.01
    for (fraction, seed), (acc, majority) in _probe_vs_majority(emb, labels).items():
        assert abs(acc - majority) <= tolerance, (fraction, seed, acc, majority)


def test_informative_embedding_still_beats_the_majority_class():
    # The same labels with class-dependent features: the strong end of the grid and
    # the SE rule must not stop the probe from learning once labels suffice
    # (measured: ~0.68 at 25% and ~0.76 at 100% vs majority ~0.5).
    emb, labels = _prior_world(signal=0.3)
    got = _probe_vs_majority(emb, labels, fractions=(0.25, 1.0))
    for fraction in (0.25, 1.0):
        for seed in (0, 1, 2):
            acc, majority = got[(fraction, seed)]
            assert acc > majority + 0.1, (fraction, seed, acc, majority)


def test_log_prior_bias_and_the_prior_predictor():
    # Hand case: counts [2, 1, 0] + 0.5 -> [2.5, 1.5, 0.5] / 4.5.
    np.testing.assert_allclose(
        log_prior(np.array([0, 0, 1]), 3), np.log([2.5 / 4.5, 1.5 / 4.5, 0.5 / 4.5]),
        rtol=1e-6,
    )  # fmt: skip
    # A selection rule no candidate can beat leaves the probe at epoch 0: zero
    # weights and the log prior of the TRAIN labels as bias, so it predicts their
    # majority class (here class 1) for everyone.
    x, _ = _clusters(60, seed=1)
    y = np.array([1] * 30 + [0] * 20 + [2] * 10)
    probe = train_softmax_probe(x, y, x, y, 4, se_rule=1e9, **FAST)
    assert probe.best_epoch == 0 and probe.l2 == max(DEFAULT_L2_GRID)
    assert not probe.weights.any()
    np.testing.assert_allclose(probe.bias, log_prior(y, 4), rtol=1e-6)
    assert set(probe.predict(x)) == {1}
    assert probe.eval_metric == probe.prior_eval_metric < probe.best_eval_metric
    with pytest.raises(ValueError, match="prior_smoothing"):
        train_softmax_probe(x, y, x, y, 4, prior_smoothing=0.0)


def test_strongest_l2_drives_the_weights_to_about_zero():
    # l2 multiplies the SUM of squared weights and the cross-entropy is a MEAN,
    # so at l2 = 10 the optimum is |W| ~ |grad CE| / 20: on noise features the
    # trained weights barely move the logits, while l2 = 1e-4 fits the noise.
    # A select metric that grows with every call prefers each later epoch, so the
    # probe returns the weights of its last (60th) epoch. (Adam's first step moves
    # every weight by the learning rate; the penalty pulls them back within ~40
    # epochs: logit spread 0.47 at epoch 1, 0.02 at epoch 60, measured.)
    emb, labels = _prior_world(signal=0.0)
    x, y = emb["train"][:200], labels["favorite_genre"]["train"][:200]
    spread = {}
    for l2 in (10.0, 1e-4):
        calls = iter(range(1, 1 << 30))

        def later_is_better(scores, rows):
            return np.full(len(rows), float(next(calls)))

        probe = train_softmax_probe(
            x, y, emb["eval"], labels["favorite_genre"]["eval"], 8, l2_grid=(l2,), se_rule=0.0,
            max_epochs=60, patience=60, select_metric=later_is_better, seed=0,
        )  # fmt: skip
        assert probe.best_epoch == 60
        logits = emb["test"] @ probe.weights  # the part of the logits the features give
        spread[l2] = float(np.std(logits, axis=0).max())
    assert spread[10.0] < 0.05 and spread[1e-4] > 1.0, spread


def test_sparse_bag_of_items_probe_learns_genre():
    # 3 genres with items 3-12, 13-22, 23-32; each user draws 6 items, 5 from
    # their genre's block; the label is the genre.
    rng = np.random.default_rng(0)
    n = 600
    y = rng.integers(0, 3, n)
    own = 3 + 10 * y[:, None] + rng.integers(0, 10, (n, 5))
    hist = np.concatenate([own, rng.integers(3, 33, (n, 1))], axis=1)
    x = bag_of_items_features(hist, 33)
    probe = train_softmax_probe(x[:300], y[:300], x[300:400], y[300:400], 3, **FAST)
    assert metrics.accuracy(y[400:], probe.predict(x[400:])) > 0.9


def test_pair_probe_learns_dot_product_liking():
    # liked iff <u, v> > 0: linear in the u*v features, so AUC near 1.
    rng = np.random.default_rng(1)
    d, n_items = 6, 40
    item_emb = rng.normal(size=(n_items, d)).astype(np.float32)

    def split(n, seed):
        r = np.random.default_rng(seed)
        u = r.normal(size=(n, d)).astype(np.float32)
        ui = np.repeat(np.arange(n), 4)
        it = r.integers(3, n_items, ui.size)
        lab = (np.sum(u[ui] * item_emb[it], axis=1) > 0).astype(np.int64)
        return u, Pairs(ui, it, lab)

    (u_tr, p_tr), (u_ev, p_ev), (u_te, p_te) = split(200, 1), split(100, 2), split(200, 3)
    pair_probe = train_pair_probe(u_tr, p_tr, u_ev, p_ev, item_emb=item_emb, **FAST)
    logits = pair_probe.predict_logits(u_te, p_te)
    assert metrics.roc_auc(p_te.labels, logits) > 0.9
    assert metrics.accuracy(p_te.labels, (logits > 0).astype(int)) > 0.8
    assert np.all(
        (pair_probe.predict_proba(u_te, p_te) >= 0) & (pair_probe.predict_proba(u_te, p_te) <= 1)
    )


# --------------------------------------------------------------------------
# Driver and floors
# --------------------------------------------------------------------------


def _synthetic_world(seed=0):
    """Users in 3 taste clusters; items 3..32 in 3 genre blocks; the next item
    comes from the user's block; liked iff the item is in the user's block."""
    rng = np.random.default_rng(seed)
    num_items = 33
    out = {"emb": {}, "fav": {}, "next": {}, "liked": {}, "hist": {}}
    for split, n in (("train", 240), ("eval", 90), ("test", 150)):
        x, c = _clusters(n, seed=rng.integers(1 << 30))
        out["emb"][split] = x
        out["fav"][split] = np.where(rng.random(n) < 0.05, -1, c)  # some unknown
        out["hist"][split] = 3 + 10 * c[:, None] + rng.integers(0, 10, (n, 3))
        out["next"][split] = 3 + 10 * c + rng.integers(0, 10, n)
        items = rng.integers(3, num_items, (n, 2))
        liked = ((items - 3) // 10 == c[:, None]).astype(float) + 3.5  # 4.5 or 3.5
        out["liked"][split] = liked_item_pairs(items, liked)
    out["next"]["test"][:3] = 2  # OOV targets: counted as misses on test
    # Item embeddings: the centre of the item's genre block (reserved rows 0).
    centres = np.random.default_rng(123).normal(size=(3, 8)) * 2.0
    out["item_emb"] = np.zeros((num_items, 8), dtype=np.float32)
    out["item_emb"][3:] = centres[(np.arange(3, num_items) - 3) // 10]
    return out, num_items


def test_evaluate_embeddings_rows_and_learning():
    w, num_items = _synthetic_world()
    labels = {
        "next_item": w["next"],
        "favorite_genre": w["fav"],
        "liked_item": w["liked"],
    }
    rows = evaluate_embeddings(
        w["emb"], labels, model="bt", fractions=(0.1, 1.0), seeds=(0, 1),
        num_items=num_items, item_emb=w["item_emb"], history=w["hist"], probe_kwargs=FAST,
    )  # fmt: skip
    # 3 tasks x 2 metrics x 2 fractions x 2 seeds.
    assert len(rows) == 24
    keys = {(r["task"], r["metric"]) for r in rows}
    assert keys == {
        ("next_item", "hr@10"), ("next_item", "ndcg@10"),
        ("favorite_genre", "accuracy"), ("favorite_genre", "balanced_accuracy"),
        ("liked_item", "accuracy"), ("liked_item", "auc"),
    }  # fmt: skip
    for r in rows:
        assert r["model"] == "bt" and 0.0 <= r["value"] <= 1.0
        assert r["fraction"] in (0.1, 1.0) and r["seed"] in (0, 1)
        assert r["n_train"] >= 1 and r["l2"] in DEFAULT_L2_GRID
    nxt = [r for r in rows if r["task"] == "next_item"]
    assert all(r["exclude_history"] and r["k"] == 10 and r["n_test"] == 150 for r in nxt)
    fav = [r for r in rows if r["task"] == "favorite_genre" and r["fraction"] == 1.0]
    n_known_train = int(np.sum(w["fav"]["train"] >= 0))
    assert all(r["n_train"] == n_known_train for r in fav)
    # Planted structure is learned at 100% labels, well above the floors:
    # genre accuracy vs majority ~0.35; next-item: a random ranking of the 30
    # items with 3 history items excluded has HR@10 ~ 10/27 = 0.37, the planted
    # block holds 10 items (some excluded) so a good probe approaches 1 (minus 3
    # OOV misses out of 150).
    get = {(r["task"], r["metric"], r["fraction"], r["seed"]): r["value"] for r in rows}
    assert get[("favorite_genre", "accuracy", 1.0, 0)] > 0.8
    assert get[("next_item", "hr@10", 1.0, 0)] > 0.6
    assert get[("liked_item", "auc", 1.0, 0)] > 0.8


def test_selection_sees_only_the_fraction_of_eval_labels_on_every_task():
    """At fraction f the probe is selected on ~f of the eval labels: the row counts
    say so, and scrambling every eval label OUTSIDE that sample changes nothing."""
    w, num_items = _synthetic_world()
    labels = {"favorite_genre": w["fav"], "next_item": w["next"], "liked_item": w["liked"]}
    kw = dict(
        model="bt", seeds=(0,), num_items=num_items, item_emb=w["item_emb"],
        history=w["hist"], probe_kwargs=FAST,
    )  # fmt: skip
    fractions = (0.05, 0.25)
    rows = evaluate_embeddings(w["emb"], labels, fractions=fractions, **kw)
    n_eval_users = len(w["fav"]["eval"])  # 90; every eval user has a next item and 2 pairs
    for r in rows:
        labelled = r.get("n_eval_users_labelled", r["n_eval_labelled"])
        used = r.get("n_eval_users", r["n_eval"])
        budget = max(MIN_SELECTION_USERS, np.floor(r["fraction"] * labelled + 0.5))
        assert used == budget < labelled <= n_eval_users, r  # 10 of ~86-90, then ~22
        if r["task"] == "liked_item":
            assert r["n_eval"] == 2 * used  # all pairs of the sampled users, no more
    # Scramble what the selection must not see: the eval embeddings of users outside
    # the selection samples of every (task, fraction), and their next-item
    # targets and liked labels. Every row stays identical. (Class labels outside
    # the sample are kept: stratifying by class reads them to form the strata.)
    rng = np.random.default_rng(1)
    inside = np.zeros(n_eval_users, dtype=bool)
    known = np.zeros(n_eval_users, dtype=np.int64)  # all have a next item and pairs
    for f in fractions:
        inside[sample_selection_users(w["fav"]["eval"], f, 0)] = True
        inside[sample_selection_users(known, f, 0, stratify=False)] = True
    assert 0 < inside.sum() < n_eval_users
    emb = {**w["emb"], "eval": np.where(inside[:, None], w["emb"]["eval"], 0.0)}
    emb["eval"][~inside] = rng.normal(size=(int((~inside).sum()), 8))
    nxt = np.where(inside, w["next"]["eval"], rng.integers(3, num_items, n_eval_users))
    p = w["liked"]["eval"]
    flip = ~inside[p.user_index]
    liked = Pairs(p.user_index, p.item_ids, np.where(flip, 1 - p.labels, p.labels))
    scrambled = {
        "favorite_genre": w["fav"],
        "next_item": {**w["next"], "eval": nxt},
        "liked_item": {**w["liked"], "eval": liked},
    }
    assert evaluate_embeddings(emb, scrambled, fractions=fractions, **kw) == rows


def test_evaluate_embeddings_needs_history_when_excluding():
    w, num_items = _synthetic_world()
    with pytest.raises(ValueError, match="exclude_history"):
        evaluate_embeddings(
            w["emb"], {"next_item": w["next"]}, model="x", fractions=(1.0,), seeds=(0,),
            num_items=num_items,
        )  # fmt: skip


def test_majority_and_popularity_floors_hand_cases():
    labels = {
        "attr_gender": {
            "train": np.array([0, 0, 0, 1, -1]),
            "eval": np.array([0]),
            "test": np.array([0, 1, 1, 1, -1]),
        }
    }
    rows = majority_floor(labels, fractions=(1.0,), seeds=(0,))
    # majority of train = 0; test (known) = [0, 1, 1, 1] -> accuracy 1/4,
    # balanced = (recall 0: 1 + recall 1: 0)/2 = 0.5.
    got = {r["metric"]: r["value"] for r in rows}
    assert got == {"accuracy": 0.25, "balanced_accuracy": 0.5}
    # Popularity: counts give ranking 5 (3), 4 (2), then 3 and 6 tied at 1 ->
    # smaller id first: 3, 6; 7 has 0.
    counts = item_counts(np.array([[5, 5, 5, 4, 4, 3, 6]]), 8)
    targets = np.array([4, 6, 7, 0])  # ranks 2, 4, 5; user 4 has no future -> skipped
    rows = popularity_floor(counts, targets, fractions=(0.1, 1.0), seeds=(0,), k=4)
    got = {(r["metric"], r["fraction"]): r["value"] for r in rows}
    # HR@4 = (1 + 1 + 0)/3; NDCG@4 = (1/log2(3) + 1/log2(5))/3.
    assert got[("hr@4", 0.1)] == pytest.approx(2 / 3) == got[("hr@4", 1.0)]
    assert got[("ndcg@4", 1.0)] == pytest.approx((1 / np.log2(3) + 1 / np.log2(5)) / 3)
    # Excluding history item 5 for user 1 moves target 4 to rank 1.
    hist = np.array([[5, 0], [0, 0], [0, 0], [0, 0]])
    rows = popularity_floor(counts, targets, test_history=hist, fractions=(1.0,),
                                   seeds=(0,), k=4)  # fmt: skip
    got = {r["metric"]: r["value"] for r in rows}
    assert got["ndcg@4"] == pytest.approx((1 + 1 / np.log2(5)) / 3)


def test_bag_of_items_floor_runs_through_the_same_driver():
    # Sparse features, no item embeddings (one-hot items in the liked probe).
    w, num_items = _synthetic_world(seed=1)
    emb = {s: bag_of_items_features(w["hist"][s], num_items) for s in w["hist"]}
    labels = {"favorite_genre": w["fav"], "liked_item": w["liked"], "next_item": w["next"]}
    rows = evaluate_embeddings(
        emb, labels, model="bag_of_items", fractions=(1.0,), seeds=(0,), num_items=num_items,
        history=w["hist"], probe_kwargs=FAST,
    )  # fmt: skip
    assert len(rows) == 6 and all(0.0 <= r["value"] <= 1.0 for r in rows)
    get = {(r["task"], r["metric"]): r["value"] for r in rows}
    # The history items reveal the genre block, so the floor is strong here.
    assert get[("favorite_genre", "accuracy")] > 0.8


def test_grid_trained_jointly_equals_one_at_a_time():
    # The stacked L2 grid is a speed trick only: Adam is element-wise, so each
    # member follows the trajectory it would follow alone (max_params=1 forces
    # one member per group).
    x_tr, y_tr = _clusters(200, seed=1, sep=0.7)
    x_ev, y_ev = _clusters(150, seed=2, sep=0.7)
    kw = dict(l2_grid=(1.0, 1e-4), max_epochs=15, patience=15, learning_rate=0.05, seed=0)
    joint = train_softmax_probe(x_tr, y_tr, x_ev, y_ev, 3, **kw)
    alone = train_softmax_probe(x_tr, y_tr, x_ev, y_ev, 3, max_params=1, **kw)
    assert joint.selection == alone.selection
    np.testing.assert_allclose(joint.weights, alone.weights, rtol=1e-4, atol=1e-5)


def test_next_item_probe_on_noise_starts_from_the_popularity_ranking():
    # Next item's "majority class" is the popularity ranking of the train
    # histories (label-free). At 1% of 600 users (6 targets), a prior taken from
    # the sampled targets alone ranks 6 items first; the popularity prior keeps
    # a noise probe at the popularity floor. Tolerance: 2 standard errors of an
    # HR@10 near 0.3 on 800 test users (2 * sqrt(0.21 / 800) = 0.032) + 0.01.
    num_items, d = 60, 16
    rng = np.random.default_rng(0)
    popularity = 1.0 / np.arange(1, num_items - NUM_RESERVED + 1)
    popularity /= popularity.sum()

    def draw(n, size=None):
        return NUM_RESERVED + rng.choice(
            popularity.size, (n,) if size is None else (n, size), p=popularity
        )

    sizes = {"train": 600, "eval": 100, "test": 800}
    targets = {s: draw(n) for s, n in sizes.items()}
    history = {s: draw(n, 20) for s, n in sizes.items()}
    emb = {s: rng.normal(size=(n, d)).astype(np.float32) for s, n in sizes.items()}
    rows = evaluate_embeddings(
        emb, {"next_item": targets}, model="noise", fractions=(0.01, 1.0), seeds=(0,),
        num_items=num_items, history=history, exclude_history=False,
        probe_kwargs={"max_epochs": 30, "min_epochs": 5},
    )  # fmt: skip
    counts = item_counts(history["train"], num_items)
    floor = popularity_floor(counts, targets["test"], fractions=(0.01, 1.0), seeds=(0,))
    pop = {r["fraction"]: r["value"] for r in floor if r["metric"] == "hr@10"}
    for r in rows:
        if r["metric"] == "hr@10":
            assert abs(r["value"] - pop[r["fraction"]]) <= 2 * np.sqrt(0.21 / 800) + 0.01, r


# --------------------------------------------------------------------------
# Speed without changing results: sparse arithmetic and exact shortcuts
# --------------------------------------------------------------------------


def _bag_world(n, seed):
    """Next-item-like data on bag-of-items features: 60 classes of which the
    train labels use only ~20 (the others share one weight column), items
    50..59 only ever in eval histories (dropped train feature columns)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(3, 23, n)  # labels 3..22 of 60 classes
    hist = np.concatenate(
        [y[:, None] + 20 * rng.integers(0, 2, (n, 3)), rng.integers(3, 50, (n, 3))], 1
    )
    if seed == 2:  # eval: histories reach items unseen in train
        hist[:, -1] = rng.integers(50, 60, n)
    return bag_of_items_features(hist, 60), y


def test_sparse_probe_equals_the_dense_computation_and_the_plain_one():
    x_tr, y_tr = _bag_world(240, seed=1)
    x_ev, y_ev = _bag_world(80, seed=2)
    assert scipy.sparse.issparse(x_tr) and np.unique(x_tr.indices).size < 60
    kw = dict(
        l2_grid=(10.0, 1e-2, 1e-4), max_epochs=30, patience=3, min_epochs=4, batch_size=64,
        learning_rate=0.05, seed=3,
    )  # fmt: skip
    fast = train_softmax_probe(x_tr, y_tr, x_ev, y_ev, 60, **kw)
    dense = train_softmax_probe(
        x_tr.toarray(), y_tr, x_ev.toarray(), y_ev, 60, standardize=False, **kw
    )
    plain = train_softmax_probe(x_tr, y_tr, x_ev, y_ev, 60, shortcuts=False, **kw)
    # The members stop at different epochs, so dropping stopped members is exercised.
    assert len({m["epochs_run"] for m in fast.selection}) > 1
    assert fast.best_epoch > 0  # a trained member, not the prior, was chosen
    for other in (dense, plain):
        assert [(m["l2"], m["best_epoch"], m["epochs_run"]) for m in other.selection] == [
            (m["l2"], m["best_epoch"], m["epochs_run"]) for m in fast.selection
        ]
        assert (other.l2, other.best_epoch) == (fast.l2, fast.best_epoch)
        np.testing.assert_allclose(other.weights, fast.weights, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(other.bias, fast.bias, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(
            other.predict_scores(x_ev), fast.predict_scores(x_ev), rtol=1e-4, atol=1e-4
        )
    # Classes that are no train label keep identical weights: one shared column.
    unseen = np.setdiff1d(np.arange(60), y_tr)
    assert np.all(fast.weights[:, unseen] == fast.weights[:, unseen[:1]])
    assert np.all(fast.weights[50:] == 0)  # features absent from train: no weight
    # With a popularity prior, unseen classes share columns by equal prior count.
    counts = np.random.default_rng(4).integers(0, 4, 60)
    fast_pop = train_softmax_probe(x_tr, y_tr, x_ev, y_ev, 60, prior_counts=counts, **kw)
    plain_pop = train_softmax_probe(
        x_tr, y_tr, x_ev, y_ev, 60, prior_counts=counts, shortcuts=False, **kw
    )
    assert (plain_pop.l2, plain_pop.best_epoch) == (fast_pop.l2, fast_pop.best_epoch)
    np.testing.assert_allclose(plain_pop.weights, fast_pop.weights, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(plain_pop.bias, fast_pop.bias, rtol=1e-4, atol=1e-5)
    assert len(np.unique(fast_pop.bias[unseen])) > 1  # the prior differs across them
    with pytest.raises(ValueError, match="standardize"):
        train_softmax_probe(x_tr, y_tr, x_ev, y_ev, 60, standardize=True, **kw)


def test_task_registry_names_each_task_and_classifies_any_other_name():
    assert list(TASKS) == list(DEFAULT_TASKS)
    assert isinstance(get_task("next_item"), NextItemTask)
    assert isinstance(get_task("liked_item"), LikedItemTask)
    genre = get_task("favorite_genre")
    assert isinstance(genre, ClassificationTask) and genre.reads == ()
    attr = get_task("attr_gender")
    assert type(attr) is ClassificationTask and attr.name == "attr_gender"
    assert attr.reads == ("attr_gender",)  # read from the examples as the label
    assert get_task("genre").reads == ()  # labels given in memory
    # Availability from the metadata, with the reason.
    meta = {"has_ratings": False, "vocab_sizes": {"genres": NUM_RESERVED}}
    assert "no ratings" in get_task("liked_item").unavailable(meta)
    assert "genre" in get_task("favorite_genre").unavailable(meta)
    assert get_task("next_item").unavailable(meta) is None


def test_result_row_columns_keep_the_results_json_order():
    row = ResultRow("bt", "t", "accuracy", 0.5, np.int64(2), np.float32(0.25), {"n_train": 3})
    d = row.to_dict()
    assert list(d) == ["model", "task", "metric", "fraction", "seed", "value", "n_train"]
    assert type(d["seed"]) is int and type(d["value"]) is float and d["value"] == 0.25
    # No majority floor for next item (the popularity floor is its label-free floor).
    assert get_task("next_item").majority({}, 1.0, 0, "majority") == []
