"""Label sampling and derivation, the TensorFlow softmax probes (the full-softmax next-item
variant and the tuner's objective) and the task registry."""

import inspect

import numpy as np
import pytest
import scipy.sparse

from bt_tf.evaluation import metrics
from bt_tf.evaluation.contenders import bag_of_items
from bt_tf.evaluation.labels import (
    Pairs,
    favorite_genre,
    first_future_item,
    item_counts,
    liked_item_pairs,
    sample_label_fraction,
)
from bt_tf.evaluation.probe import log_prior, train_pair_probe, train_softmax_probe
from bt_tf.evaluation.settings import DEFAULT_L2_GRID
from bt_tf.evaluation.tasks import (
    DEFAULT_TASKS,
    NEXT_ITEM_SOFTMAX,
    TASKS,
    ClassificationTask,
    LikedItemTask,
    NextItemTask,
    get_task,
)
from bt_tf.features import NUM_RESERVED

FAST = dict(max_epochs=40, patience=5, learning_rate=0.05)


def _bag(history, num_items):
    """L2-normalized sparse history bags (the bag-of-items floor's features)."""
    return bag_of_items(history, num_items, np.arange(len(history))).users


def _prior_world(signal: float, *, seed: int = 0, sizes=(750, 100, 1000), d: int = 64):
    """ML-100K-sized splits: labels drawn from an imbalanced 8-class prior (majority
    0.5), features Gaussian noise plus ``signal`` times a fixed class centre."""
    prior = np.array([0.5, 0.2, 0.1, 0.06, 0.05, 0.04, 0.03, 0.02])
    centres = np.random.default_rng(7).normal(size=(prior.size, d))
    rng = np.random.default_rng(seed)
    emb, y = {}, {}
    for split, n in zip(("train", "eval", "test"), sizes):
        y[split] = rng.choice(prior.size, n, p=prior)
        emb[split] = (rng.normal(size=(n, d)) + signal * centres[y[split]]).astype(np.float32)
    return emb, {"favorite_genre": y}


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
    x = _bag(hist, 33)
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
    return _bag(hist, 60), y


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
    assert [t for t in TASKS if t != NEXT_ITEM_SOFTMAX] == list(DEFAULT_TASKS)
    assert isinstance(get_task(NEXT_ITEM_SOFTMAX), NextItemTask)  # the full-softmax variant
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
