"""``python -m infer.tune``: tune member weights and fusion settings on out-of-fold predictions.

    python -m infer.tune --config configs/ensemble.yaml --data DATA [--out work/tuned/ensemble.yaml]

(``make tune-ensemble``). Each member is a model whose folds' out-of-fold
tables (``work/preds/<model>/fold<k>/oof_tta.parquet`` from ``make infer``,
else the training's ``oof.parquet``) cover its folds' validation images; the
ensemble is scored on the images every member covers, with the challenge
metric exactly as the leaderboard computes it (``cytokit.submission.oof_score``).

Coordinate ascent over the grids of the config's ``tune`` section (model
weights, iou_thr, skip_box_thr, conf_type, fusion mode), starting from the
config's own settings. Prints the OOF score of the tuned ensemble next to
every single member's (its TTA views fused with the same settings) and writes
the tuned config. With a classifier section, its blend weight is tuned too
(``infer.blend.tune_blend_weight``) on the tuned ensemble's matched boxes.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from cytokit import boxes as bx
from cytokit import config as kit_config
from cytokit import env, io, paths, predictions
from cytokit.tables import COORDS
from infer.config import EnsembleConfig, load_config
from infer.fuse import FuseParams, Grouped, fuse_grouped, group

log = logging.getLogger(__name__)
OOF_FILES = ("oof_tta.parquet", "oof.parquet")  # preferred first
MATCH_IOU = 0.5  # a fused box stands for the GT box it overlaps at least this much (blend-weight tuning)


@dataclasses.dataclass
class OOF:
    """Out-of-fold predictions of every member on the images all of them cover, and the truth."""

    preds: pd.DataFrame
    truth_boxes: pd.DataFrame  # NAME,x1,y1,x2,y2,class
    images: pd.DataFrame  # NAME,width,height
    sources: list[Path]


def load_oof(cfg: EnsembleConfig, data: Path, max_images: int = 0, seed: int = 0) -> OOF:
    """Each member's OOF tables over its folds, restricted to the images covered by every member."""
    from infer.config import bind

    cfg, ds = bind(cfg, data)
    tables, sources, covered, boxes, images = [], [], None, {}, {}
    for m in cfg.member_list():
        names: set[str] = set()
        for fold in m.folds:
            fd = ds.fold(fold)
            folder = ds.preds_dir(m.model, fold)
            path = next((folder / f for f in OOF_FILES if (folder / f).exists()), None)
            if path is None:
                raise FileNotFoundError(f"{folder}: no {' or '.join(OOF_FILES)}; "
                                        f"train {m.model} fold {fold} and run make infer first")
            tables.append(predictions.read(path))
            sources.append(path)
            names |= set(fd.val_images["NAME"])
            boxes[fold], images[fold] = fd.val_boxes, fd.val_images
        covered = names if covered is None else covered & names
    if not covered:
        raise ValueError("the members' folds share no validation image; nothing to score out of fold")
    keep = sorted(covered)
    if max_images and len(keep) > max_images:
        keep = sorted(np.random.default_rng(seed).choice(keep, max_images, replace=False).tolist())
    keep_set = set(keep)
    preds = pd.concat(tables, ignore_index=True)
    truth = pd.concat(boxes.values(), ignore_index=True)
    imgs = pd.concat(images.values(), ignore_index=True).drop_duplicates("NAME")
    return OOF(preds[preds["NAME"].isin(keep_set)].reset_index(drop=True),
               truth[truth["NAME"].isin(keep_set)].reset_index(drop=True),
               imgs[imgs["NAME"].isin(keep_set)].reset_index(drop=True), sources)


def score(fused: pd.DataFrame, oof: OOF):
    """The challenge score (``cytokit.metric.ScoreResult``) of a fused OOF table."""
    from cytokit.submission import oof_score

    return oof_score(fused, oof.truth_boxes, oof.images)


def evaluate(oof: OOF, params: FuseParams, grouped: Grouped | None = None):
    """Fuse the OOF predictions with ``params`` and score them."""
    g = grouped or group(oof.preds, params.skip_box_thr, params.max_det, oof=True)
    return score(fuse_grouped(g, params, progress=False), oof)


def _key(p: FuseParams) -> tuple:
    return (p.mode, p.iou_thr, p.skip_box_thr, p.conf_type, tuple(sorted(p.weights.items())), tuple(p.views))


def search(oof: OOF, start: FuseParams, grid, models: list[str],
           views: list[str] = ()) -> tuple[FuseParams, float, list[dict]]:
    """Coordinate ascent from ``start`` over ``grid`` (a ``TuneGrid``); with ``views`` (the TTA views
    of the tables) and ``grid.views``, each view is also toggled out/in. Returns best, its score and
    the trials."""
    g = group(oof.preds, min([start.skip_box_thr, *grid.skip_box_thr]), start.max_det, oof=True)
    seen: dict[tuple, float] = {}
    trials: list[dict] = []

    def value(p: FuseParams) -> float:
        if _key(p) not in seen:
            seen[_key(p)] = score(fuse_grouped(g, p, progress=False), oof).total
            trials.append({**dataclasses.asdict(p), "score": seen[_key(p)]})
            log.info("trial %d: %s -> %.5f", len(trials), _key(p), seen[_key(p)])
        return seen[_key(p)]

    best = dataclasses.replace(start, weights={m: start.weights.get(m, 1.0) for m in models},
                               views=tuple(start.views or views))
    best_score = value(best)
    for _ in range(grid.rounds):
        before = best_score
        moves = [("weights", m, w) for m in models for w in grid.weights] if len(models) > 1 else []
        moves += [("iou_thr", None, v) for v in grid.iou_thr]
        moves += [("skip_box_thr", None, v) for v in grid.skip_box_thr]
        moves += [("conf_type", None, v) for v in grid.conf_type] + [("mode", None, v) for v in grid.fusion]
        moves += [("views", None, v) for v in views] if grid.views and len(views) > 1 else []
        for field, model, v in moves:
            if field == "weights":
                w = {**best.weights, model: float(v)}
                if sum(w.values()) <= 0:
                    continue
                cand = dataclasses.replace(best, weights=w)
            elif field == "views":
                kept = tuple(x for x in views if (x in best.views) != (x == v))
                if not kept:
                    continue
                cand = dataclasses.replace(best, views=kept)
            else:
                cand = dataclasses.replace(best, **{field: v})
            s = value(cand)
            if s > best_score:
                best, best_score = cand, s
        if best_score <= before:
            break
    return best, best_score, trials


def member_scores(oof: OOF, params: FuseParams, models: list[str], views: list[str]) -> pd.DataFrame:
    """Each model alone on the same OOF images: its TTA views fused with ``params``, and (with
    several ``views``, identity among them) its ``identity`` view alone, to show what TTA adds."""
    rows = []
    for m in models:
        part = oof.preds[oof.preds["model"] == m]
        variants = [(m, part, params.views)]
        if len(views) > 1 and "identity" in views:
            variants.append((f"{m} (no TTA)", part[part["view"] == "identity"], ()))
        for label, table, fused_views in variants:
            alone = dataclasses.replace(params, weights={}, views=fused_views)
            r = evaluate(OOF(table, oof.truth_boxes, oof.images, oof.sources), alone)
            rows.append({"member": label, "oof": r.total, "giou_term": r.giou_term, "f1_term": r.f1_term})
    return pd.DataFrame(rows)


def matched_labels(fused: pd.DataFrame, truth: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``fused`` that overlap a GT box by IoU >= MATCH_IOU, and that box's class."""
    rows, labels = [], []
    t_groups = truth.groupby("NAME").indices
    for name, idx in fused.groupby("NAME").indices.items():
        if name not in t_groups:
            continue
        t = truth.iloc[t_groups[name]]
        iou = bx.iou_matrix(fused.iloc[idx][COORDS].to_numpy(), t[COORDS].to_numpy())
        best = iou.argmax(axis=1)
        ok = iou[np.arange(len(idx)), best] >= MATCH_IOU
        rows.extend(idx[ok])
        labels.extend(t["class"].to_numpy()[best[ok]])
    return np.asarray(rows, dtype=np.int64), np.asarray(labels, dtype=object)


def tune_classifier(cfg: EnsembleConfig, data: Path, fused: pd.DataFrame, oof: OOF) -> float | None:
    """The blend weight of the classifier section tuned on the fused OOF boxes (None without a classifier)."""
    section = cfg.classifier_section()
    if section is None:
        return None
    from infer import blend

    rows, y_true = matched_labels(fused, oof.truth_boxes)
    if not len(rows):
        log.warning("no fused OOF box matches a GT box; classifier weight left at %s", section["weight"])
        return None
    part = fused.iloc[rows].reset_index(drop=True)
    from infer.config import bind

    _, ds = bind(cfg, data)
    probs = blend.oof_classifier_probs(part, ds, device=cfg.device, tta=section["tta"])
    det = blend.det_probs(part)
    cls = np.where(np.isnan(probs.crop), det, probs.crop)
    weight, table = blend.tune_blend_weight(det, cls, y_true)
    log.info("classifier blend weights tried:\n%s", table.to_string(index=False))
    return float(weight)


def tuned_config(cfg: EnsembleConfig, best: FuseParams, cls_weight: float | None) -> dict:
    """The config as a dict with the tuned settings written in."""
    out = kit_config.to_dict(cfg)
    for m in out["members"]:
        m["weight"] = float(best.weights.get(m["model"], m.get("weight", 1.0)))
    used = [m for m in out["members"] if m["weight"] > 0]
    if len(used) < len(out["members"]):
        log.info("members tuned to weight 0 left out: %s",
                 ", ".join(m["model"] for m in out["members"] if m["weight"] <= 0))
    out["members"] = used
    out.update(fusion=best.mode, iou_thr=float(best.iou_thr), skip_box_thr=float(best.skip_box_thr),
               conf_type=best.conf_type, tta=list(best.views or cfg.tta))
    if cls_weight is not None:
        out["classifier"] = {**out["classifier"], "weight": cls_weight}
    return out


def run(cfg: EnsembleConfig, data: Path, out: Path) -> tuple[Path, pd.DataFrame]:
    """Tune, print the comparison, write the tuned config to ``out``; return it and the score table."""
    grid = cfg.tune_grid()
    start = time.perf_counter()
    oof = load_oof(cfg, data, grid.max_images, grid.seed)
    models = [m.model for m in cfg.member_list()]
    first = cfg.fuse_params("wbf" if cfg.fusion == "auto" else None)
    views = [v for v in cfg.tta if v in set(oof.preds["view"])]
    best, best_score, trials = search(oof, first, grid, models, views)
    fused = fuse_grouped(group(oof.preds, best.skip_box_thr, best.max_det, oof=True), best, progress=False)
    result = score(fused, oof)
    table = member_scores(oof, best, models, list(cfg.tta))
    table = pd.concat([table, pd.DataFrame([{"member": "ensemble (tuned)", "oof": result.total,
                                             "giou_term": result.giou_term, "f1_term": result.f1_term}])])
    cls_weight = tune_classifier(cfg, data, fused, oof)
    body = yaml.safe_dump(tuned_config(cfg, best, cls_weight), sort_keys=False)
    io.atomic_write_text(out, f"# tuned by python -m infer.tune on {len(oof.images)} out-of-fold images "
                              f"(score {best_score:.6f}, {len(trials)} trials)\n{body}")
    print(f"out-of-fold images scored: {len(oof.images)} ({len(oof.truth_boxes)} boxes); "
          f"{len(trials)} settings tried in {time.perf_counter() - start:.1f} s")
    print(f"tuned: fusion={best.mode} iou_thr={best.iou_thr} skip_box_thr={best.skip_box_thr} "
          f"conf_type={best.conf_type} weights={best.weights} views={list(best.views)}"
          + ("" if cls_weight is None else f" classifier weight={cls_weight}"))
    from cytokit.io import format_table

    print(format_table(table.reset_index(drop=True)))
    print(f"wrote {out}")
    return out, table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infer.tune", description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=paths.CONFIGS / "ensemble.yaml",
                        help="ensemble config")
    parser.add_argument("--data", type=Path, default=paths.DEFAULT_DATA, help="challenge data folder")
    parser.add_argument("--out", type=Path, help="tuned config to write (default work/tuned/ensemble.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="ensemble config overrides")
    args = parser.parse_args(argv)
    env.apply()
    io.setup_logging()
    cfg = load_config(args.config, args.overrides)
    run(cfg, args.data, args.out or paths.tuned_config())
    return 0


if __name__ == "__main__":
    raise SystemExit(io.cli(main))
