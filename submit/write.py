"""Write a validated submission CSV from a prediction parquet.

    python -m submit.write --preds PARQUET --test TEST.csv --images DIR [--out DIR]

Reads the predictions (``cytocore.predictions`` contract), keeps the top-N
detections per test image, fills missing rows with full-image boxes (image
sizes from the predictions, else from the image headers under ``--images``),
validates, and writes ``submissions/submission_<timestamp>.csv`` plus
``submissions/submission.csv`` pointing at it (see ``submit.writer``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from cytocore import io, predictions, tables


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m submit.write", description=__doc__.split("\n")[0])
    parser.add_argument("--preds", type=Path, required=True, help="prediction parquet of the test images")
    parser.add_argument("--test", type=Path, required=True, help="the challenge's test.csv")
    parser.add_argument("--images", type=Path,
                        help="test image folder (sizes for full-image boxes; box checks)")
    parser.add_argument("--out", type=Path,
                        help="output folder (default submissions/, or $CYTOKIT_WORK/submissions)")
    args = parser.parse_args(argv)
    io.setup_logging()
    from cytocore import submission
    from submit import writer

    preds = predictions.read(args.preds)
    test = tables.read(args.test, "test")
    try:
        sizes = submission.image_sizes(test["NAME"], args.images, preds)
        sub = submission.make_submission(preds, test, sizes)
    except ValueError as exc:  # a missing image size or a bad table: one line, no traceback
        raise io.DataError(str(exc)) from None
    path = writer.write_submission(sub, args.test, args.out, images_dir=args.images)
    print(f"wrote {path} ({len(sub)} rows); {path.parent / 'submission.csv'} points at it")
    return 0


if __name__ == "__main__":
    raise SystemExit(io.cli(main))
