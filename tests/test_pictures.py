"""What a learner sees: the pictures' content, predictions.csv, the lines printed, the kept features.

Most tests share one run of main(), in this process, on photos made to show each picture's point:
four colour classes; in train/, thin white lines in a green photo (they must survive the shrinking)
and two grey TIFFs stored in 16 and 32 bits (they must not turn white); in validation/, a copy of
a training photo (it must be warned about); in test/, two blue photos labelled red (two mistakes,
all in one cell of the confusion matrix, so that it is not symmetric). The head's validation
accuracy reaches 1.0 by the third of six epochs while its validation loss falls to the last: the
epoch kept (lowest loss) is the sixth, the first of the best accuracy an earlier one. Then one
epoch fine-tunes the whole model, so history.png has a second curve.
Every figure is recorded as it is saved (Figure.savefig patched), and inspected: its images,
titles, colours, texts and markers. Only the public way in, main(argv), is used.
"""
import contextlib
import csv
import io
import os
import re

import matplotlib.colors
import matplotlib.figure
import numpy as np
import pytest
from PIL import Image

from conftest import run_main, script_lines, write_colour_images

COLOURS = {"blue": (40, 40, 200), "green": (40, 200, 40), "grey": (128, 128, 128),
           "red": (200, 40, 40)}
EPOCHS, FINE_TUNE_EPOCHS = 6, 1
GREY_16_BIT = 128 * 256  # mid-grey in 16 (and 32) bits: 128 in 8 bits, not white


def noisy(colour, seed, size=32):
    rng = np.random.default_rng(seed)
    return np.clip(np.array(colour) + rng.integers(-40, 40, (size, size, 3)), 0, 255).astype(np.uint8)


def thin_white_lines():
    """A green photo 128 wide and 8 high, every fourth column white: a quarter white on average.
    Shrunk to 32 wide without antialiasing, the columns sampled miss every white one."""
    pixels = np.zeros((8, 128, 3), np.uint8) + np.array(COLOURS["green"], np.uint8)
    pixels[:, ::4] = 255
    return pixels


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("pictures")
    write_colour_images(root / "train", COLOURS, 24)
    write_colour_images(root / "validation", COLOURS, 6, seed=1)
    write_colour_images(root / "test", COLOURS, 6, seed=2)
    # Named to sort before 000.png: the first training photos of their class, shown in data.png.
    Image.fromarray(thin_white_lines()).save(root / "train" / "green" / "00-white-lines.png")
    Image.fromarray(np.full((32, 32), GREY_16_BIT, ">u2")).save(  # big-endian: mode I;16B
        root / "train" / "grey" / "00-a-16-bit-big-endian.tif")
    Image.fromarray(np.full((32, 32), GREY_16_BIT, np.int32)).save(  # mode I
        root / "train" / "grey" / "00-b-32-bit.tif")
    copy = root / "validation" / "red" / "copy-of-005.png"
    copy.write_bytes((root / "train" / "red" / "005.png").read_bytes())
    for i in range(2):  # blue photos labelled red: the run's two mistakes
        Image.fromarray(noisy(COLOURS["blue"], seed=10 + i)).save(root / "test" / "red" / f"blue{i}.png")
    return root


@pytest.fixture(scope="module")
def run(photos, module32, tmp_path_factory):
    """One run of main(): (output folder, metrics.json, {file name: Figure}, stdout, stderr)."""
    out = tmp_path_factory.mktemp("runs") / "run"
    figures, save = {}, matplotlib.figure.Figure.savefig

    def recording_savefig(fig, path, *args, **kwargs):
        figures[os.path.basename(str(path))] = fig  # a plot saved twice: the last one counts
        return save(fig, path, *args, **kwargs)

    stdout, stderr = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(stdout), \
            contextlib.redirect_stderr(stderr):
        mp.setattr(matplotlib.figure.Figure, "savefig", recording_savefig)
        status, metrics = run_main(
            "--data-dir", photos, "--model-handle", module32, "--image-size", 32,
            "--epochs", EPOCHS, "--learning-rate", 0.05, "--fine-tune-epochs", FINE_TUNE_EPOCHS,
            "--no-cache", "--no-show", "--output-dir", out)
    assert status == 0, stderr.getvalue()[-3000:]
    return out, metrics, figures, stdout.getvalue(), stderr.getvalue()


def image_axes(fig):
    return [ax for ax in fig.axes if ax.images]


def prediction_titles(fig):
    """(predicted, percent, true, title colour) of each image of predictions.png."""
    shown = []
    for ax in image_axes(fig):
        match = re.fullmatch(r"(.+) (\d+)% \(true: (.+)\)", ax.get_title())
        assert match, ax.get_title()
        shown.append((match[1], int(match[2]), match[3], ax.title.get_color()))
    return shown


def csv_rows(out):
    with open(out / "predictions.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# data.png -------------------------------------------------------------------------------------

def test_data_png_shows_two_photos_of_each_class_as_stored_and_as_received(run):
    _, metrics, figures, _, _ = run
    fig = figures["data.png"]
    titles = [ax.get_title() for ax in image_axes(fig)]
    for name in metrics["classes"]:
        stored = [t for t in titles if t.startswith(f"{name}: ")]
        assert len(stored) == 2, titles
    assert titles.count("as the network gets it: 32x32") == 2 * len(metrics["classes"]), titles
    assert len(titles) == 4 * len(metrics["classes"])


def test_thin_lines_in_a_wide_photo_survive_the_shrinking_as_grey(run):
    """Antialiasing is decided by the longer side: 128 pixels shrink to 32, though 8 grow."""
    axes = image_axes(run[2]["data.png"])
    index = [ax.get_title() for ax in axes].index("green: 128x8")
    stored = axes[index].images[0].get_array()
    received = axes[index + 1].images[0].get_array()
    assert axes[index + 1].get_title() == "as the network gets it: 32x32"
    assert stored.shape == (8, 128, 3) and received.shape == (32, 32, 3)
    # a quarter white and three quarters green: the red channel's mean, 94 of 255, stays
    assert float(np.mean(received[..., 0])) == pytest.approx(np.mean(stored[..., 0]) / 255, abs=0.03)


def test_16_and_32_bit_grey_tiffs_show_grey_not_white(run):
    axes = image_axes(run[2]["data.png"])
    greys = [ax for ax in axes if ax.get_title() == "grey: 32x32"]
    assert len(greys) == 2  # the big-endian 16-bit TIFF and the 32-bit one
    for ax in greys:
        pixels = np.asarray(ax.images[0].get_array())
        assert pixels.dtype == np.uint8 and pixels.shape == (32, 32, 3)
        assert np.all(pixels == GREY_16_BIT // 256), np.unique(pixels)


# predictions.png, confusion_matrix.png, predictions.csv, the mistakes printed ------------------

def test_predictions_png_titles_right_answers_green_and_mistakes_red(run):
    shown = prediction_titles(run[2]["predictions.png"])
    assert len(shown) == 16
    rights = [predicted == true for predicted, _, true, _ in shown]
    assert any(rights) and not all(rights), shown
    for (predicted, _, true, colour), right in zip(shown, rights):
        assert matplotlib.colors.same_color(colour, "green" if right else "red"), (predicted, true,
                                                                                    colour)


def test_confusion_matrix_png_writes_each_count_in_its_own_cell(run):
    _, metrics, figures, _, _ = run
    confusion = np.array(metrics["confusion_matrix"])
    assert not np.array_equal(confusion, confusion.T), "the run should make one-sided mistakes"
    ax = figures["confusion_matrix.png"].axes[0]
    assert ax.get_xlabel() == "predicted" and ax.get_ylabel() == "true"
    drawn = np.full(confusion.shape, -1)
    for text in ax.texts:
        column, row = text.get_position()
        drawn[int(round(row)), int(round(column))] = int(text.get_text())
    np.testing.assert_array_equal(drawn, confusion)  # rows: true class; columns: predicted


def test_predictions_csv_gives_the_confidence_in_the_predicted_class(run):
    out, metrics, figures, _, _ = run
    rows = csv_rows(out)
    wrong = [row for row in rows if row["true_class"] != row["predicted_class"]]
    assert len(wrong) == 2 and {(r["true_class"], r["predicted_class"]) for r in wrong} == {
        ("red", "blue")}
    for row in rows:  # the predicted class is the likeliest: never below 1 / classes
        assert float(row["confidence"]) >= 1 / len(metrics["classes"]), row
    # predictions.png shows the same mistakes (mistakes first) with the same confidence
    shown = sorted(percent for predicted, percent, true, _ in
                   prediction_titles(figures["predictions.png"]) if predicted != true)
    listed = sorted(float(row["confidence"]) * 100 for row in wrong)
    assert len(shown) == len(listed)
    for a, b in zip(shown, listed):
        assert a == pytest.approx(b, abs=0.51), (shown, listed)


def test_the_most_confident_mistakes_printed_are_mistakes_only(run):
    out, _, _, printed, _ = run
    [line] = [line for line in printed.splitlines() if line.startswith("Most confident mistakes")]
    listed = re.findall(r"(\S+) \((\w+), taken for (\w+) (\d+)%\)", line)
    wrong = [row for row in csv_rows(out) if row["true_class"] != row["predicted_class"]]
    assert len(listed) == len(wrong) == 2, line
    assert {file for file, *_ in listed} == {row["file"] for row in wrong}, line
    for _, true, predicted, _ in listed:
        assert true != predicted, line


# history.png ------------------------------------------------------------------------------------

def lines_by_label(ax):
    return {line.get_label(): line for line in ax.get_lines()}


def test_history_png_stars_the_kept_lowest_loss_epoch_not_the_best_accuracy(run):
    _, metrics, figures, _, _ = run
    kept = metrics["head_alone"]["kept_epoch"] if metrics["fine_tuning_kept"] else metrics["kept_epoch"]
    loss_ax, accuracy_ax = figures["history.png"].axes[:2]
    val_loss = lines_by_label(loss_ax)["head: validation"].get_ydata()
    val_accuracy = lines_by_label(accuracy_ax)["head: validation"].get_ydata()
    assert len(val_loss) == EPOCHS and int(np.argmin(val_loss)) + 1 == kept
    assert int(np.argmax(val_accuracy)) + 1 != kept, "the run should tell loss and accuracy apart"
    for ax, values in [(loss_ax, val_loss), (accuracy_ax, val_accuracy)]:
        stars = [line for line in ax.get_lines() if line.get_marker() == "*"]
        assert len(stars) == 2  # the head's kept epoch, then fine-tuning's
        assert (stars[0].get_xdata()[0], stars[0].get_ydata()[0]) == (kept, values[kept - 1])


def test_history_png_fine_tuning_starts_after_the_kept_epoch_for_its_own_epochs(run):
    _, metrics, figures, _, _ = run
    kept = metrics["head_alone"]["kept_epoch"] if metrics["fine_tuning_kept"] else metrics["kept_epoch"]
    for ax in figures["history.png"].axes[:2]:
        for label in ("images: training", "images: validation"):
            np.testing.assert_array_equal(lines_by_label(ax)[label].get_xdata(),
                                          kept + np.arange(1, FINE_TUNE_EPOCHS + 1))


# where_it_looks.png -----------------------------------------------------------------------------

def test_where_it_looks_png_scale_is_never_finer_than_a_tenth(run):
    fig = run[2]["where_it_looks.png"]
    overlays = [ax.images[1] for ax in image_axes(fig) if len(ax.images) == 2]
    assert len(overlays) == 8
    largest = max(float(np.abs(overlay.get_array()).max()) for overlay in overlays)
    assert largest < 0.1, "the run should give small changes, to be drawn pale"
    for overlay in overlays:
        assert overlay.get_clim() == pytest.approx((-0.1, 0.1))


# The copies warning -----------------------------------------------------------------------------

def test_a_validation_photo_copied_from_training_is_warned_about(run, photos):
    _, metrics, _, _, stderr = run
    copy = f"{photos / 'validation' / 'red' / 'copy-of-005.png'} = {photos / 'train' / 'red' / '005.png'}"
    assert metrics["copies_across_splits"] == [copy]
    warnings = [line for line in script_lines(stderr) if "copies of training photos" in line]
    assert len(warnings) == 1 and copy in warnings[0]


# Small runs of their own ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Three classes of six photos: one for validation, one for testing, four for training."""
    return write_colour_images(tmp_path_factory.mktemp("small"), {
        name: COLOURS[name] for name in ("blue", "green", "red")}, 6)


def quick(data, module, out, *extra):
    return run_main("--data-dir", data, "--model-handle", module, "--image-size", 32, "--epochs", 1,
                    "--no-show", "--output-dir", out, *extra)


def test_max_images_as_many_as_the_classes_is_a_quick_run(small, module32, tmp_path):
    status, metrics = quick(small, module32, tmp_path / "out", "--max-images", 3)
    assert status == 0
    assert (metrics["num_train"], metrics["num_validation"], metrics["num_test"]) == (3, 3, 3)


def test_labels_csv_class_names_are_stripped(module32, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = ["id,label"]
    for i in range(6):
        for name in ("red", "blue"):
            Image.fromarray(noisy(COLOURS[name], seed=i)).save(data / f"{name}{i}.png")
            rows.append(f"{name}{i}, {name} ")  # spaces around the class, as people type them
    (data / "labels.csv").write_text("\n".join(rows) + "\n")
    status, metrics = quick(data, module32, tmp_path / "out")
    assert status == 0 and metrics["classes"] == ["blue", "red"]
    assert (tmp_path / "out" / "labels.txt").read_text() == "blue\nred\n"


def test_a_cache_folder_that_cannot_be_written_only_warns(small, module32, tmp_path,
                                                          monkeypatch, capfd):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    status, metrics = quick(small, module32, tmp_path / "out")
    assert status == 0 and metrics["features_from_cache"] is False
    warnings = [line for line in script_lines(capfd.readouterr().err) if line.startswith("warning")]
    assert any("cannot keep the features" in line for line in warnings), warnings


def test_output_dir_with_a_trailing_slash_keeps_the_run(small, module32, tmp_path):
    runs = tmp_path / "runs"
    status, metrics = quick(small, module32, f"{runs / 'out'}/")
    assert status == 0 and metrics is not None
    assert os.path.isfile(runs / "out" / "predictions.png")
    assert os.listdir(runs) == ["out"]  # and no out.partial left behind


def test_the_feature_cache_keeps_the_files_used_last_not_written_last(small, module32,
                                                                      tmp_path, own_feature_cache):
    """20 files are kept. A file written long ago but read by the last run outlives 20 files
    written after it and never read since."""
    first = quick(small, module32, tmp_path / "first")[1]
    used = first["features_file"]
    assert os.path.dirname(used) == str(own_feature_cache) and os.path.isfile(used)
    os.utime(used, (1000, 1000))  # written long ago
    for i in range(20):  # then 20 other runs' files, never read since
        later = own_feature_cache / f"an-earlier-run-{i:02d}.npz"
        later.write_bytes(b"features")
        os.utime(later, (2000 + i, 2000 + i))
    again = quick(small, module32, tmp_path / "again")[1]
    assert again["features_from_cache"] is True and again["features_file"] == used
    other = quick(small, module32, tmp_path / "other", "--max-images", 3)[1]
    assert other["features_from_cache"] is False and os.path.isfile(other["features_file"])
    kept = sorted(os.listdir(own_feature_cache))
    assert len(kept) == 20
    assert os.path.basename(used) in kept  # read by the run before: kept
    assert "an-earlier-run-00.npz" not in kept and "an-earlier-run-01.npz" not in kept
