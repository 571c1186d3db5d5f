"""Data sets (synthetic, imagefolder, cifar), the training subset and the batch loaders."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision.io import encode_jpeg, encode_png, write_file

from mixbench.datasets import (
    DataLoaderBatches,
    TensorBatchLoader,
    TensorImages,
    create_dataset,
    list_datasets,
    make_loader,
)
from mixbench.datasets import cache as cache_mod
from mixbench.datasets import folder as folder_mod
from mixbench.datasets.augment import crop_flip, epoch_order, shard_length
from mixbench.errors import UnknownNameError, UsageError

CIFAR_JPEG = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg.tar.xz"
SMALL = {"n_train": 400, "n_test": 200}
# the tests write their images with torchvision.io, deprecated since torchvision 0.29
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")


# ---------------------------------------------------------------- registry


def test_registry_lists_builtin_datasets_and_refuses_unknown_names_and_options():
    assert {"synthetic", "imagefolder", "cifar10", "cifar100"} <= set(list_datasets())
    with pytest.raises(UnknownNameError, match="did you mean synthetic"):
        create_dataset("synthtic")
    with pytest.raises(UsageError, match="no option 'colour'.*n_train"):
        create_dataset("synthetic", colour=True)


# ---------------------------------------------------------------- synthetic


def test_synthetic_shapes_dtypes_and_balanced_classes():
    bundle = create_dataset("synthetic", **SMALL)
    assert bundle.num_classes == 10 and len(bundle.class_names) == 10
    assert bundle.image_size == (32, 32)
    assert isinstance(bundle.train, TensorImages)
    assert bundle.train.images.shape == (400, 3, 32, 32)
    assert bundle.train.images.dtype == torch.uint8
    assert bundle.train.labels.dtype == torch.int64
    assert bundle.test.images.shape == (200, 3, 32, 32)
    assert torch.bincount(bundle.train.labels).tolist() == [40] * 10
    assert torch.bincount(bundle.test.labels).tolist() == [20] * 10
    # the statistics are those of the training images
    pixels = bundle.train.images.double() / 255
    assert bundle.mean == pytest.approx(pixels.mean(dim=(0, 2, 3)).tolist(), abs=1e-5)
    assert bundle.std == pytest.approx(pixels.std(dim=(0, 2, 3)).tolist(), abs=1e-4)


def test_synthetic_options():
    bundle = create_dataset("synthetic", num_classes=4, image_size=[16, 24], n_train=40, n_test=8)
    assert bundle.train.images.shape == (40, 3, 16, 24)
    assert bundle.image_size == (16, 24)
    assert torch.bincount(bundle.train.labels).tolist() == [10] * 4
    with pytest.raises(UsageError, match="image_size"):
        create_dataset("synthetic", image_size=[0, 3])


def test_synthetic_is_deterministic_under_a_seed_and_changes_with_it():
    a = create_dataset("synthetic", seed=3, **SMALL)
    b = create_dataset("synthetic", seed=3, **SMALL)
    c = create_dataset("synthetic", seed=4, **SMALL)
    assert torch.equal(a.train.images, b.train.images)
    assert torch.equal(a.train.labels, b.train.labels)
    assert torch.equal(a.test.images, b.test.images)
    assert not torch.equal(a.train.images, c.train.images)
    # the test set does not depend on the size of the training set
    d = create_dataset("synthetic", seed=3, n_train=100, n_test=200)
    assert torch.equal(a.test.images, d.test.images)


def _spectrum_features(images: torch.Tensor) -> torch.Tensor:
    """Phase- and position-invariant features: |FFT| of the grey image plus channel means."""
    grey = images.double().mean(dim=1) / 255
    spectrum = torch.fft.fft2(grey - grey.mean(dim=(1, 2), keepdim=True)).abs().flatten(1)
    spectrum = spectrum / spectrum.norm(dim=1, keepdim=True)
    return torch.cat([spectrum, images.double().mean(dim=(2, 3)) / 255], dim=1)


def test_synthetic_is_learnable():
    bundle = create_dataset("synthetic", n_train=1000, n_test=500)
    train_x, test_x = (
        _spectrum_features(bundle.train.images),
        _spectrum_features(bundle.test.images),
    )
    means = torch.stack([train_x[bundle.train.labels == c].mean(0) for c in range(10)])
    predicted = torch.cdist(test_x, means).argmin(dim=1)
    accuracy = (predicted == bundle.test.labels).double().mean().item()
    assert accuracy > 0.4  # chance is 0.1; a small CNN gets ~0.75 after two epochs


# ---------------------------------------------------------------- imagefolder


def _image(seed: int, height: int = 8, width: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=g)


def _make_folder(root: Path, split_counts: dict[str, dict[str, int]]) -> dict[str, torch.Tensor]:
    """PNG images under root/<split>/<class>/; returns the written images by relative path."""
    written = {}
    seed = 0
    for split, classes in split_counts.items():
        for name, count in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                seed += 1
                image = _image(seed)
                write_file(str(folder / f"{i:03d}.png"), encode_png(image))
                written[f"{split}/{name}/{i:03d}.png"] = image
    return written


LAYOUT = {"train": {"zebra": 3, "ant": 2, "bee": 4}, "val": {"ant": 1, "bee": 2, "zebra": 1}}


def test_imagefolder_labels_in_sorted_class_order_and_exact_pixels(tmp_path):
    written = _make_folder(tmp_path, LAYOUT)
    bundle = create_dataset("imagefolder", tmp_path)
    assert bundle.class_names == ["ant", "bee", "zebra"]
    assert bundle.num_classes == 3 and bundle.image_size == (8, 8)
    assert bundle.train.labels.tolist() == [0, 0, 1, 1, 1, 1, 2, 2, 2]
    assert bundle.test.labels.tolist() == [0, 1, 1, 2]
    assert torch.equal(bundle.train.images[0], written["train/ant/000.png"])
    assert torch.equal(bundle.train.images[8], written["train/zebra/002.png"])
    assert torch.equal(bundle.test.images[3], written["val/zebra/000.png"])


def test_imagefolder_name_option_labels_the_data(tmp_path):
    """``--set dataset_options.imagefolder.name=CIFAR-10`` reaches the data set's own ``name``
    option (it once collided with ``create_dataset``'s first argument)."""
    _make_folder(tmp_path, LAYOUT)
    assert create_dataset("imagefolder", tmp_path).display_name == tmp_path.name
    bundle = create_dataset("imagefolder", tmp_path, name="Insects")
    assert bundle.name == "imagefolder" and bundle.display_name == "Insects"


def test_imagefolder_cache_is_written_once_and_reused_without_decoding(tmp_path, monkeypatch):
    _make_folder(tmp_path, LAYOUT)
    first = create_dataset("imagefolder", tmp_path)
    cached = sorted(p.name for p in (tmp_path / ".mixbench-cache").iterdir())
    assert len(cached) == 2 and cached[0].startswith("train-") and cached[1].startswith("val-")
    assert all(name.endswith(".pt") for name in cached)  # no temporary files left behind

    def refuse(path):
        raise AssertionError(f"decoded {path} although it is cached")

    monkeypatch.setattr(folder_mod, "decode_file", refuse)
    second = create_dataset("imagefolder", tmp_path)
    assert torch.equal(first.train.images, second.train.images)
    assert torch.equal(first.test.labels, second.test.labels)
    assert first.mean == second.mean


def test_imagefolder_cache_follows_changed_files(tmp_path):
    _make_folder(tmp_path, LAYOUT)
    create_dataset("imagefolder", tmp_path)
    new = _image(999)
    write_file(str(tmp_path / "train" / "ant" / "000.png"), encode_png(new))
    os.utime(tmp_path / "train" / "ant" / "000.png", ns=(1, 1))  # a different mtime for sure
    bundle = create_dataset("imagefolder", tmp_path)
    assert torch.equal(bundle.train.images[0], new)


def test_imagefolder_cache_falls_back_to_user_cache_dir(tmp_path, monkeypatch):
    data = tmp_path / "data"
    _make_folder(data, LAYOUT)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    real_write = cache_mod.atomic_write

    def read_only_root(path, write):
        if data in Path(path).parents:
            raise PermissionError(13, "Permission denied")
        real_write(path, write)

    monkeypatch.setattr(cache_mod, "atomic_write", read_only_root)
    first = create_dataset("imagefolder", data)
    assert not (data / ".mixbench-cache").exists()
    assert len(list((tmp_path / "xdg" / "mixbench").glob("*/train-*.pt"))) == 1
    monkeypatch.setattr(folder_mod, "decode_file", lambda path: pytest.fail("decoded again"))
    assert torch.equal(create_dataset("imagefolder", data).train.images, first.train.images)


def test_imagefolder_prefers_val_and_decodes_jpeg(tmp_path):
    _make_folder(tmp_path, {"train": {"a": 1, "b": 1}, "test": {"a": 1}})
    bundle = create_dataset("imagefolder", tmp_path)
    assert len(bundle.test) == 1
    _make_folder(tmp_path, {"val": {"a": 1, "b": 1}})
    image = torch.full((3, 8, 8), 200, dtype=torch.uint8)
    write_file(str(tmp_path / "val" / "b" / "x.jpg"), encode_jpeg(image, quality=95))
    bundle = create_dataset("imagefolder", tmp_path)
    assert bundle.test.labels.tolist() == [0, 1, 1]
    assert (bundle.test.images[2].int() - 200).abs().max() <= 3


def test_imagefolder_sizes_must_agree_unless_resized(tmp_path):
    _make_folder(tmp_path, {"train": {"a": 1, "b": 1}, "val": {"a": 1}})
    write_file(str(tmp_path / "train" / "b" / "big.png"), encode_png(_image(5, 12, 10)))
    with pytest.raises(UsageError, match="differ in size.*big.png is 12x10.*image_size"):
        create_dataset("imagefolder", tmp_path)
    bundle = create_dataset("imagefolder", tmp_path, image_size=6)
    assert bundle.train.images.shape == (3, 3, 6, 6) and bundle.image_size == (6, 6)
    assert bundle.test.images.shape == (1, 3, 6, 6)


def test_imagefolder_errors_name_the_path_and_the_fix(tmp_path):
    with pytest.raises(UsageError, match="pass --data-root"):
        create_dataset("imagefolder")
    with pytest.raises(UsageError, match=re.escape(f"{tmp_path / 'nowhere'} does not exist")):
        create_dataset("imagefolder", tmp_path / "nowhere")
    with pytest.raises(
        UsageError, match=re.escape(f"no train/ folder in {tmp_path}: ") + ".*ROOT/train/<class>/"
    ):
        create_dataset("imagefolder", tmp_path)
    _make_folder(tmp_path, {"train": {"a": 1}})
    with pytest.raises(UsageError, match="no val/ or test/ folder"):
        create_dataset("imagefolder", tmp_path)
    _make_folder(tmp_path, {"val": {"a": 1}})
    (tmp_path / "train" / "empty").mkdir()
    with pytest.raises(
        UsageError, match=re.escape(f"class folder {tmp_path / 'train' / 'empty'} has no")
    ):
        create_dataset("imagefolder", tmp_path)
    (tmp_path / "train" / "empty").rmdir()
    (tmp_path / "train" / "a" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(UsageError, match="cannot decode image .*broken.png"):
        create_dataset("imagefolder", tmp_path)
    (tmp_path / "train" / "a" / "broken.png").unlink()
    _make_folder(tmp_path, {"val": {"stray": 1}})
    with pytest.raises(UsageError, match="stray has no counterpart in the train/ folder"):
        create_dataset("imagefolder", tmp_path)


def test_imagefolder_on_the_fly_through_a_dataloader(tmp_path):
    written = _make_folder(tmp_path, {"train": {"a": 4, "b": 4}, "test": {"a": 2, "b": 2}})
    bundle = create_dataset("imagefolder", tmp_path, in_memory=False)
    assert not isinstance(bundle.train, TensorImages)
    image, label = bundle.train[5]
    assert label == 1 and torch.equal(image, written["train/b/001.png"])
    common = {"mean": bundle.mean, "std": bundle.std, "num_workers": 0}
    test = make_loader(bundle.test, batch_size=3, train=False, **common)
    assert isinstance(test, DataLoaderBatches) and len(test) == 2
    images, labels = next(iter(test))
    assert images.dtype == torch.float32 and labels.dtype == torch.int64
    expected = written["test/a/000.png"].double() / 255 - torch.tensor(bundle.mean).view(3, 1, 1)
    expected = expected / torch.tensor(bundle.std).view(3, 1, 1)
    assert torch.allclose(images[0].double(), expected, atol=1e-5)
    train = make_loader(bundle.train, batch_size=4, train=True, seed=1, **common)
    train.set_epoch(2)
    epoch2 = [b for b in train]
    train.set_epoch(3)
    epoch3 = [b for b in train]
    train.set_epoch(2)
    again = [b for b in train]
    assert len(epoch2) == len(train) == 2
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(epoch2, again))
    assert not all(torch.equal(x[0], y[0]) for x, y in zip(epoch2, epoch3))
    # each sample's augmentation is seeded by the sampler, not by the worker that loads it
    common["num_workers"] = 1
    in_worker = make_loader(bundle.train, batch_size=4, train=True, seed=1, **common)
    in_worker.set_epoch(2)
    assert all(torch.equal(x[0], y[0]) for x, y in zip(epoch2, in_worker))
    # a subset of an on-the-fly split is a torch Subset with balanced classes
    subset = create_dataset("imagefolder", tmp_path, in_memory=False, train_subset=4)
    assert len(subset.train) == 4
    assert sorted(subset.train[i][1] for i in range(4)) == [0, 0, 1, 1]


# ---------------------------------------------------------------- training subset


def test_train_subset_is_balanced_fixed_by_its_seed_and_bounded():
    a = create_dataset("synthetic", train_subset=100, **SMALL)
    b = create_dataset("synthetic", train_subset=100, **SMALL)
    c = create_dataset("synthetic", train_subset=100, subset_seed=1, **SMALL)
    full = create_dataset("synthetic", **SMALL)
    assert len(a.train) == 100 and torch.bincount(a.train.labels).tolist() == [10] * 10
    assert torch.equal(a.train.images, b.train.images)
    assert not torch.equal(a.train.images, c.train.images)
    assert len(a.test) == len(full.test)  # the test set is untouched
    assert "training subset of 100 images" in a.description
    # every subset image is one of the full set's images of the same class
    flat = full.train.images.flatten(1)
    for image, label in zip(a.train.images[:5], a.train.labels[:5]):
        match = (flat == image.flatten()).all(dim=1).nonzero().flatten()
        assert match.numel() == 1 and full.train.labels[match[0]] == label
    with pytest.raises(UsageError, match="train_subset 401 is larger than the 400"):
        create_dataset("synthetic", train_subset=401, **SMALL)
    with pytest.raises(UsageError, match="at least the number of classes"):
        create_dataset("synthetic", train_subset=5, **SMALL)


# ---------------------------------------------------------------- the tensor loader


def _ids_loader(n: int = 24, size: int = 6, **kw) -> tuple[TensorBatchLoader, torch.Tensor]:
    """A loader whose labels are the sample indices, with mean 0 and std 1/255 (so the
    normalised image equals the uint8 values as floats)."""
    images = torch.randint(
        0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    options = {"batch_size": 8, "mean": (0, 0, 0), "std": (1 / 255,) * 3, "train": True}
    options.update(kw)
    return TensorBatchLoader(images, torch.arange(n), **options), images


def _epoch(loader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(epoch)
    return list(loader)


def test_loader_without_augmentation_yields_normalised_images():
    images = torch.randint(0, 256, (10, 3, 4, 4), dtype=torch.uint8)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    loader = TensorBatchLoader(
        images,
        torch.arange(10),
        batch_size=4,
        mean=mean,
        std=std,
        train=True,
        crop_padding=0,
        flip=False,
        drop_last=False,
    )
    expected = (images.double() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(
        std
    ).view(1, 3, 1, 1)
    for batch, ids in loader:
        assert batch.dtype == torch.float32 and ids.dtype == torch.int64
        assert torch.allclose(batch.double(), expected[ids], atol=1e-5)


def test_flips_are_exact_mirror_images():
    loader, images = _ids_loader(n=64, crop_padding=0, flip=True)
    seen_flip = seen_plain = False
    for batch, ids in _epoch(loader, 1):
        source = images[ids].float()
        for out, src in zip(batch, source):
            is_plain, is_flip = torch.equal(out, src), torch.equal(out, src.flip(-1))
            assert is_plain or is_flip
            seen_plain |= is_plain
            seen_flip |= is_flip
    assert seen_flip and seen_plain


def test_crops_are_shifted_windows_of_the_zero_padded_image():
    pad = 2
    loader, images = _ids_loader(n=32, crop_padding=pad, flip=False)
    padded = F.pad(images, (pad,) * 4).float()
    offsets = set()
    for batch, ids in _epoch(loader, 0):
        for out, i in zip(batch, ids):
            windows = [
                (dy, dx)
                for dy in range(2 * pad + 1)
                for dx in range(2 * pad + 1)
                if torch.equal(out, padded[i, :, dy : dy + 6, dx : dx + 6])
            ]
            assert windows, "a crop is not a window of the padded image"
            offsets.add(windows[0])
    assert len(offsets) > 5  # every sample draws its own offset


def test_crop_flip_matches_a_per_image_reference_and_leaves_its_input():
    images = torch.randint(0, 256, (5, 2, 4, 6), dtype=torch.uint8)
    before = images.clone()
    top, left = torch.tensor([0, 1, 2, 0, 2]), torch.tensor([2, 0, 1, 1, 0])
    flipped = torch.tensor([True, False, True, False, False])
    out = crop_flip(images, top, left, flipped, padding=1)
    assert torch.equal(images, before)
    padded = F.pad(images, (1, 1, 1, 1))
    for i in range(5):
        window = padded[i, :, top[i] : top[i] + 4, left[i] : left[i] + 6]
        assert torch.equal(out[i], window.flip(-1) if flipped[i] else window)


def test_same_seed_and_epoch_give_identical_batches_other_epochs_another_order():
    loader, _ = _ids_loader(seed=5)
    twin, _ = _ids_loader(seed=5)
    other_seed, _ = _ids_loader(seed=6)
    a, b = _epoch(loader, 3), _epoch(twin, 3)
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))
    order = lambda batches: torch.cat([ids for _, ids in batches])  # noqa: E731
    assert not torch.equal(order(a), order(_epoch(loader, 4)))
    assert not torch.equal(order(a), order(_epoch(other_seed, 3)))
    # resuming: a fresh loader at epoch 3 repeats epoch 3 exactly, whatever ran before
    _epoch(twin, 1)
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a, _epoch(twin, 3)))


def test_every_training_sample_once_per_epoch():
    loader, _ = _ids_loader(n=30, drop_last=False)
    assert len(loader) == 4
    ids = torch.cat([i for _, i in _epoch(loader, 7)])
    assert sorted(ids.tolist()) == list(range(30))
    dropping, _ = _ids_loader(n=30)  # drop_last defaults to train
    assert len(dropping) == 3 and sum(len(i) for _, i in _epoch(dropping, 7)) == 24


def test_evaluation_is_in_order_and_unaugmented():
    loader, images = _ids_loader(n=20, train=False)
    assert len(loader) == 3  # drop_last defaults to False for evaluation
    batches = _epoch(loader, 2)
    assert torch.cat([i for _, i in batches]).tolist() == list(range(20))
    assert torch.equal(torch.cat([x for x, _ in batches]), images.float())


def test_world_size_two_shards_are_disjoint_and_covering():
    shards = [_ids_loader(n=24, rank=r, world_size=2, drop_last=False)[0] for r in (0, 1)]
    ids = [torch.cat([i for _, i in _epoch(s, 1)]).tolist() for s in shards]
    assert len(ids[0]) == len(ids[1]) == 12 and not set(ids[0]) & set(ids[1])
    assert sorted(ids[0] + ids[1]) == list(range(24))
    evals = [_ids_loader(n=25, train=False, rank=r, world_size=2)[0] for r in (0, 1)]
    eval_ids = [torch.cat([i for _, i in _epoch(s, 1)]).tolist() for s in evals]
    assert eval_ids == [list(range(13)), list(range(13, 25))]
    for n in (0, 1, 7, 24, 25):
        for train in (True, False):
            for r in range(3):
                assert len(epoch_order(n, train=train, seed=0, epoch=1, rank=r, world_size=3)) == (
                    shard_length(n, train, r, 3)
                )


# ---------------------------------------------------------------- cifar


@pytest.mark.parametrize(
    ("name", "folder"), [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")]
)
def test_cifar_missing_files_say_where_and_how(tmp_path, name, folder):
    with pytest.raises(UsageError, match=re.escape(str(tmp_path / folder)) + ".*--download"):
        create_dataset(name, tmp_path)
    with pytest.raises(UsageError, match="pass --data-root"):
        create_dataset(name)


# ---------------------------------------------------------------- real data


@pytest.fixture(scope="session")
def cifar10_jpeg(tmp_path_factory) -> Path:
    """The CIFAR-10 JPEG release extracted once per session."""
    if not CIFAR_JPEG.is_file():
        pytest.skip(f"CIFAR-10 JPEG archive not found at {CIFAR_JPEG}")
    target = tmp_path_factory.mktemp("cifar10")
    subprocess.run(["tar", "-xJf", str(CIFAR_JPEG), "-C", str(target)], check=True)
    return target / "cifar10-jpeg"


@pytest.mark.slow
def test_cifar10_jpeg_folder(cifar10_jpeg, monkeypatch):
    start = time.perf_counter()
    bundle = create_dataset("imagefolder", cifar10_jpeg)
    decoded = time.perf_counter() - start
    assert bundle.class_names == [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    assert bundle.train.images.shape == (50000, 3, 32, 32)
    assert bundle.test.images.shape == (10000, 3, 32, 32)
    assert torch.bincount(bundle.train.labels).tolist() == [5000] * 10
    assert torch.bincount(bundle.test.labels).tolist() == [1000] * 10
    assert bundle.mean == pytest.approx((0.49, 0.48, 0.45), abs=0.02)  # CIFAR-10's known means
    monkeypatch.setattr(folder_mod, "decode_file", lambda path: pytest.fail("decoded again"))
    start = time.perf_counter()
    again = create_dataset("imagefolder", cifar10_jpeg, train_subset=1000)
    cached = time.perf_counter() - start
    assert torch.bincount(again.train.labels).tolist() == [100] * 10
    print(f"decode {decoded:.1f} s, from cache {cached:.1f} s")
