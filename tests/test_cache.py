"""Speed-ups: the bottleneck features are kept on disk, and served again only for the same images,
module and image size."""
import os

import numpy as np
import pytest
from PIL import Image

from conftest import (fake_cifar10, load_data, run_main, save_feature_vector, script_lines, tl,
                      write_colour_images)

COLOURS = {"red": (200, 40, 40), "blue": (40, 40, 200)}


@pytest.fixture
def photos(tmp_path):
    return write_colour_images(tmp_path / "photos", COLOURS, 12)


def run(data, module, out, *extra):
    status, metrics = run_main("--data-dir", data, "--model-handle", module, "--image-size", 32,
                               "--epochs", 3, "--no-show", "--output-dir", out, *extra)
    assert status == 0
    return metrics


def kept_features(folder):
    """{file: {split: features}} of every features file in the cache folder."""
    kept = {}
    for name in sorted(os.listdir(folder)):
        with np.load(folder / name) as f:
            kept[name] = {split: f[split] for split in f.files}
    return kept


def test_a_second_run_that_changes_only_the_head_reads_the_same_features(photos, module32, tmp_path,
                                                                         own_feature_cache, capfd):
    first = run(photos, module32, tmp_path / "first")
    assert first["features_from_cache"] is False and first["features_with"] == "keras"
    [(name, features)] = kept_features(own_feature_cache).items()
    again = run(photos, module32, tmp_path / "again")
    other_head = run(photos, module32, tmp_path / "other", "--dropout", 0.5, "--learning-rate",
                     0.01, "--epochs", 5, "--batch-size", 8)
    assert again["features_from_cache"] is other_head["features_from_cache"] is True
    assert again["features_with"] is None  # nothing computed
    assert again["test_accuracy"] == pytest.approx(first["test_accuracy"], abs=1e-3)
    assert again["test_loss"] == pytest.approx(first["test_loss"], abs=1e-4)
    assert list(kept_features(own_feature_cache)) == [name]  # read, not written again
    assert f"Features read from {own_feature_cache / name}" in capfd.readouterr().out


def test_the_kept_features_are_the_ones_computed(photos, module32, tmp_path, own_feature_cache):
    run(photos, module32, tmp_path / "first")
    [features] = kept_features(own_feature_cache).values()
    s, results = tl.parse_args(["--data-dir", str(photos)]), {}
    splits, _ = load_data(s, results)
    extractor = tl.build_model(tl.load_module(module32, 32), 32, 2, 0.2)[1]
    for name, (x, y, _) in splits.items():
        fresh = extractor.predict(tl.make_dataset(x, y, 32), verbose=0)
        np.testing.assert_allclose(features[name], fresh, atol=1e-5)


@pytest.mark.parametrize("change", ["an image replaced by another", "an image edited, same size",
                                    "an image added",
                                    "an image removed", "the image size", "the module",
                                    "the module rebuilt in place"])
def test_anything_that_changes_the_features_computes_them_again(change, photos, module32,
                                                                tmp_path, own_feature_cache):
    module, bmp = module32, photos / "red" / "edited.bmp"
    if change == "an image edited, same size":  # BMP: the same size in bytes, whatever the pixels
        Image.fromarray(np.full((32, 32, 3), (200, 40, 40), np.uint8)).save(bmp)
    if change == "the module rebuilt in place":
        module = save_feature_vector(str(tmp_path / "module"), 32)
    if change == "the image size":  # a module that takes any size: only the size changes
        module = save_feature_vector(str(tmp_path / "any_size"), None)
    assert run(photos, module, tmp_path / "first")["features_from_cache"] is False
    extra = []
    if change == "an image replaced by another":
        (photos / "red" / "003.png").write_bytes((photos / "blue" / "007.png").read_bytes())
    elif change == "an image edited, same size":
        size = os.path.getsize(bmp)
        Image.fromarray(np.full((32, 32, 3), (190, 50, 40), np.uint8)).save(bmp)
        assert os.path.getsize(bmp) == size
    elif change == "an image added":
        (photos / "blue" / "new.png").write_bytes((photos / "blue" / "007.png").read_bytes())
    elif change == "an image removed":
        os.remove(photos / "red" / "003.png")
    elif change == "the image size":
        extra = ["--image-size", 48]
    elif change == "the module":
        module = save_feature_vector(str(tmp_path / "other"), 32, features=8)
    else:
        save_feature_vector(module, 32, features=8)
    second = run(photos, module, tmp_path / "second", *extra)
    assert second["features_from_cache"] is False
    assert len(os.listdir(own_feature_cache)) == 2


def test_the_features_file_changes_with_the_module_handle_also_for_urls(photos):
    """A URL names no local files: only the handle itself can tell two modules apart."""
    splits, _ = load_data(tl.parse_args(["--data-dir", str(photos)]), {})
    names = {}
    for handle in ("https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5",
                   "https://tfhub.dev/google/imagenet/mobilenet_v3_small_100_224/feature_vector/5"):
        names[handle] = tl.feature_file(splits, tl.parse_args(["--model-handle", handle]))
        assert tl.feature_file(splits, tl.parse_args(["--model-handle", handle])) == names[handle]
    assert len(set(names.values())) == 2, names


def test_cifar10_features_are_kept_too_and_new_pixels_are_computed_again(module32, monkeypatch,
                                                                         tmp_path):
    data = fake_cifar10(200, 60)
    monkeypatch.setattr(tl.tf.keras.datasets.cifar10, "load_data", lambda: data)
    argv = ["--model-handle", module32, "--image-size", 32, "--epochs", 2, "--no-show"]
    assert run_main(*argv, "--output-dir", tmp_path / "a")[1]["features_from_cache"] is False
    assert run_main(*argv, "--output-dir", tmp_path / "b")[1]["features_from_cache"] is True
    first_cat_or_dog = np.flatnonzero(np.isin(data[1][1], [3, 5]))[0]
    data[1][0][first_cat_or_dog, 5, 5] += 1  # one pixel of one test image
    assert run_main(*argv, "--output-dir", tmp_path / "c")[1]["features_from_cache"] is False


def test_a_truncated_features_file_is_computed_again_with_one_warning(photos, module32, tmp_path,
                                                                      own_feature_cache, capfd):
    run(photos, module32, tmp_path / "first")
    [name] = os.listdir(own_feature_cache)
    kept = own_feature_cache / name
    kept.write_bytes(kept.read_bytes()[:1000])  # a run killed while writing it, say
    capfd.readouterr()
    again = run(photos, module32, tmp_path / "again")
    lines = script_lines(capfd.readouterr().err)
    assert again["features_from_cache"] is False
    assert len(lines) == 1 and lines[0].startswith("warning:") and str(kept) in lines[0]
    assert "computing them again" in lines[0]
    assert os.path.getsize(kept) > 1000 and run(photos, module32, tmp_path / "third")[
        "features_from_cache"] is True


def test_kept_features_that_the_code_no_longer_computes_are_computed_again(photos, module32, tmp_path,
                                                                          own_feature_cache, capfd):
    """The same images and module, but code edited since (how images are read or resized, say):
    the first training images' features, computed afresh, differ from the ones kept."""
    run(photos, module32, tmp_path / "first")
    [name] = os.listdir(own_feature_cache)
    kept = own_feature_cache / name
    with np.load(kept) as f:
        features = {split: f[split] for split in f.files}
    np.savez(kept, **dict(features, train=features["train"] * 1.1))  # as another version gave
    capfd.readouterr()
    again = run(photos, module32, tmp_path / "again")
    printed = capfd.readouterr().out
    assert again["features_from_cache"] is False and again["features_with"] == "keras"
    assert f"The features kept in {kept} differ from what the code computes now" in printed
    with np.load(kept) as f:  # computed again and kept: the next run reads them
        np.testing.assert_allclose(f["train"], features["train"], atol=1e-5)
    assert run(photos, module32, tmp_path / "third")["features_from_cache"] is True


def test_no_cache_neither_reads_nor_keeps(photos, module32, tmp_path, own_feature_cache):
    run(photos, module32, tmp_path / "first")
    assert run(photos, module32, tmp_path / "second", "--no-cache")["features_from_cache"] is False
    os.remove(own_feature_cache / os.listdir(own_feature_cache)[0])
    run(photos, module32, tmp_path / "third", "--no-cache")
    assert os.listdir(own_feature_cache) == []


def test_writing_leaves_no_half_file_and_the_folder_keeps_the_last_20(photos, own_feature_cache,
                                                                      monkeypatch):
    own_feature_cache.mkdir(parents=True)
    for i in range(25):
        (own_feature_cache / f"old{i}.npz").write_bytes(b"an old run's features")
        os.utime(own_feature_cache / f"old{i}.npz", (i, i))
    features = {"train": np.ones((3, 4), np.float32)}
    writes = []
    savez = np.savez
    monkeypatch.setattr(tl.np, "savez", lambda f, **arrays: writes.append(f.name) or savez(f, **arrays))
    path = str(own_feature_cache / "new.npz")
    tl.keep_features(path, features)
    assert writes and not writes[0].endswith("new.npz")  # written under another name, then renamed
    left = sorted(os.listdir(own_feature_cache))
    assert len(left) == 20 and "new.npz" in left and "old24.npz" in left and "old5.npz" not in left
    with np.load(path) as kept:
        np.testing.assert_array_equal(kept["train"], features["train"])
