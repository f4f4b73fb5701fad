"""The classifier on real smears: BCCD white-cell subtypes, upstream train+val vs test split.

    python -m bench.bccd.classify [--bccd ../shared/data/bccd] [--detections PARQUET] [--weight 0.5]
                             [--force] [key=value ...]

Trains ``MODEL=cls`` (configs/cls.yaml <- ``key=value``; ``select=last`` unless
given, so that no choice is made on the test images) on the crops of
``cytologia_wbc_subtypes.csv`` (PNN/EO/LY/MO/BA) of the images listed in
``BCCD/ImageSets/Main/train.txt`` + ``val.txt``, into ``work/runs/cls_bccd/fold0``,
then scores the images of ``test.txt`` with the challenge metric: detector-only
vs classifier vs the blend at ``--weight`` (``infer.cls_report.compare``). The
blend weight is the fixed default (0.5, the ensemble config's), never chosen on
the test images, so no row is optimistic. Without
``--detections`` (a prediction table of a detector trained on the same split),
the GT boxes of the test images stand in for detections and the "detector"
gives every box the most frequent training class; the report says so.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from cytokit import config, env, images, io, paths, predictions, tables

log = logging.getLogger(__name__)
DEFAULT_BCCD = paths.bccd_dir()
RUN = "cls_bccd"


def split(bccd: Path) -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    """(train+val boxes, test boxes, images dir) with width/height, from the upstream lists."""
    bccd = Path(bccd)
    boxes = tables.read(bccd / "cytologia_wbc_subtypes.csv", "submission").drop(columns="trustii_id")
    lists = bccd / "BCCD" / "ImageSets" / "Main"
    names = {part: {f"{stem}.jpg" for stem in (lists / f"{part}.txt").read_text().split()}
             for part in ("train", "val", "test")}
    images_dir = bccd / "BCCD" / "JPEGImages"
    sizes = {n: images.read_size(images_dir / n) for n in boxes["NAME"].unique()}
    boxes["width"] = boxes["NAME"].map(lambda n: sizes[n][0])
    boxes["height"] = boxes["NAME"].map(lambda n: sizes[n][1])
    train = boxes[boxes["NAME"].isin(names["train"] | names["val"])].reset_index(drop=True)
    test = boxes[boxes["NAME"].isin(names["test"])].reset_index(drop=True)
    return train, test, images_dir


def fold_of(train: pd.DataFrame, test: pd.DataFrame, images_dir: Path):
    """A ``cytokit.dataset.FoldData`` with the test images as the validation part (monitoring only)."""
    from cytokit.dataset import FoldData

    def sizes(t: pd.DataFrame) -> pd.DataFrame:
        return t.drop_duplicates("NAME")[["NAME", "width", "height"]].reset_index(drop=True)

    root = paths.dataset_root("bccd_cls")
    return FoldData(root=root, fold=0, k=1, seed=0, images_dir=images_dir, train_boxes=train, val_boxes=test,
                    val_images=sizes(test), train_images=sizes(train), yolo_yaml=root / "none.yaml",
                    coco_train=root / "none.json", coco_val=root / "none.json", resize=None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bccd.classify", description=__doc__.split("\n")[0])
    parser.add_argument("--bccd", type=Path, default=DEFAULT_BCCD, help="BCCD folder (../shared/data/bccd)")
    parser.add_argument("--detections", type=Path, help="a detector's prediction parquet for the test images")
    parser.add_argument("--weight", type=float, default=0.5,
                        help="blend weight of the classifier (fixed: never chosen on the test images)")
    parser.add_argument("--force", action="store_true", help="train again even if a finished run exists")
    parser.add_argument("--out", type=Path, help="report folder (default work/reports/cls_bccd)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="classifier config overrides")
    args = parser.parse_args(argv)
    env.apply()
    io.setup_logging()
    from infer import blend, cls_report
    from train import runs
    from train.cls.adapter import ClassifierAdapter, ClassifierConfig

    overrides = config.parse_overrides(args.overrides)
    overrides.setdefault("select", "last")
    cfg = config.load(ClassifierConfig, paths.CONFIGS / "cls.yaml", overrides)
    train, test, images_dir = split(args.bccd)
    run_dir = paths.run_dir("bccd_cls", RUN, 0)
    adapter = ClassifierAdapter()
    if runs.prepare(run_dir, resume=False, force=args.force) != "done":
        adapter.train(cfg, fold_of(train, test, images_dir), run_dir)
        runs.mark_done(run_dir, {"model": RUN, "train_boxes": len(train), "test_boxes": len(test)})
    if args.detections:
        preds = predictions.read(args.detections)
        preds = preds[preds["NAME"].isin(test["NAME"])].reset_index(drop=True)
        source = f"{args.detections.name} boxes and classes"
    else:
        majority = train["class"].value_counts().idxmax()
        preds = cls_report.gt_as_detections(test, majority)
        source = f"GT boxes as detections (no detector), detector class = majority training class {majority}"
    predictor = adapter.load(run_dir / "best.pt", None, cfg.device)
    n_cells = test.groupby("NAME").size().to_dict()
    probs = blend.classifier_probs(preds, images_dir, [predictor], cfg.tta, n_cells)
    comp = cls_report.compare(preds, test, fold_of(train, test, images_dir).val_images, probs, args.weight,
                              detector_label="detector only", tune=False)
    out = args.out or paths.reports_dir(RUN)
    cls_report.save(comp, out)
    print(f"BCCD test split: {len(test)} boxes on {test['NAME'].nunique()} images; classifier trained on "
          f"{len(train)} train+val boxes ({cfg.backbone}, {cfg.imgsz} px, {cfg.epochs} epochs, "
          f"select={cfg.select})")
    print(f"detections: {source}")
    print("class counts: train", train["class"].value_counts().to_dict(),
          "test", test["class"].value_counts().to_dict())
    print(cls_report.render(comp))
    print(f"report: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(io.cli(main))
