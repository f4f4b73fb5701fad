"""The one table of pretrained files: what each model of the kit can start from, and where it comes from.

Each ``Entry`` names a file under ``weights/`` (``cytocore.paths.weights_dir()``), its public URL, the
hash it is checked against where the publisher gives one (torchvision and torch hub put the first
hex digits of the file's SHA-256 in its name; Zenodo publishes an MD5), how a file is checked by
loading it (``loader``) and the models that start from it (``models``: ``<kind>:<architecture>``,
e.g. ``yolo:yolov8n``, ``tv:fasterrcnn_resnet50_fpn_v2``, ``cls:efficientnet_b0``,
``unet:resnet18``, ``medsam:vit_b``). ``upstream`` says which record of which package the URL and
hash were taken from; tests compare them with the installed torchvision, timm and ultralytics.

Sets (``make weights SET=...``): ``default`` holds what the default configs start from; ``all``
adds the s and m YOLO scales, other classifier backbones, a ResNet-34 UNet encoder and MedSAM
ViT-B (for ``make masks``); any entry's name is a set of one.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from cytocore import paths

ULTRALYTICS = "https://github.com/ultralytics/assets/releases/download/v8.4.0"  # its attempt_download_asset
TORCHVISION = "https://download.pytorch.org/models"
HF = "https://huggingface.co"


@dataclasses.dataclass(frozen=True)
class Entry:
    """One pretrained file."""

    name: str  # its name in SET= and in the listing
    file: str  # file name under weights/
    url: str  # public download URL
    loader: str  # how it is read and checked: ultralytics | torchvision:<builder> | timm:<model> | sam:<arch>
    models: tuple[str, ...]  # the "<kind>:<architecture>" keys that start from it
    about: str  # what it was trained on, for the log and the listing
    mb: float  # approximate size in MB (the listing; never checked)
    upstream: str  # the package record the URL and hash come from
    sha256: str = ""  # SHA-256 of the file, or the prefix of it that its publisher gives
    md5: str = ""  # MD5 of the file, where that is what its publisher gives
    size: int = 0  # exact size in bytes where published (0 = not published)
    sets: tuple[str, ...] = ("all",)

    @property
    def path(self) -> Path:
        """Where the file lives (or will): ``weights/<file>``."""
        return paths.weights_dir() / self.file

    @property
    def checks(self) -> str:
        """What a downloaded copy is checked against, in words."""
        found = [f"sha256 {self.sha256}" if self.sha256 else "", f"md5 {self.md5}" if self.md5 else "",
                 f"{self.size} bytes" if self.size else ""]
        return ", ".join(f for f in found if f) or "complete download + load"


def _yolo(family: str, scale: str, mb: float) -> Entry:
    stem = f"{family}{scale}{'u' if family == 'yolov5' else ''}"  # ultralytics' YOLOv5u files end in u
    return Entry(stem, f"{stem}.pt", f"{ULTRALYTICS}/{stem}.pt", "ultralytics", (f"yolo:{stem}",),
                 f"ultralytics {stem}, COCO", mb, f"ultralytics:{stem}.pt",
                 sets=("default", "all") if scale == "n" else ("all",))


def _tv(builder: str, enum: str, file: str, mb: float, models: tuple[str, ...], about: str,
        default: bool = True) -> Entry:
    return Entry(file.rpartition("-")[0], file, f"{TORCHVISION}/{file}", f"torchvision:{builder}", models,
                 about, mb, f"torchvision:{enum}", sha256=file.rpartition("-")[2].partition(".")[0],
                 sets=("default", "all") if default else ("all",))


def _timm(tagged: str, mb: float, default: bool = False) -> Entry:
    arch = tagged.partition(".")[0]
    return Entry(tagged, f"{tagged}.safetensors", f"{HF}/timm/{tagged}/resolve/main/model.safetensors",
                 f"timm:{arch}", (f"cls:{arch}", f"cls:{tagged}"), f"timm {tagged}, ImageNet", mb,
                 f"timm:{tagged}", sets=("default", "all") if default else ("all",))


ENTRIES: tuple[Entry, ...] = (
    *(_yolo(family, scale, mb) for family, sizes in (
        ("yolov5", (5.3, 18.6, 48.2)), ("yolov8", (6.2, 21.5, 49.7)), ("yolo11", (5.4, 18.4, 38.8)))
      for scale, mb in zip("nsm", sizes)),
    _tv("fasterrcnn_resnet50_fpn_v2", "FasterRCNN_ResNet50_FPN_V2_Weights.COCO_V1",
        "fasterrcnn_resnet50_fpn_v2_coco-dd69338a.pth", 167.1, ("tv:fasterrcnn_resnet50_fpn_v2",),
        "torchvision Faster R-CNN ResNet50-FPN v2, COCO"),
    _tv("fasterrcnn_mobilenet_v3_large_fpn", "FasterRCNN_MobileNet_V3_Large_FPN_Weights.COCO_V1",
        "fasterrcnn_mobilenet_v3_large_fpn-fb6a3cc7.pth", 74.2, ("tv:fasterrcnn_mobilenet_v3_large_fpn",),
        "torchvision Faster R-CNN MobileNetV3-Large-FPN, COCO"),
    _tv("retinanet_resnet50_fpn_v2", "RetinaNet_ResNet50_FPN_V2_Weights.COCO_V1",
        "retinanet_resnet50_fpn_v2_coco-5905b1c5.pth", 146.0, ("tv:retinanet_resnet50_fpn_v2",),
        "torchvision RetinaNet ResNet50-FPN v2, COCO"),
    _tv("resnet18", "ResNet18_Weights.IMAGENET1K_V1", "resnet18-f37072fd.pth", 44.7, ("unet:resnet18",),
        "torchvision ResNet-18, ImageNet (the UNet encoder)"),
    _tv("resnet34", "ResNet34_Weights.IMAGENET1K_V1", "resnet34-b627a593.pth", 83.3, ("unet:resnet34",),
        "torchvision ResNet-34, ImageNet (the UNet encoder)", default=False),
    _timm("efficientnet_b0.ra_in1k", 21.4, default=True),
    _timm("efficientnet_b2.ra_in1k", 36.8),
    _timm("resnet50.a1_in1k", 102.2),
    _timm("convnext_tiny.in12k_ft_in1k", 114.4),
    # DinoBloom-S as timm weights: 1aurent's conversion of DinoBloom-S.pth (zenodo.org/records/10908163, the
    # authors' release) to vit_small_patch14_dinov2 at 224 px, no head; the SHA-256 is the one the hub
    # publishes for that file (its "Add model" commit 5e74787); the exact byte count is not published.
    Entry("dinobloom_s", "vit_small_patch14_224.dinobloom.safetensors",
          f"{HF}/1aurent/vit_small_patch14_224.dinobloom/resolve/main/model.safetensors", "timm:dinobloom_s",
          ("cls:dinobloom_s",), "DinoBloom-S (DINOv2 ViT-S/14 fine-tuned on single blood cells)", 86.5,
          "hf:1aurent/vit_small_patch14_224.dinobloom@5e74787",
          sha256="a7aa4f35e0fdc34c1ce25962db2511df895a96201f2cebe19dd3b3539ab93b26"),
    Entry("medsam_vit_b", "medsam_vit_b.pth", "https://zenodo.org/records/10689643/files/medsam_vit_b.pth?download=1",
          "sam:vit_b", ("medsam:vit_b",), "MedSAM ViT-B (SAM tuned on medical images; make masks)", 375.0,
          "zenodo:10.5281/zenodo.10689643", md5="3bb6db55bd0c9ca30b61248bca72f8d6"),
)
SETS = ("default", "all")


def by_name() -> dict[str, Entry]:
    return {e.name: e for e in ENTRIES}


def select(names: str | list[str]) -> list[Entry]:
    """The entries of comma-separated set or entry names (``default``, ``all``, ``yolov8s``...)."""
    from cytocore.config import ConfigError

    wanted = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    known = by_name()
    out: dict[str, Entry] = {}
    for name in wanted or ["default"]:
        if name in SETS:
            out.update((e.name, e) for e in ENTRIES if name in e.sets)
        elif name in known:
            out[name] = known[name]
        else:
            raise ConfigError(f"SET={name}: unknown; valid: {', '.join(SETS)} or a file name "
                              f"({', '.join(known)})")
    return list(out.values())


def match(model_key: str) -> Entry | None:
    """The entry a model starts from (``yolo:yolov8n``, ``cls:efficientnet_b0``...), if any."""
    return next((e for e in ENTRIES if model_key in e.models), None)
