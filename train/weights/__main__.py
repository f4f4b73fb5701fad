"""``make weights``: download the pretrained files the recipe starts from into weights/.

    python -m train.weights [--recipe configs/recipe.yaml | --set default|all|NAME,...] [--mirror URL]
                            [--timeout S] [--list]

Without ``--set`` it fetches exactly the files the recipe's members start from (``train.weights.needs``:
each member's resolved ``pretrained``; ``make weights RECIPE=my.yaml`` for another recipe); ``--set``
names catalogue sets or files instead.

The only command of the kit that touches the network. Files already present are checked and kept;
an interrupted download continues where it stopped. Without a network it exits with status 1 and
prints, for every missing file, its URL and the path to copy a file fetched elsewhere to (for
air-gapped clusters). ``--mirror URL`` reads every file as ``URL/<file name>`` instead (a local
copy of weights/ served over HTTP). ``--list`` shows the table and what is present, offline.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cytokit import env, io, paths
from train.weights import catalog


def listing(entries: list[catalog.Entry]) -> str:
    """One line per entry: present or missing, its name, approximate size, what it is for, its URL."""
    lines = [f"weights folder: {paths.weights_dir()}"]
    for e in entries:
        state = "present" if e.path.exists() else "missing"
        sets = "default" if "default" in e.sets else "all"
        lines.append(f"  {state:<8} {e.name:<34} {e.mb:7.1f} MB  [{sets}]  {e.about}\n"
                     f"           {e.url}\n           checked against: {e.checks}")
    return "\n".join(lines)


def run(entries: list[catalog.Entry], mirror: str = "", timeout: float = 30.0, progress: bool = True) -> int:
    """Fetch ``entries``; print one line per file; 0 when all are present afterwards, else 1."""
    from train.weights import fetch
    from train.weights.errors import WeightsError

    failed, offline = 0, ""
    for e in entries:
        url = f"{mirror.rstrip('/')}/{e.file}" if mirror else e.url
        if offline and not e.path.exists():
            print(f"{e.file}: not downloaded (no connection): fetch {url} elsewhere and copy it to {e.path}",
                  file=sys.stderr)
            failed += 1
            continue
        try:
            print(fetch.fetch(e, url, timeout, progress), flush=True)
        except fetch.Offline as exc:
            offline = str(exc)
            print(f"{e.file}: not downloaded (no connection: {offline}): fetch {url} elsewhere and copy it "
                  f"to {e.path}", file=sys.stderr)
            failed += 1
        except WeightsError as exc:
            print(str(exc), file=sys.stderr)
            failed += 1
    if failed:
        hint = " (no network: copy the files named above, then run make weights again to check them)" \
            if offline else ""
        print(f"{failed} of {len(entries)} file(s) missing or refused{hint}", file=sys.stderr)
        return 1
    print(f"{len(entries)} file(s) ready in {paths.weights_dir()}")
    return 0


def recipe_entries(recipe: Path) -> list[catalog.Entry]:
    """The catalogue files ``recipe``'s members start from; a line for each member that starts from
    a local file (``pretrained: <path>``) or from nothing."""
    from train.weights import needs

    found = needs.recipe_needs(recipe)
    for need in found:
        if need.entry is None:
            state = "present" if need.file.is_file() else "MISSING (a local file: copy it there)"
            print(f"{recipe}: {need.member} starts from {need.file}: {state}")
    chosen = needs.entries(found)
    print(f"{recipe}: its members start from {', '.join(e.name for e in chosen)}" if chosen else
          f"{recipe}: nothing to fetch (every member trains from scratch or starts from a local file)")
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.weights", description=__doc__.split("\n")[0])
    parser.add_argument("--set", default="",
                        help=f"{', '.join(catalog.SETS)} or file names, comma-separated (default: the "
                        "files of --recipe)")
    parser.add_argument("--recipe", type=Path, default=paths.CONFIGS / "recipe.yaml",
                        help="without --set: fetch the files this recipe's members start from")
    parser.add_argument("--mirror", default=os.environ.get("CYTOKIT_WEIGHTS_MIRROR", ""),
                        help="base URL serving the files by name, instead of their public URLs")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for a server")
    parser.add_argument("--list", action="store_true", help="show the table and what is present; no network")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    env.apply()
    io.setup_logging()
    entries = catalog.select(args.set) if args.set else recipe_entries(args.recipe)
    if args.list:
        print(listing(entries))
        return 0
    return run(entries, args.mirror, args.timeout, not args.no_progress) if entries else 0


if __name__ == "__main__":
    raise SystemExit(io.cli(main))
