"""The out-of-fold comparison table: each member with and without TTA, with and without the classifier,
against the ensemble -- computed ONCE per run by the tuning evaluator and read by everyone else.

``rows(best, models, views, cls)`` lists the table's settings; ``compute(ev, rows)`` scores them with
the tuning evaluator (``infer.oof_eval.Evaluator``: exactly as a submission with those settings would be
scored) and compares each with the tuned ensemble by a paired bootstrap over images
(``cytocore.compare.paired_bootstrap``). ``infer.tune`` saves it beside the tuned config
(``<tuned>.yaml`` -> ``oof_table.json`` in the same folder) and records its path in the dataset's
``variants.json``; the terminal summary of ``make all``, ``make score`` and the report page read it
(``find`` / ``load``). Where no tuning ran, ``fallback`` computes it with the same two functions on the
config's own settings.

One vocabulary (``COLUMNS``), one value per cell:

    member      a member's name, or ``ensemble``
    tta         the row fuses the TTA views (False: the identity view alone)
    classifier  the crop classifier is blended in
    score       the challenge score out of fold; giou, f1: its two terms
    diff, lo, hi, p_better   score minus the reference row's, its 95 % interval, P(row > reference)
    reference   True on the row every diff refers to (the tuned ensemble)
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cytocore import io

log = logging.getLogger(__name__)
FILE = "oof_table.json"
ENSEMBLE = "ensemble"
COLUMNS = ("member", "tta", "classifier", "score", "giou", "f1", "diff", "lo", "hi", "p_better", "reference")


@dataclasses.dataclass(frozen=True)
class Row:
    """One row's identity and the settings (``infer.oof_eval.Settings``) that score it."""

    member: str
    tta: bool
    classifier: bool
    settings: Any

    @property
    def label(self) -> str:
        """``member [+ TTA] [+ classifier]``: the row's name wherever a name is printed."""
        return label(self.member, self.tta, self.classifier)


def label(member: str, tta: bool, classifier: bool) -> str:
    return member + (" + TTA" if tta else "") + (" + classifier" if classifier else "")


def labels(table: pd.DataFrame) -> list[str]:
    """Each row's ``label`` (the key of a row in every reader)."""
    return [label(m, bool(t), bool(c)) for m, t, c in zip(table["member"], table["tta"], table["classifier"])]


def rows(best: Any, models: list[str], views: list[str], cls: Any = None) -> list[Row]:
    """The table's rows for the tuned settings ``best`` (``views``: the TTA views the OOF tables hold):
    each member alone with every view (TTA; with more than one) and with the identity view alone (no
    TTA), each without and (``cls``: a classifier ``Blend`` with weight > 0) with the classifier; the
    ensemble without the classifier (when the tuned one blends it) and the tuned ensemble, last (the
    reference)."""
    from infer.oof_eval import OFF, Settings

    out = []
    variants = []
    if len(views) > 1:
        variants.append((True, tuple(views)))
    if "identity" in views or len(views) == 1:
        variants.append((False, ("identity",) if "identity" in views else tuple(views)))
    for m in models:
        alone = dataclasses.replace(best.fuse, weights={x: float(x == m) for x in models})
        for t, v in variants:
            p = dataclasses.replace(alone, views=v)
            out.append(Row(m, t, False, Settings(p, OFF)))
            if cls is not None and cls.weight > 0:
                out.append(Row(m, t, True, Settings(p, cls)))
    tta = len(best.fuse.views) > 1
    if best.blend.weight > 0:
        out.append(Row(ENSEMBLE, tta, False, Settings(best.fuse, OFF)))
    out.append(Row(ENSEMBLE, tta, best.blend.weight > 0, best))
    return out


def compute(ev: Any, table_rows: list[Row], n_boot: int = 1000) -> tuple[pd.DataFrame, dict]:
    """Score every row with the evaluator ``ev``; the table (``COLUMNS``) and each row's ScoreResult by
    label. The last row is the reference."""
    from cytocore.compare import paired_bootstrap

    results = {r.label: ev.result(r.settings) for r in table_rows}
    ref = table_rows[-1].label
    records = []
    for r in table_rows:
        res = results[r.label]
        d = None if r.label == ref else paired_bootstrap(res, results[ref], n=n_boot)
        records.append({"member": r.member, "tta": r.tta, "classifier": r.classifier, "score": res.total,
                        "giou": res.giou_term, "f1": res.f1_term,
                        "diff": d.diff if d else np.nan, "lo": d.lo if d else np.nan,
                        "hi": d.hi if d else np.nan, "p_better": d.p_better if d else np.nan,
                        "reference": r.label == ref})
    return pd.DataFrame(records, columns=list(COLUMNS)), results


def path_for(config: Path) -> Path:
    """Where the table of the tuned config ``config`` lives: ``oof_table.json`` beside it."""
    return Path(config).with_name(FILE)


def save(table: pd.DataFrame, path: Path, meta: dict) -> Path:
    """Write the table with ``meta`` (dataset, config, images, ...) as JSON, atomically."""
    records = table.astype(object).where(table.notna(), None).to_dict(orient="records")
    body = json.dumps({**meta, "columns": list(COLUMNS), "rows": records}, indent=1)
    io.atomic_write_text(path, body + "\n")
    return Path(path)


def load(path: Path, dataset: str | None = None) -> tuple[pd.DataFrame, dict] | None:
    """The table and its meta at ``path``; None when absent, unreadable or of another ``dataset`` id."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        table = pd.DataFrame(data.pop("rows"), columns=list(COLUMNS))
    except (OSError, ValueError, KeyError) as exc:
        log.warning("%s: unreadable out-of-fold table (%s)", path, exc)
        return None
    if dataset is not None and data.get("dataset") not in (None, dataset):
        return None
    table[["diff", "lo", "hi", "p_better"]] = table[["diff", "lo", "hi", "p_better"]].astype(float)
    data["path"] = str(path)
    return table, data


def find(ds: Any, config: Path | None = None) -> tuple[pd.DataFrame, dict] | None:
    """The tuned table of the prepared dataset ``ds``: beside ``config`` when given and of ``ds``, else
    the one the dataset's last tuning recorded (``variants.json``); None when tuning has not run."""
    if config is not None:
        found = load(path_for(config), ds.id)
        if found is not None:
            return found
    meta = Path(ds.preds_dir(ENSEMBLE, "oof")) / "variants.json"
    if meta.is_file():
        try:
            recorded = json.loads(meta.read_text()).get("table")
        except ValueError:
            recorded = None
        if recorded:
            return load(Path(recorded), ds.id)
    return None


def fallback(cfg: Any, data: Path, n_boot: int = 1000, classifier: bool = True) -> tuple:
    """No tuned table: the same table on the config's own settings (``fusion: auto``: the better mode),
    through the same evaluator and ``compute``. Returns ``(table, meta, ev, rows)``."""
    from infer.config import bind
    from infer.oof_eval import Evaluator, classifier_for, config_settings, crop_members, load_oof

    grid = cfg.tune_grid()
    bound, ds = bind(cfg, data)
    oof = load_oof(bound, data, grid.max_images, grid.seed)
    cls = classifier_for(bound, ds, quiet=True) if classifier else None
    ev = Evaluator(oof, cls, cfg.skip_box_thr, cfg.max_det)
    starts = config_settings(bound, sorted(set(oof.preds["view"])), cls is not None, crop_members(cls))
    best = max(starts, key=lambda s: ev.result(s).total)
    models = [m.name for m in bound.member_list()]
    table_rows = rows(best, models, list(best.fuse.views), best.blend if cls is not None else None)
    table, _ = compute(ev, table_rows, n_boot)
    if cls is not None and hasattr(cls, "flush"):
        cls.flush()
    return table, meta_of(ev, ds, None, best), ev, table_rows


def meta_of(ev: Any, ds: Any, config: Path | None, best: Any) -> dict:
    """What a saved table records beside its rows."""
    return {"dataset": ds.id, "config": None if config is None else str(config),
            "fusion": best.fuse.mode, "views": list(best.fuse.views), "n_images": len(ev.oof.images),
            "n_boxes": len(ev.oof.truth_boxes), "images": ev.oof.images["NAME"].tolist()}


def check(table: pd.DataFrame | None) -> dict | None:
    """The tuned ensemble's score vs the best single member's (any TTA / classifier variant): the
    ``oof_check`` of a run's report. None without a member row or an ensemble row."""
    if table is None or not len(table):
        return None
    is_ens = table["member"].astype(str) == ENSEMBLE
    if not is_ens.any() or is_ens.all():
        return None
    members = table[~is_ens].reset_index(drop=True)
    best = members.loc[members["score"].idxmax()]
    ref = table[table["reference"].astype(bool)] if table["reference"].astype(bool).any() else table[is_ens]
    return {"ensemble": float(ref["score"].iloc[-1]),
            "best_member": label(str(best["member"]), bool(best["tta"]), bool(best["classifier"])),
            "best": float(best["score"])}


def text(table: pd.DataFrame) -> str:
    """The table as printed by the terminal summary and ``make score`` (the same cells as the page)."""
    from cytocore.io import format_table

    shown = table.drop(columns="reference")
    numbers = ["score", "giou", "f1", "diff", "lo", "hi", "p_better"]
    shown[numbers] = shown[numbers].apply(pd.to_numeric).astype(float)
    return format_table(shown)
