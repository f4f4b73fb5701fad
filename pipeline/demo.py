"""``make demo``: the whole pipeline on synthetic data, from nothing, on a CPU, timing every step.

    python -m pipeline.demo --data data/demo [--config configs/demo.yaml] [key=value ...]

Steps (settings in ``configs/demo.yaml``): synthetic data (``prepare.synth``,
only when DATA has no train.csv), folds (``prepare.folds``), training of each
member (``python -m train`` per model and fold), inference with TTA on the test
and out-of-fold images (``python -m infer``), tuning of the fusion on the
out-of-fold predictions (``python -m infer.tune``: each member's OOF score next
to the fused ensemble's), the submission with the tuned settings (WBF, top-N,
fillers, the validator), then the local score against DATA/test_labels.csv with
its GIoU / F1 breakdown. Prints the time of every step and ends with the
submission file and the score; the numbers go to ``work/demo/report.json``.

All outputs go to ``work/demo/`` (the demo's own work folder: its runs never
mix with the runs of real data under ``work/runs/``).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cytokit import config as kit_config
from cytokit import env, io, paths

DEFAULT_CONFIG = paths.CONFIGS / "demo.yaml"


@dataclasses.dataclass
class DemoConfig:
    """configs/demo.yaml."""

    images: int = 400  # synthetic images made when DATA has no train.csv
    test_fraction: float = 0.25  # share of them in test.csv
    seed: int = 42  # seed of the data and of the folds
    k: int = 2  # folds
    workers: int = 2  # processes drawing the synthetic images
    train: list[dict] = dataclasses.field(default_factory=list)  # [{model, folds, overrides}]
    ensemble: dict = dataclasses.field(default_factory=dict)  # EnsembleConfig keys (members come from train)
    tune: bool = True  # tune the fusion on OOF predictions before the submission

    def members(self) -> list[dict]:
        out = []
        for i, t in enumerate(self.train):
            unknown = sorted(set(t) - {"model", "folds", "overrides", "weight"})
            if unknown or "model" not in t:
                raise kit_config.ConfigError(f"train[{i}]: needs model (+ folds, overrides, weight); "
                                             f"got {sorted(t)}")
            out.append({"model": t["model"], "folds": list(t.get("folds") or range(self.k)),
                        "weight": float(t.get("weight", 1.0))})
        return out


@contextlib.contextmanager
def demo_work_dir(root: Path) -> Iterator[Path]:
    """Point ``CYTOKIT_WORK`` at ``root`` for the demo (children inherit it), then restore it."""
    old = os.environ.get("CYTOKIT_WORK")
    os.environ["CYTOKIT_WORK"] = str(root)
    try:
        yield root
    finally:
        if old is None:
            os.environ.pop("CYTOKIT_WORK", None)
        else:
            os.environ["CYTOKIT_WORK"] = old


class Steps:
    """Runs named steps, printing and recording the time of each."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self.start = time.perf_counter()

    def __call__(self, name: str, fn: Callable[[], Any]) -> Any:
        print(f"\n== {name} ==", flush=True)
        start = time.perf_counter()
        out = fn()
        self.times[name] = time.perf_counter() - start
        print(f"== {name}: {self.times[name]:.1f} s", flush=True)
        return out

    @property
    def total(self) -> float:
        return time.perf_counter() - self.start


def _ok(code: int | None, what: str) -> None:
    if code not in (0, None):
        raise RuntimeError(f"{what} failed with exit status {code}")


def test_member_scores(ens: Any, data: Path, members: list[tuple[str, int]] | None = None) -> list[dict]:
    """Each member (model x fold; ``members``, default those of ``ens``) alone on the test images
    against test_labels.csv, then the ensemble ``ens``: the fusion's settings are the same, so the
    difference is what ensembling adds."""
    import pandas as pd

    from cytokit import predictions, tables
    from cytokit.metric import score
    from cytokit.submission import image_sizes, make_submission
    from infer import fuse

    files = paths.data_files(data)
    test, truth = tables.read(files["test"], "test"), tables.read(files["test_labels"], "submission")
    sizes = image_sizes(test["NAME"], files["images"])
    params = ens.fuse_params()
    members = members or [(m.model, f) for m in ens.member_list() for f in m.folds]
    from cytokit import dataset

    ds = dataset.resolve(data, ens.k, ens.seed)
    frames = {(m, f): predictions.read(ds.preds_dir(m, f) / "test.parquet") for m, f in members}
    used = {(m.model, f) for m in ens.member_list() for f in m.folds}
    fused = pd.concat([t for key, t in frames.items() if key in used], ignore_index=True)
    rows = []
    for label, table, p in [*[(f"{m} fold{f}", t, dataclasses.replace(params, weights={}))
                              for (m, f), t in frames.items()], ("ensemble", fused, params)]:
        table = table[table["view"].isin(ens.tta)]
        r = score(truth, make_submission(fuse.fuse(table, p, progress=False), test, sizes))
        rows.append({"member": label, "test": r.total, "giou_term": r.giou_term, "f1_term": r.f1_term})
    return rows


def run(cfg: DemoConfig, data: Path) -> dict:
    """The whole demo; returns the report (also written to work/demo/report.json)."""
    import pandas as pd

    from cytokit.io import format_table
    from cytokit.metric import format_result
    from infer import ensemble as infer_main
    from infer import tune
    from infer.config import EnsembleConfig
    from prepare import folds
    from prepare.synth import make as synth
    from submit.validate import validate_submission
    from train import job

    data = Path(data)
    steps = Steps()
    if not (data / "train.csv").exists():
        steps("synthetic data", lambda: _ok(synth.main([
            "--out", str(data), "--images", str(cfg.images), "--seed", str(cfg.seed),
            "--test-fraction", str(cfg.test_fraction), "--workers", str(cfg.workers)]), "prepare.synth"))
    common = ["--data", str(data), "--k", str(cfg.k), "--seed", str(cfg.seed)]
    steps("folds", lambda: _ok(folds.main(common), "prepare.folds"))
    for t in cfg.train:
        for fold in t.get("folds") or range(cfg.k):
            steps(f"train {t['model']} fold {fold}", lambda t=t, fold=fold: job.train(
                t["model"], str(fold), data, cfg.k, cfg.seed, [str(o) for o in t.get("overrides", [])]))
    ens = kit_config.from_dict(EnsembleConfig, {**cfg.ensemble, "members": cfg.members(), "k": cfg.k,
                                                "seed": cfg.seed}, "demo ensemble")
    ens_path = kit_config.save(ens, paths.ensemble_config())
    steps("infer (members x TTA views)", lambda: infer_main.run(ens, data))
    trained = [(m.model, f) for m in ens.member_list() for f in m.folds]
    oof_table = None
    if cfg.tune:
        tuned_path, oof_table = steps("tune fusion on OOF",
                                      lambda: tune.run(ens, data, paths.tuned_config()))
        ens_path = tuned_path
        ens = kit_config.load(EnsembleConfig, tuned_path)
    out_dir = paths.submissions_dir()
    result = steps("fuse + submission", lambda: infer_main.run(ens, data, submission=True, out_dir=out_dir))
    files = paths.data_files(data)
    problems = steps("validate",
                     lambda: validate_submission(result.submission, files["test"], files["images"]))
    errors = [p for p in problems if p.level == "error"]
    print(f"validator: {len(errors)} error(s), {len(problems) - len(errors)} warning(s)")
    if errors:
        raise io.DataError(errors)
    report = {"data": str(data), "config": str(ens_path), "submission": str(result.submission),
              "fusion": result.fusion, "steps": steps.times, "total_s": steps.total,
              "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    if oof_table is not None:
        report["oof"] = oof_table.to_dict(orient="records")
    print("\n== times ==")
    for name, sec in steps.times.items():
        print(f"  {name:<30} {sec:7.1f} s")
    print(f"  {'total':<30} {steps.total:7.1f} s")
    if oof_table is not None:
        print("\nout-of-fold challenge score, each member vs the fused ensemble:")
        print(format_table(oof_table.reset_index(drop=True)))
    if result.score is not None:
        r = result.score
        report.update(score=r.total, giou_term=r.giou_term, f1_term=r.f1_term)
        report["test_members"] = test_member_scores(ens, data, trained)
        print(f"\ntest score of each member alone vs the ensemble ({files['test_labels']}):")
        print(format_table(pd.DataFrame(report["test_members"])))
        print(f"\nlocal score against {files['test_labels']}:")
        print(format_result(result.score, per_class=False))
    io.atomic_write_text(paths.pipeline_report(), json.dumps(report, indent=1) + "\n")
    print(f"\nsubmission: {result.submission}")
    if result.score is not None:
        print(f"score: {result.score.total:.4f} (GIoU term {result.score.giou_term:.4f}, "
              f"F1 term {result.score.f1_term:.4f}) in {steps.total / 60:.1f} min")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=paths.DEMO_DATA,
                        help="demo data folder (made if absent)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="demo settings")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="demo config overrides")
    args = parser.parse_args(argv)
    env.apply()
    io.setup_logging()
    cfg = kit_config.load(DemoConfig, args.config, args.overrides)
    with demo_work_dir(paths.demo_dir()):
        env.apply()
        run(cfg, args.data.resolve())
    return 0


if __name__ == "__main__":
    raise SystemExit(io.cli(main))
