"""Tuning on out-of-fold predictions (infer/tune.py, infer/oof_eval.py) with made-up member tables.

Every trial must score what a submission with its settings scores; tuning never ends below where it
started, nor below any row of its score table (each member alone, with and without TTA and classifier).
"""
from __future__ import annotations

import dataclasses
import zlib

import numpy as np
import pandas as pd
import pytest

from cytocore import classes, config, metric, predictions, submission
from infer import blend, fuse, tune
from infer.config import EnsembleConfig, TuneGrid
from infer.oof_eval import OFF, OOF, Blend, Evaluator, Settings, config_settings

pytestmark = pytest.mark.unit

CODES = ["PNN", "LY", "EO", "MO", "BA"]
GRID = TuneGrid(
    weights=[0.0, 1.0, 2.0],
    iou_thr=[0.4, 0.6],
    skip_box_thr=[0.001, 0.3],
    conf_type=["avg", "max"],
    fusion=["wbf", "agnostic"],
    rounds=2,
    cls_weight=[0.0, 0.3, 0.6, 1.0],
    cls_tta=[True, False],
    full_weight=[0.5],
)


def fake_oof(seed: int, n_images: int = 24, noise: dict | None = None) -> OOF:
    """Images with 1-3 cells; members ``a`` and ``b`` (identity and hflip views) find most cells with
    jittered boxes and noisy classes, plus a few false positives."""
    rng = np.random.default_rng(seed)
    noise = noise or {"a": 2.0, "b": 5.0}
    truth, preds, sizes = [], [], []
    for i in range(n_images):
        name, w, h = f"im{i:02d}.jpg", int(rng.integers(120, 200)), int(rng.integers(120, 200))
        sizes.append({"NAME": name, "width": w, "height": h})
        for j in range(int(rng.integers(1, 4))):
            x, y, s = 10 + 35 * j + rng.uniform(0, 5), rng.uniform(5, h - 45), rng.uniform(25, 35)
            truth.append({"NAME": name, "x1": x, "y1": y, "x2": x + s, "y2": y + s,
                          "class": CODES[int(rng.integers(len(CODES)))]})
        for model, sd in noise.items():
            for view in ("identity", "hflip"):
                rows = [t for t in truth if t["NAME"] == name and rng.random() < 0.9]
                boxes = [[t["x1"], t["y1"], t["x2"], t["y2"]] for t in rows]
                labels = [
                    classes.CLASS_TO_ID[t["class"] if rng.random() < 0.6 else CODES[int(rng.integers(5))]]
                    for t in rows
                ]
                if rng.random() < 0.4:  # a false positive
                    boxes.append([w - 40, h - 40, w - 5, h - 5])
                    labels.append(classes.CLASS_TO_ID[CODES[int(rng.integers(5))]])
                xyxy = np.clip(np.asarray(boxes, float).reshape(-1, 4) + rng.normal(0, sd, (len(boxes), 4)),
                               0, [w - 1, h - 1, w - 1, h - 1])
                xyxy[:, 2:] = np.maximum(xyxy[:, 2:], xyxy[:, :2] + 2)
                probs = rng.dirichlet(np.ones(23) * 0.3, len(boxes))
                probs[np.arange(len(boxes)), labels] += 1.0
                probs /= probs.sum(axis=1, keepdims=True)
                preds.append(predictions.make(name, xyxy, rng.uniform(0.05, 0.95, len(boxes)), labels, w, h,
                                              model, 0, view, probs))
    return OOF(predictions.validate(pd.concat(preds, ignore_index=True)), pd.DataFrame(truth),
               pd.DataFrame(sizes), [])


class FakeClassifier:
    """A crop classifier stand-in: right (the class of the GT box a box overlaps most) with probability
    ``accuracy``, decided per box and TTA flag from the box's rounded coordinates, so it is repeatable."""

    models = ("cls",)

    def __init__(self, truth: pd.DataFrame, accuracy: float):
        self.truth, self.accuracy = truth, accuracy
        self.computed = self.reused = 0

    def mode(self, model):
        return "crop"

    def probs(self, table, tta, n_cells):
        from cytocore import boxes as bx

        out = np.full((len(table), 23), np.nan)
        for i, row in enumerate(table.reset_index(drop=True).itertuples()):
            t = self.truth[self.truth["NAME"] == row.NAME]
            iou = bx.iou_matrix(
                np.array([[row.x1, row.y1, row.x2, row.y2]]), t[["x1", "y1", "x2", "y2"]].to_numpy()
            )
            key = f"{row.NAME}{round(row.x1)}{round(row.y1)}{round(row.x2)}{round(row.y2)}{tta}"
            rng = np.random.default_rng(zlib.crc32(key.encode()))
            right = t["class"].iloc[int(iou.argmax())] if len(t) else "PNN"
            hit = rng.random() < self.accuracy + (0.05 if tta else 0)
            code = right if hit else CODES[int(rng.integers(5))]
            out[i] = 0.02 / 22
            out[i, classes.CLASS_TO_ID[code]] = 0.98
        return blend.ClassifierProbs(out, None, np.zeros(len(table), bool))


def start_settings(views=("identity", "hflip"), cls: Blend = OFF) -> Settings:
    params = fuse.FuseParams(mode="wbf", iou_thr=0.55, skip_box_thr=0.001, conf_type="avg", max_det=0,
                             weights={"a": 1.0, "b": 1.0}, views=tuple(views))
    return Settings(params, cls)


def submission_score(oof: OOF, s: Settings, classifier=None) -> float:
    """The score of the submission ``s`` implies, computed the plain way: fuse the member tables of
    the kept views, blend, write one row per truth box (top-N, fillers), score."""
    p = dataclasses.replace(s.fuse, views=())
    table = fuse.fuse(oof.preds[oof.preds["view"].isin(s.fuse.views)], p, oof=True, progress=False)
    if s.blend.weight > 0 and classifier is not None:
        n_cells = oof.truth_boxes.groupby("NAME").size().to_dict()
        probs = classifier.probs(table, s.blend.tta, n_cells)
        table = blend.blend_table(table, probs, s.blend.weight, s.blend.full_weight)
    truth, test = submission.synthetic_truth(oof.truth_boxes)
    return metric.score(truth, submission.make_submission(table, test, oof.images)).total


@pytest.mark.smoke  # a subprocess or a real search: seconds, not the unit tier
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_trial_scores_the_submission_it_implies(seed):
    oof = fake_oof(seed)
    clf = FakeClassifier(oof.truth_boxes, 0.7)
    ev = Evaluator(oof, clf, 0.001, 0)
    rng = np.random.default_rng(seed)
    for _ in range(4):
        s = Settings(fuse.FuseParams(mode=str(rng.choice(["wbf", "agnostic"])),
                                     iou_thr=float(rng.choice([0.4, 0.6])),
                                     skip_box_thr=float(rng.choice([0.001, 0.3])),
                                     conf_type=str(rng.choice(["avg", "max"])), max_det=0,
                                     weights={"a": float(rng.choice([0.0, 1.0, 2.0])), "b": 1.0},
                                     views=("identity", "hflip")[: int(rng.integers(1, 3))]),
                     Blend(float(rng.choice([0.0, 0.4, 1.0])), bool(rng.integers(2))))
        assert ev.result(s).total == pytest.approx(submission_score(oof, s, clf), abs=1e-12)


@pytest.mark.smoke  # a subprocess or a real search: seconds, not the unit tier
@pytest.mark.parametrize("seed", range(5))
def test_tuning_never_ends_below_its_start_nor_below_a_table_row(seed):
    oof = fake_oof(seed, noise={"a": 2.0, "b": 8.0} if seed % 2 else {"a": 6.0, "b": 3.0})
    ev = Evaluator(oof, FakeClassifier(oof.truth_boxes, 0.6) if seed % 2 else None, 0.001, 0)
    cls = Blend(0.5) if seed % 2 else OFF
    start = start_settings(cls=cls)
    best, rows, trials = tune.optimise(ev, [start], GRID, ["a", "b"], ["identity", "hflip"])
    top = ev.result(best).total
    assert top >= ev.result(start).total
    assert len(trials) > 10  # it did search
    labels = [r.label for r in rows]
    assert labels[-1].startswith("ensemble") and rows[-1].settings == best
    assert {"a + TTA", "a", "b + TTA", "b"} <= set(labels)
    for r in rows:
        assert ev.result(r.settings).total <= top
    assert ev.result(best).total == pytest.approx(submission_score(oof, best, ev.classifier), abs=1e-12)


def test_a_useless_member_is_dropped_rather_than_dragging_the_ensemble_down():
    oof = fake_oof(3)
    junk = oof.preds[oof.preds["model"] == "b"].copy()
    junk[["x1", "y1"]] = 0.0  # b's boxes now cover the top-left corner: useless
    junk[["x2", "y2"]] = 30.0
    junk["class"] = "BA"
    junk[list(classes.PROB_COLUMNS)] = np.eye(23)[classes.CLASS_TO_ID["BA"]]
    oof.preds = pd.concat([oof.preds[oof.preds["model"] == "a"], junk], ignore_index=True)
    ev = Evaluator(oof, None, 0.001, 0)
    grid = dataclasses.replace(GRID, weights=[1.0, 2.0], rounds=1)  # a weight of 0 is not on the grid
    best, rows, _ = tune.optimise(ev, [start_settings()], grid, ["a", "b"], ["identity", "hflip"])
    a_alone = ev.result({r.label: r.settings for r in rows}["a + TTA"]).total
    assert a_alone > ev.result(start_settings()).total
    assert ev.result(best).total >= a_alone and best.fuse.weights["b"] == 0.0


@pytest.mark.smoke  # a subprocess or a real search: seconds, not the unit tier
def test_tuning_finds_a_good_classifier_and_writes_a_config_that_scores_the_same():
    oof = fake_oof(4)
    ev = Evaluator(oof, FakeClassifier(oof.truth_boxes, 0.95), 0.001, 20)
    cfg = EnsembleConfig(members=[{"model": "a"}, {"model": "b"}], tta=["identity", "hflip"], fusion="auto",
                         iou_thr=0.55,
                         classifier={"members": [{"model": "cls"}], "weight": 0.0})
    starts = config_settings(cfg, ["hflip", "identity"], classifier=True)
    assert [s.fuse.mode for s in starts] == ["wbf", "agnostic"] and starts[0].blend.weight == 0.0
    best, rows, _ = tune.optimise(ev, starts, GRID, ["a", "b"], ["identity", "hflip"])
    assert best.blend.weight > 0
    assert ev.result(best).total > max(ev.result(s).total for s in starts)
    labels = [r.label for r in rows]
    assert "a + TTA + classifier" in labels
    assert [x.removesuffix(" + TTA") for x in labels[-2:]] in (["ensemble", "ensemble + classifier"],
                                                               ["ensemble", "ensemble + TTA + classifier"])
    tuned = config.from_dict(EnsembleConfig, tune.tuned_config(cfg, best, classifier=True))
    kept = [m.model for m in tuned.member_list()]
    again = config_settings(tuned, ["hflip", "identity"], classifier=True)
    assert len(again) == 1
    ev2 = Evaluator(dataclasses.replace(oof, preds=oof.preds[oof.preds["model"].isin(kept)]), ev.classifier,
                    0.001, 20)
    assert ev2.result(again[0]).total == pytest.approx(ev.result(best).total, abs=1e-12)


@pytest.mark.unit
def test_the_ensemble_dataclasses_defaults_are_those_of_configs_ensemble_yaml():
    """A recipe's partial ``ensemble.tune`` (or a config without some key) gets the same values as
    configs/ensemble.yaml: a default the dataclass keeps beside the YAML is the same value."""
    values = config.read_yaml(config.defaults_path(EnsembleConfig))
    for cls, section in ((EnsembleConfig, values), (TuneGrid, values["tune"])):
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                continue
            assert f.name in section, f"configs/ensemble.yaml has no {f.name} ({cls.__name__})"
            if not isinstance(section[f.name], dict) and f.name != "members":
                assert default == section[f.name], f"{cls.__name__}.{f.name}"
