"""``make predict``: a trained run's tuned ensemble on any images -- no test.csv, no prepared dataset.

    python -m infer.predict_images --images FOLDER|GLOB [--run DATASET_ID] [--out DIR]
                                   [--device cpu|cuda] [--conf C] [--no-draw]

The run (``--run``, default the newest ``make all`` / ``make demo`` run: a
``work/logs/<dataset id>/`` or ``work/<nested>/logs/<dataset id>/`` folder with a
``tuned.yaml`` or ``ensemble.yaml``) gives the ensemble: every trained member x
fold with the config's TTA views (``infer.predict``), the fusion
(``infer.fuse``), the classifier blend (``infer.blend``; every box classified, the crop
members at their tuned shares),
on the config's device and backend (exported ONNX / OpenVINO members when
``make export`` made them). Each image is decoded once per chunk and predicted
by all members in batches.

A box's ``confidence`` is its fused score calibrated out of fold and boxes
below the threshold chosen out of fold are dropped (``infer.calibrate``; the
fit is kept in the run's ``calibration.json``); ``--conf`` sets another
threshold. Written to ``--out`` (default ``work/predict/<stamp>/``):

- ``predictions.csv`` / ``predictions.json`` -- one row per box: image, x1, y1,
  x2, y2 (original pixels), class, confidence, score (fused, uncalibrated),
  width, height, path and the 23 class probabilities ``p_<class>``
- ``annotated/<image>.jpg`` -- each image with its boxes, class and confidence

It prints the boxes per class and the images per second. The Python API over
the same objects is ``cytokit.api`` (``load_ensemble``, ``Ensemble.predict``).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from io import StringIO
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cytocore import classes, io, lastrun, paths
from cytocore.tables import COORDS

log = logging.getLogger(__name__)
CONFIGS = (lastrun.TUNED, lastrun.ENSEMBLE)  # a run's ensemble configs (pipeline.run), preferred first
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
CHUNK = 32  # images decoded and predicted together (all members, all views)
OUTPUT_COLUMNS = ("image", *COORDS, "class", "confidence", "score", "width", "height", "path",
                  *classes.PROB_COLUMNS)


@dataclasses.dataclass(frozen=True)
class Run:
    """A trained run: its dataset id, its logs folder, the work folder holding it, its ensemble config."""

    id: str
    logs: Path  # <work>/logs/<id>/
    work: Path  # the work folder (CYTOKIT_WORK) its runs, predictions and dataset live in
    config: Path  # tuned.yaml, else ensemble.yaml

    @property
    def calibration_file(self) -> Path:
        from infer.calibrate import FILE

        return self.logs / FILE


def _run_at(logs: Path) -> Run | None:
    config = next((logs / c for c in CONFIGS if (logs / c).exists()), None)
    if config is None:
        return None
    return Run(logs.name, logs, logs.parent.parent, config)


def find_runs(work: Path | None = None) -> list[Run]:
    """Every run with an ensemble config under the work folder and its nested ones (demo, bccd), oldest
    first (by its config's modification time)."""
    work = Path(work) if work else paths.work_dir()
    roots = [work, *sorted(d for d in work.glob("*") if (d / "logs").is_dir())] if work.is_dir() else []
    runs = [r for root in roots for d in sorted((root / "logs").glob("*")) if d.is_dir()
            for r in [_run_at(d)] if r is not None]
    return sorted(runs, key=lambda r: r.config.stat().st_mtime)


def find_run(run: str | Path | None = None, work: Path | None = None) -> Run:
    """The run called ``run`` (a dataset id or its logs folder), or the newest one."""
    if run is not None and Path(run).is_dir():
        found = _run_at(Path(run).resolve())
        if found is None:
            raise FileNotFoundError(f"{run}: no {' or '.join(CONFIGS)} in this run folder")
        return found
    runs = find_runs(work)
    if not runs:
        raise FileNotFoundError(f"no trained run under {Path(work) if work else paths.work_dir()} "
                                "(work/logs/<dataset id>/tuned.yaml); run make all or make demo first")
    if run is None:
        return runs[-1]
    match = [r for r in runs if r.id == str(run)]
    if not match:
        raise FileNotFoundError(f"RUN={run}: no such run; trained runs: {', '.join(r.id for r in runs)}")
    return match[-1]


@contextlib.contextmanager
def in_work(run: Run) -> Iterator[None]:
    """Point ``CYTOKIT_WORK`` at the run's work folder while its runs and predictions are read."""

    with paths.using_work_dir(run.work):
        yield


def list_images(spec: str | Path | Sequence[str | Path]) -> list[Path]:
    """Image files of a folder (recursively), a glob pattern, one file, or a list of those; sorted,
    each once. Raises ``FileNotFoundError`` when nothing matches."""
    if isinstance(spec, (str, Path)):
        specs = [spec]
    else:
        specs = list(spec)
    found: list[Path] = []
    for s in specs:
        p = Path(s)
        if p.is_dir():
            found += [f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()]
        elif p.is_file():
            found.append(p)
        else:
            found += [Path(f) for f in glob.glob(str(s), recursive=True)
                      if Path(f).suffix.lower() in IMAGE_SUFFIXES and Path(f).is_file()]
    out = sorted({f.resolve() for f in found})
    if not out:
        raise FileNotFoundError(f"no image ({', '.join(IMAGE_SUFFIXES)}) in {spec}")
    return out


def image_names(files: Sequence[Path]) -> tuple[Path, list[str]]:
    """The deepest folder holding every file and each file's path relative to it (its ``image`` name)."""
    root = Path(os.path.commonpath([str(f.parent) for f in files]))
    return root, [f.relative_to(root).as_posix() for f in files]


def _device(device: str) -> str:
    if str(device).startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            log.warning("device %s: no CUDA GPU here; predicting on the CPU", device)
            return "cpu"
    return str(device)


class Ensemble:
    """A run's tuned ensemble, loaded once, applied to any images (``predict``), drawn (``draw``)."""

    def __init__(self, run: Run, device: str | None = None, conf: float | None = None,
                 backend: str | None = None, batch: int | None = None):
        from cytocore import dataset
        from infer import tta
        from infer.config import load_config

        self.run = run
        overrides = {k: v for k, v in (("backend", backend), ("batch", batch)) if v is not None}
        with in_work(run):
            cfg = load_config(run.config, overrides)
            meta = dataset.load_meta(paths.dataset_root(run.id))
            self.ds = dataset.Dataset(run.id, paths.dataset_root(run.id), int(meta["k"]), int(meta["seed"]))
        self.cfg = dataclasses.replace(cfg, k=self.ds.k, seed=self.ds.seed,
                                       device=_device(device or cfg.device))
        self.views = tta.get_views(self.cfg.tta)
        self.fusion = self._fusion()
        self.calibration = self._calibration()
        self.threshold = float(self.calibration.threshold if conf is None else conf)
        self._members: list[tuple[str, int, Any]] | None = None
        self._classifiers: list[tuple[str, Any]] | None = None

    # -- loading ------------------------------------------------------------------------------------
    def _fusion(self) -> str:
        if self.cfg.fusion != "auto":
            return self.cfg.fusion
        from infer import ensemble

        out = StringIO()
        with in_work(self.run), contextlib.redirect_stdout(out):
            mode = ensemble.resolve_fusion(self.cfg, self.ds.data)
        log.info(out.getvalue().strip())
        return mode

    def _calibration(self):
        """The run's calibration.json when it is current, else fitted out of fold now and written."""
        from infer import calibrate

        cfg = dataclasses.replace(self.cfg, fusion=self.fusion)
        try:
            with in_work(self.run):
                return calibrate.ensure(cfg, self.ds, self.run.config, self.run.calibration_file)
        except (FileNotFoundError, ValueError) as exc:
            log.warning("no out-of-fold calibration for run %s (%s): the confidence is the fused score "
                        "and the threshold 0.5", self.run.id, exc)
            return calibrate.identity()

    def members(self) -> list[tuple[str, int, Any]]:
        """``(name, fold, predictor)`` of every trained member fold (loaded on first use)."""
        if self._members is None:
            from infer import predict

            loaded = []
            with in_work(self.run):
                for m in self.cfg.member_list():
                    for fold in m.folds:
                        weights = m.weights_path(self.ds, fold)
                        if not weights.exists():
                            log.warning("%s fold %d: no weights at %s; left out", m.name, fold, weights)
                            continue
                        loaded.append((m.name, fold, predict.load_member(
                            m.model, fold, weights, self.cfg.device, m.overrides, self.cfg.backend, m.name)))
            if not loaded:
                raise FileNotFoundError(f"run {self.run.id}: no trained member weights; run make all first")
            self._members = loaded
        return self._members

    def classifiers(self) -> list[tuple[str, Any]]:
        """``(member name, predictor)`` of the config's crop classifier folds (none when it is off or
        untrained)."""
        if self._classifiers is None:
            from infer import blend
            from infer.config import classifier_weights

            section = self.cfg.classifier_section()
            found: list = []
            if section is not None and section.weight > 0:
                with in_work(self.run):
                    found, _ = classifier_weights(section, self.ds)
            pairs = list(dict.fromkeys((name, path) for name, _, path in found))
            loaded = blend.load_members([(w, None) for _, w in pairs], self.cfg.device, self.cfg.backend) \
                if pairs else []
            self._classifiers = [(name, p) for (name, _), p in zip(pairs, loaded) if p.cfg.mode == "crop"]
        return self._classifiers

    # -- prediction ---------------------------------------------------------------------------------
    def predict(self, images: str | Path | Sequence[str | Path], conf: float | None = None,
                chunk: int = CHUNK) -> pd.DataFrame:
        """Boxes of ``images`` (a folder, a glob, files) as a DataFrame of ``OUTPUT_COLUMNS``, boxes with a
        confidence below ``conf`` (default: the run's out-of-fold threshold) dropped. The seconds spent
        and the images are in ``.attrs``."""
        from cytocore.images import load_rgb
        from infer import blend, fuse, predict

        files = list_images(images)
        root, names = image_names(files)
        threshold = self.threshold if conf is None else float(conf)
        members, crop = self.members(), self.classifiers()
        params = self.cfg.fuse_params(self.fusion)
        section = self.cfg.classifier_section()
        start = time.perf_counter()
        parts = []
        for lo in range(0, len(names), chunk):
            batch = names[lo:lo + chunk]
            pairs = [(n, load_rgb(root / n)) for n in batch]
            tables = [predict.predict_arrays(p, pairs, self.views, model, fold, self.cfg.conf,
                                             self.cfg.max_det, self.cfg.batch) for model, fold, p in members]
            tables = [t for t in tables if len(t)]
            if not tables:
                continue
            fused = fuse.fuse(pd.concat(tables, ignore_index=True), params, progress=False)
            if crop and len(fused):
                probs = blend.classifier_probs(fused, root, [p for _, p in crop], section.tta, None,
                                               [name for name, _ in crop])
                fused = blend.blend_table(fused, probs, section.weight, section.full_weight, section.shares())
            parts.append(fused)
        seconds = time.perf_counter() - start
        fused = pd.concat(parts, ignore_index=True) if parts else None
        out = self._table(fused, root, threshold)
        out.attrs.update(seconds=seconds, images=len(names), root=str(root), threshold=threshold,
                         names=names)
        log.info("%d images in %.1f s (%.2f images/s): %d boxes at confidence >= %.3f", len(names), seconds,
                 len(names) / max(seconds, 1e-9), len(out), threshold)
        return out

    def _table(self, fused: pd.DataFrame | None, root: Path, threshold: float) -> pd.DataFrame:
        if fused is None or not len(fused):
            return pd.DataFrame({c: pd.Series(dtype=np.float64 if c.startswith("p_") or c in COORDS
                                              else object) for c in OUTPUT_COLUMNS})
        from infer import blend

        probs = blend.det_probs(fused)
        out = pd.DataFrame({"image": fused["NAME"].to_numpy(dtype=object)})
        for c in COORDS:
            out[c] = fused[c].to_numpy(np.float64).round(2)
        out["class"] = fused["class"].to_numpy(dtype=object)
        conf = self.calibration.apply(fused["score"].to_numpy(np.float64))
        out["confidence"] = conf.round(4)
        out["score"] = fused["score"].to_numpy(np.float64)
        out["width"] = fused["width"].to_numpy(np.int64)
        out["height"] = fused["height"].to_numpy(np.int64)
        out["path"] = [str(root / n) for n in out["image"]]
        for j, c in enumerate(classes.PROB_COLUMNS):
            out[c] = probs[:, j].round(4)
        out = out[conf >= threshold]  # before rounding: a box at the threshold is kept
        return out.sort_values(["image", "confidence"], ascending=[True, False], kind="stable") \
            .reset_index(drop=True)

    def draw(self, preds: pd.DataFrame, out_dir: Path, images: Sequence[str] | None = None) -> list[Path]:
        """One annotated JPEG per image under ``out_dir`` (see ``draw``)."""
        return draw(preds, out_dir, images)


def class_colour(code: str) -> tuple[int, int, int]:
    """A fixed BGR colour per class (hues spread over the 23 classes)."""
    import cv2

    i = classes.CLASS_TO_ID.get(code, 0)
    hsv = np.uint8([[[int(180 * ((i * 7) % classes.NUM_CLASSES) / classes.NUM_CLASSES), 220, 230]]])
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def label_scale(width: int, height: int) -> tuple[float, int]:
    """cv2 font scale and line thickness for labels readable at 100 %: about 2.5 % of the shorter side,
    never below a 16 px text height."""
    short = max(1, min(width, height))
    scale = max(0.6, short / 900)  # FONT_HERSHEY_SIMPLEX: ~22 px of text height at scale 1
    return scale, max(1, int(round(scale * 2)))


def annotate(image: np.ndarray, boxes: pd.DataFrame) -> np.ndarray:
    """A BGR copy of the RGB ``image`` with each box, its class and confidence drawn."""
    import cv2

    out = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
    h, w = out.shape[:2]
    scale, thick = label_scale(w, h)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for (x1, y1, x2, y2), code, c in zip(boxes[list(COORDS)].to_numpy(), boxes["class"], boxes["confidence"]):
        colour = class_colour(str(code))
        p1, p2 = (int(round(x1)), int(round(y1))), (int(round(x2)), int(round(y2)))
        cv2.rectangle(out, p1, p2, colour, max(2, thick))
        text = f"{code} {c:.2f}"
        (tw, th), base = cv2.getTextSize(text, font, scale, thick)
        ty = p1[1] - base - 2 if p1[1] - th - base - 4 >= 0 else p1[1] + th + 2
        tx = min(max(0, p1[0]), max(0, w - tw - 2))
        cv2.rectangle(out, (tx, ty - th - 2), (tx + tw + 2, ty + base), colour, -1)
        cv2.putText(out, text, (tx + 1, ty), font, scale, (0, 0, 0), thick, cv2.LINE_AA)
    return out


def draw(preds: pd.DataFrame, out_dir: Path, images: Sequence[str] | None = None,
         root: Path | None = None) -> list[Path]:
    """Write ``out_dir/<image>.jpg`` for every image of ``images`` (default: the table's ``attrs['names']``,
    else its images), boxes or none; images are read from the ``path`` column or ``root/<image>``."""
    import cv2

    from cytocore.images import load_rgb

    names = list(images if images is not None else preds.attrs.get("names") or pd.unique(preds["image"]))
    root = Path(root or preds.attrs.get("root") or ".")
    by_image = preds.groupby("image").indices if len(preds) else {}
    where = dict(zip(preds["image"], preds["path"])) if len(preds) and "path" in preds else {}
    written = []
    for name in names:
        rows = preds.iloc[by_image.get(name, np.zeros(0, int))]
        img = annotate(load_rgb(Path(where.get(name, root / name))), rows)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            raise io.DataError(f"{name}: could not encode the annotated image")
        target = Path(out_dir) / Path(name).with_suffix(".jpg")
        with io.atomic_write(target) as tmp:
            tmp.write_bytes(buf.tobytes())
        written.append(target)
    return written


def summary(preds: pd.DataFrame) -> str:
    """Boxes per class (one class per line, most frequent first) with their mean confidence."""
    lines = [f"{'class':<10} {'boxes':>6} {'mean conf':>9}  name"]
    if len(preds):
        g = preds.groupby("class")["confidence"].agg(["size", "mean"]).sort_values("size", ascending=False)
        for code, row in g.iterrows():
            name = classes.FULL_NAMES.get(code, "")
            lines.append(f"{code:<10} {int(row['size']):>6} {row['mean']:>9.3f}  {name}")
    lines.append(f"{'total':<10} {len(preds):>6}")
    return "\n".join(lines)


def write_outputs(preds: pd.DataFrame, out: Path, run: Run | None = None, drawn: bool = True) -> dict:
    """predictions.csv, predictions.json and annotated/ under ``out``; returns what was written."""
    out = Path(out)
    csv = io.atomic_write_df(preds[list(OUTPUT_COLUMNS)], out / "predictions.csv")
    meta = {k: v for k, v in preds.attrs.items() if k != "names"}
    doc = {"run": run.id if run else None, "config": str(run.config) if run else None, **meta,
           "boxes": json.loads(preds[list(OUTPUT_COLUMNS)].to_json(orient="records"))}
    js = io.atomic_write_text(out / "predictions.json", json.dumps(doc, indent=1) + "\n")
    written = {"csv": csv, "json": js}
    if drawn:
        written["annotated"] = draw(preds, out / "annotated")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infer.predict_images",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="*", metavar="IMAGES", help="image folder(s), glob(s) or files")
    parser.add_argument("--images", nargs="+", help="the same as IMAGES")
    parser.add_argument("--run", help="dataset id of a trained run (default: the newest make all / demo run)")
    parser.add_argument("--out", type=Path, help="output folder (default work/predict/<stamp>/)")
    parser.add_argument("--device", help="cpu, cuda, cuda:0 (default: the run's)")
    parser.add_argument("--conf", type=float, help="keep boxes of calibrated confidence >= CONF "
                        "(default: the run's out-of-fold threshold)")
    parser.add_argument("--backend", choices=("torch", "onnx", "openvino", "auto"),
                        help="CPU backend of exported members (default: the run's)")
    parser.add_argument("--no-draw", action="store_true", help="write no annotated images")
    args = parser.parse_args(argv)
    images = [*(args.images or []), *args.paths]
    if not images:
        parser.error("give the images: a folder, a glob or files (IMAGES= with make predict)")
    from cytocore import env

    env.apply()
    io.setup_logging()
    run = find_run(args.run)
    out = args.out or paths.predict_dir(time.strftime("%Y%m%d-%H%M%S"))
    print(f"run {run.id} ({run.config})")
    began = time.perf_counter()
    ens = Ensemble(run, device=args.device, conf=args.conf, backend=args.backend)
    ens.members(), ens.classifiers()
    loaded = time.perf_counter() - began
    preds = ens.predict(images)
    written = write_outputs(preds, out, run, drawn=not args.no_draw)
    n, sec = preds.attrs["images"], preds.attrs["seconds"]
    cal = ens.calibration
    print(f"confidence: calibrated out of fold on {cal.n_boxes} boxes; threshold {ens.threshold:.3f}"
          + (" (CONF)" if args.conf is not None else " (best out-of-fold score)"))
    print(summary(preds))
    print(f"{n} images in {sec:.1f} s: {n / max(sec, 1e-9):.2f} images/s, "
          f"{1000 * sec / max(n, 1):.0f} ms per image ({len(ens.members())} member fold(s) x "
          f"{len(ens.views)} view(s), "
          f"{len(ens.classifiers())} classifier fold(s), {ens.cfg.device}; models loaded in {loaded:.1f} s)")
    drawn = written.get("annotated")
    print(f"wrote {written['csv']}, {written['json']}"
          + (f" and {len(drawn)} annotated images in {out / 'annotated'}" if drawn is not None else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(io.cli(main))
