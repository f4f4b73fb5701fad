"""The pre-flight of ``make all`` / ``make demo``: what would fail or silently run worse hours later,
checked in seconds before any fold, run folder or training job. The recipe-level checks are here; the
training-level ones (weights, device, disk, /dev/shm, memory) are ``train.preflight``'s, which is also
the pre-flight of ``make train``.

- **recipe**: every member's config (``configs/<family>.yaml`` <- its overrides: ``epochs=-3`` is
  refused now, not when its job starts) and the ``ensemble:`` section as the ensemble config it becomes
  after training (``infer.config.EnsembleConfig``: an unknown key is refused now);
- **weights**: every member that starts from a pretrained file (``train.weights.needs``) has it; a
  missing one names ``make weights RECIPE=...`` and ``pretrained=none`` (scratch on purpose);
- **device**: the members' and the ensemble's (``train.preflight.device_problems``: no silent CPU
  training next to a GPU torch cannot use, with the fix);
- **disk**, **/dev/shm**, **memory**: of every member x fold, ``jobs`` at once, with the caches the
  data's size gives (``train.preflight``);
- **data**: test.csv read with the kit's validator (``cytocore.tables``: a repeated trustii_id, a bad
  row), its images present (train.csv is validated by the folds step that comes next).

Every problem is one line; ``check`` raises ``train.preflight.PreflightError`` (a ``ConfigError``:
``cytocore.io.cli`` prints the lines and exits 1, no traceback) when there is any. ``CYTOKIT_PREFLIGHT=off``
skips it; a run that passed it sets ``CYTOKIT_PREFLIGHT=done`` for its training jobs, which then skip
their own.
"""
from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cytocore import paths
from cytocore.config import ConfigError
from cytocore.resources import Limits
from train.preflight import (
    ENSEMBLE,
    ENV,
    DataFacts,
    Member,
    PreflightError,
    device_problems,
    disk_problems,
    enabled,
    memory_problems,
    one_line,
    shm_problems,
    weights_problems,
)

# ---- the recipe ----

def resolve_members(recipe: Any) -> tuple[list[Member], list[str]]:
    """Each detector and classifier of ``recipe`` with its resolved config; a line per refused one."""
    from train import registry

    members, problems = [], []
    for kind, entries in (("detectors", recipe.detector_list()), ("classifiers", recipe.classifier_list())):
        for i, m in enumerate(entries):
            try:
                cfg = registry.load_config(m.model, m.overrides)
            except ConfigError as exc:
                problems.append(f"recipe {kind}[{i}] ({m.name}): {one_line(exc)}")
                continue
            members.append(Member(m.model, cfg, len(m.folds), list(m.overrides), m.name))
    return members, problems


def ensemble_problems(recipe: Any) -> tuple[Any, list[str]]:
    """The ensemble config the recipe's ``ensemble:`` section gives once every member trained (as the
    run builds it after training), or the line that refuses it."""
    from types import SimpleNamespace

    from cytocore import config as kit_config
    from infer.config import EnsembleConfig
    from pipeline.recipe import ensemble_values

    every = {m.name: list(m.folds) for m in recipe.detector_list()}
    cls = {m.name: list(m.folds) for m in recipe.classifier_list()}
    try:
        values = ensemble_values(recipe, SimpleNamespace(k=recipe.k, seed=recipe.seed), every, cls)
        return kit_config.from_dict(EnsembleConfig, values, "recipe: ensemble"), []
    except (ConfigError, TypeError, ValueError) as exc:
        return None, [one_line(exc)]


# ---- the data ----

def data_facts(train_csv: Path) -> DataFacts:
    """Images and boxes of train.csv, read fast (its full validation is the folds step's, seconds later)."""
    import pandas as pd

    try:
        names = pd.read_csv(train_csv, usecols=["NAME"])["NAME"]
    except (OSError, ValueError):
        return DataFacts()
    return DataFacts(images=int(names.nunique()), boxes=len(names))


def data_problems(data: Path, recipe: Any) -> tuple[DataFacts, list[str]]:
    """test.csv through the kit's validator (``cytocore.tables``: a repeated trustii_id, a bad row; errors
    only), its images present, train.csv there. Nothing to check when DATA has no train.csv and the
    recipe makes synthetic data."""
    from cytocore import tables

    files = paths.data_files(data)
    if not files["train"].exists():
        if recipe.synth_settings() is not None:
            return DataFacts(), []
        return DataFacts(), [f"{files['train']}: file not found (DATA= is the challenge data folder)"]
    table, found = tables.inspect(files["test"], "test")
    errors = [p for p in found if p.level == "error"]
    problems = [str(p) for p in errors[:20]]
    if len(errors) > 20:
        problems.append(f"{files['test']}: ... {len(errors) - 20} more error(s)")
    if table is not None and not errors:
        if not files["images"].is_dir():
            problems.append(f"{files['images']}: images folder not found")
        else:
            missing = sorted(set(table["NAME"]) - set(os.listdir(files["images"])))
            if missing:
                problems.append(f"{files['test']}: {len(missing)} of {table['NAME'].nunique()} image(s) not "
                                f"in {files['images']} (first: {missing[0]})")
    return data_facts(files["train"]), problems


# ---- the checks together ----

def recipe_problems(recipe: Any, data: Path, recipe_path: Path | None = None, limits: Limits | None = None,
                    root: Path = Path("/")) -> list[str]:
    """Every problem of running ``recipe`` on ``data`` here, one line each ([] when it may start)."""
    limits = limits or Limits()
    members, problems = resolve_members(recipe)
    ensemble, found = ensemble_problems(recipe)
    problems += found
    problems += weights_problems(members, recipe_path)
    from pipeline import cluster

    remote = cluster.launcher(recipe).launcher != "local"  # the members train on the cluster's nodes
    targets = [] if remote else [(m.name, getattr(m.cfg, "device", "")) for m in members]
    if ensemble is not None:
        targets.append((ENSEMBLE, ensemble.device))
    problems += device_problems(targets, root)
    facts, found = data_problems(Path(data), recipe)
    problems += found
    problems += disk_problems(members)
    if not remote:  # this machine's /dev/shm and memory are not the nodes'
        problems += shm_problems(members, recipe.jobs, limits)
        problems += memory_problems(members, recipe.jobs, facts, limits)
    return problems


def check(recipe: Any, data: Path, recipe_path: Path | None = None, limits: Limits | None = None,
          root: Path = Path("/")) -> None:
    """Raise ``PreflightError`` with every problem of ``recipe`` on ``data``."""
    problems = recipe_problems(recipe, data, recipe_path, limits, root)
    if problems:
        raise PreflightError(problems)


@contextlib.contextmanager
def checked(recipe: Any, data: Path, recipe_path: Path | None = None,
            echo: Callable[[str], None] = print) -> Iterator[None]:
    """``check`` (unless ``CYTOKIT_PREFLIGHT`` says off/done), then ``CYTOKIT_PREFLIGHT=done`` for the
    ``with`` block, so that the training jobs it starts do not check again."""
    if not enabled():
        yield
        return
    start = time.perf_counter()
    check(recipe, data, recipe_path)
    echo(f"pre-flight: recipe, weights, device, data, disk, /dev/shm and memory checked in "
         f"{time.perf_counter() - start:.1f} s")
    before = os.environ.get(ENV)
    os.environ[ENV] = "done"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = before

