"""``build_report``: read what exists for one prepared dataset, write its HTML page atomically."""
from __future__ import annotations

import logging
import time
from pathlib import Path

from cytocore import config as kit_config
from cytocore import io, lastrun
from pipeline.report import audit, calibration, errors, rounds, sections
from pipeline.report import page as p
from pipeline.report.sources import Source

log = logging.getLogger(__name__)


def _guarded(name: str, make) -> str:
    """A section's HTML; an unexpected failure becomes a note on the page (the rest is still written)."""
    try:
        return make()
    except (FileNotFoundError, ValueError, KeyError) as exc:
        log.warning("report section %s: %s", name, exc)
        return p.note(f"this section could not be drawn: {type(exc).__name__}: {exc}")


def build_report(data: Path, k: int | None = None, seed: int | None = None, config: Path | None = None,
                 submission: Path | None = None, out: Path | None = None, classifier: bool = True,
                 n_boot: int = 1000, overrides: list[str] | tuple[str, ...] = (),
                 device: str | None = None) -> Path:
    """Write the report of the dataset prepared from ``data`` (``k``/``seed`` choose when it was prepared
    several times); its path.

    ``config``: the ensemble config whose fusion and classifier settings score the out-of-fold table
    (default: the last make all's tuned one, ``cytocore.lastrun``) with ``overrides`` (``key=value``
    ensemble config keys: device=cuda, ...); ``submission``: the submission to
    validate (default submissions/submission.csv); ``classifier``: score the classifier blend rows
    when no tuned table exists (crops classified once, cached); ``n_boot``: bootstrap resamples per
    comparison; ``device``: where the classifier runs then (default: the config's, ``device=`` included).
    """
    from infer.config import load_config
    from pipeline.report import oof as oof_table

    src = Source(Path(data), k, seed)
    meta = src.meta()  # FileNotFoundError naming the folder when make folds has not run
    images, boxes = src.images(), src.boxes()
    config = Path(config) if config else lastrun.ensemble(src.data, src.k, src.seed).path
    cfg = load_config(config, {**kit_config.parse_overrides(list(overrides)), "k": src.k, "seed": src.seed})
    section = cfg.classifier_section()
    members = [m.name for m in cfg.member_list()] + ([c.name for c in section.members] if section else [])
    start = time.perf_counter()
    try:
        oof = oof_table.build(src, cfg, classifier, n_boot, config, device)
    except (FileNotFoundError, ValueError, KeyError) as exc:  # e.g. a prediction table of another dataset
        log.warning("out-of-fold table: %s", exc)
        oof = oof_table.OOFTable(None, None, [], [f"no out-of-fold table: {type(exc).__name__}: {exc}"])
    log.info("out-of-fold table: %d rows in %.1f s", 0 if oof.empty else len(oof.table),
             time.perf_counter() - start)
    images_dir = Path(meta["images_dir"])
    body = [
        ("data", "Data and cleaning", _guarded("data", lambda: sections.data_section(src, images, boxes))),
        ("folds", "Folds", _guarded("folds", lambda: sections.folds_section(src, images, boxes))),
        ("training", "Training",
         _guarded("training", lambda: sections.training_section(src, src.run_names(members)))),
        ("oof", "Out-of-fold scores", _guarded("oof", lambda: errors.oof_section(oof, n_boot))),
        ("best", "Best setting: classes", _guarded("best", lambda: errors.best_section(oof))),
        ("confused", "Most confused classes",
         _guarded("confused", lambda: errors.confused_section(oof, images_dir))),
        ("worst", "Worst out-of-fold images",
         _guarded("worst", lambda: errors.worst_section(oof, images_dir))),
        ("audit", "Label audit (out-of-fold)", _guarded("audit", lambda: audit.section(src, images_dir))),
        ("rounds", "Round one vs round two", _guarded("rounds", lambda: rounds.section(src))),
        ("calibration", "Confidence calibration", _guarded("cal", lambda: calibration.section(src, config))),
        ("submission", "Last submission", _guarded("submission",
                                                    lambda: sections.submission_section(src, submission))),
    ]
    title = f"CytologIA kit report: {src.key}"
    subtitle = [f"data {src.data.resolve()} | k={src.k} seed={src.seed} | ensemble settings {config}",
                f"written {time.strftime('%Y-%m-%d %H:%M')} by make report | {oof_table.describe(oof)}"]
    path = Path(out) if out else src.report_path()
    io.atomic_write_text(path, p.document(title, subtitle, body))
    return path
