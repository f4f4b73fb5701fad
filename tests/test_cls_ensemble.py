"""A classifier ensemble: crop members mixed with relative shares (``train.cls.classify.member_mean``)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cytocore import classes, predictions
from infer import blend

pytestmark = pytest.mark.unit

NAN = [np.nan] * 3
A = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], NAN])  # member a: rows 0 and 1
B = np.array([[0.0, 1.0, 0.0], NAN, NAN])  # member b: row 0 only


def test_member_mean_weighs_the_members_that_classified_each_row():
    got = blend.member_mean({"a": A, "b": B}, {"a": 3.0, "b": 1.0})
    np.testing.assert_allclose(got[0], [0.75, 0.25, 0.0])  # (3 * a + 1 * b) / (3 + 1)
    np.testing.assert_array_equal(got[1], A[1])  # b did not classify row 1: a alone
    assert np.isnan(got[2]).all()  # nobody did
    # a share of 0 leaves the member out: row 1 has no member with a share left
    zero = blend.member_mean({"a": A, "b": B}, {"a": 0.0, "b": 2.0})
    np.testing.assert_array_equal(zero[0], B[0])
    assert np.isnan(zero[1:]).all()
    # a member not named has share 0; a name that is no member is ignored
    np.testing.assert_array_equal(blend.member_mean({"a": A, "b": B}, {"a": 1.0, "c": 9.0}), np.array(
        [A[0], A[1], NAN]))


def test_member_mean_equal_shares_and_a_lone_member_are_exact():
    equal = np.array([(A[0] + B[0]) / 2, A[1], NAN])
    for shares in (None, {}, {"a": 0.0, "b": 0.0}, {"a": 0.7, "b": 0.7}):
        np.testing.assert_array_equal(blend.member_mean({"a": A, "b": B}, shares), equal)
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(23), 50)
    assert np.array_equal(blend.member_mean({"cls": p}, {"cls": 0.7}), p)  # bit for bit
    with pytest.raises(ValueError, match=">= 0"):
        blend.member_mean({"a": A, "b": B}, {"a": -1.0, "b": 1.0})


def test_blend_table_mixes_the_members_with_their_shares():
    rng = np.random.default_rng(1)
    a, b = rng.dirichlet(np.ones(23), 4), rng.dirichlet(np.ones(23), 4)
    b[3] = np.nan  # b did not classify the last row
    table = predictions.make("x.jpg", [[0, 0, 9, 9]] * 4, [0.9, 0.8, 0.7, 0.6], [0, 1, 2, 3], 20, 20, "ens",
                             -1, "fused")
    det = np.eye(23)[[0, 1, 2, 3]]
    members = {"a": a, "b": b}
    probs = blend.ClassifierProbs(blend.member_mean(members), None, np.zeros(4, bool), members)
    P = list(classes.PROB_COLUMNS)
    got = blend.blend_table(table, probs, 0.5, shares={"a": 3.0, "b": 1.0})[P].to_numpy()
    mix = np.vstack([0.75 * a[:3] + 0.25 * b[:3], a[3:]])
    np.testing.assert_allclose(got, 0.5 * mix + 0.5 * det)
    only_a = blend.blend_table(table, probs, 1.0, shares={"a": 1.0, "b": 0.0})
    np.testing.assert_array_equal(only_a[P].to_numpy(), a)
    equal = blend.blend_table(table, probs, 1.0)  # no shares: the equal-share crop
    np.testing.assert_array_equal(equal[P].to_numpy(), probs.crop)
    # hand-made probabilities without per-member arrays: shares change nothing
    bare = blend.ClassifierProbs(probs.crop, None, np.zeros(4, bool))
    pd.testing.assert_frame_equal(blend.blend_table(table, bare, 1.0, shares={"a": 1.0, "b": 0.0}), equal)
