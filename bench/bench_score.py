"""Scorer speed at the real train set's size, and its speed-up over the literal per-image oracle.

The oracle is the one the tests compare against (``tests/test_score_oracle.py``);
both are timed in this same run on the same subset. Also times the submission
writer on the real test.csv (22,689 rows) with synthetic detections.
"""
from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cytocore import classes, paths, predictions
from cytocore.tables import COORDS

ORACLE_IMAGES = 1500  # images in the subset timed with the oracle (the docs/CHALLENGE.md 1,621-box subset)


def _best_of(fn, repeat: int = 3) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def _oracle():
    path = paths.ROOT / "tests" / "test_score_oracle.py"
    spec = importlib.util.spec_from_file_location("score_oracle", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.oracle_score


def _perturbed(truth: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Box noise, 20% wrong classes, 2% NaN classes, 3% dropped rows, shuffled order."""
    rng = np.random.default_rng(seed)
    n = len(truth)
    sub = truth.astype({c: np.float64 for c in COORDS}).astype({"class": object})
    sub[COORDS] += rng.normal(0, 6, (n, 4))
    wrong = rng.random(n) < 0.2
    sub.loc[wrong, "class"] = rng.choice(classes.CLASSES, size=int(wrong.sum()))
    sub.loc[rng.random(n) < 0.02, "class"] = np.nan
    return sub[rng.random(n) > 0.03].sample(frac=1, random_state=seed)


def _writer_lines(test_csv: Path) -> list[str]:
    from cytocore import submission

    test = pd.read_csv(test_csv)
    names = pd.unique(test["NAME"])
    rng = np.random.default_rng(1)
    n = int(len(names) * 1.2)
    x1, y1 = rng.uniform(0, 200, n), rng.uniform(0, 200, n)
    preds = pd.DataFrame({"NAME": rng.choice(names, n), "x1": x1, "y1": y1, "x2": x1 + 140, "y2": y1 + 140,
                          "score": rng.random(n), "class": rng.choice(classes.CLASSES, n), "width": 360,
                          "height": 360, "model": "bench", "fold": -1, "view": "fused"})
    probs = rng.dirichlet(np.ones(classes.NUM_CLASSES), n)
    for j, col in enumerate(predictions.PROB_COLUMNS):
        preds[col] = probs[:, j]
    sizes = pd.DataFrame({"NAME": names, "width": 360, "height": 360})
    t, sub = _best_of(lambda: submission.make_submission(preds, test, sizes))
    return [f"make_submission: {len(sub):,} rows on {len(names):,} test images from {n:,} detections: "
            f"{t * 1000:.0f} ms (best of 3)"]


def run(shared: Path | None) -> list[str]:
    from cytocore.metric import score

    train_csv = shared / "cytologia" / "train.csv" if shared else None
    if train_csv is None or not train_csv.exists():
        return ["../shared/cytologia/train.csv not found: scorer benchmark skipped"]
    train = pd.read_csv(train_csv)
    truth = train.assign(trustii_id=np.arange(1, len(train) + 1))[
        ["trustii_id", "NAME", "x1", "y1", "x2", "y2", "class"]]
    sub = _perturbed(truth)
    t_full, result = _best_of(lambda: score(truth, sub))
    t_self, _ = _best_of(lambda: score(truth, truth))
    lines = [
        f"score(): {len(truth):,} truth rows vs a {len(sub):,}-row perturbed submission: "
        f"{t_full * 1000:.0f} ms "
        f"(best of 3; total {result.total:.6f})",
        f"score(): {len(truth):,} truth rows vs themselves: {t_self * 1000:.0f} ms (total 1.0)",
    ]
    names = pd.Series(pd.unique(truth["NAME"])).sample(n=ORACLE_IMAGES, random_state=0)
    small_truth = truth[truth["NAME"].isin(set(names))].reset_index(drop=True)
    small_sub = sub[sub["NAME"].isin(set(names))]
    oracle_score = _oracle()
    t_fast, fast = _best_of(lambda: score(small_truth, small_sub).total)
    start = time.perf_counter()
    slow = oracle_score(small_truth, small_sub)
    t_slow = time.perf_counter() - start
    lines.append(f"subset of {ORACLE_IMAGES:,} images ({len(small_truth):,} boxes): "
                 f"fast {t_fast * 1000:.1f} ms, oracle {t_slow:.2f} s -> speed-up x{t_slow / t_fast:.0f}; "
                 f"|fast - oracle| = {abs(fast - slow):.1e}")
    t_oracle_full = t_slow / ORACLE_IMAGES * truth["NAME"].nunique()
    lines.append(f"oracle at full size, extrapolated from the subset: ~{t_oracle_full:.0f} s "
                 f"(x{t_oracle_full / t_full:.0f} the fast scorer)")
    test_csv = shared / "cytologia" / "test.csv"
    if test_csv.exists():
        lines += _writer_lines(test_csv)
    return lines
