"""The non-digit sets: deterministic, in MNIST's layout, apart from any training set, no digits in disguise."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vit_mnist.data.non_digits import (
    EXCLUDED_LETTERS,
    GENERATED,
    LETTERS,
    NON_DIGIT_SETS,
    PEN_LETTERS,
    SET_SIZES,
    load_non_digit_sets,
    make_non_digits,
    non_digit_sets_for,
)
from vit_mnist.errors import UserError

make = make_non_digits.__wrapped__  # the generator itself, not its cache: a second call really makes them again


def extents_and_centres(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Longer side of each image's ink (pixels above 0) and its centre of mass (row, column)."""
    x = images[:, 0].double()
    sides = []
    for axis in (1, 2):
        inked = (x.amax(dim=axis) > 0).double()
        sides.append(28 - inked.argmax(dim=1) - inked.flip(1).argmax(dim=1))
    total = x.sum(dim=(1, 2))
    rows = (x.sum(dim=2) * torch.arange(28.0)).sum(dim=1) / total
    cols = (x.sum(dim=1) * torch.arange(28.0)).sum(dim=1) / total
    return torch.maximum(*sides), rows, cols


@pytest.mark.parametrize("name", GENERATED)
def test_each_generated_set_is_deterministic_and_in_mnist_layout(name: str) -> None:
    images = make(name, 48)
    assert images.shape == (48, 1, 28, 28) and images.dtype == torch.uint8
    assert torch.equal(images, make(name, 48))  # made again from scratch: the same images
    assert torch.equal(images[:20], make(name, 20))  # the first N of a larger set are the set of N
    assert not torch.equal(images, make(name, 48, seed=1))
    assert len({bytes(i.numpy()) for i in images}) == len(images)  # no image twice
    longer, rows, cols = extents_and_centres(images)
    assert images.amax(dim=(1, 2, 3)).min() >= 200  # full-strength ink, white on black
    if name == "noise":  # a blotch's faint edge may fall outside the crop, and centring it by mass clips it
        assert longer.min() >= 14 and longer.max() <= 21
        assert (rows - 14).abs().max() < 2.5 and (cols - 14).abs().max() < 2.5
    else:  # fitted to MNIST's 20x20 box and centred by mass, as MNIST's digits are
        assert longer.min() >= 19 and longer.max() <= 21
        assert (rows - 14).abs().max() < 1.0 and (cols - 14).abs().max() < 1.0
        border = torch.cat([images[:, 0, 0], images[:, 0, -1], images[:, 0, :, 0], images[:, 0, :, -1]], dim=1)
        assert border.double().median() == 0  # black background


@pytest.mark.parametrize("name", GENERATED)
def test_the_benchmark_the_training_sets_and_the_threshold_check_share_no_image(name: str) -> None:
    benchmark = {bytes(i.numpy()) for i in make(name, 40)}
    training = {bytes(i.numpy()) for i in make(name, 40, split="training")}
    check = {bytes(i.numpy()) for i in make(name, 40, split="thresholds")}
    assert not benchmark & training and not check & (benchmark | training)


def test_letters_leave_out_the_digits_in_disguise() -> None:
    assert not set(EXCLUDED_LETTERS) & set(LETTERS)
    assert {"O", "o", "I", "l", "S", "Z", "B", "g", "q"} <= set(EXCLUDED_LETTERS)
    assert set(PEN_LETTERS) <= set(LETTERS)
    assert all(c.isalpha() for c in LETTERS)


def test_the_other_dataset_is_the_outsider(data_dir: Path) -> None:
    assert non_digit_sets_for("mnist") == [*GENERATED, "fashion"]
    assert non_digit_sets_for("fashion_mnist") == [*GENERATED, "digits"]
    garments = make("fashion", 12, data_dir=str(data_dir))
    assert garments.shape == (12, 1, 28, 28) and garments.dtype == torch.uint8
    longer, _, _ = extents_and_centres(garments)
    assert longer.max() <= 21  # laid out as predict lays out a user's image for a model of digits
    training = make("fashion", 12, data_dir=str(data_dir), split="training")  # Fashion-MNIST's training images
    check = make("fashion", 12, data_dir=str(data_dir), split="thresholds")  # the last of them: apart from a pool
    sets = [{bytes(i.numpy()) for i in images} for images in (garments, training, check)]
    assert not sets[0] & sets[1] and not sets[2] & (sets[0] | sets[1])
    from vit_mnist.data import load_split

    digits, _ = load_split("mnist", str(data_dir), "test", download=False)
    # for a model of garments, MNIST's test images as they are (a 28x28 image with a dark border is not laid out)
    assert torch.equal(make("digits", 5, data_dir=str(data_dir)), digits[:5])


def test_a_missing_dataset_leaves_its_set_out_with_a_note(tmp_path: Path) -> None:
    sets, notes = load_non_digit_sets("mnist", tmp_path, limit=6)
    assert list(sets) == list(GENERATED) and all(len(v) == 6 for v in sets.values())
    assert len(notes) == 1 and notes[0].startswith("Fashion-MNIST left out") and "missing" in notes[0]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"name": "digitz"}, "is not a non-digit set"),
    ({"name": "letters", "split": "test"}, "is not one of"),
    ({"name": "letters", "count": 0}, "must be a positive whole number"),
    ({"name": "fashion"}, "needs the data folder"),
])
def test_bad_arguments_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        make(**kwargs)


def test_every_set_is_described_and_sized() -> None:
    assert set(NON_DIGIT_SETS) == set(SET_SIZES) == {*GENERATED, "fashion", "digits"}
    assert all(100 <= n <= 2000 for n in SET_SIZES.values())
