"""Label noise injected into a train table, seeded and recorded: the yardstick of label cleaning.

    python -m prepare.noise --data data/demo --out work/data/demo-noisy --p-class 0.1 [--p-jitter 0.1]
                            [--p-missing 0.05] [--seed 0]

``inject(boxes, p_class, p_jitter, p_missing, seed)`` gives each train row at most one
kind of error, drawn independently per row with those probabilities:

- ``class``   -- the class is replaced by another class of the table, uniformly;
- ``jitter``  -- the box moves by 15-30 % of its width / height along each axis (random
  sign) and each side is scaled by 0.75-1.33: an IoU with the true box of about 0.3-0.6;
- ``missing`` -- the row is dropped (a cell with no box).

It returns the noisy table (the input's row order, dropped rows left out) and the
record of every error: ``row`` (the noisy table's row, -1 for a missing box), ``NAME``,
``kind``, the noisy box and class, and ``true_x1..true_y2``, ``true_class``. The CLI writes
a derived data folder (``prepare.derive``): the noisy train.csv, ``noise.csv`` (the
record) and ``noise.json`` (the settings and counts); test.csv, test_labels.csv and the
images are linked, so the test truth stays clean. The source folder is never written.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from cytocore import env, io, tables
from cytocore.tables import COORDS
from prepare import derive

KINDS = ("class", "jitter", "missing")
SHIFT = (0.15, 0.30)  # jitter: centre shift as a share of the box side (either sign)
SCALE = (0.75, 1.33)  # jitter: factor on each side


def inject(boxes: pd.DataFrame, p_class: float = 0.1, p_jitter: float = 0.0, p_missing: float = 0.0,
           seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(noisy, record)`` of ``boxes`` (``NAME,x1,y1,x2,y2,class``); see the module docstring."""
    probs = np.array([p_class, p_jitter, p_missing], dtype=float)
    if (probs < 0).any() or probs.sum() > 1:
        raise ValueError(f"noise: p_class, p_jitter, p_missing must be >= 0 with a sum <= 1, got {probs}")
    rng = np.random.default_rng(seed)
    n = len(boxes)
    kind = np.array(["", *KINDS])[_draw(rng, probs, n)]
    table = boxes.reset_index(drop=True).copy()
    true = table[[*COORDS, "class"]].copy()
    names = sorted(table["class"].unique())
    is_class = kind == "class"
    if is_class.any() and len(names) < 2:
        raise ValueError("noise: class noise needs at least two classes in the table")
    for i in np.flatnonzero(is_class):
        others = [c for c in names if c != table.at[i, "class"]]
        table.at[i, "class"] = others[rng.integers(len(others))]
    jit = np.flatnonzero(kind == "jitter")
    if len(jit):
        xy = table.loc[jit, COORDS].to_numpy(float)
        w, h = xy[:, 2] - xy[:, 0], xy[:, 3] - xy[:, 1]
        sign = rng.choice([-1.0, 1.0], size=(len(jit), 2))
        shift = rng.uniform(*SHIFT, size=(len(jit), 2)) * sign * np.stack([w, h], 1)
        scale = np.exp(rng.uniform(np.log(SCALE[0]), np.log(SCALE[1]), size=(len(jit), 2)))
        cx, cy = (xy[:, 0] + xy[:, 2]) / 2 + shift[:, 0], (xy[:, 1] + xy[:, 3]) / 2 + shift[:, 1]
        nw, nh = w * scale[:, 0], h * scale[:, 1]
        table.loc[jit, COORDS] = np.round(np.stack([cx - nw / 2, cy - nh / 2, cx + nw / 2, cy + nh / 2], 1))
    keep = kind != "missing"
    new_row = np.full(n, -1)
    new_row[keep] = np.arange(int(keep.sum()))
    hit = np.flatnonzero(kind != "")
    record = pd.concat([
        pd.DataFrame({"row": new_row[hit], "NAME": table.loc[hit, "NAME"].to_numpy(), "kind": kind[hit]}),
        table.loc[hit, [*COORDS, "class"]].reset_index(drop=True),
        true.loc[hit].add_prefix("true_").reset_index(drop=True)], axis=1)
    return table[keep].reset_index(drop=True), record


def _draw(rng: np.random.Generator, probs: np.ndarray, n: int) -> np.ndarray:
    """Per row: 0 (no error) or 1 + the index of its error kind."""
    u = rng.random(n)
    edges = np.cumsum(probs)
    return np.where(u < edges[-1], np.searchsorted(edges, u, side="right") + 1, 0)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m prepare.noise", description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True, help="source data folder (only read)")
    p.add_argument("--out", type=Path, required=True, help="the derived noisy data folder")
    p.add_argument("--p-class", type=float, default=0.1, help="share of rows given another class")
    p.add_argument("--p-jitter", type=float, default=0.0, help="share of rows whose box is moved")
    p.add_argument("--p-missing", type=float, default=0.0, help="share of rows dropped")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env.apply()
    io.setup_logging()
    src = args.data.resolve()
    boxes = tables.read_train(src / "train.csv")
    noisy, record = inject(boxes, args.p_class, args.p_jitter, args.p_missing, args.seed)
    counts = {k: int((record["kind"] == k).sum()) for k in KINDS}
    settings = {"source": str(src), "p_class": args.p_class, "p_jitter": args.p_jitter,
                "p_missing": args.p_missing, "seed": args.seed, "rows": len(boxes), "errors": counts}
    out = derive.write_folder(src, args.out, noisy, {"noise.csv": record, "noise.json": settings})
    print(f"{len(record)} of {len(boxes)} rows changed ({', '.join(f'{k} {v}' for k, v in counts.items())}); "
          f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(io.cli(main))
