"""3-5. Model, bottleneck features and training: frozen base, trainable head."""
import numpy as np
import tensorflow as tf

from conftest import tl


def test_only_the_head_is_trainable(module32):
    model, extractor, head = tl.build_model(module32, 32, 3, 0.2)
    assert model.output_shape == (None, 3)
    assert extractor.output_shape == head.input_shape
    assert [w.name.split("/")[0] for w in model.trainable_weights] == ["classifier", "classifier"]
    assert model.get_layer("mobilenet_v2").non_trainable_weights
    probabilities = model.predict(np.random.rand(4, 32, 32, 3).astype("float32"), verbose=0)
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)


def colour_split(n, seed):
    """Red, green and blue noisy images: separable by any feature vector."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.integers(0, 120, (n, 32, 32, 3))
    x[np.arange(n), :, :, y] += 135
    return x.astype(np.uint8), y


def test_training_the_head_trains_the_model_and_leaves_the_base_frozen(module32):
    tf.keras.utils.set_random_seed(0)
    model, extractor, head = tl.build_model(module32, 32, 3, 0.2)
    base = model.get_layer("mobilenet_v2")
    base_before = [w.numpy().copy() for w in base.weights]
    head_before = [w.numpy().copy() for w in model.get_layer("classifier").weights]
    (x, y), (x_val, y_val) = colour_split(240, 0), colour_split(60, 1)
    features = tl.extract_features(extractor, tl.make_dataset(x, y, 32, 64))
    val_features = tl.extract_features(extractor, tl.make_dataset(x_val, y_val, 32, 64))
    assert features.shape == (240, extractor.output_shape[1])
    tl.compile_for_training(head, 1e-2)
    history = tl.train(head, (features, y), (val_features, y_val), 30, 32)
    assert len(history["loss"]) == 30
    for before, after in zip(base_before, base.weights):
        np.testing.assert_array_equal(before, after.numpy())
    assert any(not np.allclose(b, a.numpy()) for b, a in zip(head_before, model.get_layer("classifier").weights))
    # The end-to-end model, on images, is as good as the head was on features.
    _, accuracy, loss, confusion = tl.evaluate(model, tl.make_dataset(x_val, y_val, 32, 64), y_val, 3)
    assert accuracy > 0.8, accuracy  # chance is 1/3
    assert confusion.sum() == 60 and np.trace(confusion) == round(accuracy * 60)


def test_keeps_the_weights_of_the_best_validation_epoch(module32):
    tf.keras.utils.set_random_seed(0)
    _, extractor, head = tl.build_model(module32, 32, 3, 0.0)
    (x, y), (x_val, y_val) = colour_split(120, 0), colour_split(60, 1)
    features = tl.extract_features(extractor, tl.make_dataset(x, y, 32, 64))
    val_features = tl.extract_features(extractor, tl.make_dataset(x_val, y_val, 32, 64))
    tl.compile_for_training(head, 0.5)  # a rate so high that the last epoch is rarely the best
    history = tl.train(head, (features, y), (val_features, y_val), 8, 16)
    final = head.evaluate(val_features, y_val, verbose=0)[1]
    assert np.isclose(final, max(history["val_accuracy"]))
