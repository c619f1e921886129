"""Handwriting augmentation: each key does its own change, draws per image, stays in range, and refuses bad values."""

from __future__ import annotations

import pytest
import torch

from tests.builders import digit_like
from vit_mnist.data.augment import AugmentConfig, augment, handwriting_variation
from vit_mnist.data.writer_shift import WRITER_SHIFT, writer_shift, writer_shifted
from vit_mnist.errors import UserError
from vit_mnist.models.vit import BackgroundNorm

OFF = {"rotation": 0.0, "translate": 0.0, "scale": [1.0, 1.0]}
KEYS = {"elastic": 16.0, "stroke": 1.0, "blur": 1.0, "min_resolution": 10, "noise": 0.1, "haze": 2.0, "erasing": 1.0}


def images() -> torch.Tensor:
    return digit_like(64, seed=2).float() / 255.0


def test_all_off_is_the_identity() -> None:
    x = images()
    cfg = AugmentConfig(**OFF)
    assert not cfg.enabled
    assert torch.equal(augment(x.clone(), cfg), x)


@pytest.mark.parametrize("key", list(KEYS))
def test_each_key_changes_images_in_range_and_per_image(key: str) -> None:
    x = images()
    cfg = AugmentConfig(**OFF, **{key: KEYS[key]})
    assert cfg.enabled and cfg.handwriting and not cfg.affine
    y = handwriting_variation(x.clone(), cfg, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    changed = (y - x).abs().flatten(1).amax(dim=1) > 1e-3
    assert changed.any()
    if key in ("blur", "min_resolution", "haze"):  # half the images, drawn per image
        assert 0 < int(changed.sum()) < len(x)
    # the same generator seed, the same augmentation; another seed, another one
    again = handwriting_variation(x.clone(), cfg, torch.Generator().manual_seed(0))
    assert torch.equal(y, again)
    assert not torch.equal(y, handwriting_variation(x.clone(), cfg, torch.Generator().manual_seed(1)))


def test_handwriting_p_leaves_the_rest_of_the_batch_untouched() -> None:
    x = images()
    cfg = AugmentConfig(**OFF, min_resolution=10, noise=0.1, handwriting_p=0.5)
    y = augment(x.clone(), cfg, torch.Generator().manual_seed(0))
    changed = (y - x).abs().flatten(1).amax(dim=1) > 1e-6
    assert 0.25 * len(x) < int(changed.sum()) < 0.75 * len(x)  # about half, drawn per image
    before = x.clone()
    handwriting_variation(x, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(x, before)  # never changes its input in place
    with pytest.raises(UserError, match="handwriting_p=0.0 must be in"):
        AugmentConfig(handwriting_p=0.0)


def test_haze_is_a_smooth_veil_that_keeps_the_strokes_above_it() -> None:
    x = images()
    y = handwriting_variation(x.clone(), AugmentConfig(**OFF, haze=2.0), torch.Generator().manual_seed(0))
    veiled = (y - x).abs().flatten(1).amax(dim=1) > 0.1  # not the few drawn with a strength near 0
    assert 0 < int(veiled.sum()) < len(x)
    background = x < 0.05
    # grey where the digit has no ink, and smooth: one pixel to the next changes far less than a stroke's edge
    assert all(float(y[i][background[i]].mean()) > 0.02 for i in range(len(x)) if veiled[i])
    empty = background[:, :, :, 1:] & background[:, :, :, :-1]
    step = (y[:, :, :, 1:] - y[:, :, :, :-1]).abs()[empty]
    assert float(step.max()) < 0.2
    # the strokes stay the brightest: the veil (at most as bright as them) is rescaled with them into [0, 1]
    ink = x > 0.9
    for i in torch.nonzero(veiled).flatten().tolist():
        assert float(y[i][ink[i]].mean()) > float(y[i][background[i]].mean()) + 0.1


def test_stroke_goes_both_ways() -> None:
    x = images()
    y = handwriting_variation(x.clone(), AugmentConfig(**OFF, stroke=1.0), torch.Generator().manual_seed(0))
    ink_change = (y - x).flatten(1).sum(dim=1)
    assert (ink_change > 1).any() and (ink_change < -1).any()  # thicker and thinner strokes in one batch


def test_aspect_changes_the_width_to_height_ratio_and_keeps_the_area() -> None:
    square = torch.zeros(200, 1, 28, 28)
    square[:, :, 10:18, 10:18] = 1.0  # an 8x8 block in the middle
    y = augment(square, AugmentConfig(**OFF, aspect=1.0), torch.Generator().manual_seed(0))
    ink = y[:, 0] > 0.5
    width = ink.any(dim=1).sum(dim=1).float()
    height = ink.any(dim=2).sum(dim=1).float()
    ratio = width / height
    assert ratio.min() < 0.7 and ratio.max() > 1.4 and ratio.min() > 0.4 and ratio.max() < 2.5  # half to twice
    assert ((width * height) / 64 - 1).abs().max() < 0.35  # about the same area
    assert torch.equal(augment(square, AugmentConfig(**OFF, aspect=0.0)), square)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("aspect", -0.5, "data.augment.aspect=-0.5 must be a number in [0, 3]"),
    ("elastic", -1.0, "data.augment.elastic=-1.0 must be a number in [0, 200]"),
    ("stroke", 5.0, "data.augment.stroke=5.0 must be a number in [0, 3]"),
    ("noise", "lots", "data.augment.noise='lots'"),
    ("erasing", 1.5, "data.augment.erasing=1.5"),
    ("min_resolution", 2, "data.augment.min_resolution=2 must be 0 (off)"),
    ("min_resolution", 12.5, "data.augment.min_resolution=12.5"),
    ("elastic_sigma", 0.0, "data.augment.elastic_sigma=0.0 must be in [0.5, 20]"),
    ("styles", 1.5, "data.augment.styles=1.5 must be a number in [0, 1]"),
])
def test_bad_values_are_refused(key: str, value: object, message: str) -> None:
    with pytest.raises(UserError, match=__import__("re").escape(message)):
        AugmentConfig(**{key: value})


def test_background_norm_keeps_clean_digits_and_removes_a_grey_background() -> None:
    mean, std = 0.1307, 0.3081
    x = images()
    norm = BackgroundNorm()
    clean = norm((x - mean) / std) * std + mean  # back to pixels
    assert (clean - x).abs().mean() < 0.01
    grey = (x + 0.5).clamp(max=1.0)  # MNIST-C's brightness: a grey background, strokes saturated
    fixed = norm((grey - mean) / std) * std + mean
    assert (fixed - x).abs().mean() < 0.05 < (grey - x).abs().mean()


def test_background_norm_is_the_grey_level_top_hat_of_a_square_window() -> None:
    import torch.nn.functional as F

    torch.manual_seed(0)
    x = torch.rand(5, 2, 23, 19)
    for window in (9, 1, 3, 5, 7, 15):  # the default; then each branch of the sparse table (powers of 2 and past)
        eroded = -F.max_pool2d(-x, window, stride=1, padding=window // 2)  # the textbook opening with max_pool2d
        tophat = x - F.max_pool2d(eroded, window, stride=1, padding=window // 2)
        expected = (tophat / tophat.amax(dim=(-3, -2, -1), keepdim=True).clamp_min(1e-3) - 0.1307) / 0.3081
        norm = BackgroundNorm(window) if window != 9 else BackgroundNorm()
        assert torch.equal(norm(x), expected), window


def test_the_writer_shift_redraws_every_digit_the_same_way_for_a_seed() -> None:
    digits = digit_like(64, seed=3)
    shifted = writer_shifted(digits)
    assert shifted.dtype == torch.uint8 and shifted.shape == digits.shape
    assert torch.equal(shifted, writer_shifted(digits))  # a re-fit of the detector gets the same threshold
    assert not torch.equal(shifted, writer_shifted(digits, seed=1))
    changed = (shifted.float() - digits.float()).abs().flatten(1).amax(dim=1) > 0
    assert bool(changed.all())  # every image, not half of them (handwriting_p is 1)


def test_a_milder_writer_shift_moves_the_digits_less() -> None:
    digits = digit_like(64, seed=3)
    assert torch.equal(writer_shifted(digits, strength=0.0), digits)  # no shift at all
    assert writer_shift(1.0) == WRITER_SHIFT
    assert torch.equal(writer_shifted(digits, strength=1.0), writer_shifted(digits))
    half = writer_shift(0.5)
    assert half.rotation == WRITER_SHIFT.rotation / 2 and half.scale == (0.925, 1.075) and half.min_resolution == 18

    def moved(strength: float) -> float:
        return float((writer_shifted(digits, strength=strength).float() - digits.float()).abs().mean())

    assert 0 < moved(0.25) < moved(0.5) < moved(1.0)
    with pytest.raises(ValueError, match="strength"):
        writer_shift(1.5)
