"""A classifier ensemble: crop members mixed with tuned shares (``train.cls.classify.member_mean``).

Pure pieces on hand-made arrays; the tuning moves and the tuned config; and real (untrained, 32 px)
classifier checkpoints end to end: a checkpoint registered as two members scores the same at any
shares, shares (1, 0) are member one exactly, and the submission's blend is the table tuning scored.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import test_tune
import torch
import yaml
from PIL import Image

from cytocore import classes, config, predictions
from cytocore.config import ConfigError
from infer import blend, ensemble, tune
from infer.config import EnsembleConfig, TuneGrid
from infer.oof_cls import OOFClassifier
from infer.oof_eval import Blend, Evaluator, Settings, config_settings, crop_members
from pipeline import recipe as rc

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


def _cfg(members: list[dict], **classifier) -> EnsembleConfig:
    return EnsembleConfig(members=[{"model": "a"}, {"model": "b"}], tta=["identity", "hflip"], fusion="wbf",
                          iou_thr=0.55, max_det=0, backend="torch",
                          classifier={"members": members, "weight": 0.6, "tta": False, **classifier})


def test_settings_key_and_config_settings_change_only_with_two_crop_members():
    fuse = test_tune.start_settings().fuse
    one = Settings(fuse, Blend(0.5, True, 0.5))
    assert Settings(fuse, Blend(0.5, True, 0.5, (("cls", 2.0),))).key() == one.key()
    assert one.key()[-1] == (0.5, True, 0.5)  # the key of before
    two = Settings(fuse, Blend(0.5, True, 0.5, (("c1", 1.0), ("c2", 0.5))))
    assert two.key() != one.key() and two.key()[-1] == (0.5, True, 0.5, (("c1", 1.0), ("c2", 0.5)))
    off = Settings(fuse, Blend(0.0, True, 0.5, (("c1", 1.0), ("c2", 0.5))))
    assert off.key() == Settings(fuse).key()  # weight 0: the shares do not matter
    cfg = _cfg([{"model": "cls", "name": "c1", "weight": 2.0}, {"model": "cls", "name": "c2"},
                {"model": "cls_full"}])
    views = ["hflip", "identity"]
    assert config_settings(cfg, views, True, ["c1", "c2"])[0].blend.members == (("c1", 2.0), ("c2", 1.0))
    assert config_settings(cfg, views, True, ["c1"])[0].blend.members == ()  # c2 untrained: one crop member
    assert config_settings(cfg, views, True)[0].blend == Blend(0.6, False, 0.5)
    with pytest.raises(ConfigError, match="weight must be >= 0"):
        _cfg([{"model": "cls", "weight": -1.0}]).classifier_section()


def test_moves_add_member_shares_only_with_two_crop_members():
    grid = TuneGrid(cls_member_weights=[0.0, 1.0, 2.0])
    views = ["identity", "hflip"]
    before = tune._moves(grid, ["a", "b"], views, True, False)
    assert tune._moves(grid, ["a", "b"], views, True, False, ["cls"]) == before
    two = tune._moves(grid, ["a", "b"], views, True, False, ["c1", "c2"])
    assert two[:len(before)] == before
    assert two[len(before):] == [("share", m, w) for m in ("c1", "c2") for w in (0.0, 1.0, 2.0)]
    assert tune._moves(grid, ["a", "b"], views, False, False, ["c1", "c2"]) == tune._moves(
        grid, ["a", "b"], views, False, False)
    start = test_tune.start_settings(cls=Blend(0.5))  # () = equal shares
    one_off = tune._apply(start, ("share", "c1", 0.0), views, ["c1", "c2"])
    assert one_off.blend.members == (("c1", 0.0), ("c2", 1.0))
    assert tune._apply(one_off, ("share", "c2", 0.0), views, ["c1", "c2"]) is None  # no crop member left
    assert tune._apply(one_off, ("share", "c2", 2.0), views, ["c1", "c2"]).blend.members == (
        ("c1", 0.0), ("c2", 2.0))


def test_tuned_config_writes_each_classifier_members_weight():
    members = [{"model": "cls", "name": "c1"}, {"model": "cls", "name": "c2"}, {"model": "cls", "name": "c3"},
               {"model": "cls_full"}]
    cfg = _cfg(members)
    best = Settings(test_tune.start_settings().fuse, Blend(0.4, True, 0.25, (("c1", 2.0), ("c2", 0.5),
                                                                             ("c3", 0.0))))
    out = tune.tuned_config(cfg, best, classifier=True)
    again = config.from_dict(EnsembleConfig, yaml.safe_load(yaml.safe_dump(out)))
    section = again.classifier_section()
    # c3, tuned to 0, is left out; the full-image member keeps its entry
    assert section.shares() == {"c1": 2.0, "c2": 0.5, "cls_full": 1.0} and section.weight == 0.4
    one = tune.tuned_config(_cfg([{"model": "cls"}]), Settings(best.fuse, Blend(0.4)), classifier=True)
    assert one["classifier"]["members"] == [{"model": "cls"}]  # one member: written as before


def test_recipe_passes_a_classifiers_weight_to_the_ensemble(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"k": 2, "detectors": [{"model": "yolov8"}],
                                    "classifiers": [{"model": "cls", "name": "c1", "weight": 2.0},
                                                    {"model": "cls", "name": "c2"}]}))
    recipe = rc.load(path)
    values = rc.ensemble_values(recipe, SimpleNamespace(k=2, seed=0), {"yolov8": [0, 1]},
                                {"c1": [0, 1], "c2": [0, 1]})
    section = config.from_dict(EnsembleConfig, values).classifier_section()
    assert section.shares() == {"c1": 2.0, "c2": 1.0}


# ---- real checkpoints, end to end ----

def _checkpoint(path: Path, seed: int) -> Path:
    """An untrained resnet10t crop classifier at 32 px (seeded: another seed, other probabilities)."""
    from train import checkpoint
    from train.cls import model as cls_model
    from train.cls.adapter import ClassifierConfig

    cfg = config.from_dict(ClassifierConfig, {"backbone": "resnet10t", "imgsz": 32, "box_size": False})
    torch.manual_seed(seed)
    checkpoint.save(path, cls_model.build_model("resnet10t"), config.to_dict(cfg), 0, metric=0.0)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Made-up OOF member tables (``test_tune.fake_oof``) over real image files (images alternate
    between folds 0 and 1) and two different classifier checkpoints."""
    root = tmp_path_factory.mktemp("clsens")
    oof = test_tune.fake_oof(7, n_images=10)
    rng = np.random.default_rng(0)
    for row in oof.images.itertuples():
        pixels = rng.integers(0, 255, (row.height, row.width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / row.NAME)
    folds = {n: i % 2 for i, n in enumerate(oof.images["NAME"])}
    ds = SimpleNamespace(root=root, images_dir=root, k=2,
                         images=lambda: pd.DataFrame({"NAME": list(folds), "fold": list(folds.values())}))
    ck1, ck2 = _checkpoint(root / "c1.pt", 0), _checkpoint(root / "c2.pt", 1)
    return SimpleNamespace(oof=oof, ds=ds, ck1=ck1, ck2=ck2)


def _evaluator(w, members: dict[str, Path]) -> Evaluator:
    found = [(name, fold, ck) for name, ck in members.items() for fold in (0, 1)]
    return Evaluator(w.oof, OOFClassifier(w.ds, found, disk=False), 0.001, 0)


def _with(s: Settings, shares: tuple) -> Settings:
    return dataclasses.replace(s, blend=dataclasses.replace(s.blend, members=shares))


@pytest.mark.smoke  # real checkpoints and a search: seconds, not the unit tier
def test_one_checkpoint_as_two_members_scores_the_same_at_any_shares(world):
    ev = _evaluator(world, {"c1": world.ck1, "c2": world.ck1})
    assert crop_members(ev.classifier) == ["c1", "c2"]
    s = test_tune.start_settings(cls=Blend(0.8, False))
    grid = TuneGrid(weights=[1.0], iou_thr=[0.55], skip_box_thr=[0.001], conf_type=["avg"], fusion=["wbf"],
                    views=False, rounds=1, cls_weight=[0.8], cls_tta=[False], cls_member_weights=[0.0, 2.0])
    best, trials = tune.search(ev, [s], grid, ["a", "b"], ["identity", "hflip"], True, False, ["c1", "c2"])
    equal = ev.result(s).total
    shared = [t for t in trials if "cls_share_c1" in t]
    assert len(shared) == 4  # each member at 0 and at 2, the other at 1
    assert {t["score"] for t in shared} == {equal} and ev.result(best).total == equal
    for shares in ((2.0, 0.5), (0.5, 2.0), (0.3, 0.3)):
        assert ev.result(_with(s, (("c1", shares[0]), ("c2", shares[1])))).total == equal, shares


@pytest.mark.smoke  # real checkpoints and a search: seconds, not the unit tier
def test_shares_one_and_zero_are_member_one_exactly(world):
    two = _evaluator(world, {"c1": world.ck1, "c2": world.ck2})
    one = _evaluator(world, {"c1": world.ck1})
    s = test_tune.start_settings(cls=Blend(0.8, True))
    pd.testing.assert_frame_equal(two.table(_with(s, (("c1", 1.0), ("c2", 0.0)))), one.table(s))
    assert not two.table(_with(s, (("c1", 1.0), ("c2", 1.0))))[list(classes.PROB_COLUMNS)].equals(
        one.table(s)[list(classes.PROB_COLUMNS)])  # the two checkpoints do differ


@pytest.mark.smoke  # real checkpoints and a search: seconds, not the unit tier
def test_the_submission_blends_the_table_tuning_scored(world):
    """``infer.ensemble.classify`` (test images: every fold of every member) on the fused OOF table equals
    the table tuning scored (each image by its fold's checkpoint) when both folds of a member are one
    file: the same probabilities, mixed by the same shares."""
    members = [{"model": "cls", "name": "c1", "weight": 3.0, "weights": str(world.ck1)},
               {"model": "cls", "name": "c2", "weight": 1.0, "weights": str(world.ck2)}]
    cfg = _cfg(members, tta=True)
    ev = _evaluator(world, {"c1": world.ck1, "c2": world.ck2})
    (s,) = config_settings(cfg, ["hflip", "identity"], True, crop_members(ev.classifier))
    assert s.blend.members == (("c1", 3.0), ("c2", 1.0))
    fused = ev.fused(s.fuse)
    submitted = ensemble.classify(cfg, fused, world.ds.images_dir, ev.n_cells, world.ds)
    pd.testing.assert_frame_equal(submitted, ev.table(s))
    equal = ev.table(_with(s, ()))
    assert not submitted[list(classes.PROB_COLUMNS)].equals(equal[list(classes.PROB_COLUMNS)])


def test_tuning_also_starts_without_the_full_image_members_and_from_each_crop_member_alone():
    from infer import tune
    from infer.fuse import FuseParams
    from infer.oof_eval import Blend, Settings

    start = Settings(FuseParams(iou_thr=0.55), Blend(0.5, True, 0.5, (("a", 1.0), ("b", 1.0))))
    got = tune.classifier_starts(start, full=True, crop=["a", "b"])
    assert [(s.blend.full_weight, s.blend.members) for s in got] == [
        (0.0, (("a", 1.0), ("b", 1.0))), (0.5, (("a", 1.0), ("b", 0.0))), (0.5, (("a", 0.0), ("b", 1.0)))]
    assert tune.classifier_starts(start, full=False, crop=["a"]) == []
    off = Settings(FuseParams(iou_thr=0.55), Blend(0.0))
    assert tune.classifier_starts(off, full=True, crop=["a", "b"]) == []
