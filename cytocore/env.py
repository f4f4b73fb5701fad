"""Offline environment: the one place that keeps ultralytics, hubs and matplotlib local.

Ultralytics reads its settings at import time and otherwise checks the network,
downloads fonts and writes to ``~/.config``. ``apply()`` must therefore run
before ``ultralytics`` is imported; every CLI ``main()`` and the test suite call
it. It only sets variables that are not set already, so a user can still
override any of them.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from cytocore import paths


def _font_source() -> Path | None:
    """A TrueType font shipped with matplotlib, copied in as ultralytics' Arial."""
    try:
        import matplotlib
    except ImportError:
        return None
    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    return font if font.exists() else None


def verbose() -> bool:
    """``make ... VERBOSE=1`` (``CYTOKIT_VERBOSE``): ultralytics' own per-batch bars and validation tables
    in each job's log, beside the kit's epoch lines."""
    return os.environ.get("CYTOKIT_VERBOSE", "").strip().lower() not in ("", "0", "false", "no")


def offline_variables(config_dir: Path) -> dict[str, str]:
    """The environment variables that keep every library offline and project-local."""
    return {
        "YOLO_OFFLINE": "1",
        "YOLO_AUTOINSTALL": "false",
        "YOLO_VERBOSE": "true" if verbose() else "false",  # ultralytics' own bars and tables: VERBOSE=1
        "YOLO_CONFIG_DIR": str(config_dir / "ultralytics"),
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(config_dir / "huggingface"),
        "TORCH_HOME": str(config_dir / "torch"),
        "MPLBACKEND": "Agg",
        "MPLCONFIGDIR": str(config_dir / "matplotlib"),
        "XDG_CACHE_HOME": str(config_dir / "cache"),
        "XDG_CONFIG_HOME": str(config_dir / "xdg"),
        "WANDB_MODE": "disabled",
        "MLFLOW_DISABLE_TELEMETRY": "true",  # tracker: mlflow keeps to its local file store
        "NO_ALBUMENTATIONS_UPDATE": "1",  # albumentations asks PyPI for a newer version at import
    }


def apply(config_dir: Path | None = None) -> dict[str, str]:
    """Set the offline variables (unless already set) and place the fonts. Idempotent."""
    config_dir = Path(config_dir) if config_dir else paths.config_dir()
    variables = offline_variables(config_dir)
    for key, value in variables.items():
        os.environ.setdefault(key, value)
    yolo_dir = Path(os.environ["YOLO_CONFIG_DIR"])
    yolo_dir.mkdir(parents=True, exist_ok=True)
    Path(os.environ["MPLCONFIGDIR"]).mkdir(parents=True, exist_ok=True)
    font = _font_source()
    if font is not None:
        # Ultralytics keeps its settings and looks for fonts in YOLO_CONFIG_DIR/Ultralytics.
        for folder in (yolo_dir, yolo_dir / "Ultralytics"):
            folder.mkdir(parents=True, exist_ok=True)
            for name in ("Arial.ttf", "Arial.Unicode.ttf"):
                _copy_whole(font, folder / name)
    return {key: os.environ[key] for key in variables}


def _copy_whole(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` unless a complete copy is there (same size): a copy cut short by a full
    disk is replaced on the next call, and a failed copy leaves nothing behind."""
    from cytocore.io import atomic_write

    try:
        if dst.stat().st_size == src.stat().st_size:
            return
    except FileNotFoundError:
        pass
    with atomic_write(dst) as tmp:
        shutil.copyfile(src, tmp)
