"""The one wrapper around ensemble-boxes' ``weighted_boxes_fusion``: one image, many members.

``fuse_image`` takes each member's boxes in ABSOLUTE xyxy pixels of one image
(``members`` = any mix of models, folds and TTA views, one list each), and

1. checks the box contract, member by member: a NaN/inf coordinate or an
   inverted box (x2 < x1 or y2 < y1) raises ``ValueError`` naming the member;
   scores must be finite in [0, 1] and labels integer class ids;
2. normalises by the image size (``cytocore.boxes.normalize``) and clips to
   [0, 1] -- i.e. to the image. The rule: a box partly outside the image keeps
   its inside part; a box with no area left (entirely outside, or x2 == x1 /
   y2 == y1) is dropped, as ensemble-boxes would drop it with a warning;
3. runs ``weighted_boxes_fusion`` with the member weights, ``iou_thr``,
   ``skip_box_thr`` and ``conf_type`` given (from the ensemble config);
4. returns absolute boxes, scores clipped to [0, 1] (ensemble-boxes' 'avg'
   rescaling can exceed 1 when one member puts several boxes in a cluster)
   and integer labels, sorted by score.

For whole tables, ``prepare`` does steps 1-2 vectorised over every row at
once and ``fuse_normalized`` does steps 3-4 per image (``infer.fuse`` uses that
pair so the checks cost one numpy pass, not one per image).

Nothing is printed and nothing exits: every bad input is a ``ValueError``.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ensemble_boxes import weighted_boxes_fusion

from cytocore import boxes as bx

CONF_TYPES = ("avg", "max", "box_and_model_avg", "absent_model_aware_avg")


def check_params(iou_thr: float, skip_box_thr: float, conf_type: str) -> None:
    """Raise ``ValueError`` unless the WBF settings are usable."""
    if conf_type not in CONF_TYPES:
        raise ValueError(f"unknown conf_type {conf_type!r}; valid: {', '.join(CONF_TYPES)}")
    if not 0.0 < float(iou_thr) <= 1.0:
        raise ValueError(f"iou_thr must be in (0, 1], got {iou_thr}")
    if not 0.0 <= float(skip_box_thr) <= 1.0:
        raise ValueError(f"skip_box_thr must be in [0, 1], got {skip_box_thr}")


def prepare(
    xyxy: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    width: np.ndarray | float,
    height: np.ndarray | float,
    member: np.ndarray | None = None,
    names: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Check, normalise and clip many boxes at once (vectorised over whole tables).

    ``width``/``height`` are per box or scalars; ``member`` (int per box) and
    ``names`` only serve to name the member in error messages. Returns
    ``(boxes01, scores, labels, keep)``: all rows normalised and clipped to [0, 1],
    int64 labels, and the mask of rows that still have an area (the rest must be
    dropped). Raises ``ValueError`` naming the first bad member.
    """
    b = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    lab = np.asarray(labels).reshape(-1)

    def who(rows: np.ndarray) -> str:
        i = int(np.flatnonzero(rows)[0])
        if member is None:
            return f"row {i}"
        m = int(np.asarray(member).reshape(-1)[i])
        return f"member {names[m] if names is not None else m} (row {i})"

    if not len(b) == len(s) == len(lab):
        raise ValueError(f"{len(b)} boxes, {len(s)} scores, {len(lab)} labels (must match)")
    if not len(b):
        return np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
    bad = ~np.isfinite(b).all(axis=1)
    if bad.any():
        raise ValueError(f"{who(bad)}: NaN or infinite box coordinate {b[bad][0].tolist()}")
    bad = (b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])
    if bad.any():
        raise ValueError(f"{who(bad)}: inverted box (x2 < x1 or y2 < y1) {b[bad][0].tolist()}")
    bad = ~np.isfinite(s) | (s < 0) | (s > 1)
    if bad.any():
        raise ValueError(f"{who(bad)}: score {s[bad][0]!r} is not in [0, 1]")
    if lab.dtype.kind == "f":
        bad = ~np.isfinite(lab) | (lab != np.round(lab))
        if bad.any():
            raise ValueError(f"{who(bad)}: label {lab[bad][0]!r} is not an integer class id")
    elif lab.dtype.kind not in "iu":
        raise ValueError(f"labels must be integer class ids, got dtype {lab.dtype}")
    w = np.broadcast_to(np.asarray(width, dtype=np.float64), s.shape)
    h = np.broadcast_to(np.asarray(height, dtype=np.float64), s.shape)
    bad = ~(w > 0) | ~(h > 0)
    if bad.any():
        raise ValueError(f"{who(bad)}: image size must be positive, got {w[bad][0]}x{h[bad][0]}")
    b01 = np.clip(bx.normalize(b, w, h), 0.0, 1.0)
    keep = bx.area(b01) > 0
    return b01, s, lab.astype(np.int64), keep


def fuse_normalized(
    boxes_list: Sequence[np.ndarray],
    scores_list: Sequence[np.ndarray],
    labels_list: Sequence[np.ndarray],
    weights: Sequence[float],
    iou_thr: float,
    skip_box_thr: float,
    conf_type: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ensemble-boxes on members already passed through ``prepare`` (kept rows only).

    Returns normalised boxes, scores clipped to [0, 1] and int64 labels. The
    fast path for callers that prepared a whole table at once; the settings are
    assumed checked (``check_params``).
    """
    if not any(len(b) for b in boxes_list):
        return np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64)
    out_b, out_s, out_l = weighted_boxes_fusion(
        list(boxes_list), list(scores_list), list(labels_list),
        weights=list(weights), iou_thr=float(iou_thr), skip_box_thr=float(skip_box_thr), conf_type=conf_type,
    )
    out_b = np.asarray(out_b, dtype=np.float64).reshape(-1, 4)
    out_s = np.clip(np.asarray(out_s, dtype=np.float64).reshape(-1), 0.0, 1.0)
    out_l = np.rint(np.asarray(out_l, dtype=np.float64)).astype(np.int64).reshape(-1)
    return out_b, out_s, out_l


def check_weights(weights: Sequence[float] | None, n: int, names: Sequence[str]) -> list[float]:
    """Member weights as floats (default 1 each); ``ValueError`` on a bad list."""
    if weights is None:
        return [1.0] * n
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if len(w) != n:
        raise ValueError(f"{len(w)} weights for {n} members ({', '.join(names)})")
    if not np.isfinite(w).all() or (w < 0).any() or (n and w.sum() <= 0):
        raise ValueError(f"member weights must be finite, >= 0 and not all 0, got {w.tolist()}")
    return w.tolist()


def fuse_image(
    members: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    width: float,
    height: float,
    weights: Sequence[float] | None = None,
    *,
    iou_thr: float,
    skip_box_thr: float = 0.0,
    conf_type: str = "avg",
    names: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted boxes fusion of one image's members.

    ``members``: one ``(xyxy, scores, labels)`` per member, boxes absolute pixels
    of the ``width x height`` image, labels int class ids (an empty member is
    fine). ``weights``: one per member (default 1). ``iou_thr`` has no default here: it
    comes from the ensemble config (configs/ensemble.yaml). Returns ``(xyxy, scores,
    labels)`` -- absolute float64 boxes, scores in [0, 1], int64 labels --
    sorted by decreasing score.
    """
    check_params(iou_thr, skip_box_thr, conf_type)
    n = len(members)
    names = list(names) if names is not None else [f"#{i}" for i in range(n)]
    if len(names) != n:
        raise ValueError(f"{len(names)} member names for {n} members")
    w = check_weights(weights, n, names)
    lists: tuple[list, list, list] = ([], [], [])
    for i, (xyxy, scores, labels) in enumerate(members):
        rows = np.full(np.asarray(scores).size, i)
        b01, s, lab, keep = prepare(xyxy, scores, labels, width, height, rows, names)
        for out, arr in zip(lists, (b01, s, lab)):
            out.append(arr[keep])
    out_b, out_s, out_l = fuse_normalized(*lists, w, iou_thr, skip_box_thr, conf_type)
    return bx.denormalize(out_b, width, height), out_s, out_l
