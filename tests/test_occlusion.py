"""4. Where the network looks: occlusion maps of the trained model's predictions."""
import numpy as np
import pytest
import tensorflow as tf

from conftest import tl


def corner_squares(n, corner, seed):
    """Grey noise with a red (class 0) or blue (class 1) 8x8 square in one corner: nothing else tells them apart."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.integers(100, 156, (n, 32, 32, 3)).astype(np.float32) / 255
    rows = slice(0, 8) if corner[0] == 0 else slice(24, 32)
    cols = slice(0, 8) if corner[1] == 0 else slice(24, 32)
    x[:, rows, cols] = np.where(y[:, None, None, None] == 0, [0.9, 0.1, 0.1], [0.1, 0.1, 0.9])
    return x, y


def trained_model(module, x, y):
    tf.keras.utils.set_random_seed(0)
    model, _, extractor, head = tl.build_model(module, 32, 2, 0.0)
    features = extractor.predict(x, verbose=0)
    tl.compile_for_training(head, 0.05)
    head.fit(features, y, epochs=40, batch_size=32, verbose=0)
    assert np.mean(model.predict(x, verbose=0).argmax(1) == y) > 0.9
    return model


@pytest.mark.parametrize("corner", [(0, 0), (3, 3)])
def test_the_map_peaks_where_the_class_is_decided(module32, corner):
    x, y = corner_squares(160, corner, 0)
    model = trained_model(module32, x, y)
    images = corner_squares(12, corner, 1)[0]
    maps = tl.occlusion_map(model, images, 8)
    assert maps.shape == (12, 4, 4) and maps.dtype == np.float32
    assert np.all(maps <= 1) and np.all(maps >= -1)
    peaks = [np.unravel_index(m.argmax(), m.shape) for m in maps]
    assert sum(peak == corner for peak in peaks) >= 9, peaks


def test_examples_show_both_classes_right_and_wrong():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    predicted = np.array([0, 0, 0, 1, 1, 1, 1, 1, 0, 0])
    picks = tl.pick_examples(labels, predicted, 8)
    assert len(picks) == 8 and len(set(picks)) == 8
    right = predicted[picks] == labels[picks]
    assert set(labels[picks[right]]) == {0, 1} and set(labels[picks[~right]]) == {0, 1}


def test_where_it_looks_is_plotted(module32, tmp_path):
    x, y = corner_squares(8, (0, 0), 2)
    model = tl.build_model(module32, 32, 2, 0.0)[0]
    probabilities = model.predict(x, verbose=0)
    path = tmp_path / "where_it_looks.png"
    tl.plot_predictions(x, y, probabilities, ["red", "blue"], str(path), tl.occlusion_map(model, x, 8), "title")
    assert path.stat().st_size > 10000
