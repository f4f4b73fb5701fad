"""A weights file checked against the architecture its catalogue entry names (what ``make weights``
runs on every download): ``check_file``. It builds reference models (torchvision, timm, SAM,
ultralytics), which is why it is not in ``train.weights.load``, the file reader those builders use.
"""
from __future__ import annotations

from pathlib import Path

from train.weights.load import check_fits, read_tensors


def reference_shapes(loader: str) -> dict:
    """``name -> shape`` of the architecture a catalogue ``loader`` names (built on the meta device)."""
    import torch

    family, _, arch = loader.partition(":")
    with torch.device("meta"):
        if family == "torchvision":
            import torchvision

            builder = getattr(torchvision.models.detection, arch, None) or getattr(torchvision.models, arch)
            extra = {"weights_backbone": None} if hasattr(torchvision.models.detection, arch) else {}
            model = builder(weights=None, **extra)
        elif family == "timm":  # a timm name, or a kit name of train.cls.model.BACKBONES (dinobloom_s)
            from train.cls.model import create_backbone

            model = create_backbone(arch)
        elif family == "sam":
            from train.unet import medsam

            model = medsam.build_sam(medsam.SPECS[arch])
        else:
            raise ValueError(f"no reference architecture for loader {loader!r}")
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_file(path: Path | str, loader: str, what: str = "") -> str:
    """Load ``path`` as its catalogue ``loader`` says; a short description, or ``WeightsError``."""
    path = Path(path)
    family, _, arch = loader.partition(":")
    what = what or arch or family
    if family == "ultralytics":
        from train.yolo.predict import load_ultra_checkpoint

        model = load_ultra_checkpoint(path)
        return f"ultralytics model, {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters"
    state = read_tensors(path, what)
    if family != "tensors":
        check_fits(state, reference_shapes(loader), path, f"{family} {arch} weights")
    return f"{len(state)} tensors, {sum(v.numel() for v in state.values()) / 1e6:.1f} M parameters"
