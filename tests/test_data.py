"""1. Data: the right images reach the right splits with the right labels."""
import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import run_script, script_lines, tl, write_colour_images


def fake_cifar10(n_train=300, n_test=100, seed=0):
    """Arrays shaped and typed like tf.keras.datasets.cifar10.load_data()."""
    rng = np.random.default_rng(seed)
    def split(n):
        y = rng.integers(0, 10, (n, 1)).astype(np.uint8)
        x = rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8)
        x[..., 0] = y[:, :, None] * 20  # label readable from the pixels, to check pairing
        return x, y
    return split(n_train), split(n_test)


def args_for(*argv):
    args = tl.parse_args(list(argv))
    tl.check_args(args)
    return args


def load(*argv):
    """load_data as the script calls it: (splits, classes, what it adds to metrics.json)."""
    results = {}
    splits, classes = tl.load_data(args_for(*argv), results)
    return splits, classes, results


def test_cifar10_keeps_only_cats_and_dogs_relabelled(monkeypatch):
    (x_train, y_train), (x_test, y_test) = data = fake_cifar10()
    monkeypatch.setattr(tf.keras.datasets.cifar10, "load_data", lambda: data)
    splits, classes, results = load()
    assert classes == ["cat", "dog"] and results["data"] == "CIFAR-10"
    expected_train = np.isin(y_train, [3, 5]).sum()
    assert len(splits["train"][0]) + len(splits["validation"][0]) == expected_train
    for label in (3, 5):  # stratified: a tenth of each class
        held = np.sum(splits["validation"][1] == (label == 5))
        assert held == round(np.sum(y_train == label) * 0.1)
    assert len(splits["test"][0]) == np.isin(y_test, [3, 5]).sum()
    for x, y in splits.values():
        assert set(np.unique(y)) == {0, 1}
        original = x[:, 0, 0, 0] // 20  # 3 for cats, 5 for dogs
        assert np.array_equal(original == 5, y == 1) and set(np.unique(original)) == {3, 5}
        assert x.shape[1:] == (32, 32, 3) and x.dtype == np.uint8


def test_validation_split_is_deterministic_for_a_seed(monkeypatch):
    data = fake_cifar10()
    monkeypatch.setattr(tf.keras.datasets.cifar10, "load_data", lambda: data)
    first = load("--seed", "1")[0]["validation"][0]
    again = load("--seed", "1")[0]["validation"][0]
    other = load("--seed", "2")[0]["validation"][0]
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_class_folders_with_train_and_test(catdog):
    splits, classes, results = load("--data-dir", str(catdog))
    assert classes == ["cat", "dog"] and results["skipped_files"] == []
    assert len(splits["test"][0]) == 40
    assert len(splits["train"][0]) + len(splits["validation"][0]) == 120
    for x, y in splits.values():
        folder_class = np.array(["/dog/" in p for p in x])
        assert np.array_equal(folder_class, y == 1)
    assert not set(splits["train"][0]) & set(splits["validation"][0])


def test_three_classes_in_one_folder_are_split_three_ways(three_colours):
    splits, classes, _ = load("--data-dir", str(three_colours))
    assert classes == ["blue", "green", "red"]
    sizes = {name: len(x) for name, (x, y) in splits.items()}
    assert sum(sizes.values()) == 120 and sizes["test"] == 12 and sizes["validation"] == 12
    for name in ("validation", "test"):  # 40 of each class: 4 of each in each carved split
        assert np.bincount(splits[name][1]).tolist() == [4, 4, 4]
    paths = [set(x) for x, _ in splits.values()]
    assert not (paths[0] & paths[1]) and not (paths[0] & paths[2]) and not (paths[1] & paths[2])


def test_max_images_caps_every_split_and_keeps_both_classes(catdog):
    splits, _, _ = load("--data-dir", str(catdog), "--max-images", "10")
    for x, y in splits.values():
        assert len(x) <= 10
    assert set(splits["test"][1]) == {0, 1}


@pytest.mark.parametrize("source", ["arrays", "files"])
def test_pipeline_resizes_on_the_fly_to_floats_in_0_1(source, catdog):
    if source == "files":
        x, y = tl.list_files(str(catdog / "test"), ["cat", "dog"])
    else:
        x = np.full((5, 32, 32, 3), 255, np.uint8)
        y = np.arange(5)
    images, labels = next(iter(tl.make_dataset(x[:5], y[:5], 96, 4)))
    assert images.shape == (4, 96, 96, 3) and images.dtype == tf.float32
    assert 0.0 <= images.numpy().min() and images.numpy().max() <= 1.0
    assert np.array_equal(labels.numpy(), y[:4])


# Folder layouts as public datasets ship them -----------------------------------

COLOURS = {"cat": (200, 40, 40), "dog": (40, 40, 200)}


@pytest.mark.parametrize("validation_name", ["validation", "val", "valid"])
def test_train_and_validation_folders_are_used_and_test_is_carved_from_train(validation_name, tmp_path):
    """The layout of cats_and_dogs_filtered: DIR/train/<class>/ and DIR/validation/<class>/."""
    write_colour_images(tmp_path / "train", COLOURS, 20)
    write_colour_images(tmp_path / validation_name, COLOURS, 5, seed=1)
    splits, classes, _ = load("--data-dir", str(tmp_path))
    assert classes == ["cat", "dog"]
    assert all(f"/{validation_name}/" in p for p in splits["validation"][0]) and len(splits["validation"][0]) == 10
    assert all("/train/" in p for p in splits["test"][0]) and np.bincount(splits["test"][1]).tolist() == [2, 2]
    assert len(splits["train"][0]) == 36


def test_train_val_and_test_folders_are_all_used(tmp_path):
    for split, count in (("train", 20), ("val", 4), ("test", 6)):
        write_colour_images(tmp_path / split, COLOURS, count)
    splits, _, _ = load("--data-dir", str(tmp_path))
    assert {name: len(x) for name, (x, _) in splits.items()} == {"train": 40, "validation": 8, "test": 12}
    for name, folder in (("train", "/train/"), ("validation", "/val/"), ("test", "/test/")):
        assert all(folder in p for p in splits[name][0])


def test_class_folders_named_like_splits_are_classes_in_a_flat_layout(tmp_path):
    write_colour_images(tmp_path, {"train": (200, 40, 40), "test": (40, 40, 200)}, 20)
    splits, classes, _ = load("--data-dir", str(tmp_path))
    assert classes == ["test", "train"]
    assert sum(len(x) for x, _ in splits.values()) == 40


def test_a_small_class_keeps_its_share_of_every_split(tmp_path):
    write_colour_images(tmp_path, {"a": (200, 40, 40)}, 40)
    write_colour_images(tmp_path, {"b": (40, 40, 200)}, 3, seed=1)
    splits, _, _ = load("--data-dir", str(tmp_path))
    for name, (_, y) in splits.items():
        assert set(y) == {0, 1}, f"{name} lacks a class: {np.bincount(y)}"
    assert np.bincount(splits["test"][1]).tolist() == [4, 1]


def test_a_class_too_small_to_split_is_a_one_line_error(tmp_path, capfd):
    write_colour_images(tmp_path, {"a": (200, 40, 40)}, 40)
    write_colour_images(tmp_path, {"b": (40, 40, 200)}, 2, seed=1)
    with pytest.raises(SystemExit) as exit_info:
        load("--data-dir", str(tmp_path))
    lines = script_lines(capfd.readouterr().err)
    assert exit_info.value.code == 2 and len(lines) == 1
    assert "class b has 2 image(s)" in lines[0] and "at least 3" in lines[0], lines[0]


def test_metrics_settings_reproduce_the_same_split(catdog):
    first = load("--data-dir", str(catdog), "--seed", "7")[0]
    again = load("--data-dir", str(catdog), "--seed", "7")[0]
    for name in first:
        assert np.array_equal(first[name][0], again[name][0])


# Files that are not images, and names that are not UTF-8 -----------------------

def test_stray_files_are_skipped_with_one_shortened_warning(tmp_path):
    data = write_colour_images(tmp_path / "data", COLOURS, 10)
    stray = ["scan.tif", "photo.heic", "notes.txt", "Thumbs.db", "clip.mp4", "raw.cr2", "a.psd"]
    for name in stray:
        (data / "cat" / name).write_bytes(b"not something TensorFlow decodes")
    (data / "dog" / "._hidden.jpg").write_bytes(b"AppleDouble")  # hidden: silently ignored
    out = tmp_path / "run"
    result = run_script("--data-dir", data, "--model-handle", "no-such-module", "--no-show",
                        "--output-dir", out)
    warnings = [line for line in script_lines(result.stderr) if line.startswith("warning:")]
    assert len(warnings) == 1, result.stderr
    assert "skipped 7 file(s)" in warnings[0] and "metrics.json" in warnings[0]
    assert sum(name in warnings[0] for name in stray) == 5, warnings[0]  # the first few, not all
    assert "._hidden" not in result.stderr


def test_a_file_name_that_is_not_utf8_is_skipped_not_a_traceback(tmp_path):
    write_colour_images(tmp_path, COLOURS, 10)
    bad_name = os.path.join(os.fsencode(tmp_path / "cat"), b"caf\xe9.png")
    with open(bad_name, "wb") as f:
        f.write(open(tmp_path / "cat" / "000.png", "rb").read())
    splits, _, results = load("--data-dir", str(tmp_path))
    assert sum(len(x) for x, _ in splits.values()) == 20
    assert len(results["skipped_files"]) == 1 and "caf\\xe9.png" in results["skipped_files"][0]
