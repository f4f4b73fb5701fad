"""The ``cytokit`` command (``pip install -e .``): the kit's user-facing steps without make.

    cytokit predict IMAGES... [--run ID] [--out DIR] [--device D] [--conf C]  (python -m infer.predict_images)
    cytokit score --truth TRUTH.csv --submission SUB.csv                       (python -m submit.score)
    cytokit runs                                                               the trained runs, newest last
"""
from __future__ import annotations

import sys

COMMANDS = {
    "predict": "a trained run's ensemble on any images: CSV, JSON, annotated images",
    "score": "the challenge score of a submission against a truth CSV",
    "runs": "list the trained runs (dataset id, config), newest last",
}


def usage() -> str:
    lines = ["usage: cytokit COMMAND [options]   (cytokit COMMAND --help)", "", "commands:"]
    lines += [f"  {name:<8} {text}" for name, text in COMMANDS.items()]
    return "\n".join(lines)


def _runs(argv: list[str]) -> int:
    from infer.predict_images import find_runs

    runs = find_runs()
    for r in runs:
        print(f"{r.id}  {r.config}")
    if not runs:
        print("no trained run yet (make all or make demo)")
    return 0


def main(argv: list[str] | None = None) -> int:
    from cytocore import io

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "predict":
        from infer.predict_images import main as run
    elif command == "score":
        from submit.score import main as run
    elif command == "runs":
        run = _runs
    else:
        print(f"cytokit: unknown command {command!r}\n{usage()}", file=sys.stderr)
        return 2
    return io.cli(run, rest)


if __name__ == "__main__":
    raise SystemExit(main())
