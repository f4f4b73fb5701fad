"""The settings of the latest ``make all`` / ``make demo`` on a dataset: what later commands use by default.

``make all`` writes its resolved recipe, its ensemble and its tuned ensemble to
``work/logs/<dataset id>/`` (``pipeline.run``: ``recipe.yaml``, ``ensemble.yaml``,
``tuned.yaml``). After it, ``make submission``, ``infer``, ``tune-ensemble``,
``report``, ``score`` and ``cls-report`` on the same data use those files unless
ENSEMBLE= (``--config``) names another, and say which file in their first line::

    ensemble settings: work/logs/raw-1a2b3c4d_k5_s42/tuned.yaml (tuned by the last make all on ...)

Without a run of the dataset the fallbacks are ``work/tuned/ensemble.yaml`` (a
``make tune-ensemble`` of its own) and ``configs/ensemble.yaml``.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from cytocore import paths

RECIPE = "recipe.yaml"  # the resolved recipe of the run (pipeline.run)
ENSEMBLE = "ensemble.yaml"  # the run's ensemble before tuning
TUNED = "tuned.yaml"  # the run's tuned ensemble


@dataclasses.dataclass(frozen=True)
class Choice:
    """A settings file and why it was chosen."""

    path: Path
    why: str
    dataset: str | None = None  # the dataset id whose run it belongs to (None: not a run's)

    def line(self, what: str = "ensemble settings", flag: str = "ENSEMBLE=") -> str:
        """The first line a command prints: the file, why, and how to choose another."""
        return f"{what}: {display(self.path)} ({self.why}; {flag} chooses another)"


def display(path: Path) -> str:
    """``path`` relative to the repo root when under it (shorter lines), else as given."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(paths.ROOT))
    except ValueError:
        return str(path)


def dataset_of(data: Path, k: int | None = None, seed: int | None = None) -> Any | None:
    """The prepared dataset of ``data`` (``cytocore.dataset.resolve``), or None when there is none or it
    is ambiguous (the command itself then says what to run)."""
    from cytocore import dataset
    from cytocore.io import ConfigError

    try:
        return dataset.resolve(Path(data), k, seed)
    except (FileNotFoundError, ConfigError):
        return None


def run_files(dataset_id: str) -> dict[str, Path]:
    """The run's settings files that exist: ``recipe``, ``ensemble``, ``tuned`` -> path."""
    logs = paths.logs_dir(dataset_id)
    named = {"recipe": logs / RECIPE, "ensemble": logs / ENSEMBLE, "tuned": logs / TUNED}
    return {k: p for k, p in named.items() if p.is_file()}


def ensemble(data: Path, k: int | None = None, seed: int | None = None, tuned: bool = True,
             given: Path | None = None) -> Choice:
    """The ensemble config a command uses on ``data``: ``given`` (ENSEMBLE=) when set; else the latest
    run's tuned ensemble (``tuned=False``: its ensemble before tuning, what ``make tune-ensemble``
    starts from, so that members tuned to weight 0 can come back), else its ensemble; else
    ``work/tuned/ensemble.yaml``, else ``configs/ensemble.yaml``."""
    if given:
        return Choice(Path(given), "given")
    ds = dataset_of(data, k, seed)
    if ds is not None:
        files = run_files(ds.id)
        order = ("tuned", "ensemble") if tuned else ("ensemble", "tuned")
        for name in order:
            if name in files:
                what = "tuned" if name == "tuned" else "resolved"
                return Choice(files[name], f"{what} by the last make all on {ds.id}", ds.id)
    own = paths.tuned_config()
    if own.is_file():
        return Choice(own, "written by make tune-ensemble; no make all on this data")
    return Choice(paths.CONFIGS / "ensemble.yaml",
                  "the default; no make all or make tune-ensemble on this data")


def recipe(data: Path, k: int | None = None, seed: int | None = None,
           given: Path | None = None) -> Choice | None:
    """The recipe of the latest run on ``data`` (``given`` when set); None when there was no run."""
    if given:
        return Choice(Path(given), "given")
    ds = dataset_of(data, k, seed)
    files = run_files(ds.id) if ds is not None else {}
    if "recipe" not in files:
        return None
    return Choice(files["recipe"], f"resolved by the last make all on {ds.id}", ds.id)


def member_overrides(recipe_path: Path, model: str, name: str = "") -> list[str] | None:
    """The ``overrides`` of the member ``name`` (default: ``model``; ``cytocore.members``) among a recipe's
    detectors and classifiers (read as plain YAML: the recipe's owner, ``pipeline.recipe``, is a floor
    above); None when the recipe does not list it. A member of that name with another model is refused."""
    from cytocore import members
    from cytocore.config import ConfigError, read_yaml

    name = members.member_name(name, model, "--name")
    values = read_yaml(Path(recipe_path))
    for entry in [*(values.get("detectors") or []), *(values.get("classifiers") or [])]:
        if not isinstance(entry, dict) or "model" not in entry:
            continue
        if members.member_name(entry.get("name"), str(entry["model"]), str(recipe_path)) == name:
            if entry["model"] != model:
                raise ConfigError(f"{recipe_path}: member {name} is model {entry['model']}, not {model}; "
                                  f"use MODEL={entry['model']} or another NAME=")
            return [str(o) for o in entry.get("overrides") or []]
    return None


def ds_keys(overrides: list[str] | tuple[str, ...]) -> tuple[int | None, int | None]:
    """``k`` and ``seed`` among ``key=value`` overrides (the Makefile passes K= / SEED= that way)."""
    from cytocore.config import parse_overrides

    given = parse_overrides([o for o in overrides if o.split("=", 1)[0].strip() in ("k", "seed")])
    k, seed = given.get("k"), given.get("seed")
    return (int(k) if k is not None else None, int(seed) if seed is not None else None)


def main(argv: list[str] | None = None) -> int:
    """``python -m cytocore.lastrun DATA [k=K] [seed=SEED]``: print the ensemble config commands use on DATA
    (its path on stdout, why on stderr), for targets whose command has no default of its own."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print("usage: python -m cytocore.lastrun DATA [k=K] [seed=SEED]", file=sys.stderr)
        return 2
    k, seed = ds_keys(args[1:])
    choice = ensemble(Path(args[0]), k, seed)
    print(choice.line(), file=sys.stderr)
    print(choice.path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
