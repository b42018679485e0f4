"""Label sampling, label derivation, linear probes and the evaluation driver."""

import inspect

import numpy as np
import pytest
import scipy.sparse as sp

from bt_tf import metrics, probes

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
    idx = probes.sample_label_fraction(LABELS, fraction, seed=0)
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
    a = probes.sample_label_fraction(LABELS, 0.25, seed=1)
    np.testing.assert_array_equal(a, probes.sample_label_fraction(LABELS, 0.25, seed=1))
    assert not np.array_equal(a, probes.sample_label_fraction(LABELS, 0.25, seed=2))
    small = probes.sample_label_fraction(LABELS, 0.1, seed=1)
    assert set(small) <= set(a)  # nested across fractions for one seed


def test_unstratified_sample_size():
    y = np.zeros(1000, dtype=int)
    y[::7] = -1  # 142 unknown -> 858 labelled
    idx = probes.sample_label_fraction(y, 0.05, seed=0, stratify=False)
    assert idx.size == 43  # floor(0.05 * 858 + 0.5) = floor(43.4) = 43
    assert np.all(y[idx] == 0)
    assert probes.sample_label_fraction(y, 0.0001, seed=0, stratify=False).size == 1
    with pytest.raises(ValueError, match="fraction"):
        probes.sample_label_fraction(y, 0.0, seed=0)


# --------------------------------------------------------------------------
# Label derivation and features
# --------------------------------------------------------------------------


def test_favorite_genre_all_layouts():
    ragged = [[3, 4, 4], [5, 3, 5, 3], [], [0, 1, 2], [2, 6]]
    # user 0: 4 twice -> 4; user 1: 3 and 5 twice each -> tie -> smaller, 3;
    # user 2: none -> -1; user 3: only reserved ids -> -1; user 4: OOV ignored -> 6.
    expected = [4, 3, -1, -1, 6]
    assert probes.favorite_genre(ragged).tolist() == expected
    padded = np.zeros((5, 4), dtype=np.int64)
    for i, r in enumerate(ragged):
        padded[i, : len(r)] = r
    assert probes.favorite_genre(padded).tolist() == expected
    flat = np.concatenate([np.asarray(r, dtype=np.int64) for r in ragged])
    lengths = [len(r) for r in ragged]
    assert probes.favorite_genre(flat, row_lengths=lengths).tolist() == expected


def test_liked_pairs_targets_and_counts():
    items = [[5, 2, 7], [], [4]]
    ratings = [[4.0, 5.0, 3.5], [], [5.0]]
    p = probes.liked_item_pairs(items, ratings)
    # OOV item 2 dropped; 4.0 >= 4 liked, 3.5 not.
    assert p.user_index.tolist() == [0, 0, 2]
    assert p.item_ids.tolist() == [5, 7, 4]
    assert p.labels.tolist() == [1, 0, 1]
    padded = np.array([[5, 2, 7], [0, 0, 0], [4, 0, 0]])
    p2 = probes.liked_item_pairs(padded, np.array([[4.0, 5, 3.5], [0, 0, 0], [5, 0, 0]]))
    assert p2.labels.tolist() == [1, 0, 1]
    assert probes.first_future_item(items).tolist() == [5, 0, 4]
    assert probes.first_future_item(padded).tolist() == [5, 0, 4]
    # counts: ids 4, 5, 7 once each; OOV 2 and padding 0 count 0.
    assert probes.item_counts(padded, 8).tolist() == [0, 0, 0, 0, 1, 1, 0, 1]


def test_bag_of_items_features():
    hist = np.array([[3, 3, 4, 0], [0, 0, 0, 0], [5, 1, 0, 0]])
    x = probes.bag_of_items_features(hist, 6)
    assert sp.issparse(x) and x.shape == (3, 6)
    # user 0: counts (id3: 2, id4: 1) / sqrt(5); user 1 empty; user 2: mask id 1 dropped.
    np.testing.assert_allclose(
        x.toarray(),
        [[0, 0, 0, 2 / 5**0.5, 1 / 5**0.5, 0], [0] * 6, [0, 0, 0, 0, 0, 1]],
        rtol=1e-6,
    )
    z = probes.bag_of_items_features(hist, 6, projection_dim=4, seed=3)
    assert z.shape == (3, 4) and z.dtype == np.float32
    np.testing.assert_array_equal(
        z, probes.bag_of_items_features(hist, 6, projection_dim=4, seed=3)
    )
    with pytest.raises(ValueError, match="vocab_size"):
        probes.bag_of_items_features(hist, 5)


# --------------------------------------------------------------------------
# Probes
# --------------------------------------------------------------------------


def test_probe_learns_planted_clusters_and_not_random_labels():
    x_tr, y_tr = _clusters(300, seed=1)
    x_ev, y_ev = _clusters(200, seed=2)
    x_te, y_te = _clusters(2000, seed=3)
    majority = np.mean(y_te == metrics.majority_class(y_tr))  # ~0.33-0.36
    probe = probes.train_softmax_probe(x_tr, y_tr, x_ev, y_ev, 3, seed=0, **FAST)
    acc = metrics.accuracy(y_te, probe.predict(x_te))
    assert acc > majority + 0.3, (acc, majority)  # planted: ~0.9+ vs ~0.35
    # Same features, labels independent of them: no better than majority + 0.06
    # (the std of an accuracy near 1/3 on 2000 users is ~0.011).
    rand = np.random.default_rng(9)
    yr_tr, yr_ev, yr_te = (rand.integers(0, 3, n) for n in (300, 200, 2000))
    probe_r = probes.train_softmax_probe(x_tr, yr_tr, x_ev, yr_ev, 3, seed=0, **FAST)
    acc_r = metrics.accuracy(yr_te, probe_r.predict(x_te))
    majority_r = np.mean(yr_te == metrics.majority_class(yr_tr))
    assert acc_r < max(majority_r, 1 / 3) + 0.06, (acc_r, majority_r)


def test_probe_same_seed_same_weights_and_minibatches():
    x_tr, y_tr = _clusters(300, seed=1)
    x_ev, y_ev = _clusters(100, seed=2)
    kw = dict(FAST, batch_size=64, max_epochs=5)
    a = probes.train_softmax_probe(x_tr, y_tr, x_ev, y_ev, 3, seed=4, **kw)
    b = probes.train_softmax_probe(x_tr, y_tr, x_ev, y_ev, 3, seed=4, **kw)
    np.testing.assert_array_equal(a.weights, b.weights)
    np.testing.assert_array_equal(a.bias, b.bias)
    c = probes.train_softmax_probe(x_tr, y_tr, x_ev, y_ev, 3, seed=5, **kw)
    assert not np.array_equal(a.weights, c.weights)  # minibatch order follows the seed


def test_l2_is_selected_on_eval_not_test():
    # No test data can reach the probe: there is no such argument.
    params = inspect.signature(probes.train_softmax_probe).parameters
    assert not [p for p in params if "test" in p]
    # Imbalanced separable train data (70% class 0). Eval labels are FLIPPED, so
    # eval prefers a probe that ignores the features: the strong penalty (10.0)
    # shrinks W to ~0 and predicts the majority class 0 -> eval accuracy ~0.3,
    # while the weak one (1e-4) fits -> ~0.0 on flipped eval but ~1.0 on a test
    # set drawn like train. Selection must follow eval: l2 = 10.0. The weak value
    # comes first in the grid, so it is not the tie-break that picks 10.0.
    x_tr, y_tr = _clusters(400, seed=1, num_classes=2, sep=3.0, weights=[0.7, 0.3])
    x_ev, y_ev = _clusters(300, seed=2, num_classes=2, sep=3.0, weights=[0.7, 0.3])
    x_te, y_te = _clusters(300, seed=3, num_classes=2, sep=3.0, weights=[0.7, 0.3])
    probe = probes.train_softmax_probe(
        x_tr, y_tr, x_ev, 1 - y_ev, 2, l2_grid=(1e-4, 10.0), max_epochs=150, patience=150,
        learning_rate=0.05, seed=0,
    )  # fmt: skip
    assert probe.l2 == 10.0, probe.selection
    by_l2 = {s["l2"]: s["eval_metric"] for s in probe.selection}
    assert by_l2[10.0] > by_l2[1e-4]
    # The recorded eval metric is the final probe's accuracy on eval.
    assert probe.eval_metric == pytest.approx(metrics.accuracy(1 - y_ev, probe.predict(x_ev)))
    # On test the other L2 would have won (it separates the clusters); the chosen
    # probe is no better than majority there.
    assert metrics.accuracy(y_te, probe.predict(x_te)) < 0.8


def test_sparse_bag_of_items_probe_learns_genre():
    # 3 genres with items 3-12, 13-22, 23-32; each user draws 6 items, 5 from
    # their genre's block; the label is the genre.
    rng = np.random.default_rng(0)
    n = 600
    y = rng.integers(0, 3, n)
    own = 3 + 10 * y[:, None] + rng.integers(0, 10, (n, 5))
    hist = np.concatenate([own, rng.integers(3, 33, (n, 1))], axis=1)
    x = probes.bag_of_items_features(hist, 33)
    probe = probes.train_softmax_probe(x[:300], y[:300], x[300:400], y[300:400], 3, **FAST)
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
        return u, probes.Pairs(ui, it, lab)

    (u_tr, p_tr), (u_ev, p_ev), (u_te, p_te) = split(200, 1), split(100, 2), split(200, 3)
    pp = probes.train_pair_probe(u_tr, p_tr, u_ev, p_ev, item_emb=item_emb, **FAST)
    logits = pp.predict_logits(u_te, p_te)
    assert metrics.roc_auc(p_te.labels, logits) > 0.9
    assert metrics.accuracy(p_te.labels, (logits > 0).astype(int)) > 0.8
    assert np.all((pp.predict_proba(u_te, p_te) >= 0) & (pp.predict_proba(u_te, p_te) <= 1))


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
        out["liked"][split] = probes.liked_item_pairs(items, liked)
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
    rows = probes.evaluate_embeddings(
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
        assert r["n_train"] >= 1 and r["l2"] in probes.DEFAULT_L2_GRID
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


def test_evaluate_embeddings_needs_history_when_excluding():
    w, num_items = _synthetic_world()
    with pytest.raises(ValueError, match="exclude_history"):
        probes.evaluate_embeddings(
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
    rows = probes.majority_floor(labels, fractions=(1.0,), seeds=(0,))
    # majority of train = 0; test (known) = [0, 1, 1, 1] -> accuracy 1/4,
    # balanced = (recall 0: 1 + recall 1: 0)/2 = 0.5.
    got = {r["metric"]: r["value"] for r in rows}
    assert got == {"accuracy": 0.25, "balanced_accuracy": 0.5}
    # Popularity: counts give ranking 5 (3), 4 (2), then 3 and 6 tied at 1 ->
    # smaller id first: 3, 6; 7 has 0.
    counts = probes.item_counts(np.array([[5, 5, 5, 4, 4, 3, 6]]), 8)
    targets = np.array([4, 6, 7, 0])  # ranks 2, 4, 5; user 4 has no future -> skipped
    rows = probes.popularity_floor(counts, targets, fractions=(0.1, 1.0), seeds=(0,), k=4)
    got = {(r["metric"], r["fraction"]): r["value"] for r in rows}
    # HR@4 = (1 + 1 + 0)/3; NDCG@4 = (1/log2(3) + 1/log2(5))/3.
    assert got[("hr@4", 0.1)] == pytest.approx(2 / 3) == got[("hr@4", 1.0)]
    assert got[("ndcg@4", 1.0)] == pytest.approx((1 / np.log2(3) + 1 / np.log2(5)) / 3)
    # Excluding history item 5 for user 1 moves target 4 to rank 1.
    hist = np.array([[5, 0], [0, 0], [0, 0], [0, 0]])
    rows = probes.popularity_floor(counts, targets, test_history=hist, fractions=(1.0,),
                                   seeds=(0,), k=4)  # fmt: skip
    got = {r["metric"]: r["value"] for r in rows}
    assert got["ndcg@4"] == pytest.approx((1 + 1 / np.log2(5)) / 3)


def test_bag_of_items_floor_runs_through_the_same_driver():
    # Sparse features, no item embeddings (one-hot items in the liked probe).
    w, num_items = _synthetic_world(seed=1)
    emb = {s: probes.bag_of_items_features(w["hist"][s], num_items) for s in w["hist"]}
    labels = {"favorite_genre": w["fav"], "liked_item": w["liked"], "next_item": w["next"]}
    rows = probes.evaluate_embeddings(
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
    joint = probes.train_softmax_probe(x_tr, y_tr, x_ev, y_ev, 3, **kw)
    alone = probes.train_softmax_probe(x_tr, y_tr, x_ev, y_ev, 3, max_params=1, **kw)
    assert joint.selection == alone.selection
    np.testing.assert_allclose(joint.weights, alone.weights, rtol=1e-4, atol=1e-5)
