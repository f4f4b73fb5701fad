"""How easy a synthetic set's classes are: a colour-histogram + box-size baseline on true boxes.

    python -m prepare.synth.baseline --data data/demo [--train-images N]

A logistic regression on hand-made features of each true box (an HSV histogram of
the crop, the centre's mean and spread of colour, the box's width and height),
trained on train.csv and scored on test_labels.csv: accuracy and macro-F1 over
the 23 classes. It is the yardstick of issue #10: the demo's score must come from
learning, not from easier data, so this number is printed beside it.
``--train-images`` trains on the first N train images only, which separates
"more data" from "easier data" when the number of synthetic images changes.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from cytocore import images, io, paths, tables
from cytocore.tables import COORDS


def features(rgb: np.ndarray, box) -> np.ndarray:
    """The baseline's features of one box of an RGB image."""
    x1, y1, x2, y2 = (int(v) for v in box)
    crop = rgb[max(y1, 0):y2, max(x1, 0):x2]
    small = cv2.resize(crop, (32, 32), interpolation=cv2.INTER_AREA)
    hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)
    hist = cv2.calcHist([hsv], [0, 1, 2], None, [6, 4, 4], [0, 180, 0, 256, 0, 256]).ravel() / 1024
    centre = small[8:24, 8:24].reshape(-1, 3).astype(np.float32)
    size = [(x2 - x1) / 200, (y2 - y1) / 200]
    return np.concatenate([hist, centre.mean(0) / 255, centre.std(0) / 255, size])


def _table(df: pd.DataFrame, images_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Features and classes of every box of ``df``, each image decoded once."""
    feats, labels = [], []
    for name, rows in df.groupby("NAME", sort=False):
        rgb = images.load_rgb(images_dir / name)
        feats += [features(rgb, box) for box in rows[COORDS].to_numpy()]
        labels += rows["class"].astype(str).tolist()
    return np.array(feats), np.array(labels)


def baseline(data: Path, train_images: int | None = None) -> dict:
    """Accuracy and macro-F1 of the baseline on ``data``'s test labels (see the module docstring)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    files = paths.data_files(Path(data))
    train = tables.read(files["train"], "train")
    if train_images:
        train = train[train["NAME"].isin(train["NAME"].drop_duplicates().iloc[:train_images])]
    test = tables.read(files["test_labels"], "submission")
    x_train, y_train = _table(train, files["images"])
    x_test, y_test = _table(test, files["images"])
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=0.5))
    model.fit(x_train, y_train)
    pred = model.predict(x_test)
    return {"accuracy": float((pred == y_test).mean()),
            "macro_f1": float(f1_score(y_test, pred, average="macro", zero_division=0)),
            "train_images": int(train["NAME"].nunique()), "train_boxes": len(y_train),
            "test_boxes": len(y_test)}


def describe(result: dict) -> str:
    return (f"colour-histogram + box-size baseline on the true boxes: accuracy {result['accuracy']:.3f}, "
            f"macro-F1 {result['macro_f1']:.3f}\n  ({result['train_images']} train images, "
            f"{result['test_boxes']} test boxes)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m prepare.synth.baseline", description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=paths.DEMO_DATA, help="a data folder with test_labels.csv")
    p.add_argument("--train-images", type=int, help="train on the first N train images only")
    args = p.parse_args(argv)
    print(describe(baseline(args.data, args.train_images)))
    return 0


if __name__ == "__main__":
    raise SystemExit(io.cli(main))
