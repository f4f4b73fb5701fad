"""Folds: duplicate groups, grouped multilabel-stratified split (real train.csv), reuse/--force."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from cytocore import classes, config, paths, tables
from prepare import clean, dedup, folds

pytestmark = pytest.mark.unit

# --- duplicate groups -------------------------------------------------------------

def test_groups_chain_and_order():
    hashes = pd.Series({
        "d.jpg": "0000000000000000",
        "b.jpg": "0000000000000003",   # 2 bits from d, 1 bit from a
        "a.jpg": "0000000000000001",   # 1 bit from d
        "c.jpg": "ffffffffffffffff",
        "e.jpg": "ffffffffffffffff",   # identical to c
        "f.jpg": "00000000000000f0",   # 4 bits from d
    })
    groups = dedup.group_duplicates(hashes, max_distance=1)
    # a-d (1 bit), a-b (1 bit) link a, b, d; c = e; f alone. Ids follow the first NAME.
    assert groups.to_dict() == {"a.jpg": 0, "b.jpg": 0, "c.jpg": 1, "d.jpg": 0, "e.jpg": 1, "f.jpg": 2}
    exact = dedup.group_duplicates(hashes, max_distance=0)
    assert exact.to_dict() == {"a.jpg": 0, "b.jpg": 1, "c.jpg": 2, "d.jpg": 3, "e.jpg": 2, "f.jpg": 4}
    assert dedup.group_summary(groups) == {
        "images_in_duplicate_groups": 5, "duplicate_groups": 2, "largest_group": 3}


def test_near_pairs_match_brute_force():
    rng = np.random.default_rng(3)
    base = rng.integers(0, 2**63, 300, dtype=np.int64).astype(np.uint64)
    flips = np.uint64(1) << rng.integers(0, 64, (60, 3)).astype(np.uint64)
    every2, every3 = (np.arange(60) % 2 == 0), (np.arange(60) % 3 == 0)
    near = base[:60] ^ flips[:, 0] ^ (flips[:, 1] * every2) ^ (flips[:, 2] * every3)  # 1 to 3 bits off
    values = np.unique(np.concatenate([base, near]))
    packed = dedup.hash_bits([f"{int(v):016x}" for v in values])
    dist = np.bitwise_count(packed[:, None, :] ^ packed[None, :, :]).sum(-1)
    for d in (1, 2, 3):
        i, j = np.nonzero(np.triu(dist <= d, k=1))
        expected = {(int(a), int(b)) for a, b in zip(i, j)}
        assert {tuple(p) for p in dedup.near_pairs(packed, d).tolist()} == expected
        assert len(expected) > 0


def test_hash_bits_pads_odd_hex():
    assert dedup.hash_bits(["abc", "1"]).tolist() == [[0x0A, 0xBC], [0x00, 0x01]]


# --- the split --------------------------------------------------------------------

def boxes_of(rows):
    return pd.DataFrame(rows, columns=["NAME", "class"])


def test_make_folds_keeps_groups_together():
    rows = [(f"i{i:02d}", classes.CLASSES[i % 3]) for i in range(30)] + [("i00", "LF"), ("i01", "LF")]
    groups = pd.Series({f"i{i:02d}": i // 2 for i in range(30)})  # 15 pairs
    table = folds.make_folds(boxes_of(rows), groups, k=3, seed=0)
    assert table["NAME"].tolist() == sorted(f"i{i:02d}" for i in range(30))
    assert list(table.columns) == ["NAME", "fold", "group"]
    assert table.groupby("group")["fold"].nunique().max() == 1
    assert sorted(table["fold"].value_counts().tolist()) == [10, 10, 10]


def test_same_seed_gives_the_recorded_folds():
    """The fold of each image for seed 42, as the kit has written it since before the layout changes
    (recorded from commit 80e8d6e): a refactor that moves a fold fails here."""
    rows = [(f"g{i:02d}", classes.CLASSES[(i * 7) % 23]) for i in range(40)]
    rows += [(f"g{i:02d}", "PNN") for i in range(0, 40, 3)]
    groups = pd.Series({f"g{i:02d}": i // 2 for i in range(40)})  # 20 pairs
    table = folds.make_folds(boxes_of(rows), groups, k=5, seed=42)
    assert "".join(map(str, table["fold"])) == "4411223311334400330011440033004422221122"
    again = folds.make_folds(boxes_of(rows), groups, k=5, seed=42)
    pd.testing.assert_frame_equal(again, table)
    other = folds.make_folds(boxes_of(rows), groups, k=5, seed=43)
    assert "".join(map(str, other["fold"])) == "4433002244441100110033442211331100332222"


def test_make_folds_errors():
    rows = [("a", "PNN"), ("b", "MO"), ("c", "EO")]
    with pytest.raises(ValueError, match="cannot make 3 folds from 2 image group"):
        folds.make_folds(boxes_of(rows), pd.Series({"a": 0, "b": 0, "c": 1}), k=3, seed=0)
    with pytest.raises(ValueError, match="1 image\\(s\\) have no group, e.g. c"):
        folds.make_folds(boxes_of(rows), pd.Series({"a": 0, "b": 1}), k=2, seed=0)


def test_fold_counts():
    table = pd.DataFrame({"NAME": ["a", "b", "c"], "fold": [0, 1, 1], "group": [0, 1, 2]})
    boxes = boxes_of([("a", "PNN"), ("a", "PNN"), ("b", "SS"), ("c", "PNN")])
    counts = folds.fold_counts(table, boxes)
    assert counts.index.tolist() == [0, 1]
    got = counts[["images", "boxes", "PNN", "SS", "MO"]].values.tolist()
    assert got == [[1, 2, 2, 0, 0], [2, 2, 1, 1, 0]]
    assert list(counts.columns) == ["images", "boxes", *classes.CLASSES]


@pytest.fixture(scope="module")
def real(real_train_csv):
    """The real table cleaned with sizes from the boxes' extents, and planted duplicate hashes."""
    boxes = tables.read_train(real_train_csv)
    extent = boxes.groupby("NAME")[["x2", "y2"]].max()
    sizes = pd.DataFrame({"NAME": extent.index, "width": np.maximum(363, np.ceil(extent["x2"])).astype(int),
                          "height": np.maximum(363, np.ceil(extent["y2"])).astype(int)})
    cleaned, report = clean.clean(boxes, sizes)
    names = np.array(sorted(cleaned["NAME"].unique()))
    rng = np.random.default_rng(11)
    values = rng.integers(0, 2**63, len(names), dtype=np.int64).astype(np.uint64)
    picks = rng.choice(len(names), 300, replace=False).reshape(100, 3)
    bit = [np.uint64(1) << np.uint64(b) for b in range(64)]
    planted = []
    for n, (a, b, c) in enumerate(picks):
        if n < 40:    # exact copy
            values[b] = values[a]
            planted.append([a, b])
        elif n < 80:  # two bits off
            values[b] = values[a] ^ bit[n % 60] ^ bit[63 - n % 60]
            planted.append([a, b])
        else:         # chain a-b-c, two bits per step: a and c are 4 bits apart
            values[b] = values[a] ^ bit[1] ^ bit[2]
            values[c] = values[b] ^ bit[5] ^ bit[6]
            planted.append([a, b, c])
    hashes = pd.Series([f"{int(v):016x}" for v in values], index=names)
    groups = dedup.group_duplicates(hashes, max_distance=2)
    table = folds.make_folds(cleaned, groups, k=5, seed=42)
    return {"boxes": boxes, "cleaned": cleaned, "report": report, "groups": groups, "folds": table,
            "planted": [names[p] for p in planted]}


@pytest.mark.smoke  # the real 52,748-row train.csv
def test_real_every_image_in_one_fold(real):
    table = real["folds"]
    assert table["NAME"].is_unique
    assert set(table["NAME"]) == set(real["boxes"]["NAME"])  # sizes from extents: no image lost
    assert set(table["fold"]) == {0, 1, 2, 3, 4}
    assert table["fold"].value_counts().min() > 0.18 * len(table)


def test_real_duplicate_groups_share_a_fold(real):
    table = real["folds"].set_index("NAME")
    for members in real["planted"]:
        assert table.loc[members, "group"].nunique() == 1, members
        assert table.loc[members, "fold"].nunique() == 1, members
    assert real["folds"].groupby("group")["fold"].nunique().max() == 1
    summary = dedup.group_summary(real["groups"])
    assert summary == {"images_in_duplicate_groups": 220, "duplicate_groups": 100, "largest_group": 3}


def test_real_class_shares_within_two_points(real):
    boxes = real["cleaned"]
    fold = boxes["NAME"].map(real["folds"].set_index("NAME")["fold"])
    overall = boxes["class"].value_counts(normalize=True)
    per_fold = pd.crosstab(fold, boxes["class"], normalize="index")
    big = [c for c, n in boxes["class"].value_counts().items() if n >= 700]
    assert len(big) == 23
    worst = (per_fold[big] - overall[big]).abs().max().max()
    assert worst < 0.02


def test_real_cleaning_keeps_every_annotation(real):
    report = {s["step"]: s for s in real["report"].steps}
    boxes = real["boxes"]
    negative = int(((boxes["x1"] < 0) | (boxes["y1"] < 0)).sum())
    assert report["clip"]["boxes_changed"] == negative  # sizes cover every box: only negatives move
    # The real annotations have no same-class pair above IoU 0.45 and no cross-class pair
    # above 0.61, so the default thresholds (0.7) remove no real cell.
    assert sum(s["boxes_removed"] for s in real["report"].steps) == 0


@pytest.mark.smoke  # the real 52,748-row train.csv
def test_real_split_is_deterministic(real):
    again = folds.make_folds(real["cleaned"], real["groups"], k=5, seed=42)
    pd.testing.assert_frame_equal(again, real["folds"])
    other = folds.make_folds(real["cleaned"], real["groups"], k=5, seed=43)
    assert (other["fold"] != real["folds"]["fold"]).mean() > 0.5


# --- the fold file: written once -----------------------------------------------------

def test_fingerprint_tracks_inputs():
    boxes = pd.DataFrame({"NAME": ["a", "b"], "x1": [0.0, 1], "y1": [0.0, 1], "x2": [5.0, 6], "y2": [5.0, 6],
                          "class": ["PNN", "MO"]})
    groups = pd.Series({"a": 0, "b": 1})
    base = folds.fingerprint(boxes, groups, {"k": 5})
    assert folds.fingerprint(boxes.iloc[::-1], groups.iloc[::-1], {"k": 5}) == base  # order-free
    assert folds.fingerprint(boxes, groups, {"k": 4}) != base
    assert folds.fingerprint(boxes, pd.Series({"a": 0, "b": 0}), {"k": 5}) != base
    moved = boxes.assign(x2=[5.5, 6])
    assert folds.fingerprint(moved, groups, {"k": 5}) != base


def test_reuse_and_force(tmp_path):
    fold_file = tmp_path / "folds_k5_s42.csv"
    assert folds.reuse_folds(fold_file, "abc", force=False) is None  # nothing yet
    table = pd.DataFrame({"NAME": ["a", "b"], "fold": [0, 1], "group": [0, 1]})
    table.to_csv(fold_file, index=False)
    with pytest.raises(FileExistsError, match="without its sidecar; rerun with --force"):
        folds.reuse_folds(fold_file, "abc", force=False)
    folds.sidecar_path(fold_file).write_text(json.dumps({"fingerprint": "abc"}))
    pd.testing.assert_frame_equal(folds.reuse_folds(fold_file, "abc", force=False), table)
    with pytest.raises(FileExistsError, match="made from other inputs .*rerun with --force"):
        folds.reuse_folds(fold_file, "xyz", force=False)
    assert folds.reuse_folds(fold_file, "xyz", force=True) is None


# --- config -------------------------------------------------------------------------

def test_yaml_documents_every_key():
    text = (paths.CONFIGS / "folds.yaml").read_text()
    keyed = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert [line.split(":")[0] for line in keyed] == [f.name for f in dataclasses.fields(folds.FoldsConfig)]
    assert all("  # " in line for line in keyed)
    assert config.load(folds.FoldsConfig, paths.CONFIGS / "folds.yaml") == folds.FoldsConfig()


def test_config_rejects_bad_values():
    with pytest.raises(config.ConfigError, match="cross_class_policy must be one of keep_both"):
        config.load(folds.FoldsConfig, None, ["cross_class_policy=merge"])
    with pytest.raises(config.ConfigError, match="unknown key\\(s\\) hash_dist"):
        config.load(folds.FoldsConfig, None, ["hash_dist=3"])
    with pytest.raises(config.ConfigError, match="k must be at least 2"):
        config.load(folds.FoldsConfig, None, {"k": 1})


def test_a_key_added_later_at_its_neutral_value_keeps_the_fingerprints_of_existing_folds():
    """A kit that gained a folds key (``assign``) must reuse the fold files an older kit made: at its
    neutral value the key is not digested, so the settings are exactly what the older kit digested."""
    cfg = config.load(folds.FoldsConfig, folds.DEFAULT_CONFIG)
    older = {k: v for k, v in config.to_dict(cfg).items()
             if k not in folds.NOT_IN_FINGERPRINT and k not in folds.NEUTRAL}
    assert folds.fingerprint_settings(cfg) == older and "assign" not in older
    assigned = dataclasses.replace(cfg, assign="work/folds/other/folds.csv")
    assert folds.fingerprint_settings(assigned) == {**older, "assign": "work/folds/other/folds.csv"}


def test_folds_made_while_a_new_key_was_still_digested_at_its_neutral_value_are_reused(tmp_path):
    """Fold files made by the kits that digested ``assign: ""`` (before ``NEUTRAL``) are reused too."""
    cfg = config.load(folds.FoldsConfig, folds.DEFAULT_CONFIG)
    assert folds.fingerprint_settings(cfg, neutral=True) == {**folds.fingerprint_settings(cfg), "assign": ""}
    fold_file = tmp_path / "folds.csv"
    table = pd.DataFrame({"NAME": ["a", "b"], "fold": [0, 1], "group": [0, 1]})
    table.to_csv(fold_file, index=False)
    folds.sidecar_path(fold_file).write_text(json.dumps({"fingerprint": "older"}))
    pd.testing.assert_frame_equal(folds.reuse_folds(fold_file, "now", False, also="older"), table)
    with pytest.raises(FileExistsError, match="made from other inputs"):
        folds.reuse_folds(fold_file, "now", False, also="other")
