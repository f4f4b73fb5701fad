"""``make weights``: download the pretrained files a recipe's members start from into weights/.

    python -m pipeline.weights [--recipe configs/recipe.yaml] [--mirror URL] [--timeout S] [--list]

Exactly the files the recipe's detectors and classifiers start from (``train.weights.needs``: each
member's resolved ``pretrained``); ``make weights RECIPE=my.yaml`` for another recipe. A member that
starts from a local file (``pretrained: <path>``) gets a line saying whether it is there. Catalogue
sets or files by name: ``make weights SET=...`` (``python -m train.weights --set``). Fetching, the
table of ``--list`` and the offline lines are ``train.weights.cli``'s.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from cytocore import env, io, paths
from train.weights import catalog, cli, needs


def recipe_needs(path: Path, overrides: list[str] | dict = ()) -> list[needs.Need]:
    """``needs`` of the detectors and classifiers of the recipe YAML at ``path``."""
    from pipeline import recipe as recipe_module

    recipe = recipe_module.load(Path(path), overrides)
    return needs.needs(recipe.detector_list() + recipe.classifier_list())


def recipe_entries(recipe: Path) -> list[catalog.Entry]:
    """The catalogue files ``recipe``'s members start from; a line for each member that starts from
    a local file (``pretrained: <path>``) or from nothing."""
    found = recipe_needs(recipe)
    for need in found:
        if need.entry is None:
            state = "present" if need.file.is_file() else "MISSING (a local file: copy it there)"
            print(f"{recipe}: {need.member} starts from {need.file}: {state}")
    chosen = needs.entries(found)
    print(f"{recipe}: its members start from {', '.join(e.name for e in chosen)}" if chosen else
          f"{recipe}: nothing to fetch (every member trains from scratch or starts from a local file)")
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.weights", description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", type=Path, default=paths.CONFIGS / "recipe.yaml",
                        help="fetch the files this recipe's members start from")
    cli.add_options(parser)
    args = parser.parse_args(argv)
    env.apply()
    io.setup_logging()
    return cli.serve(recipe_entries(args.recipe), args)


if __name__ == "__main__":
    raise SystemExit(io.cli(main))
