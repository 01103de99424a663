"""1. Data: the right images reach the right splits with the right labels, upright and cheaply."""
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageFile

from conftest import (fake_cifar10, jpeg_bytes, load_data, phone_jpeg_bytes, run_script,
                      script_lines, tl, write_colour_images)

COLOURS = {"cat": (200, 40, 40), "dog": (40, 40, 200)}
FIVE = {"a": (200, 40, 40), "b": (40, 200, 40), "c": (40, 40, 200), "d": (200, 200, 40),
        "e": (40, 200, 200)}


def load(*argv):
    """Step 1 as the script runs it: (splits, classes, what it adds to metrics.json)."""
    s, results = tl.parse_args([str(a) for a in argv]), {}
    tl.check_args(s)
    splits, classes = load_data(s, results)
    return splits, classes, results


def load_error(capfd, *argv):
    """The one line step 1 ends with, exit status 2, for bad data."""
    with pytest.raises(SystemExit) as exit_info:
        load(*argv)
    lines = script_lines(capfd.readouterr().err)
    assert exit_info.value.code == 2 and len(lines) == 1, lines
    return lines[0]


@pytest.fixture
def cifar(monkeypatch):
    data = fake_cifar10()
    monkeypatch.setattr(tf.keras.datasets.cifar10, "load_data", lambda: data)
    return data


def test_cifar10_keeps_only_cats_and_dogs_relabelled_and_named(cifar):
    (_, y_train), (_, y_test) = cifar
    splits, classes, results = load()
    assert classes == results["classes"] == ["cat", "dog"]
    assert len(splits["train"][1]) + len(splits["validation"][1]) == np.isin(y_train, [3, 5]).sum()
    assert len(splits["test"][1]) == np.isin(y_test, [3, 5]).sum()
    for name, (x, y, names) in splits.items():
        original = x[:, 0, 0, 0] // 20  # each image carries its CIFAR-10 label: 3 cat, 5 dog
        assert np.array_equal(original == 5, y == 1) and set(original) == {3, 5}, name
        assert x.shape[1:] == (32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.int64
    _, _, test_names = splits["test"]
    index = [int(n.rsplit(" ", 1)[1]) for n in test_names]  # "CIFAR-10 test image 17"
    assert np.array_equal(y_test[index, 0] == 5, splits["test"][1] == 1)


def test_validation_is_a_stratified_tenth_and_the_same_for_a_seed(cifar):
    (_, y_train), _ = cifar
    splits = load()[0]
    for label, cifar_label in ((0, 3), (1, 5)):
        held = np.sum(splits["validation"][1] == label)
        assert held == round(np.sum(y_train == cifar_label) * 0.1)
    assert np.array_equal(load("--seed", "1")[0]["validation"][0],
                          load("--seed", "1")[0]["validation"][0])
    assert not np.array_equal(load("--seed", "1")[0]["validation"][0],
                              load("--seed", "2")[0]["validation"][0])


def test_validation_split_flag_changes_the_split(cifar):
    tenth, fifth = load()[0], load("--validation-split", "0.2")[0]
    total = len(tenth["train"][1]) + len(tenth["validation"][1])
    assert len(fifth["validation"][1]) == pytest.approx(0.2 * total, abs=2)
    assert len(tenth["validation"][1]) == pytest.approx(0.1 * total, abs=2)


def test_max_images_cuts_each_split_to_that_many(monkeypatch):
    data = fake_cifar10(3000, 600)
    monkeypatch.setattr(tf.keras.datasets.cifar10, "load_data", lambda: data)
    splits, _, results = load("--max-images", "40")
    for name, (x, y, names) in splits.items():
        assert len(x) == len(y) == len(names) == 40, name
        assert set(y) == {0, 1}
    assert (results["num_train"], results["num_validation"], results["num_test"]) == (40, 40, 40)


def test_max_images_keeps_every_class_in_training(tmp_path):
    write_colour_images(tmp_path, FIVE, 20)
    splits, classes, _ = load("--data-dir", tmp_path, "--max-images", 10)
    assert len(classes) == 5
    for name, (_, y, _) in splits.items():
        assert set(y) == set(range(5)), f"{name} lacks a class: {np.bincount(y)}"


def test_max_images_fewer_than_the_classes_is_a_one_line_error(tmp_path, capfd):
    write_colour_images(tmp_path, FIVE, 20)
    line = load_error(capfd, "--data-dir", tmp_path, "--max-images", 3)
    assert "--max-images 3" in line and "5 classes" in line


@pytest.mark.parametrize("source", ["arrays", "files"])
def test_pipeline_resizes_on_the_fly_to_floats_in_0_1(source, catdog):
    if source == "files":
        x, y, _ = tl.list_files(str(catdog / "test"), ["cat", "dog"])
    else:
        x, y = np.full((5, 32, 32, 3), 255, np.uint8), np.arange(5)
    images, labels = next(iter(tl.make_dataset(x[:5], y[:5], 96, 4)))
    assert images.shape == (4, 96, 96, 3) and images.dtype == tf.float32
    assert 0.0 <= images.numpy().min() and images.numpy().max() <= 1.0
    assert np.array_equal(labels.numpy(), y[:4])


def test_data_plot_shows_each_class_as_stored_and_as_received(cifar, tmp_path):
    splits, classes, _ = load("--max-images", "20")
    tl.show_data(splits["train"], classes, 64, str(tmp_path / "data.png"))
    assert (tmp_path / "data.png").stat().st_size > 0
    axes = tl.plt.gcf().axes
    assert len(axes) == 8  # 2 classes x (2 images as stored + as received)
    for row, name in enumerate(classes):
        stored, received = axes[4 * row].images[0].get_array(), axes[4 * row + 1].images[0].get_array()
        assert stored.shape == (32, 32, 3) and received.shape == (64, 64, 3)
        assert axes[4 * row].get_title().startswith(name)
    tl.plt.close("all")


def test_carve_is_stratified_disjoint_complete_and_the_same_for_a_seed():
    labels = np.repeat([2, 0, 1], [6000, 10, 3990])
    split = tl.Split(np.arange(len(labels)) * 10, labels, np.arange(len(labels)).astype(str))
    rest, carved = tl.carve(split, 0.1, seed=3)
    assert np.bincount(carved[1]).tolist() == [1, 399, 600]
    assert np.bincount(rest[1]).tolist() == [9, 3591, 5400]
    for x, y, names in (rest, carved):
        assert np.all(np.diff(x) > 0)  # in their original order
        assert np.array_equal(y, labels[x // 10]) and np.array_equal(names, (x // 10).astype(str))
    assert np.array_equal(np.sort(np.concatenate([rest[0], carved[0]])), split[0])
    assert np.array_equal(tl.carve(split, 0.1, seed=3)[1][0], carved[0])
    assert not np.array_equal(tl.carve(split, 0.1, seed=4)[1][0], carved[0])


def test_photos_shrunk_for_the_network_show_without_matplotlibs_clipping_warning(tmp_path,
                                                                                 caplog):
    """Resizing can give 1.0000002 for white; matplotlib would log that it clips it."""
    rng = np.random.default_rng(0)
    for name in COLOURS:
        os.makedirs(tmp_path / name)
        for i in range(2):
            noise = rng.integers(0, 2, (100, 100, 3)).astype(np.uint8) * 255  # black and white
            Image.fromarray(noise).save(tmp_path / name / f"{i}.png")
    train = tl.list_files(str(tmp_path), list(COLOURS))
    tl.show_data(train, list(COLOURS), 64, str(tmp_path / "data.png"))
    tl.plt.close("all")
    assert "Clipping input data" not in caplog.text
    images = next(iter(tl.make_dataset(*train[:2], 64)))[0].numpy()  # what the network gets
    assert images.max() <= 1.0 and images.min() >= 0.0


# Folder layouts as people keep their photos -------------------------------------------------

@pytest.mark.parametrize("validation_name", ["validation", "val", "valid"])
def test_train_and_validation_folders_are_used_and_test_is_carved_from_train(validation_name,
                                                                             tmp_path):
    write_colour_images(tmp_path / "train", COLOURS, 20)
    write_colour_images(tmp_path / validation_name, COLOURS, 5, seed=1)
    splits, classes, _ = load("--data-dir", tmp_path)
    assert classes == ["cat", "dog"]
    assert all(f"/{validation_name}/" in p for p in splits["validation"][0])
    assert len(splits["validation"][0]) == 10
    assert all("/train/" in p for p in splits["test"][0])
    assert np.bincount(splits["test"][1]).tolist() == [2, 2] and len(splits["train"][0]) == 36


def test_train_val_and_test_folders_are_all_used(tmp_path):
    for split, count in (("train", 20), ("val", 4), ("test", 6)):
        write_colour_images(tmp_path / split, COLOURS, count)
    splits, _, _ = load("--data-dir", tmp_path)
    assert {name: len(x) for name, (x, _, _) in splits.items()} == {"train": 40, "validation": 8,
                                                                     "test": 12}
    for name, folder in (("train", "/train/"), ("validation", "/val/"), ("test", "/test/")):
        assert all(folder in p for p in splits[name][0])
    for x, y, _ in splits.values():
        assert np.array_equal(np.array(["/dog/" in p for p in x]), y == 1)


def test_three_classes_in_one_folder_are_split_three_ways(three_colours):
    splits, classes, _ = load("--data-dir", three_colours)
    assert classes == ["blue", "green", "red"]
    for name in ("validation", "test"):  # 40 of each class: 4 of each in each carved split
        assert np.bincount(splits[name][1]).tolist() == [4, 4, 4]
    paths = [set(x) for x, _, _ in splits.values()]
    assert not (paths[0] & paths[1]) and not (paths[0] & paths[2]) and not (paths[1] & paths[2])
    assert sum(map(len, paths)) == 120


def test_validation_and_test_carved_from_one_folder_each_get_the_fraction_of_the_class(tmp_path):
    """25 images of each class at 0.2: 5 for validation and 5 for test, both a fifth of the 25."""
    write_colour_images(tmp_path, COLOURS, 25)
    splits, _, _ = load("--data-dir", tmp_path, "--validation-split", "0.2")
    assert {name: np.bincount(y).tolist() for name, (_, y, _) in splits.items()} == {
        "train": [15, 15], "validation": [5, 5], "test": [5, 5]}


def test_a_small_class_keeps_its_share_of_every_split(tmp_path):
    write_colour_images(tmp_path, {"a": (200, 40, 40)}, 40)
    write_colour_images(tmp_path, {"b": (40, 40, 200)}, 3, seed=1)
    splits, _, _ = load("--data-dir", tmp_path)
    for name, (_, y, _) in splits.items():
        assert set(y) == {0, 1}, f"{name} lacks a class: {np.bincount(y)}"


@pytest.mark.parametrize("count, fraction", [(2, "0.1"), (4, "0.4")])
def test_a_class_too_small_to_split_is_a_one_line_error(count, fraction, tmp_path, capfd):
    """Validation and test each take max(1, round(count * fraction)) of the class: nothing left
    to train on (2 images: 1 + 1; 4 images at 0.4: 2 + 2)."""
    write_colour_images(tmp_path, {"a": (200, 40, 40)}, 40)
    write_colour_images(tmp_path, {"b": (40, 40, 200)}, count, seed=1)
    line = load_error(capfd, "--data-dir", tmp_path, "--validation-split", fraction)
    assert f"class b has {count} " in line and str(tmp_path) in line and "add images" in line, line


def test_folders_named_only_like_splits_are_a_one_line_error(tmp_path, capfd):
    """Kaggle's DIR/train/*.jpg and DIR/test/*.jpg without labels.csv: not two classes."""
    for split in ("train", "test"):
        os.makedirs(tmp_path / split)
        for i in range(6):
            (tmp_path / split / f"{i}.jpg").write_bytes(jpeg_bytes(np.full((8, 8, 3), i, np.uint8)))
    line = load_error(capfd, "--data-dir", tmp_path)
    assert "labels.csv" in line and "<class>" in line, line


def test_labels_csv_gives_the_classes_kaggle_style(tmp_path, capfd):
    """DIR/train/<id>.jpg, DIR/test/<id>.jpg (unlabelled) and DIR/labels.csv: id,breed."""
    rows, rng = ["id,breed"], np.random.default_rng(0)
    for split in ("train", "test"):
        os.makedirs(tmp_path / split)
    for i in range(30):
        breed = ["beagle", "collie", "pug"][i % 3]
        pixels = np.clip(np.array([(200, 40, 40), (40, 200, 40), (40, 40, 200)][i % 3])
                         + rng.integers(-30, 30, (16, 16, 3)), 0, 255).astype(np.uint8)
        (tmp_path / "train" / f"dog{i:02d}.jpg").write_bytes(jpeg_bytes(pixels))
        (tmp_path / "test" / f"unknown{i:02d}.jpg").write_bytes(jpeg_bytes(pixels))
        rows.append(f"dog{i:02d},{breed}")  # Kaggle leaves the extension out
    rows.append("missing_photo,pug")
    (tmp_path / "train" / "stray.jpg").write_bytes(jpeg_bytes(np.zeros((8, 8, 3), np.uint8)))
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    splits, classes, _ = load("--data-dir", tmp_path)
    assert classes == ["beagle", "collie", "pug"]
    for x, y, _ in splits.values():
        numbers = np.array([int(os.path.basename(p)[3:5]) for p in x])
        assert np.array_equal(numbers % 3, y) and all("/train/" in p for p in x)
    assert sum(len(y) for _, y, _ in splits.values()) == 30
    warnings = [line for line in script_lines(capfd.readouterr().err) if line.startswith("warning")]
    assert len(warnings) == 1 and "1 row(s)" in warnings[0] and "1 file(s)" in warnings[0]


def test_labels_csv_beside_the_photos_is_not_counted_as_a_photo(tmp_path, capfd):
    rows = ["file,class"]
    for i in range(12):
        (tmp_path / f"{i}.jpg").write_bytes(jpeg_bytes(np.full((8, 8, 3), 20 * i, np.uint8)))
        rows.append(f"{i}.jpg,{['cat', 'dog'][i % 2]}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    splits, classes, _ = load("--data-dir", tmp_path)
    assert classes == ["cat", "dog"] and sum(len(y) for _, y, _ in splits.values()) == 12
    assert script_lines(capfd.readouterr().err) == []  # every photo has a row: nothing to warn


@pytest.mark.parametrize("content, named", [(b"id,breed\ncaf\xe9,pug\n", "UTF-8"),
                                            (b"id,breed\nnobody,pug\n", "0 class(es)")])
def test_a_labels_csv_that_cannot_be_used_ends_in_a_clear_error(content, named, tmp_path, capfd):
    """A CSV saved in another encoding, or naming none of the photos (then a warning first)."""
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "a.jpg").write_bytes(jpeg_bytes(np.zeros((8, 8, 3), np.uint8)))
    (tmp_path / "labels.csv").write_bytes(content)
    with pytest.raises(SystemExit) as exit_info:
        load("--data-dir", tmp_path)
    err = capfd.readouterr().err
    line = script_lines(err)[-1]
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert line.startswith("error:") and "labels.csv" in line and named in line, line


# Photos as phones take them -------------------------------------------------------------------

def portrait(height=48, width=36):
    """An upright test card: a red top, a blue bottom, a green left stripe."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[: height // 2, :, 0] = 220
    pixels[height // 2:, :, 2] = 220
    pixels[:, : width // 6, 1] = 220
    return pixels


def test_a_photo_stored_sideways_with_exif_orientation_is_read_upright(tmp_path):
    upright = portrait()
    (tmp_path / "upright.jpg").write_bytes(jpeg_bytes(upright, quality=95))
    # A phone stores a portrait shot as the sensor saw it, turned a quarter anticlockwise, and
    # tags it with orientation 6: "turn me a quarter clockwise to show me".
    sideways = np.rot90(upright, k=1).copy()
    (tmp_path / "sideways.jpg").write_bytes(jpeg_bytes(sideways, quality=95, orientation=6))
    read = tl.read_photo(str(tmp_path / "sideways.jpg"), 48)
    assert read.shape == upright.shape
    assert np.abs(read.astype(int) - upright).mean() < 8
    assert np.abs(tl.read_photo(str(tmp_path / "upright.jpg"), 48).astype(int) - upright).mean() < 8


def test_a_large_jpeg_is_decoded_at_the_smallest_scale_that_keeps_the_image_size(tmp_path):
    big = np.kron(portrait(60, 80), np.ones((40, 40, 1), np.uint8))  # 2400 x 3200
    (tmp_path / "big.jpg").write_bytes(jpeg_bytes(big))
    for size, short_side in ((224, 300), (64, 300), (400, 600), (1200, 1200), (2400, 2400)):
        assert tl.read_photo(str(tmp_path / "big.jpg"), size).shape[0] == short_side, size


def test_the_readability_check_reads_a_jpeg_header_without_decoding_it(tmp_path, monkeypatch):
    pixels = np.kron(portrait(), np.ones((20, 20, 1), np.uint8))
    data = jpeg_bytes(pixels)
    (tmp_path / "whole.jpg").write_bytes(data)
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) * 2 // 3])  # a copy cut short
    decoded = []
    load_pixels = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load",
                        lambda self: decoded.append(self.filename) or load_pixels(self))
    assert tl.check_photo(str(tmp_path / "whole.jpg")) and not tl.check_photo(str(tmp_path / "cut.jpg"))
    assert decoded == []


def test_a_16_bit_grey_png_is_read_at_its_true_brightness(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (64, 1))  # black to white
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    assert Image.open(tmp_path / "ramp16.png").mode == "I;16"
    pixels = tl.read_photo(str(tmp_path / "ramp16.png"), 64)
    assert pixels.shape == (64, 256, 3) and pixels.dtype == np.uint8
    assert pixels.mean() == pytest.approx(127.5, abs=1)
    assert pixels[:, 0].max() == 0 and pixels[:, -1].min() == 255


def test_a_phone_photo_cut_short_is_unreadable_though_its_exif_thumbnail_ends(tmp_path):
    """The thumbnail in a phone photo's EXIF segment has an end-of-image marker of its own."""
    data = phone_jpeg_bytes(np.random.default_rng(0).integers(0, 256, (200, 300, 3), np.uint8))
    (tmp_path / "whole.jpg").write_bytes(data)
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) * 6 // 10])
    assert tl.check_photo(str(tmp_path / "whole.jpg"))
    assert not tl.check_photo(str(tmp_path / "cut.jpg"))


def test_a_photo_cut_short_after_a_run_in_the_same_python_is_skipped_in_the_next(tmp_path):
    """Each photo is read once a run: a notebook that runs the script again reads it afresh."""
    write_colour_images(tmp_path, COLOURS, 6, jpeg=True)
    assert load("--data-dir", tmp_path)[2]["skipped_files"] == []
    photo = tmp_path / "dog" / "003.jpg"
    photo.write_bytes(photo.read_bytes()[:300])
    assert load("--data-dir", tmp_path)[2]["skipped_files"] == [str(photo)]


def test_copies_across_splits_are_named_in_one_warning(tmp_path, capfd):
    write_colour_images(tmp_path / "train", COLOURS, 12, jpeg=True)
    write_colour_images(tmp_path / "val", COLOURS, 3, seed=2, jpeg=True)
    write_colour_images(tmp_path / "test", COLOURS, 4, seed=1, jpeg=True)
    copied = tmp_path / "test" / "dog" / "copy.jpg"
    copied.write_bytes((tmp_path / "train" / "dog" / "005.jpg").read_bytes())
    _, _, results = load("--data-dir", tmp_path)
    warnings = [line for line in script_lines(capfd.readouterr().err) if line.startswith("warning")]
    assert len(warnings) == 1 and "1 validation or test photo(s)" in warnings[0]
    assert str(copied) in warnings[0] and "005.jpg" in warnings[0]
    assert results["copies_across_splits"] == [f"{copied} = {tmp_path / 'train' / 'dog' / '005.jpg'}"]


# Files that are not images, and names that are not UTF-8 ---------------------------------------

def test_stray_files_are_skipped_with_one_shortened_warning(tmp_path, module32):
    data = write_colour_images(tmp_path / "data", COLOURS, 10)
    stray = ["scan.tif", "photo.heic", "notes.txt", "Thumbs.db", "clip.mp4", "raw.cr2", "a.psd"]
    for name in stray:
        (data / "cat" / name).write_bytes(b"not something it can decode")
    (data / "dog" / "._hidden.jpg").write_bytes(b"AppleDouble")  # hidden: silently ignored
    result = run_script("--data-dir", data, "--model-handle", module32, "--image-size", 32,
                        "--epochs", 1, "--no-show", "--output-dir", tmp_path / "run")
    assert result.returncode == 0, result.stderr[-2000:]
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
    splits, _, results = load("--data-dir", tmp_path)
    assert sum(len(x) for x, _, _ in splits.values()) == 20
    assert len(results["skipped_files"]) == 1 and "caf\\xe9.png" in results["skipped_files"][0]


# Reading and resizing photos: fast where it can be ---------------------------------------------

def pipeline_images(paths, image_size):
    """The images make_dataset gives for these files, as one numpy array."""
    paths = np.array([str(path) for path in paths])
    return np.concatenate([images.numpy() for images, _ in
                           tl.make_dataset(paths, np.zeros(len(paths), int), image_size)])


@pytest.mark.parametrize("source", ["arrays", "files"])
def test_shrinking_an_image_antialiases_it(source, tmp_path):
    """Black and white stripes 3 pixels wide, shrunk 8 times: antialiased, every pixel averages
    several stripes, an even grey; without, the pixels it samples make stripes of their own."""
    stripes = np.zeros((256, 256, 3), np.uint8)
    stripes[:, np.arange(256) // 3 % 2 == 1] = 255
    if source == "files":
        Image.fromarray(stripes).save(tmp_path / "stripes.png")  # PNG: the stripes kept exactly
        images = pipeline_images([tmp_path / "stripes.png"], 32)
    else:
        images = next(iter(tl.make_dataset(stripes[None], np.zeros(1, int), 32)))[0].numpy()
    assert images.shape == (1, 32, 32, 3)
    assert images.std() < 0.05, images[0, 0, :, 0]


@pytest.mark.parametrize("source", ["arrays", "files"])
def test_enlarging_cifar_sized_images_gives_plain_bilinear_pixels(source, tmp_path):
    """Antialiasing only matters when shrinking: enlarged, the pixels are a plain bilinear
    resize's, to float rounding."""
    pixels = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    if source == "files":
        for i, image in enumerate(pixels):
            (tmp_path / f"{i}.jpg").write_bytes(jpeg_bytes(image))
        paths = [tmp_path / f"{i}.jpg" for i in range(4)]
        images = pipeline_images(paths, 96)
        pixels = np.stack([tl.read_photo(str(path), 96) for path in paths])
    else:
        images = next(iter(tl.make_dataset(pixels, np.zeros(4, int), 96)))[0].numpy()
    plain = tf.image.resize(tf.image.convert_image_dtype(pixels, tf.float32), (96, 96)).numpy()
    np.testing.assert_allclose(images, plain, rtol=0, atol=1e-5)


def test_a_sideways_phone_photo_comes_out_of_the_pipeline_upright(tmp_path):
    upright = portrait()
    Image.fromarray(upright).save(tmp_path / "upright.png")
    (tmp_path / "sideways.jpg").write_bytes(jpeg_bytes(np.rot90(upright).copy(), quality=95,
                                                       orientation=6))
    assert not tl.is_plain_jpeg(str(tmp_path / "sideways.jpg"), 48)
    read, expected = pipeline_images([tmp_path / "sideways.jpg", tmp_path / "upright.png"], 48)
    assert np.abs(read - expected).mean() < 0.03


def test_a_plain_jpeg_is_decoded_by_tensorflow_to_read_photos_pixels(tmp_path, monkeypatch):
    """Small RGB and grey JPEGs skip Pillow (and Python) in the pipeline, with the same pixels."""
    rng = np.random.default_rng(0)
    (tmp_path / "rgb.jpg").write_bytes(jpeg_bytes(rng.integers(0, 256, (40, 30, 3), np.uint8)))
    Image.fromarray(rng.integers(0, 256, (30, 40), np.uint8)).save(tmp_path / "grey.jpg")
    paths = [str(tmp_path / "rgb.jpg"), str(tmp_path / "grey.jpg")]
    by_pillow = [tl.read_photo(path, 32) for path in paths]
    assert all(tl.is_plain_jpeg(path, 32) for path in paths)
    read = tl.read_photo_op(paths, 32)
    for path, pixels in zip(paths, by_pillow):
        assert np.array_equal(read(tf.constant(path), 0)[0].numpy(), pixels), path
    monkeypatch.setattr(tl, "read_photo", lambda *args: pytest.fail("decoded by Pillow"))
    assert pipeline_images(paths, 32).shape == (2, 32, 32, 3)


def test_photos_that_need_pillow_are_not_plain_jpegs(tmp_path):
    """Other formats, CMYK, and JPEGs large enough to decode at a smaller scale keep Pillow."""
    pixels = np.random.default_rng(0).integers(0, 256, (64, 80, 3), np.uint8)
    Image.fromarray(pixels).save(tmp_path / "photo.png")
    Image.fromarray(pixels).convert("CMYK").save(tmp_path / "cmyk.jpg")
    (tmp_path / "photo.jpg").write_bytes(jpeg_bytes(pixels))
    assert tl.is_plain_jpeg(str(tmp_path / "photo.jpg"), 33)
    assert not tl.is_plain_jpeg(str(tmp_path / "photo.jpg"), 32)  # 64 high: decoded at 1/2
    assert not tl.is_plain_jpeg(str(tmp_path / "photo.png"), 33)
    assert not tl.is_plain_jpeg(str(tmp_path / "cmyk.jpg"), 33)
