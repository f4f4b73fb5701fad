"""``make rehearsal``: ``make all`` at the real scale on placeholder images (``prepare.rehearsal``),
every step timed and its peak memory measured, extrapolated to the full scale from subsets.

    python -m pipeline.rehearsal [--images N] [--config configs/rehearsal.yaml] [--build-only] [--table]
                                 [key=value ...]

Each run's table is kept in ``work/rehearsal/rehearsal-<N>.json``; with a subset, each step's wall
time and peak memory are extrapolated to the full scale (a line through the two most distant
measured scales, or proportional to the image count from one), with the targets of issue #18
checked: every step but training <= 10 min, every process <= 8 GiB, the report page <= 5 MB.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from cytocore import io, paths
from prepare import rehearsal

TARGETS = {"wall_s": 600.0, "rss_gib": 8.0, "page_mb": 5.0}  # issue #18's targets at full scale, on 2 cores


@dataclass
class Scale:
    """One measured rehearsal: its image and box counts and each step's wall time and peak memory."""

    images: int
    boxes: int
    wall: dict[str, float]
    rss_gib: dict[str, float]   # the step's largest process (main or child), GiB
    page_mb: float | None = None
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds (this process + finished children)


def scale_of(report: dict, facts: dict) -> Scale:
    """A :class:`Scale` from ``pipeline.run``'s report and the data folder's ``rehearsal.json``."""
    rss = {name: max(r.get("main_mb", 0), r.get("child_mb", 0)) / 1024
           for name, r in report.get("steps_rss", {}).items()}
    page = report.get("report_page")
    page_mb = Path(page).stat().st_size / 1e6 if page and Path(page).is_file() else None
    return Scale(facts["images"], facts["boxes"], dict(report["steps"]), rss, page_mb,
                 dict(report.get("steps_cpu", {})))


def extrapolate(points: list[Scale], full_images: int) -> dict[str, dict[str, float | None]]:
    """Each step's wall time, peak memory (and the report page's size) at ``full_images``: the line
    ``a + b x images`` through the two largest measured scales, floored at the larger measured value.
    From a single scale, wall time proportional to the image count (an upper bound: it scales fixed costs
    too) and no memory or page size (their fixed part is unknown: None). Returns
    ``{step: {"wall_s", "rss_gib"}}`` (plus ``page_mb`` under ``"report page"``)."""
    by_size = {p.images: p for p in points}
    hi = by_size[max(by_size)]
    lo = by_size[sorted(by_size)[-2]] if len(by_size) > 1 else None

    def line(a: float | None, b: float | None, proportional: bool) -> float | None:
        if b is None:
            return None
        if lo is None or a is None:
            return b * full_images / hi.images if proportional else None
        slope = (b - a) / (hi.images - lo.images)
        return max(b, b + slope * (full_images - hi.images))

    out: dict[str, dict[str, float | None]] = {}
    for step in hi.wall:
        out[step] = {"wall_s": line(lo and lo.wall.get(step), hi.wall[step], True),
                     "rss_gib": line(lo and lo.rss_gib.get(step), hi.rss_gib.get(step), False),
                     "cpu_s": line(lo and lo.cpu.get(step), hi.cpu.get(step), True)}
    if hi.page_mb is not None:
        out.setdefault("report page", {})["page_mb"] = line(lo and lo.page_mb, hi.page_mb, False)
    return out


def table(hi: Scale, points: list[Scale], full_images: int) -> list[str]:
    """The lines of the closing table: each step of ``hi`` with its wall time and peak RSS and (below full
    scale) the extrapolation from ``points`` (``hi`` among them), the targets checked (``MISS``)."""
    points = [p for p in points if p.images != hi.images and p.images < hi.images] + [hi]
    full = extrapolate(points, full_images) if hi.images < full_images else None
    sizes = sorted({p.images for p in points})[-2:]
    basis = (f"a + b x images through {sizes[0]:,} and {sizes[1]:,}" if len(sizes) > 1
             else f"wall x {full_images / hi.images:.1f} (images); memory needs a 2nd IMAGES=")

    def fmt(v: float | None, unit: str, scale: float = 1.0, width: int = 7) -> str:
        return f"{v / scale:{width}.{1 if unit != 'GiB' else 2}f} {unit}" if v is not None \
            else f"{'-':>{width}} {unit}"

    head = f"  {'step':<48} {'wall':>8} {'CPU':>8} {'peak RSS':>9}"
    if full:
        head += f"   {'full: wall':>11} {'CPU':>11} {'peak RSS':>9}  ({basis})"
    lines = [head]
    for step, wall in hi.wall.items():
        rss = hi.rss_gib.get(step)
        line = f"  {step:<48} {wall:6.1f} s {fmt(hi.cpu.get(step), 's', width=6)} {fmt(rss, 'GiB', width=5)}"
        est = full[step] if full else {"wall_s": wall, "rss_gib": rss}
        if full:
            line += (f"   {fmt(est['wall_s'], 'min', 60)} {fmt(est.get('cpu_s'), 'min', 60)}"
                     f" {fmt(est['rss_gib'], 'GiB', width=5)}")
        miss = [what for what, bad in (
            ("time", step != "train" and (est["wall_s"] or 0) > TARGETS["wall_s"]),
            ("memory", (est["rss_gib"] or 0) > TARGETS["rss_gib"])) if bad]
        lines.append(line + (f"  MISS ({', '.join(miss)})" if miss else ""))
    if hi.page_mb is not None:
        page = full.get("report page", {}).get("page_mb") if full else hi.page_mb
        lines.append(f"  report page: {hi.page_mb:.2f} MB"
                     + (f", full: {fmt(page, 'MB', width=1)}" if full else "")
                     + ("  MISS (size)" if (page or 0) > TARGETS["page_mb"] else ""))
    lines.append(f"  targets at full scale: every step but train <= {TARGETS['wall_s'] / 60:.0f} min, "
                 f"every process <= {TARGETS['rss_gib']:.0f} GiB, report page <= {TARGETS['page_mb']:.0f} MB"
                 + ("; a subset keeps the real train/test and box/image proportions" if full else ""))
    lines.append("  (wall on a shared machine includes waiting for others: CPU / 2 is the wall of an idle"
                 " 2-core one for steps that use both cores)")
    return lines


def results_path(images: int) -> Path:
    return paths.nested_work_dir("rehearsal") / f"rehearsal-{images}.json"


def measured(work: Path) -> list[Scale]:
    """Every rehearsal measured in the work folder ``work`` (one per image count)."""
    return [Scale(**json.loads(p.read_text())) for p in sorted(work.glob("rehearsal-*.json"))]


def full_count(source: Path | None = None) -> int:
    files = paths.data_files(Path(source or paths.cytologia_dir()))
    train, test = pd.read_csv(files["train"], usecols=["NAME"]), pd.read_csv(files["test"], usecols=["NAME"])
    return train["NAME"].nunique() + test["NAME"].nunique()


def main(argv: list[str] | None = None) -> int:
    from cytocore import env

    parser = argparse.ArgumentParser(prog="python -m pipeline.rehearsal", description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, help="a subset of this many images (default: every name)")
    parser.add_argument("--config", type=Path, default=paths.CONFIGS / "rehearsal.yaml", help="the recipe")
    parser.add_argument("--source", type=Path, default=None,
                        help="folder of the real train.csv / test.csv (default ../shared/cytologia)")
    parser.add_argument("--workers", type=int, default=0, help="processes drawing images (0: one per core)")
    parser.add_argument("--jobs", type=int, help="training jobs at once (the recipe's jobs)")
    parser.add_argument("--build-only", action="store_true", help="build the data folder, run nothing")
    parser.add_argument("--table", action="store_true",
                        help="print the table of the rehearsals measured so far (the largest), run nothing")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides")
    args = parser.parse_args(argv)
    env.apply()
    io.setup_logging()
    work = paths.nested_work_dir("rehearsal")
    if args.table:
        points = measured(work)
        if not points:
            raise SystemExit(f"no rehearsal measured in {work} yet: run make rehearsal IMAGES=N")
        hi = max(points, key=lambda p: p.images)
        print(f"== rehearsal: {hi.images:,} of {full_count(args.source):,} images, {hi.boxes:,} boxes ==")
        print("\n".join(table(hi, points, full_count(args.source))))
        return 0
    start = time.perf_counter()
    data = rehearsal.build(args.images, args.source, args.workers)
    print(f"built in {time.perf_counter() - start:.0f} s")
    if args.build_only:
        return 0
    from train.parallel import passive_wait

    passive_wait()  # before torch is loaded: inference runs in this process
    from pipeline import recipe, run

    facts = json.loads((data / "rehearsal.json").read_text())
    overrides = [*args.overrides, *([f"jobs={args.jobs}"] if args.jobs is not None else [])]
    cfg = recipe.load(args.config, overrides)
    with paths.using_work_dir(work):
        env.apply()
        report = run.run(cfg, data, paths.submissions_dir())
    point = scale_of(report, facts)
    io.atomic_write_text(work / f"rehearsal-{point.images}.json", json.dumps(vars(point), indent=1) + "\n")
    full = full_count(args.source)
    points = [p for p in measured(work) if p.images <= full]
    print(f"\n== rehearsal: {point.images:,} of {full:,} images, {point.boxes:,} boxes ==")
    for line in table(point, points, full):
        print(line)
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(io.cli(main))
