"""The MedSAM path end to end with a tiny random SAM saved by the test (no download)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cytocore import classes
from cytocore.io import cli
from train.unet import masks, medsam
from train.weights import WeightsError

pytestmark = pytest.mark.unit

# segment-anything's modules at a toy size; img_size 1024 / patch 16 keep SAM's geometry.
TINY = medsam.SamSpec(
    encoder_embed_dim=16, encoder_depth=1, encoder_num_heads=1, encoder_global_attn_indexes=(),
    prompt_embed_dim=32, mask_in_chans=4, decoder_depth=1, decoder_mlp_dim=32, decoder_num_heads=2,
    iou_head_hidden_dim=16,
)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("sam") / "tiny_sam.pth"
    torch.save(medsam.build_sam(TINY).state_dict(), path)
    return path


@pytest.mark.smoke
def test_segment_returns_one_image_sized_mask_per_box(tiny_ckpt):
    model = medsam.MedSam.from_checkpoint(tiny_ckpt, TINY, batch=2)
    images = [np.random.default_rng(i).integers(0, 255, (90, 120, 3), dtype=np.uint8) for i in range(3)]
    boxes = [np.array([[10, 10, 60, 70], [40, 20, 110, 80]]), np.zeros((0, 4)), np.array([[0, 0, 120, 90]])]
    out = model.segment(images, boxes)
    assert [m.shape for m in out] == [(2, 90, 120), (0, 90, 120), (1, 90, 120)]
    assert all(m.dtype == bool for m in out)


class _SpyPrompt(torch.nn.Module):
    """The real prompt encoder, recording the boxes it is given."""

    def __init__(self, real):
        super().__init__()
        self.real, self.boxes = real, None

    def forward(self, points=None, boxes=None, masks=None):
        self.boxes = boxes.detach().clone()
        return self.real(points=points, boxes=boxes, masks=masks)

    def get_dense_pe(self):
        return self.real.get_dense_pe()


class _FixedDecoder(torch.nn.Module):
    """A mask decoder that returns the same low-res logits for every prompt."""

    def __init__(self, low_res):
        super().__init__()
        self.low_res = low_res

    def forward(self, sparse_prompt_embeddings, multimask_output, **kw):
        assert multimask_output is False
        n = sparse_prompt_embeddings.shape[0]
        return self.low_res.expand(n, 1, -1, -1), torch.zeros(n, 1)


@pytest.mark.parametrize("preprocess, box_1024, rows", [
    # 200 x 400 image. sam: scale 1024/400 = 2.56, input 512 x 1024 padded to 1024 x 1024;
    # low-res logits positive at x < 128, y < 64 of 256 -> x < 512, y < 256 in the 1024 frame
    # -> x < 200, y < 256 / 2.56 = 100 in the image.
    ("sam", [102.4, 51.2, 204.8, 153.6], 100),
    # medsam: stretched to 1024 x 1024 (x by 2.56, y by 5.12) -> x < 200, y < 256 / 5.12 = 50.
    ("medsam", [102.4, 102.4, 204.8, 307.2], 50),
])
def test_prompt_scaling_and_mask_geometry(tiny_ckpt, preprocess, box_1024, rows):
    model = medsam.MedSam.from_checkpoint(tiny_ckpt, TINY, preprocess=preprocess)
    low = torch.full((1, 1, 256, 256), -5.0)
    low[..., :64, :128] = 5.0
    spy = model.sam.prompt_encoder = _SpyPrompt(model.sam.prompt_encoder)
    model.sam.mask_decoder = _FixedDecoder(low)
    image = np.full((200, 400, 3), 128, np.uint8)
    mask = model.segment([image], [np.array([[40, 20, 80, 60]])])[0][0]
    assert spy.boxes[:, 0].tolist() == [pytest.approx(box_1024, abs=1e-3)]
    expected = np.zeros((200, 400), bool)
    expected[:rows, :200] = True
    assert np.array_equal(mask, expected)


@pytest.mark.smoke
def test_masks_with_a_checkpoint_use_medsam(tmp_path, tiny_ckpt):
    from test_masks import make_dataset

    root = make_dataset(tmp_path / f"raw_{tmp_path.name}", n=2)
    out = masks.make_masks(root, masks.MasksConfig(medsam_batch=2), ckpt=tiny_ckpt, medsam_spec=TINY)
    assert masks.read_mask(out, "c01.jpg").shape == (64, 64)
    values = set(np.unique(masks.read_mask(out, "c01.jpg")))  # an EO cell and a small LY cell
    assert values <= {0, classes.CLASS_TO_ID["EO"] + 1, classes.CLASS_TO_ID["LY"] + 1} and len(values) >= 2
    import json

    sig = json.loads((out / "meta.json").read_text())["signature"]
    assert sig["method"] == "medsam" and sig["checkpoint"] == str(tiny_ckpt.resolve())


def _refusal(path, spec=medsam.SPECS["vit_b"]) -> str:
    with pytest.raises(WeightsError) as info:
        medsam.load_sam(path, spec)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path))
    return message


def test_truncated_checkpoint_is_refused_in_one_line(tmp_path, tiny_ckpt):
    bad = tmp_path / "cut.pth"
    bad.write_bytes(tiny_ckpt.read_bytes()[:2000])
    assert "not MedSAM weights readable with weights_only=True" in _refusal(bad)


def test_wrong_keys_and_wrong_shapes_are_summarised(tmp_path, tiny_ckpt):
    wrong = tmp_path / "wrong.pth"
    torch.save({"backbone.weight": torch.zeros(3)}, wrong)
    msg = _refusal(wrong)
    assert "not a SAM vit_b state dict" in msg
    assert "unexpected keys 1 (backbone.weight)" in msg and "missing keys" in msg
    msg = _refusal(tiny_ckpt)  # a tiny SAM is not a ViT-B
    assert "shape mismatches" in msg and "(16,) vs (768,)" in msg


def test_not_a_state_dict_is_refused(tmp_path):
    odd = tmp_path / "list.pth"
    torch.save([1, 2, 3], odd)
    assert "not a MedSAM state dict" in _refusal(odd)


def test_state_dict_nested_under_model_is_accepted(tmp_path, tiny_ckpt):
    nested = tmp_path / "nested.pth"
    torch.save({"model": torch.load(tiny_ckpt, weights_only=True)}, nested)
    assert isinstance(medsam.load_sam(nested, TINY), torch.nn.Module)


def test_cli_prints_the_refusal_without_traceback(tmp_path, capsys):
    from test_masks import make_dataset

    data = tmp_path / f"raw_{tmp_path.name}"
    make_dataset(data, n=2)
    bad = tmp_path / "cut.pth"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    code = cli(masks.main, ["--data", str(data), "--k", "2", "--seed", "0", "--medsam-ckpt", str(bad)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "Traceback" not in err and len(err.splitlines()) == 1
    assert err.startswith(f"{bad}: not MedSAM weights readable with weights_only=True")
