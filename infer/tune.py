"""``python -m infer.tune``: tune the ensemble on out-of-fold predictions with the challenge metric itself.

    python -m infer.tune [--config ENSEMBLE.yaml] --data DATA [--out TUNED.yaml] [key=value ...]

Without ``--config`` (ENSEMBLE=) it tunes the last ``make all``'s ensemble of the dataset (before
tuning, so members tuned to weight 0 can come back) and rewrites that run's ``tuned.yaml``, which
later commands use (``cytocore.lastrun``).

(``make tune-ensemble``). Every trial is scored exactly as a submission with
its settings would be scored (``infer.oof_eval``): the members' OOF tables
(``oof_tta.parquet`` from ``make infer``, else the training's ``oof.parquet``)
fused, the crop classifier blended in with the folds that did not see each
image, the writer's rows per test.csv row with its full-image fillers, the
metric. Coordinate ascent over the grids of the config's ``tune`` section --
model weights, WBF iou_thr / skip_box_thr / conf_type, fusion mode, TTA views,
and the classifier's blend weight, flip TTA, full-image share and (with 2+ crop
classifier members) each crop member's share -- starts from
the best of the config's own settings and each member alone, and only ever
moves up. Then every row of the score table (each member with and without TTA,
with and without the classifier) is a candidate too, so the tuned ensemble is
never below any of them.

Prints the score table (``infer.oof_table``: computed here, once per run) with
the paired bootstrap interval of each row's difference to the tuned ensemble,
writes the tuned config, the table beside it (``oof_table.json``: what the
terminal summary, ``make score`` and the report read) and the table's OOF
prediction tables (``work/preds/<dataset>/ensemble/foldoof/``: the report draws
the best row's errors from them).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import yaml

from cytocore import config as kit_config
from cytocore import env, io, lastrun, paths, predictions
from infer import oof_table
from infer.config import EnsembleConfig, bind, load_config
from infer.oof_eval import (
    Evaluator,
    Settings,
    classifier_for,
    config_settings,
    crop_members,
    load_oof,
)

log = logging.getLogger(__name__)
VARIANTS = "variants.parquet"  # the score table's OOF prediction tables, beside variants.json
PROGRESS_S = 30.0  # seconds between two progress lines of a search (no silence over a minute)


def search(ev: Evaluator, starts: list[Settings], grid, models: list[str], views: list[str],
           tune_classifier: bool = False, full: bool = False, crop: Sequence[str] = ()
           ) -> tuple[Settings, list[dict]]:
    """Coordinate ascent from the best of ``starts`` over ``grid`` (a ``TuneGrid``): a move is kept
    only when it raises the score; ``crop``: the classifier's crop members (with 2+, each one's share
    moves too). Returns the best settings and the trials."""
    trials: list[dict] = []

    def value(s: Settings) -> float:
        fresh = s.key() not in ev.results
        total = ev.result(s).total
        if fresh:
            b = dataclasses.asdict(s.blend)
            shares = {f"cls_share_{m}": w for m, w in b.pop("members")}
            trials.append({**dataclasses.asdict(s.fuse), **{f"cls_{k}": v for k, v in b.items()}, **shares,
                           "score": total})
            log.debug("trial %d: %s -> %.5f", len(trials), s.key(), total)
        return total

    scored = [(value(s), -i, s) for i, s in enumerate(starts)]
    best_score, _, best = max(scored, key=lambda t: t[:2])
    shown = time.perf_counter()
    for r in range(grid.rounds):
        before = best_score
        moves = _moves(grid, models, views, tune_classifier, full, crop)
        for i, move in enumerate(moves, 1):
            cand = _apply(best, move, views, crop)
            if cand is None:
                continue
            s = value(cand)
            if s > best_score:
                best, best_score = cand, s
            if time.perf_counter() - shown >= PROGRESS_S:
                shown = time.perf_counter()
                log.info("tuning: round %d/%d, setting %d/%d, %d scored, best %.4f", r + 1, grid.rounds,
                         i, len(moves), len(trials), best_score)
        log.info("tuning: round %d/%d done, %d settings scored, best %.4f", r + 1, grid.rounds, len(trials),
                 best_score)
        if best_score <= before:
            break
    return best, trials


def _moves(grid, models: list[str], views: list[str], tune_classifier: bool, full: bool,
           crop: Sequence[str] = ()) -> list[tuple]:
    """Every one-setting change of a round, as ``(field, model, value)`` (applied by ``_apply``);
    ``crop``: the classifier's crop members, whose shares move when there are 2+."""
    moves = [("weights", m, float(w)) for m in models for w in grid.weights] if len(models) > 1 else []
    moves += [(f, None, v) for f in ("iou_thr", "skip_box_thr", "conf_type") for v in getattr(grid, f)]
    moves += [("mode", None, v) for v in grid.fusion]
    moves += [("views", None, v) for v in views] if grid.views and len(views) > 1 else []
    if tune_classifier:
        moves += [("weight", None, float(w)) for w in grid.cls_weight]
        moves += [("tta", None, bool(t)) for t in grid.cls_tta]
        moves += [("full_weight", None, float(f)) for f in grid.full_weight] if full else []
        if len(crop) > 1:
            moves += [("share", m, float(w)) for m in crop for w in grid.cls_member_weights]
    return moves


def _apply(best: Settings, move: tuple, views: list[str], crop: Sequence[str] = ()) -> Settings | None:
    """``best`` with one setting changed (None when the change leaves nothing to fuse, or no crop
    member with a share)."""
    field, model, v = move
    p = best.fuse
    if field in ("weight", "tta", "full_weight"):
        return dataclasses.replace(best, blend=dataclasses.replace(best.blend, **{field: v}))
    if field == "share":  # the blend's members () mean equal shares: every crop member at 1
        shares = {**dict.fromkeys(crop, 1.0), **dict(best.blend.members), model: v}
        blend = dataclasses.replace(best.blend, members=tuple(shares.items()))
        return dataclasses.replace(best, blend=blend) if sum(shares.values()) > 0 else None
    if field == "weights":
        weights = {**p.weights, model: v}
        return dataclasses.replace(best, fuse=dataclasses.replace(p, weights=weights)) \
            if sum(weights.values()) > 0 else None
    if field == "views":  # toggle one view out or in
        kept = tuple(x for x in views if (x in p.views) != (x == v))
        return dataclasses.replace(best, fuse=dataclasses.replace(p, views=kept)) if kept else None
    return dataclasses.replace(best, fuse=dataclasses.replace(p, **{field: v}))


def tuned_config(cfg: EnsembleConfig, best: Settings, classifier: bool) -> dict:
    """The config as a dict with the tuned settings written in (members tuned to 0 left out)."""
    out = kit_config.to_dict(cfg)
    p = best.fuse
    out["members"] = [{**raw, "name": m.name, "weight": float(p.weights.get(m.name, m.weight))}
                      for raw, m in zip(out["members"], cfg.member_list())]
    dropped = [m["name"] for m in out["members"] if m["weight"] <= 0]
    if dropped:
        log.info("members tuned to weight 0 left out: %s", ", ".join(dropped))
    out["members"] = [m for m in out["members"] if m["weight"] > 0]
    out.update(fusion=p.mode, iou_thr=float(p.iou_thr), skip_box_thr=float(p.skip_box_thr),
               conf_type=p.conf_type, tta=list(p.views or cfg.tta))
    if classifier:
        b = best.blend
        out["classifier"] = {**(out["classifier"] or {}), "weight": float(b.weight), "tta": bool(b.tta),
                             "full_weight": float(b.full_weight)}
        if b.members:
            out["classifier"]["members"] = _classifier_members(cfg, dict(b.members))
    return out


def _classifier_members(cfg: EnsembleConfig, shares: dict[str, float]) -> list[dict]:
    """The config's classifier member entries with each crop member's tuned share as its ``weight``;
    crop members tuned to 0 are left out (they add nothing; ``member_mean`` skips them alike)."""
    typed = cfg.classifier_section().members
    entries = [{**raw, "name": m.name, "weight": float(shares.get(m.name, m.weight))}
               for raw, m in zip(cfg.classifier["members"], typed)]
    dropped = [e["name"] for e in entries if e["name"] in shares and e["weight"] <= 0]
    if dropped:
        log.info("classifier members tuned to weight 0 left out: %s", ", ".join(dropped))
    return [e for e in entries if e["name"] not in dropped]


def write_variants(ev: Evaluator, rows: list, folder: Path, config: Path, table: Path | None = None) -> Path:
    """Each row's OOF prediction table (``model`` = the row's label) and the images scored, for make score.
    Only each image's top-n rows are kept (n = its GT boxes): the writer uses no other, so the score
    is unchanged and the file small."""
    from infer.blend import top_rows

    frames = []
    for r in rows:
        t = ev.table(r.settings)
        frames.append(t[top_rows(t, ev.n_cells)].assign(model=r.label))
    path = predictions.write(pd.concat(frames, ignore_index=True), folder / VARIANTS)
    meta = {"config": str(config), "rows": [r.label for r in rows], "reference": rows[-1].label,
            "images": ev.oof.images["NAME"].tolist(), "table": None if table is None else str(table)}
    io.atomic_write_text(folder / "variants.json", json.dumps(meta, indent=1) + "\n")
    return path


@dataclasses.dataclass
class Tuned:
    """What a tuning run found."""

    ev: Evaluator
    ds: object  # cytocore.dataset.Dataset
    start: Settings  # the config's own settings (the better mode for fusion: auto)
    best: Settings
    rows: list  # infer.oof_table.Row of the score table
    trials: list[dict]


def optimise(ev: Evaluator, starts: list[Settings], grid, models: list[str], views: list[str]
             ) -> tuple[Settings, list[tuple], list[dict]]:
    """Search from ``starts`` (the config's settings first) and each member alone; then no row of the
    score table may beat the result: one that does becomes the start of another search. Returns the
    best settings, the table's rows and the trials."""
    c = ev.classifier
    full = c is not None and any(c.mode(m) == "full" for m in c.models)
    args = (grid, models, views, c is not None, full, crop_members(c))
    alone = (
        [
            dataclasses.replace(
                starts[0],
                fuse=dataclasses.replace(starts[0].fuse, weights={x: float(x == m) for x in models}),
            )
            for m in models
        ]
        if len(models) > 1
        else []
    )
    best, trials = search(ev, starts + alone + classifier_starts(starts[0], full, crop_members(c)), *args)
    cls = None
    if c is not None:  # the "+ cls" rows: the tuned blend, or the config's when tuning turned it off
        cls = best.blend if best.blend.weight > 0 else starts[0].blend
    while True:  # each pass strictly raises the score over a finite set of settings
        rows = oof_table.rows(best, models, views, cls)
        top = max(rows, key=lambda r: ev.result(r.settings).total).settings
        if ev.result(top).total <= ev.result(best).total:
            return best, rows, trials
        best, more = search(ev, [top], *args)
        trials += more


def classifier_starts(start: Settings, full: bool, crop: list[str]) -> list[Settings]:
    """More starting points for the classifier's part: without the full-image members (``full_weight``
    0) and each crop member alone. One round of coordinate ascent from the config's full_weight 0.5
    stopped at 0.9105 out-of-fold on the demo data (0.7329 on BCCD) where other blends of the same
    members reached 0.9132 with full_weight 0 (0.7347): the blend weight moved first, and from there
    no single move of full_weight paid. Pure."""
    if start.blend.weight == 0:
        return []
    out = []
    if full:
        out.append(dataclasses.replace(start, blend=dataclasses.replace(start.blend, full_weight=0.0)))
    if len(crop) > 1:
        out += [dataclasses.replace(start, blend=dataclasses.replace(
            start.blend, members=tuple((m, float(m == one)) for m in crop))) for one in crop]
    return out


def tune(cfg: EnsembleConfig, data: Path) -> Tuned:
    """Load the OOF tables and the classifier folds of ``cfg`` on ``data``'s prepared dataset; optimise."""
    grid = cfg.tune_grid()
    cfg, ds = bind(cfg, data)
    oof = load_oof(cfg, data, grid.max_images, grid.seed)
    classifier = classifier_for(cfg, ds)
    models = [m.name for m in cfg.member_list()]
    starts = config_settings(cfg, sorted(set(oof.preds["view"])), classifier is not None,
                             crop_members(classifier))
    ev = Evaluator(oof, classifier, min([cfg.skip_box_thr, *grid.skip_box_thr]), cfg.max_det)
    start = max(starts, key=lambda s: ev.result(s).total)
    best, rows, trials = optimise(ev, starts, grid, models, list(starts[0].fuse.views))
    return Tuned(ev, ds, start, best, rows, trials)


def run(cfg: EnsembleConfig, data: Path, out: Path) -> tuple[Path, pd.DataFrame]:
    """Tune, print the score table, write the tuned config to ``out``; return it and the table."""
    began = time.perf_counter()
    t = tune(cfg, data)
    ev, start, best = t.ev, t.start, t.best
    table, _ = oof_table.compute(ev, t.rows)
    classifier = ev.classifier is not None
    if classifier and hasattr(ev.classifier, "flush"):
        ev.classifier.flush()  # the crops, for the report, make score and make cls-report
    first, tuned = ev.result(start).total, ev.result(best).total
    body = yaml.safe_dump(tuned_config(cfg, best, classifier), sort_keys=False)
    io.atomic_write_text(out, f"# tuned by python -m infer.tune on {len(ev.oof.images)} out-of-fold images "
                              f"(score {tuned:.6f}, from {first:.6f}; {len(ev.results)} settings scored)\n"
                              f"{body}")
    saved = oof_table.save(table, oof_table.path_for(out), oof_table.meta_of(ev, t.ds, out, best))
    write_variants(ev, t.rows, t.ds.preds_dir("ensemble", "oof"), out, saved)
    sec = ev.seconds
    crops = (
        ""
        if not classifier
        else (
            f", classifier {sec['classify']:.1f} s ({ev.classifier.computed} crops "
            f"classified, {ev.classifier.reused} reused)"
        )
    )
    print(f"out-of-fold images scored: {len(ev.oof.images)} ({len(ev.oof.truth_boxes)} boxes); "
          f"{len(ev.results)} settings scored in {time.perf_counter() - began:.1f} s")
    print(f"  time: fusion {sec['fuse']:.1f} s{crops}, scoring {sec['score']:.1f} s")
    p, b = best.fuse, best.blend
    print(f"out-of-fold score: config {first:.6f} -> tuned {tuned:.6f}")
    print(f"tuned: fusion={p.mode} iou_thr={p.iou_thr} skip_box_thr={p.skip_box_thr} conf_type={p.conf_type}")
    print(f"  weights={p.weights} views={list(p.views)}"
          + (f" classifier weight={b.weight} tta={b.tta} full_weight={b.full_weight}" if classifier else "")
          + (f" shares={dict(b.members)}" if classifier and b.members else ""))
    print("out-of-fold challenge score of each member and the ensemble")
    print("  (diff [lo, hi]: minus the tuned ensemble's, paired bootstrap 95 % interval over images)")
    print(oof_table.text(table))
    print(f"wrote {out}\n  and {saved}")
    return out, table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infer.tune", description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path,
                        help="ensemble config (default: the last make all's ensemble before tuning)")
    parser.add_argument("--data", type=Path, default=paths.DEFAULT_DATA, help="challenge data folder")
    parser.add_argument("--out", type=Path, help="tuned config to write (default: the last make all's "
                        "tuned.yaml when tuning its ensemble, else work/tuned/ensemble.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="ensemble config overrides")
    args = parser.parse_args(argv)
    env.apply()
    io.setup_logging()
    k, seed = lastrun.ds_keys(args.overrides)
    choice = lastrun.ensemble(args.data, k, seed, tuned=False, given=args.config)
    print(choice.line())
    cfg = load_config(choice.path, args.overrides)
    out = args.out or (choice.path.with_name(lastrun.TUNED) if choice.dataset else paths.tuned_config())
    run(cfg, args.data, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(io.cli(main))
