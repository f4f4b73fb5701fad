"""Reading local weights files of every kind, with one error for every bad file (``WeightsError``).

- ``torch_load``: a torch file read with ``weights_only=True`` (no code runs); an empty file, a text
  or HTML page saved instead of the weights, a truncated archive: one line naming the file.
- ``read_tensors``: the ``name -> tensor`` mapping of a state dict, a kit checkpoint (``model``),
  a ``state_dict`` / ``model_state_dict`` wrapper, or a safetensors file (told by its suffix or header).
- ``load_matching``: copy the tensors whose name and shape fit a model (a COCO or ImageNet head of
  another size is left to its fresh initialisation, and the log says which tensors those were).
- ``check_fits``: a state dict must fit a reference architecture exactly (keys and shapes).

Checking a file against the architecture it is for (``check_file``) builds models, so it lives a
floor up, in ``train.weights.check``: this module reads files and needs no model code.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from train.weights.errors import WeightsError, first_line

log = logging.getLogger("train.weights")
WRAPPERS = ("model", "state_dict", "model_state_dict")  # where checkpoints keep their state dict
TORCH_MAGIC = (b"PK\x03\x04", b"\x80")  # torch.save: a zip archive, or a legacy pickle (protocol >= 2)
BN_COUNTER = "num_batches_tracked"  # a BatchNorm buffer that checkpoints of frozen BatchNorm lack


def sniff(path: Path, what: str, torch_file: bool = True) -> None:
    """Refuse a missing or empty file, a text/HTML page saved under a weights file's name, and (for
    ``torch_file``) anything that is neither a torch zip archive nor a legacy torch pickle."""
    if not path.is_file():
        raise WeightsError(path, f"{what} weights file not found")
    size = path.stat().st_size
    if size == 0:
        raise WeightsError(path, f"empty file (0 bytes), not {what} weights; delete it and fetch it again")
    with path.open("rb") as f:
        head = f.read(256)
    if head.lstrip().lower().startswith((b"<!doctype html", b"<html", b"<?xml", b"{\"error", b"<head")):
        raise WeightsError(path, f"an HTML/text page ({size} bytes), not {what} weights: a login or error "
                                 "page saved instead of the file?")
    if torch_file and not head.startswith(TORCH_MAGIC):
        shown = head[:24].decode("ascii", "replace")
        raise WeightsError(path, f"not {what} weights: it starts with {shown!r}, not with the header of a "
                                 "torch file (a text file, or another format?)")


def safetensors_header(path: Path) -> bool:
    """Whether ``path`` starts as a safetensors file does (an 8-byte header length, then its JSON): how a
    download's ``.part`` file, which has no ``.safetensors`` suffix, is told from a torch file."""
    try:
        with Path(path).open("rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") < 100_000_000


def torch_load(path: Path | str, what: str) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU; a bad file raises ``WeightsError``."""
    import torch

    path = Path(path).expanduser()
    sniff(path, what)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling, zip and format errors all mean: not a usable torch file
        raise WeightsError(path, f"not {what} weights readable with weights_only=True "
                                 f"({type(exc).__name__}: {first_line(exc)})") from None


def read_tensors(path: Path | str, what: str) -> dict:
    """The ``name -> tensor`` mapping of a weights file (``module.`` prefixes of DDP removed)."""
    import torch

    path = Path(path).expanduser()
    if path.suffix == ".safetensors" or safetensors_header(path):
        sniff(path, what, torch_file=False)
        from safetensors.torch import load_file

        try:
            obj = load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types for a bad header
            raise WeightsError(path, f"not a readable safetensors file ({first_line(exc)})") from None
    else:
        obj = torch_load(path, what)
    for key in WRAPPERS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        kind = type(obj).__name__ if not isinstance(obj, dict) else "a mapping of non-tensors"
        raise WeightsError(path, f"not a {what} state dict (a mapping of parameter names to tensors; "
                                 f"found {kind}): an ultralytics .pt or another format?")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _summary(names: list[str], n: int = 3) -> str:
    return f"{len(names)} ({', '.join(names[:n])}{', ...' if len(names) > n else ''})"


def load_matching(model: Any, state: dict, source: Path | str, what: str, strict: bool = False) -> list[str]:
    """Copy the tensors of ``state`` whose name and shape fit ``model``; return the model's tensors
    left as initialised (e.g. a COCO head of 91 classes). ``strict``: every tensor must fit."""
    own = model.state_dict()
    fits = {k: v for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    left = [k for k in own if k not in fits and not k.endswith(BN_COUNTER)]
    if strict and left:
        raise WeightsError(source, f"does not fit this {what} model: {_summary(left)} tensors missing or of "
                                   "another shape; weights of another model?")
    if not fits:
        raise WeightsError(source, f"no tensor fits this {what} model; weights of another model?")
    model.load_state_dict(fits, strict=False)
    counted = [k for k in own if not k.endswith(BN_COUNTER)]
    if left:
        log.info("%s: %d of %d tensors loaded; %s left as initialised (a head of another size)",
                 source, len(counted) - len(left), len(counted), _summary(left))
    else:
        log.log(logging.DEBUG if strict else logging.INFO, "%s: all %d tensors loaded", source, len(counted))
    return left


def check_fits(state: dict, expected: dict, path: Path | str, what: str) -> None:
    """Raise ``WeightsError`` unless ``state`` has exactly ``expected``'s keys and shapes."""
    counters = {k for k in set(expected) | set(state) if k.endswith(BN_COUNTER)}  # frozen BN lacks them
    missing = sorted(set(expected) - set(state) - counters)
    unexpected = sorted(set(state) - set(expected) - counters)
    shaped = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k]))
    if not (missing or unexpected or shaped):
        return
    parts = [f"missing keys {_summary(missing)}" if missing else "",
             f"unexpected keys {_summary(unexpected)}" if unexpected else ""]
    if shaped:
        k = shaped[0]
        parts.append(f"shape mismatches {_summary(shaped)}, e.g. {k} {tuple(state[k].shape)} vs "
                     f"{tuple(expected[k])}")
    raise WeightsError(path, f"not {what}: " + "; ".join(p for p in parts if p))
