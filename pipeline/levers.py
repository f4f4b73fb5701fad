"""``make levers``: a lever measured on several training seeds, arm by arm, side by side.

    python -m pipeline.levers --study configs/levers/cleaning.yaml [--seeds 0 1] [--again]

A study (YAML, ``Study`` below) names a recipe, a data folder, training seeds and arms. Each arm x
seed is one ``make all`` (``python -m pipeline``) with ``--member seed=S`` (every detector's and
classifier's seed) and the arm's recipe overrides, in the work folder
``work/levers/runs/<data>-seed<S>/``: arms on the same data and seed share it, so an arm that
only adds a round two (``clean:``, ``pseudo:``) reuses the other arm's trained round one, and so do
the arms of another study on the same recipe, data and seed. An arm
with ``noise:`` trains on a copy of the data with seeded label noise (``prepare.noise``; the test
labels stay clean). A run's round two, when its recipe has one, is a row of its own.

Why seeds: the bootstrap over images of one run covers which images were drawn, not the training's
randomness, and on 2 CPU cores from scratch a second training seed moves the test score as much as
any lever (README, "The winners' levers, measured"). So each row gets its score per seed, the mean
and, against the first row, the difference paired by seed with a t interval over the seeds; a
round-two row also says how much of the gap between its round one and the first row it won back.

Finished arm x seed runs are kept in ``work/levers/<study>/results.json`` with a fingerprint of
what they ran: a second call runs only what is missing or changed (``--again``: everything).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from cytocore import config as kit_config
from cytocore import env, io, paths
from cytocore.config import ConfigError

RESULTS = "results.json"


@dataclasses.dataclass
class Arm:
    """One side of the comparison: the recipe plus these overrides, on the study's data or a noisy copy."""

    name: str  # the row's name
    overrides: list[str] = dataclasses.field(default_factory=list)  # recipe key=value (python -m pipeline)
    noise: dict[str, float] = dataclasses.field(default_factory=dict)  # prepare.noise: p_class, ..., seed
    round_two: str = ""  # the name of this arm's round-two row ("" = "<name>, round two")


@dataclasses.dataclass
class Study:
    """A lever on several training seeds (``configs/levers/*.yaml``)."""

    recipe: str  # the recipe every arm starts from (relative to the project root)
    data: str  # the data folder (made by the recipe's synth section when it has no train.csv)
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2])  # training seeds
    arms: list[Arm] = dataclasses.field(default_factory=list)  # the first arm's first row is the reference


def load(path: Path) -> Study:
    """The study at ``path``; a bad key or a missing arm is a one-line error naming the file."""
    values = kit_config.read_yaml(path)
    study = kit_config.from_dict(Study, {k: v for k, v in values.items() if k != "arms"}, str(path))
    arms = values.get("arms") or []
    if not isinstance(arms, list) or not arms:
        raise ConfigError(f"{path}: arms: give at least one arm ({{name: ..., overrides: [...]}})")
    study.arms = [kit_config.from_dict(Arm, a, f"{path}: arms[{i}]") for i, a in enumerate(arms)]
    names = [a.name for a in study.arms]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: arms: two arms are named alike ({names})")
    if not study.seeds:
        raise ConfigError(f"{path}: seeds: give at least one training seed")
    return study


def root_of(study_path: Path) -> Path:
    """The study's folder (its results and logs)."""
    return paths.work_dir() / "levers" / study_path.stem


def shared() -> Path:
    """The folder every study's runs and noisy data live in: a run of the same recipe on the same data
    and seed is the same run whichever study asks for it (the kit trains again what changed)."""
    return paths.work_dir() / "levers"


def noise_label(noise: dict[str, float]) -> str:
    """The folder name of a noise setting, e.g. ``noise-class0.1-seed2``."""
    parts = [f"{k.removeprefix('p_')}{v:g}" for k, v in sorted(noise.items()) if k != "seed"]
    return "noise-" + "-".join(parts) + f"-seed{int(noise.get('seed', 0))}"


def data_for(study: Study, arm: Arm, root: Path) -> Path:
    """The data folder of ``arm``: the study's, or its noisy copy (made here when absent)."""
    source = (paths.ROOT / study.data).resolve()
    if not arm.noise:
        return source
    out = shared() / "data" / f"{source.name}-{noise_label(arm.noise)}"
    if not (out / "train.csv").exists():
        from prepare import noise

        args = ["--data", str(source), "--out", str(out)]
        for key, value in arm.noise.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        if noise.main(args):
            raise RuntimeError(f"prepare.noise failed for arm {arm.name!r}")
    return out


def fingerprint(study: Study, arm: Arm, seed: int) -> str:
    """What an arm x seed run depends on: the recipe's text, the arm and the seed."""
    text = (paths.ROOT / study.recipe).read_text() + json.dumps([study.data, dataclasses.asdict(arm), seed])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def rows_of(report: dict, arm: Arm) -> dict[str, dict]:
    """The rows one run gives: round one and, when it ran, round two (test and out-of-fold scores, and
    ``labels``: the train labels its out-of-fold score is scored on, the name of their data folder)."""
    def row(part: dict, labels: str) -> dict:
        oof = part.get("oof_check") or {}
        return {"test": part.get("score"), "oof": oof.get("ensemble"), "giou": part.get("giou_term"),
                "f1": part.get("f1_term"), "labels": labels}

    own = Path(report.get("data", "")).name
    out = {arm.name: row(report, own)}
    for lever in ("clean", "pseudo"):
        part = report.get(lever) or {}
        if part.get("round_two"):  # cleaning: scored on the cleaned labels; pseudo-labels: on round one's
            labels = Path(part.get("data", "")).name if lever == "clean" else own
            name = arm.round_two or f"{arm.name}, round two"
            out[name] = row(part["round_two"], labels)
            if lever == "clean":
                out[name]["audit"] = against_noise(Path(report.get("data", "")), Path(part.get("data", "")))
    return out


def against_noise(noisy: Path, cleaned: Path) -> dict | None:
    """What the cleaning did to the errors ``prepare.noise`` injected into ``noisy`` (its ``noise.csv``),
    from the changes beside the ``cleaned`` copy (``label_changes.csv``, rows of the noisy train.csv):
    the errors by kind, the class errors relabelled to their true class, the errors changed at all,
    and the false alarms (rows changed that held no error); None when either record is missing."""
    import pandas as pd

    from infer.label_audit import CHANGES_FILE

    if not (noisy / "noise.csv").is_file() or not (cleaned / CHANGES_FILE).is_file():
        return None
    record, changes = pd.read_csv(noisy / "noise.csv"), pd.read_csv(cleaned / CHANGES_FILE)
    truth = dict(zip(record["row"].astype(int), record["true_class"]))
    kind = dict(zip(record["row"].astype(int), record["kind"]))
    on_rows = changes[changes["row"].notna()].astype({"row": int})
    hit = on_rows["row"].isin(truth)
    fixed = sum(1 for r, a, c in zip(on_rows["row"], on_rows["action"], on_rows["class"])
                if a == "relabel" and kind.get(r) == "class" and c == truth[r])
    return {"errors": {k: int(n) for k, n in record["kind"].value_counts().items()}, "fixed": fixed,
            "changed_errors": int(on_rows.loc[hit, "row"].nunique()),
            "false_alarms": int(on_rows.loc[~hit, "row"].nunique()),
            "added": int(changes["row"].isna().sum())}


def run_one(study: Study, arm: Arm, seed: int, root: Path, echo=print) -> dict:
    """``python -m pipeline`` for one arm x seed in its own process and work folder; its rows."""
    data = data_for(study, arm, root)
    work = shared() / "runs" / f"{data.name}-seed{seed}"
    log = root / "logs" / f"{arm.name.replace(' ', '_').replace(',', '')}-seed{seed}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pipeline", "--recipe", str(paths.ROOT / study.recipe), "--data", str(data),
           "--out", str(work / "submissions"), "--member", f"seed={seed}", *arm.overrides]
    echo(f"{arm.name}, seed {seed}: running (log {log})")
    start = time.time()
    code = launch(cmd, {**os.environ, "CYTOKIT_WORK": str(work)}, log, lambda line: echo(f"  {line}"))
    path = latest_report(work, data)
    if code or path is None:
        raise RuntimeError(f"{arm.name}, seed {seed}: make all exited {code}; see {log}")
    minutes = round((time.time() - start) / 60, 1)
    return {"rows": rows_of(json.loads(path.read_text()), arm), "minutes": minutes, "log": str(log),
            "report": str(path)}


def launch(cmd: list[str], environ: dict[str, str], log: Path, echo=print) -> int:
    """Run ``cmd`` with its output in ``log``, echoing the lines a user follows (``progress``); its exit
    status."""
    shown = Progress()
    with open(log, "w") as out, subprocess.Popen(cmd, cwd=paths.ROOT, env=environ, stdout=subprocess.PIPE,
                                                 stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        for line in proc.stdout:
            out.write(line)
            kept = shown(line.rstrip("\n"), time.monotonic())
            if kept:
                echo(kept)
    return proc.returncode


class Progress:
    """Which lines of a ``make all`` log to echo: each step's start and end (``== ... ==``), the test
    score, and the training heartbeat (``[2/4 jobs done, ...]``) at most once a minute."""

    def __init__(self, every_s: float = 60.0) -> None:
        self.every_s, self.last = every_s, -float("inf")

    def __call__(self, line: str, now: float) -> str | None:
        text = line.strip()
        if text.startswith("== ") or text.startswith("test score:") or text.startswith("round two on"):
            return text
        if text.startswith("[") and "jobs done" in text and now - self.last >= self.every_s:
            self.last = now
            return text
        return None


def latest_report(work: Path, data: Path) -> Path | None:
    """The newest round-one report.json of ``data`` in the work folder ``work``."""
    found = sorted((work / "logs").glob("*/report.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in found:
        if Path(json.loads(path.read_text()).get("data", "")) == data.resolve():
            return path
    return None


def table(results: dict, study: Study, metric: str) -> tuple[list[str], dict[str, dict[int, float]]]:
    """Row names in arm order and each row's ``metric`` per seed, from the stored results."""
    order: list[str] = []
    values: dict[str, dict[int, float]] = {}
    for arm in study.arms:
        for seed in study.seeds:
            for row, scores in (results.get(key(arm, seed)) or {}).get("rows", {}).items():
                if row not in values:
                    order.append(row)
                    values[row] = {}
                if scores.get(metric) is not None:
                    values[row][seed] = float(scores[metric])
    return order, values


def paired(a: dict[int, float], b: dict[int, float], level: float = 0.95) -> dict | None:
    """``a - b`` over the seeds both have: per seed, mean, and a t interval over seeds (None below 2)."""
    from scipy import stats

    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    d = np.array([a[s] - b[s] for s in seeds])
    out = {"seeds": seeds, "diff": d.tolist(), "mean": float(d.mean()), "lo": None, "hi": None,
           "up": int((d > 0).sum())}
    if len(d) >= 2:
        half = float(stats.t.ppf(0.5 + level / 2, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)))
        out.update(lo=out["mean"] - half, hi=out["mean"] + half)
    return out


def won_back(results: dict, study: Study, metric: str) -> list[str]:
    """For each round-two row: the share of the gap between its round one and the reference row (the
    first) that round two won back, on the seed means (only where round one is below the reference)."""
    order, values = table(results, study, metric)
    if not order:
        return []
    ref = values[order[0]]
    lines = []
    for arm in study.arms:
        one_name, two_name = arm.name, arm.round_two or f"{arm.name}, round two"
        one, two = values.get(one_name, {}), values.get(two_name, {})
        seeds = sorted(set(ref) & set(one) & set(two))
        if not seeds or one_name == order[0]:
            continue
        gap = np.mean([ref[s] - one[s] for s in seeds])
        gain = np.mean([two[s] - one[s] for s in seeds])
        if gap <= 0:
            lines.append(f"{two_name}: {gain:+.4f} over its round one, which is not below {order[0]} "
                         f"({-gap:+.4f}): nothing to win back")
            continue
        d = paired({s: two[s] for s in seeds}, {s: one[s] for s in seeds})
        ci = f" [{d['lo']:+.4f}, {d['hi']:+.4f}]" if d["lo"] is not None else ""
        lines.append(f"{two_name}: won back {gain:+.4f} of the {gap:.4f} that {one_name} lost against "
                     f"{order[0]} = {100 * gain / gap:.0f} % (means over seeds {', '.join(map(str, seeds))}; "
                     f"round two minus round one{ci}, up on {d['up']} of {len(seeds)} seeds)")
    return lines


def render(results: dict, study: Study) -> str:
    """The study's tables: each row's score per seed, its mean, and its difference from the first row."""
    lines = []
    titles = (("test", "test labels"), ("oof", "out-of-fold (each row against its own train labels)"))
    for metric, title in titles:
        order, values = table(results, study, metric)
        if not order:
            continue
        labels = row_labels(results)
        seeds = study.seeds
        head = f"{'row':<34}" + "".join(f"{'seed ' + str(s):>9}" for s in seeds) + f"{'mean':>9}"
        lines += ["", f"{title}: challenge score per training seed; minus '{order[0]}', paired by seed "
                      "(t interval over seeds, 95 %)", head + "   minus the first row"]
        for row in order:
            v = values[row]
            cells = "".join(f"{v[s]:9.4f}" if s in v else f"{'-':>9}" for s in seeds)
            mean = f"{np.mean(list(v.values())):9.4f}" if v else f"{'-':>9}"
            d = paired(v, values[order[0]]) if row != order[0] else None
            diff = ""
            if d and metric == "oof" and (labels.get(row) is None or labels.get(row) != labels.get(order[0])):
                diff = "   (scored on other train labels: not compared)"
            elif d:
                ci = f" [{d['lo']:+.4f}, {d['hi']:+.4f}]" if d["lo"] is not None else ""
                diff = f"   {d['mean']:+.4f}{ci}, up on {d['up']} of {len(d['seeds'])} seeds"
            lines.append(f"{row[:34]:<34}{cells}{mean}{diff}")
        if metric == "test":
            lines += [""] + won_back(results, study, metric) + audits(results, study)
    return "\n".join(lines).strip("\n")


def audits(results: dict, study: Study) -> list[str]:
    """Per round-two row with injected noise: what the cleaning changed, seed by seed."""
    lines = []
    for arm in study.arms:
        for seed in study.seeds:
            for row, scores in (results.get(key(arm, seed)) or {}).get("rows", {}).items():
                a = scores.get("audit")
                if a:
                    errors = ", ".join(f"{n} {k}" for k, n in a["errors"].items())
                    lines.append(f"{row}, seed {seed}: of the injected errors ({errors}), {a['fixed']} "
                                 f"relabelled to their true class, {a['changed_errors']} changed; "
                                 f"{a['false_alarms']} correct labels changed, {a['added']} boxes added")
    return [""] + lines if lines else []


def row_labels(results: dict) -> dict[str, str | None]:
    """Each row's train labels (the data folder its out-of-fold score is scored on); None when the seeds
    disagree or a stored result predates the field."""
    seen: dict[str, set] = {}
    for result in results.values():
        for row, scores in result.get("rows", {}).items():
            seen.setdefault(row, set()).add(scores.get("labels"))
    return {row: next(iter(v)) if len(v) == 1 else None for row, v in seen.items()}


def refresh(results: dict, study: Study) -> dict:
    """``results`` with each run's rows read again from its report.json where it still exists (rows
    stored by an older kit gain the fields added since)."""
    arms = {arm.name: arm for arm in study.arms}
    for k, result in results.items():
        arm, path = arms.get(k.split("|")[0]), Path(result.get("report") or "")
        if arm is not None and path.is_file():
            result["rows"] = rows_of(json.loads(path.read_text()), arm)
    return results


def key(arm: Arm, seed: int) -> str:
    return f"{arm.name}|seed{seed}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipeline.levers", description=__doc__.split("\n")[0])
    p.add_argument("--study", type=Path, required=True, help="the study YAML (configs/levers/*.yaml)")
    p.add_argument("--seeds", type=int, nargs="+", help="these training seeds instead of the study's")
    p.add_argument("--again", action="store_true", help="rerun arm x seed runs already in results.json")
    p.add_argument("--table", action="store_true", help="print the stored results only, run nothing")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env.apply()
    io.setup_logging()
    study = load(args.study)
    if args.seeds:
        study.seeds = args.seeds
    root = root_of(args.study)
    store = root / RESULTS
    results = refresh(json.loads(store.read_text()), study) if store.exists() else {}
    if not args.table:
        _ensure_data(study)
        todo = []
        for seed in study.seeds:
            for arm in study.arms:
                done = results.get(key(arm, seed))
                if done and done.get("fingerprint") == fingerprint(study, arm, seed) and not args.again:
                    print(f"{arm.name}, seed {seed}: kept from {store}")
                else:
                    todo.append((arm, seed))
        minutes: list[float] = []
        for i, (arm, seed) in enumerate(todo, 1):
            left = f"; about {np.mean(minutes) * (len(todo) - i + 1):.0f} min left" if minutes else ""
            print(f"\n[run {i} of {len(todo)}{left}]")
            result = run_one(study, arm, seed, root)
            minutes.append(result["minutes"])
            results[key(arm, seed)] = {**result, "fingerprint": fingerprint(study, arm, seed)}
            io.atomic_write_text(store, json.dumps(results, indent=1) + "\n")
            print(f"{arm.name}, seed {seed}: done in {result['minutes']:.1f} min")
    print(render(results, study))
    print(f"\nresults: {store}")
    return 0


def _ensure_data(study: Study) -> None:
    """The study's data folder, made by the recipe's synth section when it has no train.csv (the demo)."""
    data = (paths.ROOT / study.data).resolve()
    if (data / "train.csv").exists():
        return
    from pipeline import recipe, run

    cfg = recipe.load(paths.ROOT / study.recipe, [])
    if not cfg.synth_settings():
        raise ConfigError(f"{study.data}: no train.csv, and the recipe {study.recipe} makes no synthetic "
                          "data")
    run.make_synthetic(cfg, data)


if __name__ == "__main__":
    raise SystemExit(io.cli(main))
