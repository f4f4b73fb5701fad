"""``make weights SET=...``: download catalogue sets or files into weights/.

    python -m train.weights --set default|all|NAME,... [--mirror URL] [--timeout S] [--list]

``--set`` names catalogue sets or files; ``--list`` alone shows every known file. The files a recipe's
members start from (``make weights``, ``make weights RECIPE=my.yaml``) are ``pipeline.weights``'s: the
recipe is a pipeline concept.

The only command of the kit that touches the network (with ``pipeline.weights``, through the same
``train.weights.cli``). Files already present are checked and kept; an interrupted download continues
where it stopped. Without a network it exits with status 1 and prints, for every missing file, its URL
and the path to copy a file fetched elsewhere to (for air-gapped clusters). ``--mirror URL`` reads every
file as ``URL/<file name>`` instead (a local copy of weights/ served over HTTP). ``--list`` shows the
table and what is present, offline.
"""
from __future__ import annotations

import argparse

from cytocore import env, io
from train.weights import catalog, cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.weights", description=__doc__.split("\n")[0])
    parser.add_argument("--set", default="",
                        help=f"{', '.join(catalog.SETS)} or file names, comma-separated (the files of a "
                        "recipe: python -m pipeline.weights --recipe ...)")
    cli.add_options(parser)
    args = parser.parse_args(argv)
    if not args.set and not args.list:
        parser.error("--set is required (or --list for every known file; the files a recipe starts from: "
                     "python -m pipeline.weights --recipe configs/recipe.yaml)")
    env.apply()
    io.setup_logging()
    return cli.serve(catalog.select(args.set or "all"), args)


if __name__ == "__main__":
    raise SystemExit(io.cli(main))
