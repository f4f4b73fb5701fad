"""What both commands of ``make weights`` share: their options, the table of ``--list`` and the fetching
of a list of catalogue entries, one line per file.

- ``python -m train.weights --set default|all|NAME,...``: catalogue sets or files (``make weights SET=``);
- ``python -m pipeline.weights --recipe configs/recipe.yaml``: the files a recipe's members start from
  (``make weights``, ``make weights RECIPE=my.yaml``).
"""
from __future__ import annotations

import argparse
import os
import sys

from cytocore import paths
from train.weights import catalog


def add_options(parser: argparse.ArgumentParser) -> None:
    """``--mirror``, ``--timeout``, ``--list`` and ``--no-progress``."""
    parser.add_argument("--mirror", default=os.environ.get("CYTOKIT_WEIGHTS_MIRROR", ""),
                        help="base URL serving the files by name, instead of their public URLs")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for a server")
    parser.add_argument("--list", action="store_true", help="show the table and what is present; no network")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


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


def serve(entries: list[catalog.Entry], args: argparse.Namespace) -> int:
    """``--list``: the table of ``entries``; else fetch them (nothing to do for none)."""
    if args.list:
        print(listing(entries))
        return 0
    return run(entries, args.mirror, args.timeout, not args.no_progress) if entries else 0
