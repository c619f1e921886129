"""Writing styles: a 1 gets a flag down-left from its top (and sometimes a foot), a 7 a bar across its stem,
nothing else changes, and the draw is seeded."""

from __future__ import annotations

import pytest
import torch

from vit_mnist.data.augment import AugmentConfig, augment
from vit_mnist.data.image_ops import draw_segments
from vit_mnist.data.writer_styles import writer_styles

OFF = {"rotation": 0.0, "translate": 0.0, "scale": [1.0, 1.0], "blur": 0.0, "min_resolution": 0}
TOP, BOTTOM, STEM = 4, 23, 16  # the constructed 1: a vertical stroke in column 16 from row 4 to row 23


def ones(n: int) -> torch.Tensor:
    starts = torch.tensor([[STEM, TOP]], dtype=torch.float32).expand(n, 1, 2)
    ends = torch.tensor([[STEM, BOTTOM]], dtype=torch.float32).expand(n, 1, 2)
    return draw_segments((n, 1, 28, 28), starts, ends)


def sevens(n: int) -> torch.Tensor:
    starts = torch.tensor([[8, 4], [20, 4]], dtype=torch.float32).expand(n, 2, 2)
    ends = torch.tensor([[20, 4], [12, 23]], dtype=torch.float32).expand(n, 2, 2)
    return draw_segments((n, 1, 28, 28), starts, ends)


def new_ink(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    return (after - before)[:, 0] > 0.3


def test_a_one_gets_a_flag_down_left_from_its_top_and_some_a_foot() -> None:
    x = ones(64)
    y = writer_styles(x, torch.ones(64, dtype=torch.long), 1.0, torch.Generator().manual_seed(0))
    ink = new_ink(x, y)
    rows, cols = torch.arange(28).view(1, 28, 1), torch.arange(28).view(1, 1, 28)
    flag = ink & (rows < BOTTOM - 2)
    assert bool(flag.flatten(1).any(1).all())  # every 1 is flagged at p = 1
    assert not bool((flag & (cols > STEM + 1)).any())  # the flag leaves the top to the left, never to the right
    assert not bool((flag & (rows > TOP + 0.5 * (BOTTOM - TOP) + 2)).any())  # within the upper half
    footed = (ink & (rows >= BOTTOM - 1) & (cols > STEM + 1)).flatten(1).any(1)
    assert 0.25 < float(footed.float().mean()) < 0.75  # a foot on about half of them
    lengths = flag.flatten(1).sum(1)
    assert len(lengths.unique()) > 3  # drawn per image
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0 and y.shape == x.shape


def test_a_seven_gets_a_bar_across_its_stem_below_the_top() -> None:
    x = sevens(32)
    y = writer_styles(x, torch.full((32,), 7), 1.0, torch.Generator().manual_seed(1))
    ink = new_ink(x, y)
    rows = torch.arange(28).view(1, 28, 1)
    assert bool(ink.flatten(1).any(1).all())
    height = BOTTOM - TOP + 1
    assert not bool((ink & ((rows < TOP + 0.4 * height) | (rows > TOP + 0.65 * height + 2))).any())
    for image in ink:  # on both sides of the stem, not a stroke that only thickens it
        cols = image.nonzero()[:, 1]
        assert int(cols.max() - cols.min()) >= 4


def test_other_labels_outliers_and_p_zero_leave_images_as_they_are() -> None:
    x = torch.cat([ones(8), sevens(8)])
    labels = torch.tensor([1] * 8 + [7] * 8)
    same = x.clone()
    for other in (torch.full((16,), 4), torch.full((16,), -1)):
        assert torch.equal(writer_styles(x, other, 1.0, torch.Generator().manual_seed(0)), x)
    assert torch.equal(writer_styles(x, labels, 0.0, torch.Generator().manual_seed(0)), x)
    assert torch.equal(x, same)  # the caller's batch is not drawn on


def test_the_draw_is_seeded_and_p_is_a_share() -> None:
    x, labels = ones(400), torch.ones(400, dtype=torch.long)
    a = writer_styles(x, labels, 0.5, torch.Generator().manual_seed(3))
    assert torch.equal(a, writer_styles(x, labels, 0.5, torch.Generator().manual_seed(3)))
    assert not torch.equal(a, writer_styles(x, labels, 0.5, torch.Generator().manual_seed(4)))
    share = float(new_ink(x, a).flatten(1).any(1).float().mean())
    assert 0.4 < share < 0.6


def test_augment_draws_styles_only_where_it_has_the_labels() -> None:
    x, labels = ones(16), torch.ones(16, dtype=torch.long)
    cfg = AugmentConfig(**OFF, styles=1.0)
    assert cfg.enabled
    assert torch.equal(augment(x, cfg, torch.Generator().manual_seed(0)), x)
    assert bool(new_ink(x, augment(x, cfg, torch.Generator().manual_seed(0), labels=labels)).flatten(1).any(1).all())


def test_the_data_module_draws_styles_on_training_batches_only(tmp_path) -> None:
    from vit_mnist.data.datamodule import MNISTDataModule

    dm = MNISTDataModule(name="mnist", data_dir=str(tmp_path), augment={**OFF, "styles": 1.0})
    images, labels = (ones(8) * 255).round().to(torch.uint8), torch.ones(8, dtype=torch.long)
    plain = dm.transform(images)
    assert torch.equal(dm.transform(images, train=True), plain)  # no labels: nothing to draw by
    drawn = dm.transform(images, train=True, labels=labels)
    assert bool(((drawn - plain).flatten(1).amax(1) > 1.0).all())  # normalised units: every 1 got new ink


def test_a_data_module_built_by_hand_refuses_styles_on_garments(tmp_path) -> None:
    from vit_mnist.data.datamodule import MNISTDataModule
    from vit_mnist.errors import UserError

    with pytest.raises(UserError, match=r"data.augment.styles=0.5 .*'Trouser'.*styles=0"):
        MNISTDataModule(name="fashion_mnist", data_dir=str(tmp_path), augment={"styles": 0.5})
    assert MNISTDataModule(name="fashion_mnist", data_dir=str(tmp_path), augment={"styles": 0.0}).augment.styles == 0
