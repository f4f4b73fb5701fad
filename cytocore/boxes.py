"""The one box module: named formats, conversions, clipping, validation, IoU/GIoU.

Formats (last axis of length 4):

- ``xyxy``   -- x1, y1 (top-left), x2, y2 (bottom-right); the CytologIA format.
- ``xywh``   -- x1, y1, width, height (COCO).
- ``cxcywh`` -- centre x, centre y, width, height (YOLO labels).

Any format can be absolute (pixels) or normalised by the image size
(``normalize`` / ``denormalize``). Inputs may be lists, numpy arrays or torch
tensors of shape ``(..., 4)``; outputs keep the input's kind (lists become
float64 arrays). This is the only place in the kit that computes IoU or GIoU.
"""
from __future__ import annotations

from typing import Any

import numpy as np

FORMATS = ("xyxy", "xywh", "cxcywh")
GIOU_EPS = 1e-7  # floor on the IoU and GIoU denominators (the challenge metric's)


def _as_array(boxes: Any) -> Any:
    """Boxes as a float array or tensor of shape (..., 4); lists become float64 arrays."""
    if _is_tensor(boxes):
        out = boxes if boxes.is_floating_point() else boxes.float()
    else:
        out = np.asarray(boxes, dtype=np.float64)
        if out.size == 0 and (out.ndim < 2 or out.shape[-1] != 4):
            out = out.reshape(0, 4)  # [] or np.zeros(0): no boxes; (0, k, 4) keeps its shape
    if out.shape[-1] != 4:
        raise ValueError(f"boxes must have shape (..., 4), got {tuple(out.shape)}")
    return out


def _is_tensor(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "is_floating_point")


def _stack(cols: list, like: Any) -> Any:
    if _is_tensor(like):
        import torch

        return torch.stack(cols, dim=-1)
    return np.stack(cols, axis=-1)


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown box format {fmt!r}; valid formats: {', '.join(FORMATS)}")


def convert(boxes: Any, src: str, dst: str) -> Any:
    """Convert boxes from format ``src`` to format ``dst`` (absolute or normalised alike)."""
    _check_format(src)
    _check_format(dst)
    b = _as_array(boxes)
    if src == dst:
        return b.clone() if _is_tensor(b) else b.copy()
    a0, a1, a2, a3 = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
    if src == "xyxy":
        x1, y1, x2, y2 = a0, a1, a2, a3
    elif src == "xywh":
        x1, y1, x2, y2 = a0, a1, a0 + a2, a1 + a3
    else:  # cxcywh
        x1, y1, x2, y2 = a0 - a2 / 2, a1 - a3 / 2, a0 + a2 / 2, a1 + a3 / 2
    if dst == "xyxy":
        cols = [x1, y1, x2, y2]
    elif dst == "xywh":
        cols = [x1, y1, x2 - x1, y2 - y1]
    else:
        cols = [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]
    return _stack(cols, b)


def _scale(boxes: Any, width: Any, height: Any, inverse: bool) -> Any:
    b = _as_array(boxes)
    w = _column(width, b)
    h = _column(height, b)
    if inverse:
        return _stack([b[..., 0] / w, b[..., 1] / h, b[..., 2] / w, b[..., 3] / h], b)
    return _stack([b[..., 0] * w, b[..., 1] * h, b[..., 2] * w, b[..., 3] * h], b)


def _column(value: Any, like: Any) -> Any:
    """A scalar or per-box size, shaped to broadcast against ``like[..., 0]``."""
    if _is_tensor(like):
        import torch

        return torch.as_tensor(value, dtype=like.dtype, device=like.device)
    return np.asarray(value, dtype=np.float64)


def normalize(boxes: Any, width: Any, height: Any) -> Any:
    """Absolute pixels -> fractions of the image size (any format). Sizes may be per box."""
    return _scale(boxes, width, height, inverse=True)


def denormalize(boxes: Any, width: Any, height: Any) -> Any:
    """Fractions of the image size -> absolute pixels (any format). Sizes may be per box."""
    return _scale(boxes, width, height, inverse=False)


def clip(boxes: Any, width: Any, height: Any) -> Any:
    """Clip xyxy boxes to the image ``[0, width] x [0, height]`` (sizes may be per box)."""
    b = _as_array(boxes)
    w = _column(width, b)
    h = _column(height, b)
    zero = 0.0
    if _is_tensor(b):
        import torch

        cols = [
            torch.minimum(torch.clamp(b[..., 0], min=zero), w),
            torch.minimum(torch.clamp(b[..., 1], min=zero), h),
            torch.minimum(torch.clamp(b[..., 2], min=zero), w),
            torch.minimum(torch.clamp(b[..., 3], min=zero), h),
        ]
    else:
        cols = [
            np.clip(b[..., 0], zero, w),
            np.clip(b[..., 1], zero, h),
            np.clip(b[..., 2], zero, w),
            np.clip(b[..., 3], zero, h),
        ]
    return _stack(cols, b)


def area(boxes: Any) -> Any:
    """Area of xyxy boxes (negative extents count as zero)."""
    b = _as_array(boxes)
    w = b[..., 2] - b[..., 0]
    h = b[..., 3] - b[..., 1]
    if _is_tensor(b):
        return w.clamp(min=0) * h.clamp(min=0)
    return np.clip(w, 0, None) * np.clip(h, 0, None)


def is_valid(boxes: Any) -> np.ndarray:
    """Boolean mask of xyxy boxes that are finite with x2 > x1 and y2 > y1."""
    b = np.asarray(_as_array(boxes).cpu() if _is_tensor(boxes) else _as_array(boxes))
    finite = np.isfinite(b).all(axis=-1)
    with np.errstate(invalid="ignore"):
        return finite & (b[..., 2] > b[..., 0]) & (b[..., 3] > b[..., 1])


def validate(boxes: Any, what: str = "boxes") -> Any:
    """Return ``boxes`` as an array if every xyxy box is valid, else raise ``ValueError``.

    The message names the first bad row and how many are bad.
    """
    b = _as_array(boxes)
    ok = is_valid(b)
    if not ok.all():
        bad = np.flatnonzero(~ok.reshape(-1))
        row = np.asarray(b.cpu() if _is_tensor(b) else b).reshape(-1, 4)[bad[0]]
        raise ValueError(
            f"{what}: {len(bad)} invalid xyxy box(es) (need finite x2>x1, y2>y1); "
            f"first at row {bad[0]}: {row.tolist()}"
        )
    return b


def _pairwise(a: Any, b: Any, signed: bool = False) -> tuple[Any, Any, Any, Any]:
    """Intersection, union, enclosing area and IoU of every (a_i, b_j) pair.

    ``a`` (..., N, 4) and ``b`` (..., M, 4) give (..., N, M); leading dimensions
    broadcast (``a[:, None]`` with ``b[:, None]`` pairs box i with box i only); a
    single box (4,) counts as (1, 4). ``signed``: areas and the enclosing area are
    the raw products ``(x2 - x1) * (y2 - y1)``, negative for an inverted box, as
    the challenge's scorer computes them; otherwise negative extents count as 0.
    The intersection (hence the IoU) is the same either way.
    """
    a = _as_array(a)
    b = _as_array(b)
    a = a.reshape(1, 4) if a.ndim == 1 else a
    b = b.reshape(1, 4) if b.ndim == 1 else b
    if _is_tensor(a):
        import torch

        mx, mn, fl = torch.maximum, torch.minimum, lambda t: t.clamp(min=GIOU_EPS)
        clamp0 = lambda t: t.clamp(min=0)  # noqa: E731
    else:
        mx, mn, fl = np.maximum, np.minimum, lambda t: np.maximum(t, GIOU_EPS)
        clamp0 = lambda t: np.clip(t, 0, None)  # noqa: E731
    ext = (lambda t: t) if signed else clamp0
    ax1, ay1, ax2, ay2 = (a[..., :, None, i] for i in range(4))
    bx1, by1, bx2, by2 = (b[..., None, :, i] for i in range(4))
    inter = clamp0(mn(ax2, bx2) - mx(ax1, bx1)) * clamp0(mn(ay2, by2) - mx(ay1, by1))
    area_a = ext(ax2 - ax1) * ext(ay2 - ay1)
    area_b = ext(bx2 - bx1) * ext(by2 - by1)
    union = area_a + area_b - inter
    enclose = ext(mx(ax2, bx2) - mn(ax1, bx1)) * ext(mx(ay2, by2) - mn(ay1, by1))
    iou = inter / fl(union)
    return inter, union, enclose, iou


def iou_matrix(a: Any, b: Any) -> Any:
    """IoU of every xyxy box in ``a`` (N) with every box in ``b`` (M): shape (N, M)."""
    return _pairwise(a, b)[3]


def giou_matrix(a: Any, b: Any, signed: bool = False) -> Any:
    """Generalised IoU of every xyxy box in ``a`` (N) with every box in ``b`` (M): (N, M).

    ``GIoU = IoU - (C - U) / C`` with C the smallest enclosing box's area and U
    the union; both denominators are floored at ``GIOU_EPS`` (1e-7) as in the
    challenge metric, so degenerate (zero-size) boxes give finite values in
    [-1, 1]. Leading dimensions broadcast: ``giou_matrix(a[:, None], b[:, None])``
    is the (K, 1, 1) GIoU of K aligned pairs. ``signed=True`` reproduces the
    challenge's scorer on inverted boxes too (x2 < x1 or y2 < y1: signed areas,
    no clipping of the enclosing box; values may then leave [-1, 1]); valid
    boxes give the same value either way.
    """
    _, union, enclose, iou = _pairwise(a, b, signed=signed)
    floor = enclose.clamp(min=GIOU_EPS) if _is_tensor(enclose) else np.maximum(enclose, GIOU_EPS)
    return iou - (enclose - union) / floor
