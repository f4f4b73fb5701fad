"""Training data of the torchvision detectors: a fold's COCO export, box-aware augmentations.

``CocoDetection`` reads ``fold<f>/coco_train.json`` of a prepared dataset (images
under ``yolo/images``, boxes absolute xywh in those images' pixels, category id =
class id + 1) and yields ``(image tensor in [0, 1], {"boxes": xyxy, "labels"})``,
the input of torchvision's ``model(images, targets)``. Augmentations are picked
by name (``augment:`` in the config; an unknown name raises):

- ``default``: flips, 90-degree turns, colour jitter, small scale/rotate
- ``light``:   flips only
- ``none``:    no augmentation

Each DataLoader worker reseeds the pipeline with its own torch seed on its first
item (``train.dist.reseed_augment``): albumentations seeds its generator when
the pipeline is built, so forked workers would otherwise draw the same flips.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from cytocore import boxes as kit_boxes
from cytocore.config import ConfigError
from cytocore.images import load_rgb
from train.dist import reseed_augment

PRESETS = ("default", "light", "none")


def augmentations(name: str):
    """The albumentations pipeline of preset ``name`` (pascal_voc boxes + ``labels``); None for ``none``."""
    if name not in PRESETS:
        raise ConfigError(f"augment={name!r}: valid presets are {', '.join(PRESETS)}")
    if name == "none":
        return None
    import albumentations as A

    steps = [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]
    if name == "default":
        steps += [
            A.RandomRotate90(p=0.5),
            A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.8),
            A.Affine(scale=(0.9, 1.1), rotate=(-10, 10), rotate_method="ellipse", border_mode=0, p=0.5),
        ]
    bbox = A.BboxParams(format="pascal_voc", label_fields=["labels"], min_visibility=0.3, clip=True)
    return A.Compose(steps, bbox_params=bbox)


def read_coco(path: Path) -> tuple[list[dict], dict[int, list[dict]]]:
    """Images and annotations-by-image of a COCO detection json."""
    data = json.loads(Path(path).read_text())
    by_image: dict[int, list[dict]] = {im["id"]: [] for im in data["images"]}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    return data["images"], by_image


class CocoDetection(torch.utils.data.Dataset):
    """Images and boxes of one COCO json; ``label_offset`` 1 keeps 0 for background (Faster R-CNN)."""

    def __init__(self, coco_json: Path, images_dir: Path, label_offset: int, augment: str = "default"):
        self.images, anns = read_coco(coco_json)
        self.images_dir = Path(images_dir)
        self.label_offset = label_offset
        self.transform = augmentations(augment)
        self._seeded: int | None = None  # worker seed of the transform (train.dist.reseed_augment)
        self.targets = []
        for im in self.images:
            items = anns.get(im["id"], [])
            xywh = np.array([a["bbox"] for a in items], dtype=np.float64).reshape(-1, 4)
            xyxy = kit_boxes.clip(kit_boxes.convert(xywh, "xywh", "xyxy"), im["width"], im["height"])
            ok = kit_boxes.is_valid(xyxy)
            labels = np.array([a["category_id"] - 1 for a in items], dtype=np.int64).reshape(-1)[ok]
            self.targets.append((xyxy[ok], labels))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        self._seeded = reseed_augment(self.transform, self._seeded)
        image = load_rgb(self.images_dir / self.images[i]["file_name"])
        xyxy, labels = self.targets[i]
        if self.transform is None:
            out = {"image": image, "bboxes": xyxy, "labels": labels}
        else:
            out = self.transform(image=image, bboxes=xyxy, labels=labels)
        boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
        keep = kit_boxes.is_valid(boxes)
        target = {
            "boxes": torch.from_numpy(boxes[keep]),
            "labels": torch.as_tensor(np.asarray(out["labels"], dtype=np.int64)[keep] + self.label_offset),
        }
        pixels = np.require(out["image"], np.uint8, ["C", "W"])
        tensor = torch.from_numpy(pixels).permute(2, 0, 1).float().div_(255.0)
        return tensor, target

    def class_counts(self) -> Counter:
        return Counter(int(c) for _, labels in self.targets for c in labels)

    def balanced_weights(self) -> list[float]:
        """Per-image sampling weight 1 / (box count of the image's rarest class); 1/total for no box."""
        counts = self.class_counts()
        total = max(sum(counts.values()), 1)
        return [1.0 / min(counts[int(c)] for c in labels) if len(labels) else 1.0 / total
                for _, labels in self.targets]


def collate(batch: list) -> tuple[list, list]:
    """Detection batches are lists (images differ in size)."""
    return tuple(zip(*batch)) if batch else ([], [])
