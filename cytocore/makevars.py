"""Make variables: none is dropped without a word, and messages name them instead of Python flags.

The Makefile exports ``CYTOKIT_MAKEVARS``, the names of the variables given on the
``make`` command line, and runs ``python -m cytocore.makevars <goals>`` before each
command. A variable the goals do not use, or one in lower case (the ultralytics
habit, ``make train imgsz=640``), is refused with its right spelling::

    make train: imgsz=640 is not a make variable; use IMGSZ=640
    make train: lr0=0.01 is not a make variable; use ARGS="lr0=0.01"
    make submission: EPOCHS= is not used by make submission (only by make all, make train)

Variables the kit does not know (``CYTOKIT_WORK``, another tool's) pass through.
``spell("--force")`` is ``FORCE=1`` under make and ``--force`` otherwise, for messages.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping

ENV = "CYTOKIT_MAKEVARS"  # exported by the Makefile: the names of the command-line variables

# The Makefile's settings and the targets that use each (the kit's commands; `make help`).
DS = ("DATA", "K", "SEED")
RUNTIME = ("DEVICE", "ARGS")
CLUSTER = ("PARTITION", "TIME", "MEM", "GPUS", "CPUS", "ACCOUNT")  # LAUNCHER=slurm: each job's resources
TARGET_VARS: dict[str, tuple[str, ...]] = {
    "export": (*DS, "ENSEMBLE", *RUNTIME),
    "demo-data": ("DEMO", "IMAGES", "SEED"),
    "weights": ("SET", "MIRROR", "RECIPE"),
    "folds": (*DS, "BALANCE", "REPAIR", "FORCE", "RESIZE", "ARGS"),
    "masks": (*DS, "MEDSAM_CKPT", "FORCE", *RUNTIME),
    "all": (*DS, "RECIPE", "JOBS", "EPOCHS", "IMGSZ", "BATCH", "WEIGHTS", "LAUNCHER", "TRACKER", *CLUSTER,
            *RUNTIME),
    "gpu-check": ("RECIPE", "DEVICE"),
    "train": (*DS, "MODEL", "NAME", "FOLD", "JOBS", "EPOCHS", "IMGSZ", "BATCH", "WEIGHTS", "RESUME", "FORCE",
              "RECIPE", "TRACKER", *RUNTIME),
    "infer": (*DS, "ENSEMBLE", "FORCE", *RUNTIME),
    "submission": (*DS, "ENSEMBLE", "FORCE", *RUNTIME),
    "tune-ensemble": (*DS, "ENSEMBLE", *RUNTIME),
    "cls-report": (*DS, "ENSEMBLE", "DETECTOR", *RUNTIME),
    "report": (*DS, "ENSEMBLE", *RUNTIME),
    "score": (*DS, "SUB", "TRUTH", *RUNTIME),
    "validate": ("DATA", "SUB"),
    "predict": ("IMAGES", "RUN", "OUT", "CONF", "DEVICE"),
    "bccd": ("JOBS", "TRACKER", "ARGS"),
    "demo": ("DEMO", "JOBS", "TRACKER", "ARGS"),
    "rehearsal": ("IMAGES", "JOBS", "TRACKER", "ARGS"),
    "levers": ("STUDY", "ARGS"),
    "clean": (),
    "clean-runs": ("CONFIRM",),
    "lint": (),
    "test": ("PYTEST_ARGS",),
    "test-unit": ("PYTEST_ARGS",),
    "test-all": ("PYTEST_ARGS",),
}
ALWAYS = ("PYTHON_BASE", "VERBOSE")  # read by every target (the set-up)
KNOWN = sorted({v for used in TARGET_VARS.values() for v in used} | set(ALWAYS))

# Python flags and the make variable that sets each (for messages printed under make).
FLAGS = {"--force": "FORCE=1", "--resume": "RESUME=1", "--truth": "TRUTH=", "--submission": "SUB=",
         "--config": "ENSEMBLE=", "--recipe": "RECIPE=", "--data": "DATA=", "--k": "K=", "--seed": "SEED=",
         "--model": "MODEL=", "--name": "NAME=", "--fold": "FOLD=", "--jobs": "JOBS=",
         "--detector": "DETECTOR=", "--confirm": "CONFIRM=1"}


def under_make() -> bool:
    """True when this process was started by the kit's Makefile (it exports ``CYTOKIT_MAKEVARS``)."""
    return ENV in os.environ


def spell(flag: str) -> str:
    """How the user sets ``flag``: its make variable under make (``FORCE=1``), else the flag itself."""
    return FLAGS.get(flag, flag) if under_make() else flag


def setting(flag: str, value: str) -> str:
    """``flag`` set to ``value`` as the user types it: ``TRUTH=truth.csv`` under make, else
    ``--truth truth.csv``."""
    spelled = spell(flag)
    return f"{spelled}{value}" if spelled.endswith("=") else f"{spelled} {value}"


def setting_keys() -> set[str]:
    """Every key a ``key=value`` override can set: the keys of configs/*.yaml (model families with their
    per-model sections, folds, masks, ensemble, recipes)."""
    from cytocore import paths

    try:
        import yaml
    except ImportError:  # make clean runs without .venv
        return set()

    keys: set[str] = set()
    for path in paths.CONFIGS.glob("*.yaml"):
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(data, dict):
            keys |= {str(k) for k in data}
            for section in (data.get("models") or {}).values():
                keys |= {str(k) for k in (section or {})} if isinstance(section, dict) else set()
    return keys - {"models"}


def _targets_using(name: str) -> list[str]:
    return [t for t, used in TARGET_VARS.items() if name in used]


def check(names: Iterable[str], values: Mapping[str, str], goals: list[str],
          keys: set[str] | None = None) -> list[str]:
    """One line per command-line variable that ``goals`` would drop: lower-case spellings of a make
    variable or of a setting, and kit variables none of the goals uses. ``values``: the variables'
    values (the environment); ``keys``: the settings' keys (``setting_keys()`` when None)."""
    goals = goals or ["help"]
    where = f"make {' '.join(goals)}"
    known_goals = all(g in TARGET_VARS for g in goals)
    used = {v for g in goals for v in TARGET_VARS.get(g, ())} | set(ALWAYS)
    problems = []
    for name in names:
        value = values.get(name, "")
        if any(c.islower() for c in name):
            upper = name.upper()
            if upper in KNOWN:
                problems.append(f"{where}: {name}={value} is not a make variable; use {upper}={value}")
                continue
            if keys is None:
                keys = setting_keys()
            if name in keys:
                problems.append(f'{where}: {name}={value} is not a make variable; use ARGS="{name}={value}"')
            else:
                problems.append(f"{where}: {name}={value} is neither a make variable nor a setting "
                                "(make variables are upper case: see make help)")
            continue
        if name in KNOWN and known_goals and name not in used:
            users = _targets_using(name)
            problems.append(f"{where}: {name}= is not used by {where}"
                            + (f" (only by {', '.join('make ' + t for t in users)})" if users else ""))
    return problems


def scoring_overrides(overrides: list[str] | tuple[str, ...], prog: str) -> None:
    """The ``key=value`` settings of a scoring command (make score): ``device`` is accepted with a note
    (scoring runs on the CPU), any other key is an error naming what the command takes."""
    from cytocore.config import ConfigError, parse_overrides

    given = parse_overrides(list(overrides))
    if "device" in given:
        print(f"{prog}: device={given.pop('device')} not needed: scoring runs on the CPU")
    if given:
        raise ConfigError(f"{prog}: unknown setting(s) {', '.join(sorted(given))}; it takes none besides "
                          "device (the scores come from the predictions and settings already made)")


def main(argv: list[str] | None = None) -> int:
    goals = list(sys.argv[1:] if argv is None else argv)
    names = os.environ.get(ENV, "").split()
    if not names:
        return 0
    problems = check(names, os.environ, goals)
    for line in problems:
        print(line, file=sys.stderr)
    return 2 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
