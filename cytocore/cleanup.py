"""``make clean`` and ``make clean-runs``: what each removes, and the one that asks first.

    python -m cytocore.cleanup caches          # make clean: caches and temporary files only
    python -m cytocore.cleanup runs [--confirm] # make clean-runs [CONFIRM=1]: everything generated

``make clean`` never touches what took time to make: trained runs, predictions,
tuned configs, logs and submissions stay. It removes the caches (``work/cache``:
image facts; ``work/config``: the offline library settings, made again by
``cytocore.env``; the report page's classifier cache), temporary files left by
an interrupted atomic write (``*.tmp*``) and the repository's ``__pycache__``,
``.pytest_cache`` and ``.ruff_cache``, in the work folder and in each nested one
(``work/demo``, ``work/bccd``).

``make clean-runs`` lists every generated output (the work folder's entries and
``submissions/``, with their sizes and the number of finished runs) and deletes
them only with ``CONFIRM=1``.
"""
from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from cytocore import paths

WORK_MARKERS = ("runs", "cache", "datasets", "config", "preds", "logs")  # what makes a folder a work folder
CACHE_DIRS = ("cache", "config")  # per work folder: regenerated on demand
REPO_CACHES = ("__pycache__", ".pytest_cache", ".ruff_cache")
SKIP = {".venv", "data", "work", "weights", ".git", "submissions"}  # not searched for __pycache__


def work_folders(work: Path) -> list[Path]:
    """The work folder and the nested ones inside it (``work/demo``, ``work/bccd``)."""
    work = Path(work)
    if not work.is_dir():
        return []
    nested = [d for d in sorted(work.iterdir())
              if d.is_dir() and any((d / m).is_dir() for m in WORK_MARKERS)]
    return [work, *nested]


def _temporary(folder: Path) -> list[Path]:
    """Leftovers of interrupted atomic writes: ``*.tmp*`` files and folders (not inside one another)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in list(dirnames):
            if ".tmp" in name:
                found.append(Path(dirpath) / name)
                dirnames.remove(name)
        found += [Path(dirpath) / n for n in filenames if ".tmp" in n]
    return found


def cache_paths(work: Path | None = None, root: Path | None = None) -> list[Path]:
    """What ``make clean`` removes: caches and temporary files only (never runs, predictions, logs,
    tuned configs or submissions)."""
    work = Path(work) if work else paths.work_dir()
    root = Path(root) if root else paths.ROOT
    found: list[Path] = []
    for w in work_folders(work):
        found += [w / d for d in CACHE_DIRS if (w / d).exists()]
        pages = w / "reports" / "pages"
        found += sorted(p for p in pages.glob("*_cache") if p.is_dir()) if pages.is_dir() else []
    found += _temporary(work) if work.is_dir() else []
    found += [root / d for d in REPO_CACHES[1:] if (root / d).exists()]
    for dirpath, dirnames, _ in os.walk(root):
        if Path(dirpath) == root:
            dirnames[:] = [d for d in dirnames if d not in SKIP and d not in REPO_CACHES[1:]]
        if "__pycache__" in dirnames:
            found.append(Path(dirpath) / "__pycache__")
            dirnames.remove("__pycache__")
    return list(dict.fromkeys(found))


def run_paths(work: Path | None = None, submissions: Path | None = None) -> list[Path]:
    """What ``make clean-runs`` removes: every entry of the work folder and the submissions folder."""
    work = Path(work) if work else paths.work_dir()
    submissions = Path(submissions) if submissions else paths.submissions_dir()
    found = sorted(work.iterdir()) if work.is_dir() else []
    if submissions.exists() and not submissions.resolve().is_relative_to(work.resolve()):
        found.append(submissions)
    return found


def size(path: Path) -> int:
    """Bytes under ``path`` (a file's own size; links not followed)."""
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for n in filenames:
            try:
                total += (Path(dirpath) / n).lstat().st_size
            except OSError:
                pass
    return total


def finished_runs(path: Path) -> int:
    """The finished training runs (``done.json``) under ``path``."""
    return sum(1 for _ in Path(path).rglob(paths.DONE)) if Path(path).is_dir() else 0


def human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"  # pragma: no cover


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def describe(path: Path) -> str:
    runs = finished_runs(path)
    return f"  {path}  {human(size(path))}" + (f", {runs} finished run(s)" if runs else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cytocore.cleanup", description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("caches", "runs"), help="caches: make clean; runs: make clean-runs")
    parser.add_argument("--confirm", action="store_true", help="runs: delete (CONFIRM=1); else only list")
    args = parser.parse_args(argv)
    from cytocore import makevars

    if args.what == "caches":
        found = cache_paths()
        for path in found:
            remove(path)
        print(f"make clean: removed {len(found)} cache / temporary path(s); trained runs, predictions and "
              f"submissions are kept (make clean-runs lists them)")
        return 0
    found = run_paths()
    if not found:
        print("make clean-runs: nothing to delete")
        return 0
    confirm = makevars.spell("--confirm")
    head = "deleting" if args.confirm else "would delete (trained runs, predictions, submissions, logs)"
    print(f"make clean-runs: {head}:")
    for path in found:
        print(describe(path))
    if not args.confirm:
        print(f"nothing deleted; run again with {confirm} to delete these")
        return 0
    for path in found:
        remove(path)
    print(f"deleted {len(found)} path(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
