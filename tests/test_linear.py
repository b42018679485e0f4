"""The converged probes and their selection by cross-validation (`bt_tf.evaluation.linear`)."""

import numpy as np
import pytest
import scipy.sparse
from sklearn.linear_model import LogisticRegression

from bt_tf.evaluation import linear, metrics
from bt_tf.evaluation.linear import (
    PRIOR,
    BilinearFamily,
    OneHotBlock,
    PairBlock,
    SoftmaxFamily,
    _dot,
    _tdot,
    inner_folds,
    select_and_fit,
)
from bt_tf.features import NUM_RESERVED

GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


def _planted(n, *, d=8, k=4, signal=1.0, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    w = np.random.default_rng(99).normal(size=(d, k))
    y = np.argmax(signal * x @ w + rng.gumbel(size=(n, k)), axis=1)
    return x, y


@pytest.mark.parametrize("c", [0.01, 0.3, 3.0])
def test_softmax_fit_is_scikit_learns_logistic_regression(c):
    # Without the intercept's pseudo-counts the objective is scikit-learn's
    # multinomial one (C * sum of log-losses + |W|^2 / 2, intercept free), so the
    # weights agree; the intercepts agree up to the softmax's shared constant.
    x, y = _planted(300, seed=1)
    fit = SoftmaxFamily(x, y, 4, smoothing=0.0).fit(np.arange(300), c, np.arange(4))
    ref = LogisticRegression(C=c, max_iter=10_000, tol=1e-10).fit(x, y)
    np.testing.assert_allclose(fit.w, ref.coef_.T, atol=2e-4)
    np.testing.assert_allclose(fit.b - fit.b.mean(), ref.intercept_ - ref.intercept_.mean(),
                               atol=2e-4)  # fmt: skip
    np.testing.assert_array_equal(fit.predict(x), ref.predict(x))


def test_prior_is_the_smoothed_class_frequency_and_classes_come_from_the_rows():
    x, _ = _planted(10)
    y = np.array([5, 5, 5, 2, 2, 7, 5, 5, 2, 9])
    family = SoftmaxFamily(x, y, 10)
    rows = np.arange(9)  # class 9 is not among them
    classes = family.classes(rows)
    assert classes.tolist() == [2, 5, 7]
    fit = family.fit(rows, PRIOR, classes)
    assert fit.is_prior
    # counts 3, 5, 1 + 0.5 each over 10.5
    np.testing.assert_allclose(np.exp(fit.b), [3.5 / 10.5, 5.5 / 10.5, 1.5 / 10.5])
    assert set(fit.predict(x)) == {5}
    # A label outside the fit's classes has probability 0.
    assert family.log_lik(fit, np.array([9]))[0] == -np.inf


def test_one_hot_block_products_equal_the_explicit_matrix():
    rng = np.random.default_rng(0)
    dense, ids = rng.normal(size=(7, 3)), rng.integers(0, 5, 7)
    block = OneHotBlock(dense, ids, 5)
    full = np.concatenate([dense, np.eye(5)[ids]], axis=1)
    w, g = rng.normal(size=(8, 2)), rng.normal(size=(7, 2))
    assert block.shape == (7, 8)
    np.testing.assert_allclose(_dot(block, w), full @ w)
    np.testing.assert_allclose(_tdot(block, g), full.T @ g)
    sub = block[np.array([1, 4])]
    np.testing.assert_allclose(_dot(sub, w), full[[1, 4]] @ w)
    sparse = OneHotBlock(scipy.sparse.csr_matrix(dense), ids, 5)
    np.testing.assert_allclose(_tdot(sparse, g), full.T @ g)


@pytest.mark.parametrize("sparse_users", [False, True])
def test_pair_block_products_equal_the_explicit_matrix(sparse_users):
    # [u_user, v_item, u * v, onehot(item)] of 9 pairs over 4 users and 5 items
    rng = np.random.default_rng(1)
    users, items = rng.normal(size=(4, 3)), rng.normal(size=(5, 3))
    ui, ii = rng.integers(0, 4, 9), rng.integers(0, 5, 9)
    product = users[ui] * items[ii]
    full = np.concatenate([users[ui], items[ii], product, np.eye(5)[ii]], axis=1)
    stored = scipy.sparse.csr_matrix(users) if sparse_users else users
    block = PairBlock(stored, items, product, ui, ii, 5)
    w, g = rng.normal(size=(14, 2)), rng.normal(size=(9, 2))
    assert block.shape == (9, 14)
    np.testing.assert_allclose(_dot(block, w), full @ w)
    np.testing.assert_allclose(_tdot(block, g), full.T @ g)
    np.testing.assert_allclose(linear._column_squares(block), (full**2).sum(axis=0))
    rows = np.array([0, 3, 8])
    np.testing.assert_allclose(_dot(block[rows], w), full[rows] @ w)
    np.testing.assert_allclose(_tdot(block[rows], g[rows]), full[rows].T @ g[rows])
    # The fit on the factored pairs is the fit on the explicit matrix.
    y = rng.integers(0, 2, 9)
    a = SoftmaxFamily(block, y, 2).fit(np.arange(9), 1.0, np.arange(2))
    b = SoftmaxFamily(full, y, 2).fit(np.arange(9), 1.0, np.arange(2))
    np.testing.assert_allclose(a.w, b.w, atol=1e-5)
    np.testing.assert_allclose(a.b, b.b, atol=1e-5)


def test_inner_folds_keep_groups_together_and_balance_strata():
    groups = np.repeat(np.arange(30), 3)  # 30 users, 3 pairs each
    fold = inner_folds(groups.size, 3, seed=0, groups=groups)
    for g in range(30):
        assert np.unique(fold[groups == g]).size == 1
    assert np.bincount(fold).tolist() == [30, 30, 30]
    strata = np.array([0] * 12 + [1] * 6 + [2] * 3)
    fold = inner_folds(strata.size, 3, seed=1, strata=strata)
    for c, n in ((0, 12), (1, 6), (2, 3)):
        assert np.bincount(fold[strata == c], minlength=3).tolist() == [n // 3] * 3
    assert inner_folds(2, 3, seed=0).max() == 1  # fewer rows than folds: one fold per row
    np.testing.assert_array_equal(inner_folds(21, 3, seed=5), inner_folds(21, 3, seed=5))


def test_selection_keeps_the_prior_on_noise_and_learns_a_planted_signal():
    x, y = _planted(120, seed=2, signal=3.0)
    fit, sel = select_and_fit(SoftmaxFamily(x, y, 4), np.arange(120), [PRIOR, *GRID],
                              seed=0, strata=y)  # fmt: skip
    assert not sel.prior_selected and sel.folds == 3
    x_te, y_te = _planted(2000, seed=3, signal=3.0)
    assert metrics.accuracy(y_te, fit.predict(x_te)) > 0.6  # majority ~0.3
    # The same features with labels drawn independently of them: with no slack
    # (se_rule 0) a near-prior candidate may win by a hair, but its predictions stay
    # the majority class's, and its accuracy within noise of it.
    noise = np.random.default_rng(4).choice(4, 120, p=[0.55, 0.25, 0.15, 0.05])
    for s in range(5):
        fit, sel = select_and_fit(SoftmaxFamily(x, noise, 4), np.arange(120), [PRIOR, *GRID],
                                  seed=s, strata=noise)  # fmt: skip
        assert sel.c in (PRIOR, 1e-3, 1e-2), sel.cv
        assert np.mean(fit.predict(x_te) == 0) > 0.9
    # With a slack of one standard error the prior itself is kept.
    _, sel = select_and_fit(SoftmaxFamily(x, noise, 4), np.arange(120), [PRIOR, *GRID],
                            seed=0, strata=noise, se_rule=1.0)  # fmt: skip
    assert sel.prior_selected
    # Too few labelled rows to cross-validate: the prior, without trying.
    fit, sel = select_and_fit(SoftmaxFamily(x, y, 4), np.array([3]), [PRIOR, *GRID])
    assert sel.prior_selected and sel.folds == 0 and fit.is_prior


def test_pruned_path_picks_what_the_full_path_picks():
    # Once a candidate is worse than the one before and than the best by 2 SE, the
    # weaker ones are skipped (their cv entries are None); the choice is the same.
    x, y = _planted(200, seed=5, signal=0.5, d=30)
    family = SoftmaxFamily(x, y, 4)
    full_fit, full = select_and_fit(family, np.arange(200), [PRIOR, *GRID], seed=0,
                                    prune=np.inf)  # fmt: skip
    fit, sel = select_and_fit(family, np.arange(200), [PRIOR, *GRID], seed=0)
    assert sel.c == full.c
    assert all(c["mean"] is not None for c in full.cv)
    assert any(c["mean"] is None for c in sel.cv), sel.cv  # the weakest were never fitted
    np.testing.assert_allclose(fit.w, full_fit.w)


def _next_item_world(n=600, *, v=80, d=8, seed=0, signal=1.0):
    """Users and items in one d-space; the next item drawn from softmax(signal u.e + log pop)."""
    rng = np.random.default_rng(seed)
    users = rng.normal(size=(n, d)).astype(np.float32)
    items = rng.normal(size=(v, d)).astype(np.float32)
    items[:NUM_RESERVED] = 0
    pop = np.log(np.arange(v, 0, -1, dtype=np.float64))
    logits = signal * users @ items.T + pop
    logits[:, :NUM_RESERVED] = -np.inf
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    targets = np.array([rng.choice(v, p=row) for row in p])
    return users, items, targets, pop


def test_bilinear_gradient_matches_finite_differences():
    users, items, targets, pop = _next_item_world(40, v=20, d=3)
    history = np.zeros((40, 2), np.int64)
    history[:, 0] = 5  # item 5 is every user's history: masked
    family = BilinearFamily(users, items, targets, pop, history)
    rows = np.flatnonzero(targets != 5)
    theta = np.random.default_rng(0).normal(size=2 + 9) * 0.3
    free = family._free(0.5)
    losses = {}

    def loss(t):
        z = family.logits(t, rows).astype(np.float64)
        z[:, :NUM_RESERVED] = -np.inf
        z[:, 5] = -np.inf
        ll = z[np.arange(rows.size), targets[rows]] - np.log(np.exp(z).sum(axis=1))
        dw = t[2:]
        return (-ll.sum() + 0.5 / 0.5 * (dw * dw).sum()) / rows.size

    # The analytic gradient through a one-step L-BFGS probe: fit's objective.
    import bt_tf.evaluation.linear as linear

    captured = {}

    def fake_minimize(fun, x0, **kw):
        captured["value"], captured["grad"] = fun(theta[free])
        return x0

    orig = linear._minimize
    linear._minimize = fake_minimize
    try:
        family.fit(rows, 0.5, init=theta)
    finally:
        linear._minimize = orig
    assert captured["value"] == pytest.approx(loss(theta), rel=1e-4)
    eps = 1e-3
    for i in np.flatnonzero(free):
        up, down = theta.copy(), theta.copy()
        up[i] += eps
        down[i] -= eps
        losses[i] = (loss(up) - loss(down)) / (2 * eps)
    np.testing.assert_allclose(captured["grad"], [losses[i] for i in np.flatnonzero(free)],
                               rtol=2e-2, atol=2e-4)  # fmt: skip


def test_bilinear_probe_learns_from_few_labels_where_a_softmax_over_items_cannot():
    # 60 labelled users, 80 items: the bilinear probe has 2 + 64 parameters and
    # recovers the planted u.e score; popularity is its prior.
    users, items, targets, pop = _next_item_world(2000, signal=1.5)
    family = BilinearFamily(users, items, targets, pop)
    rows, test = np.arange(60), np.arange(1000, 2000)
    theta, sel = select_and_fit(family, rows, family.candidates((1e-4, 1e-3, 1e-2)), seed=0)
    assert not sel.prior_selected and theta[0] > 0.3  # the scale of u.e was learned
    ranks = metrics.target_ranks(family.score_fn(theta, test), targets[test])
    popular = BilinearFamily(None, None, targets, pop)
    prior_ranks = metrics.target_ranks(popular.score_fn(popular.initial(), test), targets[test])
    hr, hr_pop = metrics.hits_at_k(ranks, 10).mean(), metrics.hits_at_k(prior_ranks, 10).mean()
    assert hr > hr_pop + 0.1, (hr, hr_pop)
    # Item vectors that say nothing: selection keeps the popularity prior (or a
    # scale within noise of 0).
    noise = np.random.default_rng(1).normal(size=items.shape).astype(np.float32)
    family = BilinearFamily(users, noise, targets, pop)
    theta, sel = select_and_fit(family, rows, family.candidates((1e-4, 1e-3)), seed=0)
    ranks = metrics.target_ranks(family.score_fn(theta, test), targets[test])
    assert abs(metrics.hits_at_k(ranks, 10).mean() - hr_pop) < 0.05


def test_bilinear_masks_history_items_in_training_and_reserved_ids():
    users, items, targets, pop = _next_item_world(50, v=30)
    history = np.full((50, 1), 7)
    family = BilinearFamily(users, items, targets, pop, history)
    rows = np.flatnonzero(targets != 7)
    theta = family.fit(rows, PRIOR)
    z = family.logits(theta, rows)
    ll = family.log_lik(theta, rows)
    # The softmax the loss uses leaves item 7 and ids 0-2 out: the log-likelihood is
    # that of a distribution over the other items.
    keep = np.ones(30, bool)
    keep[[0, 1, 2, 7]] = False
    zz = z[:, keep].astype(np.float64)
    expect = z[np.arange(rows.size), targets[rows]] - np.log(np.exp(zz).sum(axis=1))
    np.testing.assert_allclose(ll, expect, rtol=1e-5)
