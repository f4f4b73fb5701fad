"""What each of the 23 classes looks like to the synthetic smear generator.

One ``Recipe`` per class code, written from ``docs/CHALLENGE.md`` section 2:
the real median box size, the nucleus shape and its share of the cell, the
chromatin texture, nucleoli, cytoplasm colour, granules, Auer rods, vacuoles
and outline. ``prepare.synth.cells`` turns a recipe into pixels. Colours are
the RGB a stain shows on a white background (converted to optical density when
drawn). The hard pairs of the real data (LY/LLC/LM/LZMG, LyB/MBL/B/MoB,
M/MM/PM, LGL/LH_lyAct, PNN/MM) share most parameters on purpose and differ in
one or two.
"""
from __future__ import annotations

import dataclasses

# Stain colours (RGB on white).
DENSE = (72, 42, 112)  # condensed chromatin: deep blue-purple
MID = (98, 66, 140)  # moderately condensed chromatin
LACY = (132, 102, 168)  # fine "lacy" blast chromatin: lighter violet
PALE_BLUE = (178, 200, 232)  # light basophilic cytoplasm
SKY = (160, 192, 236)  # lymphocyte rim: sky blue
BLUE = (128, 160, 214)  # moderately basophilic cytoplasm
DEEP_BLUE = (92, 124, 196)  # hyperbasophilic cytoplasm
NEUTRAL = (228, 204, 218)  # neutral cytoplasm: pale pink-lilac
GREY_BLUE = (194, 198, 216)  # monocyte "ground glass"
AZUR = (150, 52, 112)  # azurophilic granules: red-purple
EOSIN = (236, 118, 70)  # eosinophil granules: orange-red
BASO = (48, 22, 70)  # basophil granules: purple-black


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How one class is drawn (sizes in pixels at the challenge's ~10 px per micrometre)."""

    size: tuple[int, int]  # median real box (width, height)
    multi: float  # share of the class's real boxes that sit in multi-cell images
    spread: float = 0.11  # log-sd of the cell size (wider for classes whose real boxes vary most)
    nucleus: str = "round"  # round, kidney, horseshoe, cleaved, indented, lobes, spectacle,
    #                         butterfly, cerebriform, none (Thromb), smudge (Lysee)
    nc: float = 0.6  # nucleus diameter / cell diameter
    offset: float = 0.0  # nucleus eccentricity, as a share of the cell radius
    lobes: tuple[int, int] = (1, 1)  # lobe count range for nucleus="lobes"
    chromatin: str = "dense"  # dense, clumped (cracked mud), moderate, fine (lacy)
    chromatin_rgb: tuple[int, int, int] = DENSE
    nucleoli: tuple[int, int] = (0, 0)  # count range
    nucleolus_density: float = 0.45  # chromatin density left in a nucleolus (lower = clearer)
    cyto_rgb: tuple[int, int, int] = PALE_BLUE
    cyto_edge: float = 0.0  # extra stain at the cytoplasm edge (hyperbasophilic rim)
    outline: str = "round"  # round, irregular, villous, scalloped
    granules: str = "none"  # none, dust, few, azur, coarse, packed, eo, ba
    granule_n: tuple[int, int] = (0, 0)  # count range of drawn granules
    rods: tuple[int, int] = (0, 0)  # Auer rod count range
    rod_p: float = 0.0  # probability that a cell shows its rods
    vacuoles: tuple[int, int] = (0, 0)
    vacuole_p: float = 0.0
    pale_zone: bool = False  # Golgi zone beside the nucleus (promyelocyte)
    alt_cyto_rgb: tuple[int, int, int] | None = None  # second cytoplasm colour, drawn half the time


RECIPES: dict[str, Recipe] = {
    "PNN": Recipe((146, 152), 0.074, nucleus="lobes", nc=0.78, lobes=(2, 5), cyto_rgb=NEUTRAL,
                  granules="dust", granule_n=(0, 0)),
    "Lysee": Recipe((170, 171), 0.141, spread=0.22, nucleus="smudge", chromatin_rgb=(140, 104, 176)),
    "LAM3": Recipe((151, 156), 0.123, nucleus="butterfly", nc=0.62, chromatin="moderate",
                   chromatin_rgb=MID, cyto_rgb=(196, 186, 220), granules="packed",
                   granule_n=(160, 260), rods=(3, 7), rod_p=0.8),
    "LLC": Recipe((111, 112), 0.347, nc=0.86, offset=0.06, chromatin="clumped", cyto_rgb=PALE_BLUE),
    "LyB": Recipe((120, 124), 0.201, nc=0.86, offset=0.05, chromatin="fine", chromatin_rgb=MID,
                  nucleoli=(0, 2), nucleolus_density=0.72, cyto_rgb=BLUE),
    "MO": Recipe((176, 185), 0.058, spread=0.14, nucleus="horseshoe", nc=0.66, offset=0.12, chromatin="fine",
                 chromatin_rgb=LACY, cyto_rgb=GREY_BLUE, outline="irregular", granules="dust",
                 vacuoles=(1, 5), vacuole_p=0.5),
    "MBL": Recipe((156, 160), 0.151, spread=0.16, nc=0.74, offset=0.1, chromatin="fine", chromatin_rgb=LACY,
                  nucleoli=(2, 5), nucleolus_density=0.35, cyto_rgb=BLUE, rods=(1, 1), rod_p=0.15),
    "LGL": Recipe((138, 145), 0.043, nc=0.56, offset=0.25, chromatin="moderate", cyto_rgb=PALE_BLUE,
                  granules="few", granule_n=(4, 14)),
    "EO": Recipe((158, 159), 0.080, nucleus="spectacle", nc=0.7, chromatin="dense", cyto_rgb=NEUTRAL,
                 granules="eo", granule_n=(220, 320)),
    "Thromb": Recipe((80, 80), 0.063, spread=0.2, nucleus="none", cyto_rgb=(196, 184, 226), granules="azur",
                     granule_n=(14, 40)),
    "Er": Recipe((98, 102), 0.065, spread=0.15, nc=0.5, offset=0.3, chromatin="ink", cyto_rgb=(226, 170, 162),
                 alt_cyto_rgb=(186, 184, 206)),
    "B": Recipe((139, 141), 0.198, nc=0.8, offset=0.08, chromatin="fine", chromatin_rgb=MID,
                nucleoli=(1, 3), nucleolus_density=0.45, cyto_rgb=BLUE),
    "LF": Recipe((92, 91), 0.537, nucleus="cleaved", nc=0.9, chromatin="dense", cyto_rgb=SKY),
    "LY": Recipe((112, 115), 0.112, nc=0.84, offset=0.08, chromatin="dense", cyto_rgb=SKY),
    "M": Recipe((152, 152), 0.064, nc=0.56, offset=0.3, chromatin="moderate", chromatin_rgb=MID,
                cyto_rgb=NEUTRAL, granules="azur", granule_n=(12, 30)),
    "MM": Recipe((150, 150), 0.062, nucleus="kidney", nc=0.6, offset=0.18, chromatin="dense",
                 cyto_rgb=NEUTRAL, granules="dust"),
    "LH_lyAct": Recipe((158, 164), 0.043, nc=0.5, offset=0.2, chromatin="moderate", chromatin_rgb=MID,
                       cyto_rgb=DEEP_BLUE, cyto_edge=0.9, outline="scalloped"),
    "MoB": Recipe((183, 191), 0.393, spread=0.15, nc=0.66, offset=0.12, chromatin="fine", chromatin_rgb=LACY,
                  nucleoli=(1, 4), nucleolus_density=0.35, cyto_rgb=BLUE, vacuoles=(1, 6), vacuole_p=0.5),
    "PM": Recipe((173, 173), 0.056, nc=0.52, offset=0.3, chromatin="fine", chromatin_rgb=MID,
                 nucleoli=(1, 3), nucleolus_density=0.45, cyto_rgb=BLUE, granules="coarse",
                 granule_n=(70, 140), pale_zone=True),
    "BA": Recipe((138, 140), 0.031, spread=0.14, nucleus="lobes", nc=0.72, lobes=(2, 3), chromatin="moderate",
                 cyto_rgb=NEUTRAL, granules="ba", granule_n=(110, 170)),
    "LM": Recipe((126, 127), 0.225, nucleus="indented", nc=0.84, offset=0.06, chromatin="moderate",
                 cyto_rgb=PALE_BLUE),
    "LZMG": Recipe((127, 138), 0.181, spread=0.18, nc=0.68, offset=0.14, chromatin="moderate",
                   cyto_rgb=PALE_BLUE, outline="villous"),
    "SS": Recipe((119, 128), 0.021, nucleus="cerebriform", nc=0.84, chromatin="dense", cyto_rgb=PALE_BLUE),
}

# Real train box counts (docs/CHALLENGE.md section 2): the class frequencies of generated images.
BOX_COUNTS: dict[str, int] = {
    "PNN": 6827, "Lysee": 3408, "LAM3": 3338, "LLC": 3158, "LyB": 3029, "MO": 2743, "MBL": 2668,
    "LGL": 2439, "EO": 2432, "Thromb": 2319, "Er": 2308, "B": 2263, "LF": 2131, "LY": 2092,
    "M": 1994, "MM": 1707, "LH_lyAct": 1705, "MoB": 1531, "PM": 1152, "BA": 1001, "LM": 944,
    "LZMG": 845, "SS": 714,
}
