"""HED (stain-space) colour jitter: the transform, the color_aug key of the classifier and the YOLOs."""
from __future__ import annotations

import albumentations as A
import numpy as np
import pytest

from cytocore.config import ConfigError
from train import stain
from train.cls import data as cls_data

pytestmark = pytest.mark.unit


def smear(seed: int = 0, size: int = 24) -> np.ndarray:
    """A small uint8 RGB field: pale background, a violet nucleus-like blob, pink cell-like pixels."""
    rng = np.random.default_rng(seed)
    image = np.full((size, size, 3), (232, 226, 236), dtype=np.float64)
    image[4:12, 4:12] = (95, 60, 150)  # violet: haematoxylin-like
    image[14:20, 12:22] = (225, 150, 170)  # pink: eosin-like
    return np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)


def test_zero_strength_and_a_neutral_draw_give_the_image_back_exactly():
    image = smear()
    image[0, 0], image[0, 1] = (0, 0, 0), (255, 255, 255)  # the ends of the range survive the log
    np.testing.assert_array_equal(stain.hed_jitter(image, np.ones(3), np.zeros(3)), image)
    jitter = stain.HEDJitter(strength=0.0, p=1.0)
    jitter.set_random_seed(3)
    np.testing.assert_array_equal(jitter(image=image)["image"], image)


def test_shape_and_dtype_are_kept_and_non_uint8_refused():
    image = smear(size=17)
    out = stain.HEDJitter(strength=0.2, p=1.0)(image=image)["image"]
    assert out.shape == image.shape and out.dtype == np.uint8
    with pytest.raises(ValueError, match="uint8 RGB"):
        stain.hed_jitter(image.astype(np.float32), np.ones(3), np.zeros(3))


def test_haematoxylin_scale_moves_the_h_amount_and_leaves_eosin():
    image = smear()
    before = stain.rgb_to_hed(image)
    more_h = stain.rgb_to_hed(stain.hed_jitter(image, np.array([1.4, 1.0, 1.0]), np.zeros(3)))
    nucleus = (slice(4, 12), slice(4, 12))
    # H grows by 40 % where there is haematoxylin, E stays put (on average: a pixel is rounded to uint8,
    # up to 0.02 optical-density units each)
    h_before, h_after = before[nucleus][..., 0].mean(), more_h[nucleus][..., 0].mean()
    assert h_before > 0.3 and h_after == pytest.approx(1.4 * h_before, abs=0.005)
    assert more_h[..., 1].mean() == pytest.approx(before[..., 1].mean(), abs=0.002)
    assert np.abs(more_h[..., 1] - before[..., 1]).max() < 0.03
    # and the nucleus gets darker in every channel (more dye absorbs more light)
    assert (stain.hed_jitter(image, np.array([1.4, 1, 1]), np.zeros(3))[nucleus].mean(axis=(0, 1))
            < image[nucleus].mean(axis=(0, 1))).all()


def test_an_eosin_shift_pinks_the_background_but_not_a_haematoxylin_one():
    image = smear()
    background = (slice(20, 24), slice(0, 4))
    pink = stain.hed_jitter(image, np.ones(3), np.array([0.0, 0.1, 0.0]))[background].mean(axis=(0, 1))
    blue = stain.hed_jitter(image, np.ones(3), np.array([0.1, 0.0, 0.0]))[background].mean(axis=(0, 1))
    plain = image[background].mean(axis=(0, 1))
    # eosin absorbs green most (its OD vector 0.07, 0.99, 0.11): green falls, red barely moves
    assert plain[1] - pink[1] > 15 > plain[0] - pink[0]
    # haematoxylin absorbs red and green more than blue (0.65, 0.70, 0.29)
    assert (plain - blue)[2] < (plain - blue)[0]


def test_the_same_seed_draws_the_same_jitter_and_another_seed_another():
    image = smear()
    jitter = stain.HEDJitter(strength=0.1, p=1.0)
    outs = []
    for seed in (7, 7, 8):
        jitter.set_random_seed(seed)
        outs.append(jitter(image=image)["image"])
    np.testing.assert_array_equal(outs[0], outs[1])
    assert not np.array_equal(outs[0], outs[2])


def test_serialisable_as_ultralytics_stores_its_augmentations():
    restored = A.from_dict(A.to_dict(stain.HEDJitter(strength=0.07, p=0.3)))
    assert isinstance(restored, stain.HEDJitter) and restored.strength == 0.07 and restored.p == 0.3


@pytest.mark.parametrize("name, strength, message", [
    ("hue", 0.05, "color_aug: 'hue' is not one of hsv, hed, none"),
    ("hed", -0.1, r"hed_strength=-0.1: must be in \[0, 0.5\]"),
    ("hed", 0.9, r"hed_strength=0.9: must be in \[0, 0.5\]"),
])
def test_unknown_values_are_refused_in_one_line(name, strength, message):
    with pytest.raises(ValueError, match=message):
        stain.check_color_aug(name, strength)
    with pytest.raises(ValueError, match=message):
        cls_data.build_augment("default", name, strength)


def test_the_classifier_pipeline_swaps_only_its_colour_step():
    def steps(color_aug):
        return [type(t).__name__ for t in cls_data.build_augment("default", color_aug, 0.05).transforms]

    common = ["HorizontalFlip", "VerticalFlip", "RandomRotate90", "Affine"]
    assert steps("hsv") == [*common, "HueSaturationValue", "RandomBrightnessContrast"]
    assert steps("hed") == [*common, "HEDJitter", "RandomBrightnessContrast"]
    assert steps("none") == [*common, "RandomBrightnessContrast"]
    assert [type(t).__name__ for t in cls_data.build_augment("light", "hed").transforms] == common[:3]


def test_classifier_config_takes_and_refuses_color_aug():
    from train import registry

    cfg = registry.load_config("cls", ["color_aug=hed", "hed_strength=0.1"])
    assert (cfg.color_aug, cfg.hed_strength) == ("hed", 0.1)
    assert registry.load_config("cls", []).color_aug == "hsv"  # the default until measured otherwise
    with pytest.raises(ConfigError, match="color_aug: 'stain' is not one of hsv, hed, none"):
        registry.load_config("cls", ["color_aug=stain"])


def test_yolo_color_aug_reaches_ultralytics_augmentations_hook():
    from ultralytics.data.augment import Albumentations

    from train import registry
    from train.yolo.adapter import color_args

    assert color_args(registry.load_config("yolov8", [])) == {}  # hsv: ultralytics' own hsv_h/s/v
    assert color_args(registry.load_config("yolov8", ["color_aug=none"])) == {"hsv_h": 0.0, "hsv_s": 0.0}
    args = color_args(registry.load_config("yolov8", ["color_aug=hed", "hed_strength=0.2"]))
    (jitter,) = args.pop("augmentations")
    assert args == {"hsv_h": 0.0, "hsv_s": 0.0} and isinstance(jitter, stain.HEDJitter)
    assert jitter.strength == 0.2
    with pytest.raises(ConfigError, match="color_aug: 'lab' is not one of hsv, hed, none"):
        registry.load_config("yolov8", ["color_aug=lab"])
    # ultralytics' trainer stores the list with A.to_dict and its dataset restores it: the step it builds
    hook = Albumentations(p=1.0, transforms=[A.to_dict(jitter)])
    assert [type(t) for t in hook.transform.transforms] == [stain.HEDJitter]
    assert not hook.contains_spatial  # an image-only step: boxes are left alone
