"""Images and cached label maps for the UNet, resized to a square network input.

Images are stretched to ``imgsz x imgsz`` (the smears are nearly square) and
normalised with the ImageNet mean/std; label maps (``train.unet.masks``: 0
background, 1 + class id) are resized with nearest-neighbour. Training views
are flipped and rotated by multiples of 90 degrees (a cell has no up or down).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from cytocore.images import load_rgb
from train.unet.masks import read_mask

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255


def to_input(image: np.ndarray, imgsz: int) -> torch.Tensor:
    """(3, imgsz, imgsz) float tensor of an RGB uint8 image, resized and normalised."""
    resized = cv2.resize(image, (imgsz, imgsz), interpolation=cv2.INTER_AREA)
    x = (resized.astype(np.float32) - MEAN) / STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def resize_labels(label_map: np.ndarray, imgsz: int) -> np.ndarray:
    return cv2.resize(label_map, (imgsz, imgsz), interpolation=cv2.INTER_NEAREST)


def augment(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random flip / 90-degree rotation applied to image and labels alike."""
    k = int(rng.integers(4))
    image, labels = np.rot90(image, k), np.rot90(labels, k)
    if rng.random() < 0.5:
        image, labels = image[:, ::-1], labels[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(labels)


class MaskDataset(torch.utils.data.Dataset):
    """(input tensor, label tensor) pairs of the named images."""

    def __init__(self, names: list[str], images_dir: Path, masks_dir: Path, imgsz: int,
                 train: bool = False, seed: int = 0):
        self.names = list(names)
        self.images_dir = Path(images_dir)
        self.masks_dir = Path(masks_dir)
        self.imgsz = int(imgsz)
        self.train = train
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        name = self.names[i]
        image = load_rgb(self.images_dir / name)
        labels = read_mask(self.masks_dir, name)
        if labels.shape != image.shape[:2]:
            raise ValueError(f"{name}: mask {labels.shape} does not match image {image.shape[:2]}; "
                             "rerun `make masks FORCE=1`")
        image = cv2.resize(image, (self.imgsz, self.imgsz), interpolation=cv2.INTER_AREA)
        labels = resize_labels(labels, self.imgsz)
        if self.train:
            rng = np.random.default_rng((self.seed, self.epoch, i))
            image, labels = augment(image, labels, rng)
        return to_input(image, self.imgsz), torch.from_numpy(labels.astype(np.int64))
