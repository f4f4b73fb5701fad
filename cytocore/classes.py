"""The 23 CytologIA class codes: exact spelling, one fixed order, full names.

The order is the label-id order everywhere in the kit (YOLO ``data.yaml``, COCO
category ids minus one, per-class score columns). Never reorder it: weights and
exports made with one order are wrong under another.
"""
from __future__ import annotations

import difflib

# (code, full name), in the order of docs/CHALLENGE.md section 2 (descending train box count).
_TABLE: tuple[tuple[str, str], ...] = (
    ("PNN", "neutrophil (segmented)"),
    ("Lysee", "lysed cell"),
    ("LAM3", "acute promyelocytic leukemia (AML M3) cell"),
    ("LLC", "chronic lymphocytic leukemia cell"),
    ("LyB", "lymphoblast"),
    ("MO", "monocyte"),
    ("MBL", "myeloblast"),
    ("LGL", "large granular lymphocyte"),
    ("EO", "eosinophil"),
    ("Thromb", "giant platelet"),
    ("Er", "erythroblast"),
    ("B", "undifferentiated blast"),
    ("LF", "follicular lymphoma cell"),
    ("LY", "lymphocyte"),
    ("M", "myelocyte"),
    ("MM", "metamyelocyte"),
    ("LH_lyAct", "hyperbasophilic / activated lymphocyte"),
    ("MoB", "monoblast"),
    ("PM", "promyelocyte"),
    ("BA", "basophil"),
    ("LM", "mantle cell lymphoma cell"),
    ("LZMG", "marginal zone lymphoma cell"),
    ("SS", "Sézary cell"),
)

CLASSES: tuple[str, ...] = tuple(code for code, _ in _TABLE)
"""The 23 codes; ``CLASSES[i]`` is label id ``i``."""

FULL_NAMES: dict[str, str] = dict(_TABLE)
CLASS_TO_ID: dict[str, int] = {code: i for i, code in enumerate(CLASSES)}
NUM_CLASSES = len(CLASSES)

# Column names of per-class scores in the prediction table ("p_PNN", ...).
PROB_COLUMNS: tuple[str, ...] = tuple(f"p_{code}" for code in CLASSES)


def is_valid(code: object) -> bool:
    """True when ``code`` is exactly one of the 23 codes (case-sensitive)."""
    return isinstance(code, str) and code in CLASS_TO_ID


def suggest(code: object) -> str | None:
    """The valid code closest to a misspelled one (``'LH_LyAc'`` -> ``'LH_lyAct'``).

    Case-insensitive exact matches win; otherwise difflib's closest match with a
    similarity of at least 0.6. ``None`` when nothing is close.
    """
    if not isinstance(code, str) or not code.strip():
        return None
    text = code.strip()
    lowered = {c.lower(): c for c in CLASSES}
    if text.lower() in lowered:
        return lowered[text.lower()]
    match = difflib.get_close_matches(text.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[match[0]] if match else None
