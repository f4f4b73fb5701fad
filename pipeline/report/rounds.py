"""The report's rounds section: round one vs round two of a run with pseudo-labels or label cleaning
(``pipeline.run`` writes ``rounds.json`` into round one's logs once round two is scored)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from cytocore import paths
from pipeline.report import page as p

FILE = "rounds.json"  # in round one's logs folder
LEAK_FREE = ("each fold learned the test images as round one's same fold predicted them (models that never "
             "saw its validation images), so round two's out-of-fold score is as clean as round one's.")
OPTIMISTIC = ("their labels come from round one's ensemble of every fold, models that saw the validation "
              "images, so round two's out-of-fold score is optimistic (pseudo: labels: fold avoids it).")


def section(src) -> str:
    path = paths.logs_dir(src.key) / FILE
    if not path.is_file():
        return p.note("one round (the recipe's pseudo: and clean: policy are off, or round two has not run)")
    r = json.loads(path.read_text())
    one, two, oof = r.get("round_one", {}), r.get("round_two", {}), r.get("oof") or {}
    rows = pd.DataFrame([
        {"round": "one", "trained on": "the train labels", "out-of-fold": oof.get("round_one"),
         "test score": one.get("score"), "report page": _name(one.get("report_page"))},
        {"round": "two", "trained on": r.get("what", ""), "out-of-fold": oof.get("round_two"),
         "test score": two.get("score"), "report page": _name(two.get("report_page"))},
    ])
    out = [p.table(rows)]
    if oof:
        out.append(p.help_text(
            f"out-of-fold: both rounds' tuned ensembles on round one's {oof['images']} out-of-fold images "
            f"and their labels; round two minus round one {oof['diff']:+.4f}, paired bootstrap 95 % interval "
            f"[{oof['lo']:+.4f}, {oof['hi']:+.4f}] (round two better in {oof['p_better']:.0%} of resamples). "
            "Pseudo-labelled test images are never validation images; "
            + (LEAK_FREE if (r.get("pseudo") or {}).get("source", "ensemble") == "fold" else OPTIMISTIC)))
    if r.get("pseudo"):
        q = r["pseudo"]
        left = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in q.get("left_out", {}).items())
        out.append(p.help_text(f"pseudo-labels ({q.get('source', 'ensemble')} labels): "
                               f"{q['used_images']} of {q['test_images']} test images "
                               f"({q['used_boxes']} boxes) from {paths.shown(q['labels'])}; "
                               f"left out{' (test image x fold)' if q.get('source') == 'fold' else ''}: "
                               f"{left}"))
    if r.get("changed"):
        out.append(p.help_text(f"label cleaning: {r['changed']}"))
    out.append(p.help_text(f"round two's data: {r.get('data', '')}"))
    return "".join(out)


def _name(page: str | None) -> str:
    """A report page's file name (the pages sit side by side in one folder)."""
    return Path(page).name if page else ""
