"""Out-of-fold label audit and cleaning: the ground-truth boxes the tuned ensemble confidently contradicts.

    python -m infer.label_audit --data DATA [--config work/logs/<id>/tuned.yaml] [--noise DATA/noise.csv]
                                [key=value ...]   (CleanConfig keys, e.g. conf=0.8)

The 3rd place of the challenge cleaned noisy boxes with out-of-fold detections. Here
each train image is predicted by the folds that did not see it (the tuned ensemble:
members fused, the classifier blended, ``infer.calibrate.oof_table``), and
``audit(preds, truth, cfg)`` lists, against the prepared dataset's boxes (``boxes.csv``,
``row`` = its row), four kinds of suspect:

- ``class``   -- a confident detection (fused score >= ``box_conf``; 0 = the lowest score the
  run's out-of-fold calibration keeps, ``auto_box_conf``) on the box (IoU >= ``match_iou``)
  gives another class a probability >= ``conf`` and the box's own class one <= ``gt_conf``:
  suggested class (policy ``relabel``);
- ``no_box``  -- no confident detection overlaps the box at IoU >= ``far_iou`` (policy ``drop``);
- ``refine``  -- the box's best confident detection overlaps it only partly
  (``far_iou`` <= IoU < ``match_iou``) and finds no other box better: suggested box (``refine``);
- ``missing`` -- a confident detection overlaps no box at IoU >= ``far_iou`` (``row`` -1;
  suggested box and class; policy ``add``); overlapping ones are counted once.

``apply(boxes, table, policy)`` makes the cleaned train table and the record of each
change; ``write_cleaned`` writes it as a NEW data folder (``prepare.derive``: images
linked, the raw data untouched) with ``label_changes.csv`` and ``label_clean.json``.
``pipeline.run`` does all of it after round one when the recipe has a ``clean`` section
and trains round two on that folder with the same fold of each image.
``against_noise(table, record)`` scores an audit against injected errors (``prepare.noise``).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cytocore import boxes as bx
from cytocore import config as kit_config
from cytocore import io
from cytocore.tables import COORDS

log = logging.getLogger(__name__)
KINDS = ("class", "no_box", "refine", "missing")
POLICIES = {"relabel": "class", "drop": "no_box", "refine": "refine", "add": "missing"}  # policy -> kind
AUDIT_FILE = "label_audit.csv"  # the audit table in the run's logs folder
CHANGES_FILE = "label_changes.csv"  # beside the cleaned train.csv: every row changed, dropped or added
SUMMARY_FILE = "label_clean.json"  # beside it: settings, counts, where it came from
GT_COLUMNS = [f"gt_{c}" for c in (*COORDS, "class")]
MATCH_MISSING = 0.5  # against_noise: a suggested box finds a removed true box at this IoU
COLUMNS = ["NAME", "row", "kind", *GT_COLUMNS, "score", "iou", "class", "p_class", "p_gt", *COORDS]


@dataclasses.dataclass
class CleanConfig:
    """The recipe's ``clean`` section: the audit's thresholds and what round two changes."""

    policy: list[str] = dataclasses.field(
        default_factory=list
    )  # relabel | drop | refine | add; [] = audit only
    conf: float = 0.9  # class: the other class's blended probability at least this
    gt_conf: float = 0.1  # class: and the box's own class's at most this (1 = any; spares confusable pairs)
    box_conf: float = 0.0  # a confident detection: fused score at least this; 0 = auto (see run_audit)
    match_iou: float = 0.5  # a detection and a box are the same cell at this IoU or more
    far_iou: float = 0.1  # no_box / missing: nothing confident overlaps at this IoU or more

    def __post_init__(self) -> None:
        bad = sorted(set(self.policy) - set(POLICIES))
        if bad:
            raise kit_config.ConfigError(
                f"clean: unknown policy {', '.join(bad)}; valid: {', '.join(POLICIES)}"
            )
        if not (0 <= self.far_iou < self.match_iou <= 1
                and all(0 <= v <= 1 for v in (self.conf, self.gt_conf, self.box_conf))):
            raise kit_config.ConfigError(
                f"clean: need 0 <= far_iou < match_iou <= 1 and conf, gt_conf, box_conf in [0, 1] "
                f"(far_iou={self.far_iou}, match_iou={self.match_iou}, conf={self.conf}, "
                f"gt_conf={self.gt_conf}, box_conf={self.box_conf})"
            )

    @property
    def kinds(self) -> list[str]:
        """The suspect kinds the policy acts on."""
        return [POLICIES[p] for p in self.policy]


def _probs(preds: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """Per prediction: its blended class probabilities (one-hot at its class, scaled by the score,
    when the table has none) and the class codes of the columns."""
    from cytocore import classes

    if all(c in preds.columns for c in classes.PROB_COLUMNS):
        return preds[list(classes.PROB_COLUMNS)].to_numpy(float), list(classes.CLASSES)
    codes = list(classes.CLASSES)
    out = np.zeros((len(preds), len(codes)))
    out[np.arange(len(preds)), [codes.index(c) for c in preds["class"]]] = preds["score"].to_numpy(float)
    return out, codes


def audit(preds: pd.DataFrame, truth: pd.DataFrame, cfg: CleanConfig) -> pd.DataFrame:
    """The suspects (``COLUMNS``) of ``truth`` (``NAME,x1,y1,x2,y2,class,row``) given the out-of-fold
    ``preds`` (the prediction contract) of the same images; sorted by kind, then strongest first."""
    probs, codes = _probs(preds)
    index = {c: i for i, c in enumerate(codes)}
    confident = preds["score"].to_numpy(float) >= cfg.box_conf
    by_image = {
        n: np.flatnonzero((preds["NAME"] == n).to_numpy() & confident) for n in pd.unique(preds["NAME"])
    }
    out: list[dict[str, Any]] = []
    for name, gt in truth.groupby("NAME", sort=True):
        det = by_image.get(name, np.empty(0, int))
        g_xy = gt[COORDS].to_numpy(float)
        d_xy = preds.iloc[det][COORDS].to_numpy(float)
        iou = bx.iou_matrix(g_xy, d_xy) if len(det) else np.zeros((len(gt), 0))
        for i, (_, g) in enumerate(gt.iterrows()):
            base = {"NAME": name, "row": int(g["row"]), **{f"gt_{c}": g[c] for c in (*COORDS, "class")}}
            if not len(det) or iou[i].max() < cfg.far_iou:
                near = preds.iloc[by_all(preds, name)]
                any_iou = bx.iou_matrix(g_xy[i : i + 1], near[COORDS].to_numpy(float))[0] if len(near) else []
                score = float(near["score"].to_numpy()[np.asarray(any_iou) >= cfg.far_iou].max(initial=0.0))
                out.append(
                    {
                        **base,
                        "kind": "no_box",
                        "score": score,
                        "iou": float(iou[i].max()) if len(det) else 0.0,
                    }
                )
                continue
            j = int(iou[i].argmax())
            p, d = probs[det[j]], preds.iloc[det[j]]
            evidence = {
                "score": float(d["score"]),
                "iou": float(iou[i, j]),
                "p_gt": float(p[index[g["class"]]]) if g["class"] in index else 0.0,
            }
            if iou[i, j] >= cfg.match_iou:
                top = int(p.argmax())
                if codes[top] != g["class"] and p[top] >= cfg.conf and evidence["p_gt"] <= cfg.gt_conf:
                    out.append(
                        {**base, **evidence, "kind": "class", "class": codes[top], "p_class": float(p[top])}
                    )
            elif int(iou[:, j].argmax()) == i:  # the detection finds no other box better
                out.append(
                    {
                        **base,
                        **evidence,
                        "kind": "refine",
                        "class": d["class"],
                        "p_class": float(p.max()),
                        **{c: float(d[c]) for c in COORDS},
                    }
                )
        out += _missing(preds, det, probs, codes, g_xy, name, cfg)
    for name in sorted(set(by_image) - set(truth["NAME"])):
        out += _missing(preds, by_image[name], probs, codes, np.zeros((0, 4)), name, cfg)
    table = pd.DataFrame(out, columns=COLUMNS)
    table["row"] = table["row"].fillna(-1).astype(int)
    strength = np.where(
        table["kind"] == "no_box",
        -table["score"].fillna(0),
        table["p_class"].fillna(0) * table["score"].fillna(0),
    )
    order = np.lexsort((-strength, table["kind"].map(KINDS.index).to_numpy()))
    return table.iloc[order].reset_index(drop=True)


def by_all(preds: pd.DataFrame, name: str) -> np.ndarray:
    """Positions of every prediction of image ``name``, confident or not."""
    return np.flatnonzero((preds["NAME"] == name).to_numpy())


def _missing(
    preds: pd.DataFrame,
    det: np.ndarray,
    probs: np.ndarray,
    codes: list[str],
    g_xy: np.ndarray,
    name: str,
    cfg: CleanConfig,
) -> list[dict]:
    """Confident detections of one image far from every truth box; the weaker of two overlapping ones
    (IoU >= match_iou) is left out."""
    if not len(det):
        return []
    d_xy = preds.iloc[det][COORDS].to_numpy(float)
    far = (
        bx.iou_matrix(d_xy, g_xy).max(axis=1, initial=0.0) < cfg.far_iou
        if len(g_xy)
        else np.ones(len(det), bool)
    )
    kept: list[int] = []
    for j in sorted(np.flatnonzero(far), key=lambda j: -float(preds.iloc[det[j]]["score"])):
        if kept and bx.iou_matrix(d_xy[j : j + 1], d_xy[kept]).max() >= cfg.match_iou:
            continue
        kept.append(j)
    rows = []
    for j in kept:
        d, p = preds.iloc[det[j]], probs[det[j]]
        rows.append(
            {
                "NAME": name,
                "row": -1,
                "kind": "missing",
                "score": float(d["score"]),
                "iou": 0.0,
                "class": codes[int(p.argmax())],
                "p_class": float(p.max()),
                **{c: float(d[c]) for c in COORDS},
            }
        )
    return rows


def apply(boxes: pd.DataFrame, table: pd.DataFrame, kinds: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(cleaned, changes)``: ``boxes`` (``NAME,x1,y1,x2,y2,class``; suspect ``row`` = its position) with
    the suspects of ``kinds`` applied -- class: relabelled, no_box: dropped, refine: the detection's box,
    missing: a new row -- and those suspects with the ``action`` taken."""
    out = boxes.reset_index(drop=True).copy()
    todo = table[table["kind"].isin(kinds)]
    if ((todo["row"] >= len(out)) | ((todo["row"] < 0) & (todo["kind"] != "missing"))).any():
        raise ValueError(
            "label audit: a suspect's row is not a row of the boxes table (another dataset's audit?)"
        )
    relabel, refine = todo[todo["kind"] == "class"], todo[todo["kind"] == "refine"]
    out.loc[relabel["row"].to_numpy(), "class"] = relabel["class"].to_numpy()
    out.loc[refine["row"].to_numpy(), COORDS] = refine[COORDS].to_numpy(float)
    keep = ~out.index.isin(todo.loc[todo["kind"] == "no_box", "row"])
    added = todo[todo["kind"] == "missing"][["NAME", *COORDS, "class"]]
    cleaned = pd.concat([out[keep], added], ignore_index=True)
    action = todo["kind"].map({v: k for k, v in POLICIES.items()})
    return cleaned, todo.assign(action=action.to_numpy()).reset_index(drop=True)


def summary(table: pd.DataFrame) -> str:
    """One line: suspects per kind."""
    counts = table["kind"].value_counts()
    return "label audit: " + ", ".join(f"{k} {int(counts.get(k, 0))}" for k in KINDS) + " suspect(s)"


def auto_box_conf(preds: pd.DataFrame, truth: pd.DataFrame) -> float:
    """The lowest fused score of a box the run's out-of-fold calibration keeps (``infer.calibrate``: the
    threshold of the best challenge score without top-N): "confident" in the run's own terms, whatever
    the scale of its scores (from scratch on a CPU they stay far below 0.5). 1.0 when it keeps none."""
    from infer import calibrate

    if preds.empty:
        return 1.0
    cal = calibrate.calibrate(preds, truth[["NAME", *COORDS, "class"]])
    kept = preds["score"].to_numpy(float)[cal.apply(preds["score"].to_numpy(float)) >= cal.threshold]
    return float(kept.min()) if len(kept) else 1.0


def run_audit(cfg: Any, ds: Any, clean: CleanConfig, out: Path) -> tuple[pd.DataFrame, CleanConfig]:
    """Audit the run of ensemble config ``cfg`` (the tuned one) on dataset ``ds``; the table goes to
    ``out``, the settings used (``box_conf`` 0 resolved by ``auto_box_conf``) beside it (``.json``)."""
    from infer import calibrate

    preds, truth = calibrate.oof_table(cfg, ds)
    boxes = pd.read_csv(ds.root / "boxes.csv", dtype={"NAME": str})
    gt = boxes.assign(row=np.arange(len(boxes)))
    gt = gt[gt["NAME"].isin(set(truth["NAME"]))]
    if len(gt) != len(truth):
        raise ValueError(
            f"{ds.root / 'boxes.csv'}: {len(gt)} boxes on the out-of-fold images, the evaluator "
            f"has {len(truth)}"
        )
    if clean.box_conf == 0:
        clean = dataclasses.replace(clean, box_conf=auto_box_conf(preds, gt))
    table = audit(preds, gt, clean)
    io.atomic_write_df(table, out)
    io.atomic_write_text(
        Path(out).with_suffix(".json"),
        json.dumps(
            {
                "dataset": ds.id,
                "settings": kit_config.to_dict(clean),
                "counts": table["kind"].value_counts().to_dict(),
                "images": int(gt["NAME"].nunique()),
                "boxes": len(gt),
            },
            indent=1,
        )
        + "\n",
    )
    log.info(
        "%s on %d out-of-fold images (%d boxes; confident: fused score >= %.4f); table %s",
        summary(table),
        gt["NAME"].nunique(),
        len(gt),
        clean.box_conf,
        out,
    )
    return table, clean


def cleaned_dir(ds: Any, clean: CleanConfig) -> Path:
    """The folder of round two's data: named by the source dataset and the settings."""
    from cytocore import paths

    key = json.dumps([ds.id, kit_config.to_dict(clean)], sort_keys=True)
    return paths.data_copy(f"{Path(ds.data).name}-clean-{hashlib.sha256(key.encode()).hexdigest()[:8]}")


def write_cleaned(
    ds: Any, table: pd.DataFrame, clean: CleanConfig, dst: Path | None = None
) -> tuple[Path, dict]:
    """Apply ``clean.policy`` to ``ds``'s boxes and write the cleaned data folder (``prepare.derive``)
    with the changes beside it; returns the folder and the summary it records. The raw data is only read."""
    from prepare import derive

    cleaned, records = cleaned_boxes(ds, table, clean)
    dst = derive.write_folder(Path(ds.data), dst or cleaned_dir(ds, clean), cleaned, records)
    return dst, records[SUMMARY_FILE]


def cleaned_boxes(ds: Any, table: pd.DataFrame, clean: CleanConfig) -> tuple[pd.DataFrame, dict]:
    """``ds``'s boxes with ``clean.policy`` applied and the records that go beside them
    (``CHANGES_FILE``: every change; ``SUMMARY_FILE``: settings and counts)."""
    boxes = pd.read_csv(ds.root / "boxes.csv", dtype={"NAME": str})
    cleaned, changes = apply(boxes, table, clean.kinds)
    info = {
        "source": str(ds.data),
        "dataset": ds.id,
        "settings": kit_config.to_dict(clean),
        "boxes_before": len(boxes),
        "boxes_after": len(cleaned),
        "changed": {a: int((changes["action"] == a).sum()) for a in clean.policy},
    }
    return cleaned, {CHANGES_FILE: changes, SUMMARY_FILE: info}


def against_noise(
    table: pd.DataFrame, record: pd.DataFrame, kind: str = "class", noise_kind: str = "class"
) -> dict:
    """How an audit's ``kind`` suspects meet the injected ``noise_kind`` errors of ``record``
    (``prepare.noise``), per image: a class or jitter error is found by a suspect on its noisy box
    (IoU >= 0.9), a missing box by a suggested box on the true one (IoU >= ``MATCH_MISSING``). Returns the
    errors, suspects, found, fixed (class, missing: the suggested class is the true one; jitter: the
    suggested box is nearer the true box than the noisy one) and false alarms (suspects finding none)."""
    errors = record[record["kind"] == noise_kind].reset_index(drop=True)
    sus = table[table["kind"] == kind].reset_index(drop=True)
    true_xy = errors[[f"true_{c}" for c in COORDS]].to_numpy(float)
    err_xy, sus_xy, thr = (
        (true_xy, sus[COORDS].to_numpy(float), MATCH_MISSING)
        if noise_kind == "missing"
        else (errors[COORDS].to_numpy(float), sus[GT_COLUMNS[:4]].to_numpy(float), 0.9)
    )
    hit = np.zeros(len(sus), bool)
    found = fixed = 0
    for i in range(len(errors)):
        cand = np.flatnonzero((sus["NAME"] == errors.at[i, "NAME"]).to_numpy() & ~hit)
        if not len(cand):
            continue
        iou = bx.iou_matrix(err_xy[i : i + 1], sus_xy[cand])[0]
        if iou.max() < thr:
            continue
        j = int(cand[iou.argmax()])
        hit[j], found = True, found + 1
        if noise_kind == "jitter":
            box = sus.loc[j, COORDS].to_numpy(float)[None]
            fixed += int(
                bx.iou_matrix(box, true_xy[i : i + 1])[0, 0]
                > bx.iou_matrix(err_xy[i : i + 1], true_xy[i : i + 1])[0, 0]
            )
        else:
            fixed += int(sus.at[j, "class"] == errors.at[i, "true_class"])
    return {
        "errors": len(errors),
        "suspects": len(sus),
        "found": found,
        "fixed": fixed,
        "false_alarms": int((~hit).sum()),
        "found_share": round(found / len(errors), 4) if len(errors) else None,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m infer.label_audit", description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True, help="the data folder of a trained, tuned run")
    p.add_argument("--k", type=int, help="folds of the prepared dataset (when several)")
    p.add_argument("--seed", type=int, help="fold seed of the prepared dataset (when several)")
    p.add_argument("--config", type=Path, help="ensemble config (default: the run's tuned.yaml)")
    p.add_argument("--noise", type=Path, help="a prepare.noise record: score the audit against it")
    p.add_argument("--out", type=Path, help="the audit table (default: the run's logs folder)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="CleanConfig keys")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from cytocore import dataset, env, paths
    from infer.config import EnsembleConfig

    args = parse_args(argv)
    env.apply()
    io.setup_logging()
    clean = kit_config.from_dict(CleanConfig, kit_config.parse_overrides(args.overrides), "label audit")
    ds = dataset.resolve(args.data.resolve(), args.k, args.seed)
    config = args.config or paths.logs_dir(ds.id) / "tuned.yaml"
    if not config.is_file():
        raise FileNotFoundError(
            f"{config}: no tuned ensemble config; run the recipe (make all) or give --config"
        )
    cfg = kit_config.load(EnsembleConfig, config)
    table, _ = run_audit(cfg, ds, clean, args.out or paths.logs_dir(ds.id) / AUDIT_FILE)
    print(summary(table))
    if args.noise:
        record = pd.read_csv(args.noise, dtype={"NAME": str})
        for kind, noise_kind in (("class", "class"), ("refine", "jitter"), ("missing", "missing")):
            if (record["kind"] == noise_kind).any():
                found = against_noise(table, record, kind, noise_kind)
                print(f"  {noise_kind} noise vs {kind} suspects: {found}")
    return 0


if __name__ == "__main__":
    raise SystemExit(io.cli(main))
