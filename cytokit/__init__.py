"""The CytologIA kit's public Python API and ``cytokit`` command: the top floor of the kit.

It imports the steps (infer, submit, pipeline); none of them imports it (their shared
contracts are ``cytocore``). The API (``cytokit.api``) is loaded on first use of one
of its names, so ``import cytokit`` loads nothing heavy::

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
