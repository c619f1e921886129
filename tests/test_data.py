"""IDX reading and validation, dataset location errors, the train/val split and on-device augmentation."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.plugins.precision import HalfPrecision, Precision

from tests.synthetic import write_dataset
from vit_mnist.data import MNISTDataModule, load_split
from vit_mnist.data.augment import AugmentConfig, random_affine
from vit_mnist.data.idx import read_idx, read_images, read_labels, write_idx
from vit_mnist.data.sources import ensure_files, get_spec
from vit_mnist.errors import UserError


def test_idx_round_trip_raw_and_gz(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = np.arange(7, dtype=np.uint8)
    for suffix in ("", ".gz"):
        np.testing.assert_array_equal(read_idx(write_idx(tmp_path / f"i{suffix}", images)), images)
        np.testing.assert_array_equal(read_idx(write_idx(tmp_path / f"l{suffix}", labels)), labels)
    assert gzip.decompress((tmp_path / "i.gz").read_bytes())[:4] == bytes([0, 0, 8, 3])


def test_load_split_reads_synthetic_mnist_and_fashion(data_dir: Path) -> None:
    images, labels = load_split("mnist", str(data_dir), "train", download=False)
    assert images.shape == (800, 1, 28, 28) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64 and set(labels.tolist()) == set(range(10))
    images, labels = load_split("fashion_mnist", str(data_dir), "test", download=False)  # gzip files
    assert images.shape == (200, 1, 28, 28)


@pytest.fixture
def good_files(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "d", "mnist", n_train=50, n_test=20) / "MNIST" / "raw"


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda p: p.write_bytes(b"\x00\x00\x08"), "truncated"),
        (lambda p: p.write_bytes(b"\x12\x34\x56\x78" + p.read_bytes()[4:]), "magic number"),
        (lambda p: p.write_bytes(p.read_bytes()[:-100]), "truncated"),
        (lambda p: p.write_bytes(p.read_bytes() + b"\x00" * 5), "longer than its header"),
        (lambda p: p.write_bytes(b"\x1f\x8b" + b"not really gzip"), "Cannot read"),
    ],
)
def test_corrupt_image_file_is_named(good_files: Path, corrupt, message: str) -> None:
    path = good_files / "train-images-idx3-ubyte"
    corrupt(path)
    with pytest.raises(UserError) as error:
        read_images(path, 28)
    assert message in str(error.value) and str(path) in str(error.value)


def test_wrong_dimensions_and_swapped_files(tmp_path: Path) -> None:
    small = write_idx(tmp_path / "small", np.zeros((3, 14, 14), np.uint8))
    with pytest.raises(UserError, match="14x14 pixels, expected 28x28"):
        read_images(small, 28)
    labels = write_idx(tmp_path / "labels", np.zeros(3, np.uint8))
    with pytest.raises(UserError, match="holds labels"):
        read_images(labels, 28)
    with pytest.raises(UserError, match="holds images"):
        read_labels(small, 10)


def test_label_out_of_range(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "labels", np.array([0, 3, 12], np.uint8))
    with pytest.raises(UserError, match="label 12, outside the range 0..9"):
        read_labels(path, 10)


def test_image_and_label_counts_must_agree(good_files: Path) -> None:
    write_idx(good_files / "train-labels-idx1-ubyte", np.zeros(49, np.uint8))
    with pytest.raises(UserError, match="50 images but .* 49 labels"):
        load_split("mnist", str(good_files.parents[1]), "train", download=False)


def test_missing_files_message_names_folder_files_and_fix(tmp_path: Path) -> None:
    with pytest.raises(UserError) as error:
        ensure_files(get_spec("mnist"), tmp_path, download=False)
    text = str(error.value)
    assert str(tmp_path / "MNIST" / "raw") in text
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        assert name in text
    assert "VIT_MNIST_DATA_DIR" in text and "paths.data_dir" in text


def test_failed_download_leaves_no_partial_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(UserError, match="Downloading failed .*network is unreachable"):
        ensure_files(get_spec("mnist"), tmp_path, download=True)
    assert list((tmp_path / "MNIST" / "raw").iterdir()) == []


def test_unknown_dataset() -> None:
    with pytest.raises(UserError, match="Unknown dataset data.name='kmnist'.*fashion_mnist"):
        get_spec("kmnist")


def test_split_sizes_are_fixed_and_test_untouched(data_dir: Path) -> None:
    def split(seed: int) -> MNISTDataModule:
        dm = MNISTDataModule(data_dir=str(data_dir), val_size=120, split_seed=seed, download=False)
        dm.setup()
        return dm

    a, b, c = split(1), split(1), split(2)
    assert (len(a.train_set), len(a.val_set), len(a.test_set)) == (680, 120, 200)
    assert torch.equal(a.val_set.images, b.val_set.images)
    assert not torch.equal(a.val_set.images, c.val_set.images)
    train_images, _ = load_split("mnist", str(data_dir), "train", download=False)
    merged = torch.cat([a.train_set.images, a.val_set.images]).flatten(1)
    assert sorted(map(bytes, merged.numpy())) == sorted(map(bytes, train_images.flatten(1).numpy()))
    test_images, test_labels = load_split("mnist", str(data_dir), "test", download=False)
    assert torch.equal(a.test_set.images, test_images) and torch.equal(a.test_set.labels, test_labels)


def test_val_size_too_large(data_dir: Path) -> None:
    dm = MNISTDataModule(data_dir=str(data_dir), val_size=800, download=False)
    with pytest.raises(UserError, match="data.val_size=800 leaves no training images"):
        dm.setup("fit")


def test_batches_come_whole_from_getitems(data_dir: Path) -> None:
    dm = MNISTDataModule(data_dir=str(data_dir), batch_size=64, val_size=100, download=False)
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (64, 1, 28, 28) and images.dtype == torch.uint8 and labels.shape == (64,)


class _FakeTrainer:
    def __init__(self, training: bool, precision: str = "32-true"):
        self.training = training
        self.precision_plugin = HalfPrecision("bf16-true") if precision == "bf16-true" else Precision()


def test_augmentation_changes_training_pixels_only(data_dir: Path) -> None:
    dm = MNISTDataModule(data_dir=str(data_dir), val_size=100, download=False)
    dm.setup("fit")
    batch = (dm.train_set.images[:32], dm.train_set.labels[:32])
    plain = dm.transform(batch[0], train=False)
    dm.trainer = _FakeTrainer(training=True)
    augmented, labels = dm.on_after_batch_transfer(batch, 0)
    assert torch.equal(labels, batch[1])
    assert (augmented - plain).abs().mean() > 0.05
    dm.trainer = _FakeTrainer(training=False)  # validation, test, predict
    evaluated, _ = dm.on_after_batch_transfer(batch, 0)
    torch.testing.assert_close(evaluated, plain)
    assert abs(plain.mean().item() - (batch[0].float().mean().item() / 255 - dm.mean) / dm.std) < 1e-4
    # under bf16-true Lightning converts batches before this hook, when they are still uint8: the hook converts
    dm.trainer = _FakeTrainer(training=False, precision="bf16-true")
    assert dm.on_after_batch_transfer(batch, 0)[0].dtype == torch.bfloat16


def test_random_affine_identity_and_flip() -> None:
    x = torch.rand(4, 1, 28, 28)
    none = AugmentConfig(rotation=0, translate=0, scale=(1.0, 1.0), hflip=False)
    assert not none.enabled and torch.equal(random_affine(x, none), x)
    torch.manual_seed(0)
    flip = AugmentConfig(rotation=0, translate=0, scale=(1.0, 1.0), hflip=True)
    out = random_affine(x, flip)
    for i in range(4):  # each image is either itself or its mirror image
        same, mirrored = torch.allclose(out[i], x[i], atol=1e-5), torch.allclose(out[i], x[i].flip(-1), atol=1e-5)
        assert same or mirrored


def test_nearest_interpolation_keeps_pixel_values_bilinear_blends_them() -> None:
    x = (torch.rand(8, 1, 28, 28) > 0.5).float()  # only 0s and 1s
    torch.manual_seed(0)
    nearest = random_affine(x, AugmentConfig(rotation=30, translate=0.1, interpolation="nearest"))
    assert set(nearest.unique().tolist()) <= {0.0, 1.0} and not torch.equal(nearest, x)
    torch.manual_seed(0)
    bilinear = random_affine(x, AugmentConfig(rotation=30, translate=0.1, interpolation="bilinear"))
    assert ((bilinear > 0.01) & (bilinear < 0.99)).any()
