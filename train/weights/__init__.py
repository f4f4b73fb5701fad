"""Pretrained weights: which file each model starts from, downloading them, and reading any weights file.

- ``catalog``: the one table of known files (name, URL, hash, size, loader, the models that use them);
- ``fetch``: the downloader behind ``make weights`` (the only network access of the kit), ``cli`` its
  commands' shared part (``python -m train.weights --set``; a recipe's files: ``pipeline.weights``);
- ``needs``: the file each member of a recipe starts from (``make weights``, the pre-flights);
- ``resolve``: ``pretrained: auto | none | PATH``, the config key of every model;
- ``load``: reading a local weights file of any kind, refusing a bad one with ``WeightsError``.

    python -m train.weights --set default    # make weights SET=default: download into weights/
    python -m train.weights --list           # every known file: present or missing, size, URL
"""
from train.weights.errors import WeightsError
from train.weights.resolve import normalise, resolve

__all__ = ["WeightsError", "normalise", "resolve"]
