"""``make bench``: every speed benchmark of the kit, in one run.

Each module ``bench/bench_<topic>.py`` has ``run(shared: Path | None) -> list[str]``
returning the lines to print (timings and ratios measured side by side in that
same call). ``shared`` is the ``../shared`` folder with the real annotation
files, or None when it is absent (then benchmarks that need it say so).

    python -m bench                 # all
    python -m bench score folds     # only bench_score.py and bench_folds.py
"""
from __future__ import annotations

import importlib
import pkgutil
import sys
import time

from cytocore import env, paths


def main(argv: list[str] | None = None) -> int:
    env.apply()
    wanted = list(sys.argv[1:] if argv is None else argv)
    shared = paths.shared_dir()
    shared = shared if shared.exists() else None
    import bench

    topics = sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules(bench.__path__)
                    if m.name.startswith("bench_"))
    unknown = [w for w in wanted if w not in topics]
    if unknown:
        print(f"unknown benchmark(s) {', '.join(unknown)}; valid: {', '.join(topics)}", file=sys.stderr)
        return 2
    for topic in wanted or topics:
        module = importlib.import_module(f"bench.bench_{topic}")
        print(f"== {topic} ==", flush=True)
        start = time.perf_counter()
        for line in module.run(shared):
            print(f"  {line}", flush=True)
        print(f"  ({topic}: {time.perf_counter() - start:.1f} s in all)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
