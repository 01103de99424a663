"""5-6. Evaluation and plots: honest numbers, the mistakes by file, pictures that show what they say."""
import csv

import numpy as np
import pytest
import tensorflow as tf

from conftest import run_main, tl, write_colour_images


@pytest.fixture(scope="module")
def noisy_run(module32, tmp_path_factory):
    """Three colours that overlap a little, so that some test images are wrong."""
    root = tmp_path_factory.mktemp("noisy")
    write_colour_images(root, {"red": (150, 90, 90), "green": (90, 150, 90), "blue": (90, 90, 150),
                               "a long class name, for the labels": (120, 120, 120)}, 40, seed=3)
    out = tmp_path_factory.mktemp("runs") / "run"
    status, metrics = run_main("--data-dir", root, "--model-handle", module32, "--image-size", 32,
                               "--epochs", 3, "--no-show", "--output-dir", out)
    assert status == 0
    return out, metrics


def test_predictions_csv_lists_every_test_image_wrong_ones_first(noisy_run):
    out, m = noisy_run
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["file", "true_class", "predicted_class", "confidence"]
    assert len(rows) == m["num_test"] == len({row["file"] for row in rows})
    wrong = [row["true_class"] != row["predicted_class"] for row in rows]
    assert 0 < sum(wrong) < len(rows), "the fixture should give some mistakes"
    assert wrong == sorted(wrong, reverse=True)  # all wrong rows before all right ones
    confidences = [float(row["confidence"]) for row in rows if row["true_class"] != row["predicted_class"]]
    assert confidences == sorted(confidences, reverse=True)
    classes = m["classes"]
    counted = np.zeros((len(classes), len(classes)), int)
    for row in rows:
        counted[classes.index(row["true_class"]), classes.index(row["predicted_class"])] += 1
        assert row["file"].endswith(".png") and f"/{row['true_class']}/" in row["file"]
    assert counted.tolist() == m["confusion_matrix"]


def test_accuracy_comes_with_its_per_class_share_and_interval(noisy_run):
    _, m = noisy_run
    confusion = np.array(m["confusion_matrix"])
    assert m["test_accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum())
    for i, name in enumerate(m["classes"]):
        assert m["per_class_accuracy"][name] == pytest.approx(confusion[i, i] / confusion[i].sum())
    low, high = m["test_accuracy_95"]
    assert low < m["test_accuracy"] < high or m["test_accuracy"] == 1.0


def test_the_interval_is_wilsons():
    assert tl.accuracy_interval(np.ones(10), np.array([1] * 8 + [0] * 2)) == pytest.approx(
        (0.4902, 0.9433), abs=1e-4)
    low, high = tl.accuracy_interval(np.ones(2000), np.array([1] * 1600 + [0] * 400))
    assert high - low == pytest.approx(0.035, abs=0.002)  # 2000 images: about 1.8 points each way
    assert tl.accuracy_interval(np.ones(5), np.ones(5))[1] == 1.0  # all right: still uncertain below
    assert tl.accuracy_interval(np.ones(5), np.ones(5))[0] < 0.6


def test_long_class_names_do_not_overlap_on_the_confusion_matrix(noisy_run, tmp_path):
    _, m = noisy_run
    tl.plot_confusion_matrix(np.array(m["confusion_matrix"]), m["classes"], str(tmp_path / "c.png"))
    fig = tl.plt.gcf()
    fig.canvas.draw()
    boxes = [label.get_window_extent() for label in fig.axes[0].get_xticklabels()]
    for a, b in zip(boxes, boxes[1:]):
        assert not a.overlaps(b)
    tl.plt.close("all")


# Where it looks --------------------------------------------------------------------------------

def squares(n, corner, seed):
    """Grey noise with a red (class 0) or blue (class 1) 8x8 square at corner (row, col) of a 4x4
    grid: nothing else tells the classes apart."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.integers(100, 156, (n, 32, 32, 3)).astype(np.float32) / 255
    row, col = corner
    x[:, 8 * row:8 * row + 8, 8 * col:8 * col + 8] = np.where(
        y[:, None, None, None] == 0, [0.9, 0.1, 0.1], [0.1, 0.1, 0.9])
    return x, y


def trained_on(module, x, y):
    tf.keras.utils.set_random_seed(0)
    model, extractor, head = tl.build_model(tl.load_module(module, 32), 32, 2, 0.0)
    tl.compile_for_training(head, 0.05)
    head.fit(extractor.predict(x, verbose=0), y, epochs=40, batch_size=32, verbose=0)
    assert np.mean(model.predict(x, verbose=0).argmax(1) == y) > 0.9
    return model


@pytest.mark.parametrize("corner", [(0, 3), (2, 1)])  # off the diagonal: rows and columns differ
def test_the_map_peaks_where_the_class_is_decided(module32, corner):
    x, y = squares(160, corner, 0)
    model = trained_on(module32, x, y)
    maps = tl.occlusion_maps(model, squares(12, corner, 1)[0])
    assert maps.shape == (12, 4, 4) and np.all(np.abs(maps) <= 1)
    peaks = [np.unravel_index(m.argmax(), m.shape) for m in maps]
    assert sum(peak == corner for peak in peaks) >= 9, peaks


def test_occlusion_maps_run_the_model_without_dropout(module32):
    """Dropout on, as in training, would make the maps change from call to call, and show drops
    where hiding a patch changes nothing."""
    tf.keras.utils.set_random_seed(0)
    model = tl.build_model(tl.load_module(module32, 32), 32, 2, 0.5)[0]
    images = squares(4, (1, 2), 0)[0]
    first, again = tl.occlusion_maps(model, images), tl.occlusion_maps(model, images)
    np.testing.assert_array_equal(first, again)
    grey = np.full((3, 32, 32, 3), 0.5, np.float32)  # a grey patch on grey hides nothing
    np.testing.assert_array_equal(tl.occlusion_maps(model, grey), 0)


def test_where_it_looks_draws_the_maps_on_one_honest_scale(module32, tmp_path, monkeypatch):
    images = squares(8, (0, 3), 2)[0]
    model = tl.build_model(tl.load_module(module32, 32), 32, 2, 0.0)[0]
    maps = np.zeros((8, 4, 4), np.float32)
    maps[0] += 0.0004  # a flat map: the largest drop is tiny
    maps[1, 2, 1] = 0.6  # a real drop
    maps[2, 0, 0] = -0.3  # hiding a patch raised the probability
    monkeypatch.setattr(tl, "occlusion_maps", lambda *_: maps)
    probabilities = model.predict(images, verbose=0)
    tl.plot_where_it_looks(model, images, np.zeros(8, int), probabilities, ["red", "blue"],
                           str(tmp_path / "where.png"))
    fig = tl.plt.gcf()
    tiles = fig.axes[:8]
    overlays = [ax.images[1] for ax in tiles]  # each tile: the image, then its map
    for overlay, drop in zip(overlays, maps):
        np.testing.assert_array_equal(overlay.get_array(), drop)
        assert (overlay.norm.vmin, overlay.norm.vmax) == pytest.approx((-0.6, 0.6))  # one scale
    colours = [overlay.to_rgba(overlay.get_array()) for overlay in overlays]
    white = np.array([1, 1, 1, 1])
    assert np.abs(colours[0][..., :3] - overlays[0].to_rgba(0)[:3]).max() < 0.01  # flat looks flat
    assert np.abs(np.array(overlays[0].to_rgba(0.0004)) - white).max() < 0.01
    red, blue = overlays[1].to_rgba(0.6), overlays[2].to_rgba(-0.3)
    assert red[0] > 0.9 > red[2] and blue[2] > 0.9 > blue[0]  # a drop is red, a rise blue
    assert "largest drop 0.00" in tiles[0].get_title() and "largest drop 0.60" in tiles[1].get_title()
    assert len(fig.axes) == 9 and "drop in probability" in fig.axes[8].get_ylabel()  # colour bar
    assert "red" in fig._suptitle.get_text() and "blue" in fig._suptitle.get_text()
    tl.plt.close("all")


def test_examples_show_both_classes_right_and_wrong():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    predicted = np.array([0, 0, 0, 1, 1, 1, 1, 1, 0, 0])
    picks = tl.pick_examples(labels, predicted, 8)
    assert len(picks) == 8 and len(set(picks)) == 8
    right = predicted[picks] == labels[picks]
    assert set(labels[picks][right]) == {0, 1} and set(labels[picks][~right]) == {0, 1}
    assert {(labels[i], bool(r)) for i, r in zip(picks[:4], right[:4])} == {
        (0, False), (1, False), (0, True), (1, True)}  # the first four: one of each



def test_examples_show_the_mistakes_first():
    """With three classes and room for four, the three mistakes come before any right answer."""
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    predicted = np.array([1, 0, 0, 1, 0, 1, 2, 2, 0])  # wrong: images 0, 4 and 8
    assert tl.pick_examples(labels, predicted, 4)[:3] == [0, 4, 8]

# The training history -------------------------------------------------------------------------

def test_history_marks_the_kept_epoch_and_training_on_images_starts_there(tmp_path):
    head = {"loss": [0.9, 0.6, 0.5, 0.45], "val_loss": [0.8, 0.55, 0.6, 0.7],
            "accuracy": [0.5, 0.7, 0.8, 0.85], "val_accuracy": [0.5, 0.75, 0.72, 0.7]}
    images = {"loss": [0.4, 0.3], "val_loss": [0.5, 0.45], "accuracy": [0.86, 0.9],
              "val_accuracy": [0.78, 0.8]}
    tl.plot_history([head, images], str(tmp_path / "history.png"))
    loss_axes = tl.plt.gcf().axes[0]
    lines = {line.get_label(): line for line in loss_axes.get_lines()}
    np.testing.assert_array_equal(lines["head: validation"].get_xdata(), [1, 2, 3, 4])
    np.testing.assert_array_equal(lines["images: validation"].get_xdata(), [3, 4])  # after epoch 2
    np.testing.assert_array_equal(lines["images: validation"].get_ydata(), images["val_loss"])
    stars = [line for line in loss_axes.get_lines() if line.get_marker() == "*"]
    assert [(s.get_xdata()[0], s.get_ydata()[0]) for s in stars] == [(2, 0.55), (4, 0.45)]
    tl.plt.close("all")
