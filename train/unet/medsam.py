"""MedSAM (a SAM ViT-B fine-tuned on medical images): box prompt in, cell mask out.

The checkpoint is a plain SAM state dict read from a local file (``make weights
SET=medsam_vit_b`` puts MedSAM's in weights/; nothing is downloaded here) through
``train.weights``. The architecture comes from a ``SamSpec`` (ViT-B by default;
tests pass a tiny one), built from segment-anything's own modules. A wrong or
corrupt checkpoint is refused with one line (``train.weights.WeightsError``) that
summarises missing, unexpected and mis-shaped keys.

Pre-processing (``preprocess``):

- ``medsam`` -- MedSAM's own: the image resized to a square of the encoder size,
  intensities min-max scaled to [0, 1], boxes scaled alike. What the MedSAM
  weights were fine-tuned with.
- ``sam``    -- SAM's: longest side resized to the encoder size
  (``ResizeLongestSide``), normalised with SAM's pixel mean/std, padded.

Post-processing: single-mask output (``multimask_output=False``), the logits
upsampled to the image size, sigmoid > 0.5.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from train.weights.load import check_fits, read_tensors

log = logging.getLogger(__name__)

PREPROCESS = ("medsam", "sam")


@dataclasses.dataclass(frozen=True)
class SamSpec:
    """The SAM architecture (segment-anything's ``_build_sam`` numbers, made explicit)."""

    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    encoder_global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    img_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256


SPECS: dict[str, SamSpec] = {"vit_b": SamSpec()}


def build_sam(spec: SamSpec = SamSpec()) -> torch.nn.Module:
    """An untrained SAM of the given architecture (segment-anything modules)."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    grid = spec.img_size // spec.patch_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=spec.encoder_depth, embed_dim=spec.encoder_embed_dim, img_size=spec.img_size,
            mlp_ratio=4, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=spec.encoder_num_heads, patch_size=spec.patch_size, qkv_bias=True,
            use_rel_pos=True, global_attn_indexes=tuple(spec.encoder_global_attn_indexes),
            window_size=spec.window_size, out_chans=spec.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=spec.prompt_embed_dim, image_embedding_size=(grid, grid),
            input_image_size=(spec.img_size, spec.img_size), mask_in_chans=spec.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=spec.decoder_depth, embedding_dim=spec.prompt_embed_dim,
                mlp_dim=spec.decoder_mlp_dim, num_heads=spec.decoder_num_heads,
            ),
            transformer_dim=spec.prompt_embed_dim, iou_head_depth=3,
            iou_head_hidden_dim=spec.iou_head_hidden_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def check_state_dict(state: dict[str, torch.Tensor], spec: SamSpec, path: Path | str) -> None:
    """Raise ``WeightsError`` unless ``state`` fits ``spec`` exactly (keys and shapes)."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in build_sam(spec).state_dict().items()}
    arch = next((name for name, s in SPECS.items() if s == spec), "the given spec")
    check_fits(state, expected, path, f"a SAM {arch} state dict")


def load_sam(path: Path, spec: SamSpec = SamSpec()) -> torch.nn.Module:
    """SAM of architecture ``spec`` with the weights of the checkpoint at ``path`` (CPU, eval)."""
    state = read_tensors(path, "MedSAM")
    check_state_dict(state, spec, path)
    sam = build_sam(spec)
    sam.load_state_dict(state, strict=True)
    return sam.eval()


class MedSam:
    """Box-prompted segmentation with a loaded SAM/MedSAM model.

    ``segment(images, boxes)`` takes RGB uint8 images and one (N_i, 4) xyxy
    array of boxes per image; images are encoded ``batch`` at a time and all
    boxes of an image are decoded in one pass.
    """

    def __init__(self, sam: torch.nn.Module, device: str = "cpu", preprocess: str = "medsam", batch: int = 4):
        if preprocess not in PREPROCESS:
            raise ValueError(f"unknown preprocess {preprocess!r}; valid: {', '.join(PREPROCESS)}")
        self.device = torch.device(device)
        self.sam = sam.to(self.device).eval()
        self.preprocess = preprocess
        self.batch = max(1, int(batch))
        self.size = int(self.sam.image_encoder.img_size)

    @classmethod
    def from_checkpoint(cls, path: Path, spec: SamSpec = SamSpec(), **kwargs) -> MedSam:
        return cls(load_sam(path, spec), **kwargs)

    def _input(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int], tuple[float, float]]:
        """(3, S, S) model input, the un-padded input size and the (x, y) box scale."""
        h, w = image.shape[:2]
        x = torch.from_numpy(np.array(image, dtype=np.uint8)).to(self.device).permute(2, 0, 1)[None].float()
        if self.preprocess == "medsam":
            x = F.interpolate(x, (self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
            lo, hi = x.amin(), x.amax()
            x = (x - lo) / (hi - lo).clamp(min=1e-8)
            return x[0], (self.size, self.size), (self.size / w, self.size / h)
        from segment_anything.utils.transforms import ResizeLongestSide

        nh, nw = ResizeLongestSide.get_preprocess_shape(h, w, self.size)
        x = F.interpolate(x, (nh, nw), mode="bilinear", align_corners=False, antialias=True)
        return self.sam.preprocess(x)[0], (nh, nw), (nw / w, nh / h)

    @torch.no_grad()
    def segment(self, images: list[np.ndarray], boxes: list[np.ndarray]) -> list[np.ndarray]:
        """One (N_i, H_i, W_i) bool mask stack per image, one mask per box."""
        if len(images) != len(boxes):
            raise ValueError(f"{len(images)} images but {len(boxes)} box arrays")
        out: list[np.ndarray] = []
        for start in range(0, len(images), self.batch):
            chunk = images[start:start + self.batch]
            prepared = [self._input(im) for im in chunk]
            with self._autocast():
                emb = self.sam.image_encoder(torch.stack([p[0] for p in prepared]))
            for i, (image, (_, in_size, (sx, sy))) in enumerate(zip(chunk, prepared)):
                out.append(self._decode(emb[i:i + 1], image.shape[:2], in_size, sx, sy, boxes[start + i]))
        return out

    def _decode(self, emb, hw, in_size, sx, sy, boxes) -> np.ndarray:
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        h, w = hw
        if not len(boxes):
            return np.zeros((0, h, w), dtype=bool)
        scaled = boxes * np.array([sx, sy, sx, sy])
        box_t = torch.as_tensor(scaled, dtype=torch.float, device=self.device)[:, None, :]
        with self._autocast():
            sparse, dense = self.sam.prompt_encoder(points=None, boxes=box_t, masks=None)
            low, _ = self.sam.mask_decoder(
                image_embeddings=emb, image_pe=self.sam.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False,
            )
        logits = F.interpolate(low.float(), (self.size, self.size), mode="bilinear", align_corners=False)
        logits = logits[..., :in_size[0], :in_size[1]]
        logits = F.interpolate(logits, (h, w), mode="bilinear", align_corners=False)
        return (torch.sigmoid(logits[:, 0]) > 0.5).cpu().numpy()

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()
