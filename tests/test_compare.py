"""Paired bootstrap of score differences: the per-resample metric is the metric, and intervals behave."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cytocore import classes, compare
from cytocore.metric import score

pytestmark = pytest.mark.unit


def _truth(n_images: int, rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for i in range(n_images):
        for _ in range(rng.integers(1, 3)):
            x, y = rng.uniform(0, 200, 2)
            code = rng.choice(classes.CLASSES[:6])
            rows.append((len(rows) + 1, f"{i:08x}-0.jpg", x, y, x + 60, y + 60, code))
    return pd.DataFrame(rows, columns=["trustii_id", "NAME", "x1", "y1", "x2", "y2", "class"])


def _noisy(truth: pd.DataFrame, rng: np.random.Generator, wrong: float, shift: float) -> pd.DataFrame:
    sub = truth.copy()
    flip = rng.random(len(sub)) < wrong
    sub.loc[flip, "class"] = rng.choice(classes.CLASSES, int(flip.sum()))
    sub[["x1", "x2"]] += rng.normal(0, shift, (len(sub), 1))
    return sub


def test_unit_weights_give_the_metric_itself():
    rng = np.random.default_rng(0)
    truth = _truth(60, rng)
    a, b = score(truth, _noisy(truth, rng, 0.3, 5)), score(truth, _noisy(truth, rng, 0.6, 20))
    true, pa, pb, n_labels = compare._codes(a.per_box, b.per_box)
    ones = np.ones((1, len(truth)))
    assert compare._scores(true, pa, a.per_box["rescaled_giou"].to_numpy(), ones, n_labels)[0] == \
        pytest.approx(a.total, abs=1e-12)
    assert compare._scores(true, pb, b.per_box["rescaled_giou"].to_numpy(), ones, n_labels)[0] == \
        pytest.approx(b.total, abs=1e-12)
    # doubling every image changes nothing (weights are counts of drawn images)
    assert compare._scores(true, pa, a.per_box["rescaled_giou"].to_numpy(), 2 * ones, n_labels)[0] == \
        pytest.approx(a.total, abs=1e-12)


def test_weighted_resample_equals_scoring_the_resampled_truth():
    rng = np.random.default_rng(1)
    truth = _truth(20, rng)
    sub = _noisy(truth, rng, 0.4, 8)
    a = score(truth, sub)
    names = truth["NAME"].unique()
    drawn = rng.choice(names, len(names))
    # the resampled truth as a real table: each drawn image's boxes repeated, new ids and names
    parts_t, parts_s = [], []
    for i, name in enumerate(drawn):
        t = truth[truth["NAME"] == name].assign(NAME=f"{i}-{name}")
        s = sub[sub["NAME"] == name].assign(NAME=f"{i}-{name}")
        ids = np.arange(len(t)) + 1 + 100 * i
        parts_t.append(t.assign(trustii_id=ids))
        parts_s.append(s.assign(trustii_id=ids))
    expected = score(pd.concat(parts_t), pd.concat(parts_s)).total
    image, uniques = pd.factorize(a.per_box["NAME"])
    counts = pd.Series(drawn).value_counts().reindex(uniques, fill_value=0).to_numpy(np.float64)
    true, pa, _, n_labels = compare._codes(a.per_box, a.per_box)
    got = compare._scores(true, pa, a.per_box["rescaled_giou"].to_numpy(), counts[image][None], n_labels)[0]
    assert got == pytest.approx(expected, abs=1e-12)


def test_identical_systems_differ_by_zero_and_a_better_one_is_significant():
    rng = np.random.default_rng(2)
    truth = _truth(80, rng)
    good, bad = score(truth, truth), score(truth, _noisy(truth, rng, 0.7, 25))
    same = compare.paired_bootstrap(good, good, n=200)
    assert (same.diff, same.lo, same.hi) == (0.0, 0.0, 0.0)
    d = compare.paired_bootstrap(good, bad, n=300, seed=3)
    assert d.diff == pytest.approx(good.total - bad.total)
    assert 0 < d.lo < d.diff < d.hi and d.p_better == 1.0
    flipped = compare.paired_bootstrap(bad, good, n=300, seed=3)
    assert flipped.hi == pytest.approx(-d.lo) and flipped.p_better == 0.0


def test_different_truths_are_refused():
    rng = np.random.default_rng(4)
    t1 = _truth(10, rng)
    t2 = t1.assign(**{"class": t1["class"].iloc[::-1].to_numpy()})  # same ids and names, other classes
    with pytest.raises(ValueError, match="not on the same truth"):
        compare.paired_bootstrap(score(t1, t1), score(t2, t2))
    with pytest.raises(ValueError, match="not on the same truth"):
        compare.paired_bootstrap(score(t1, t1), score(t1.iloc[1:], t1.iloc[1:]))
