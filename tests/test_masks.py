"""Masks from boxes: the classical fallback on drawn cells, painting, the cached mask folder."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cytocore import classes, config, dataset, paths
from train.unet import fallback as mf
from train.unet import masks

pytestmark = pytest.mark.unit

PINK, RBC, PURPLE = (236, 218, 226), (222, 140, 138), (112, 52, 150)
LILAC, PALE = (196, 168, 214), (225, 200, 222)  # cytoplasm: blue-lilac, or pale as a neutrophil's


def draw_cell(size=200, centre=(96, 104), radius=48, cyto=LILAC, seed=0):
    """Red-cell discs on pink and one leukocyte (cytoplasm disc, purple nucleus): (image, box, mask)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size, 3), np.uint8)
    img[:] = PINK
    for x, y in ((20, 25), (170, 40), (35, 170), (165, 175), (150, 100)):
        cv2.circle(img, (x, y), 26, RBC, -1)
    truth = np.zeros((size, size), np.uint8)
    cv2.circle(img, centre, radius, cyto, -1)
    cv2.circle(truth, centre, radius, 1, -1)
    cv2.circle(img, (centre[0] + 8, centre[1] - 6), radius // 2, PURPLE, -1)
    img = np.clip(img + rng.normal(0, 5, img.shape), 0, 255).astype(np.uint8)
    cx, cy = centre
    box = [cx - radius - 3, cy - radius - 3, cx + radius + 4, cy + radius + 4]
    return img, box, truth.astype(bool)


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


@pytest.mark.parametrize("cyto", [LILAC, PALE], ids=["lilac", "pale"])
def test_grabcut_covers_a_drawn_cell(cyto):
    img, box, truth = draw_cell(cyto=cyto)
    mask = mf.box_mask(img, box, "grabcut")
    assert iou(mask, truth) >= 0.7
    assert not mask[:, :box[0]].any() and not mask[:box[1]].any()  # nothing outside the box


def test_stain_finds_a_blue_cell():
    img, box, truth = draw_cell(cyto=LILAC)
    assert iou(mf.box_mask(img, box, "stain"), truth) >= 0.7


def test_failed_segmentation_falls_back_to_the_inscribed_ellipse():
    flat = np.full((50, 60, 3), 200, np.uint8)  # nothing to find: Otsu on a flat crop
    mask = mf.box_mask(flat, [10, 10, 50, 40], "stain")
    assert np.array_equal(mask, mf.ellipse_mask([10, 10, 50, 40], 60, 50))
    assert mask[25, 30] and not mask[10, 10] and not mask[:, :10].any()


def test_ellipse_mask_holds_the_pixels_whose_centre_is_inside():
    # box 6 x 6: centre (3, 3), semi-axes 3; the corner pixel centre (0.5, 0.5) is
    # at (2.5/3)^2 * 2 = 1.39 > 1 (out), pixel (1, 0) at (1.5/3)^2 + (2.5/3)^2 = 0.94 (in)
    mask = mf.ellipse_mask([0, 0, 6, 6], 7, 6)
    assert mask.astype(int).tolist() == [
        [0, 1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 1, 0],
        [0, 1, 1, 1, 1, 0, 0],
    ]


def test_finish_keeps_the_largest_piece_inside_the_box_with_holes_filled():
    raw = np.zeros((20, 20), bool)
    raw[2:12, 2:12] = True  # 100 px, with a hole
    raw[6:8, 6:8] = False
    raw[15:17, 15:17] = True  # 4 px speck: dropped
    raw[0:2, 0:20] = True  # outside the box: dropped
    out = mf.finish(raw, [2, 2, 18, 18], min_fill=0.1)
    expected = np.zeros((20, 20), bool)
    expected[2:12, 2:12] = True
    assert np.array_equal(out, expected)


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="grabcut, stain"):
        mf.box_mask(np.zeros((10, 10, 3), np.uint8), [1, 1, 8, 8], "otsu")


def test_paint_puts_smaller_cells_on_top():
    big = np.zeros((4, 6), bool)
    big[0:4, 0:4] = True  # 16 px, class id 2 -> label 3
    small = np.zeros((4, 6), bool)
    small[1:3, 2:6] = True  # 8 px, class id 0 -> label 1
    out = masks.paint(np.stack([small, big]), [0, 2], 4, 6)
    assert out.tolist() == [
        [3, 3, 3, 3, 0, 0],
        [3, 3, 1, 1, 1, 1],
        [3, 3, 1, 1, 1, 1],
        [3, 3, 3, 3, 0, 0],
    ]


def make_dataset(data: Path, k: int = 2, seed: int = 0, n: int = 6, size: int = 64) -> Path:
    """A tiny prepared dataset in the cytocore/dataset.py layout: n images, folds 0/1 alternating.

    Each image holds one drawn cell (PNN on even images, EO on odd ones); the
    last one holds a second, smaller LY cell.
    """
    root = paths.dataset_root(dataset.new_id(data, k, seed))
    images_dir = Path(data) / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    rows, imgs = [], []
    for i in range(n):
        name = f"c{i:02d}.jpg"
        img, box, _ = draw_cell(size=200, centre=(70 + 6 * i, 80 + 4 * i), radius=40, seed=i)
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        box = [round(v * size / 200) for v in box]
        rows.append((name, *box, "PNN" if i % 2 == 0 else "EO", size, size))
        if i == n - 1:
            cv2.circle(img, (52, 12), 8, PURPLE, -1)
            rows.append((name, 43, 3, 61, 21, "LY", size, size))
        Image.fromarray(img).save(images_dir / name, quality=95)
        imgs.append((name, size, size, i % k, i))
    pd.DataFrame(rows, columns=["NAME", "x1", "y1", "x2", "y2", "class", "width", "height"]).to_csv(
        root / "boxes.csv", index=False)
    images = pd.DataFrame(imgs, columns=["NAME", "width", "height", "fold", "group"])
    images.to_csv(root / "images.csv", index=False)
    meta = {"data": str(data), "images_dir": str(images_dir), "k": k, "seed": seed, "resize": None,
            "classes": list(classes.CLASSES), "n_images": n, "n_boxes": len(rows)}
    (root / "meta.json").write_text(json.dumps(meta))
    return root


def test_make_masks_writes_label_maps_and_reuses_them(tmp_path):
    root = make_dataset(tmp_path / f"raw_{tmp_path.name}")
    out = masks.make_masks(root, masks.MasksConfig())
    assert out == masks.masks_dir(root)
    label = masks.read_mask(out, "c05.jpg")
    assert label.shape == (64, 64) and label.dtype == np.uint8
    eo, ly = classes.CLASS_TO_ID["EO"] + 1, classes.CLASS_TO_ID["LY"] + 1
    assert label[29, 27] == eo  # the big cell's centre
    assert label[12, 52] == ly  # the small cell, painted on top
    assert set(np.unique(label)) == {0, eo, ly}
    assert masks.read_mask(out, "c00.jpg")[26, 22] == classes.CLASS_TO_ID["PNN"] + 1
    meta = json.loads((out / "meta.json").read_text())
    assert meta["complete"] and meta["signature"]["method"] == "grabcut"

    before = (out / "c00.png").stat().st_mtime_ns
    masks.make_masks(root, masks.MasksConfig())  # same settings: nothing redone
    assert (out / "c00.png").stat().st_mtime_ns == before
    masks.make_masks(root, masks.MasksConfig(method="stain"))  # other settings: all redone
    assert json.loads((out / "meta.json").read_text())["signature"]["method"] == "stain"
    assert len(list(out.glob("*.png"))) == 6


def test_medsam_without_checkpoint_is_a_config_error():
    with pytest.raises(config.ConfigError, match="needs a checkpoint"):
        masks.resolve_method(masks.MasksConfig(method="medsam"), None)
    assert masks.resolve_method(masks.MasksConfig(), None) == "grabcut"
    assert masks.resolve_method(masks.MasksConfig(), Path("x.pth")) == "medsam"


def test_cli_without_prepared_dataset_says_what_to_run(tmp_path, capsys):
    from cytocore.io import cli

    assert cli(masks.main, ["--data", str(tmp_path / "nothing"), "--k", "3", "--seed", "1"]) == 1
    assert "no prepared dataset with K=3 SEED=1; run `make folds DATA=" in capsys.readouterr().err
