"""Shared contracts of the CytologIA kit: classes, boxes, tables, paths, config -- and its Python API.

Every step (prepare, train, infer, submit) imports from here; nothing in this
package runs at import time. The public API (``cytokit.api``) is loaded on
first use of one of its names::

    import cytokit
    ens = cytokit.load_ensemble()              # the newest trained run
    boxes = ens.predict("data/demo/images")
"""
from __future__ import annotations

from typing import Any

API = ("Ensemble", "draw", "find_runs", "load_ensemble", "load_recipe", "predict", "reliability_table",
       "score")
__all__ = list(API)


def __getattr__(name: str) -> Any:
    if name in API:
        from cytokit import api

        return getattr(api, name)
    raise AttributeError(f"module 'cytokit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *API})
