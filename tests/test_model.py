"""2-3. Model, bottleneck features and training: frozen base, trainable head."""
import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import SCRIPT, REPO, script_lines, tl


def test_only_the_head_is_trainable(module32):
    model, base, extractor, head = tl.build_model(module32, 32, 3, 0.2)
    assert model.output_shape == (None, 3)
    assert extractor.output_shape == head.input_shape
    assert [w.name.split("/")[0] for w in model.trainable_weights] == ["classifier", "classifier"]
    assert base.non_trainable_weights and base is model.get_layer("mobilenet_v2")
    probabilities = model.predict(np.random.rand(4, 32, 32, 3).astype("float32"), verbose=0)
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)


def colour_split(n, seed):
    """Red, green and blue noisy images: separable by any feature vector."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.integers(0, 120, (n, 32, 32, 3))
    x[np.arange(n), :, :, y] += 135
    return x.astype(np.uint8), y


def features_of(extractor, split, batch_size=32, runtime="keras"):
    x, y = split
    features = tl.feature_function(extractor, runtime)(tl.make_dataset(x, y, 32, 64))
    return tf.data.Dataset.from_tensor_slices((features, y)).batch(batch_size)


def test_training_the_head_trains_the_model_and_leaves_the_base_frozen(module32):
    tf.keras.utils.set_random_seed(0)
    model, base, extractor, head = tl.build_model(module32, 32, 3, 0.2)
    base_before = [w.numpy().copy() for w in base.weights]
    head_before = [w.numpy().copy() for w in model.get_layer("classifier").weights]
    train, val = colour_split(240, 0), colour_split(60, 1)
    features = features_of(extractor, train)
    assert next(iter(features))[0].shape == (32, extractor.output_shape[1])
    tl.compile_for_training(head, 1e-2)
    history = tl.train(head, features, features_of(extractor, val), 30)
    assert len(history["loss"]) == 30
    for before, after in zip(base_before, base.weights):
        np.testing.assert_array_equal(before, after.numpy())
    assert any(not np.allclose(b, a.numpy()) for b, a in zip(head_before, model.get_layer("classifier").weights))
    # The end-to-end model, on images, is as good as the head was on features.
    result = tl.evaluate(model, tl.make_dataset(*val, 32, 64), val[1], 3)
    assert result["accuracy"] > 0.8, result["accuracy"]  # chance is 1/3
    assert result["confusion"].sum() == 60 and np.trace(result["confusion"]) == round(result["accuracy"] * 60)
    assert result["probabilities"].shape == (60, 3) and result["loss"] > 0


def test_keeps_the_weights_of_the_epoch_with_the_lowest_validation_loss(module32):
    tf.keras.utils.set_random_seed(0)
    _, _, extractor, head = tl.build_model(module32, 32, 3, 0.0)
    x_val, y_val = colour_split(60, 1)
    train = features_of(extractor, colour_split(120, 0), 16)
    # Validation labels that contradict training: the better the head learns,
    # the worse validation gets, so the best epoch is an early one.
    val = features_of(extractor, (x_val, (y_val + 1) % 3))
    tl.compile_for_training(head, 0.05)
    history = tl.train(head, train, val, 8)
    assert min(history["val_loss"]) < history["val_loss"][-1]
    final_loss = head.evaluate(val, verbose=0)[0]
    assert np.isclose(final_loss, min(history["val_loss"]), rtol=1e-4)


# Bottleneck features through LiteRT -------------------------------------------

needs_litert = pytest.mark.skipif(tl.LiteRT is None, reason="LiteRT has no wheel for this platform")


@needs_litert
def test_litert_features_equal_keras_features(module32):
    _, _, extractor, _ = tl.build_model(module32, 32, 3, 0.2)
    images = tl.make_dataset(*colour_split(70, 2), 32, 32)  # 32 + 32 + 6: the last batch is smaller
    keras = tl.feature_function(extractor, "keras")(images)
    litert = tl.feature_function(extractor, "litert")(images)
    assert litert.shape == keras.shape == (70, extractor.output_shape[1])
    np.testing.assert_allclose(litert, keras, atol=1e-4)


@pytest.mark.parametrize("images, device, runtime", [
    (300, "CPU", "keras"),     # --max-images 100: three splits of 100 do not repay the conversion
    (1500, "CPU", "litert"),   # --max-images 500: measured faster with LiteRT, conversion included
    (12000, "CPU", "litert"),  # all of CIFAR-10's cats and dogs
    (12000, "GPU", "keras"),
])
def test_auto_converts_for_litert_only_when_it_pays(images, device, runtime):
    assert tl.choose_feature_runtime("auto", images, device) == runtime
    assert tl.choose_feature_runtime("keras", 12000, "CPU") == "keras"
    assert tl.choose_feature_runtime("litert", 10, "CPU") == "litert"


@needs_litert
def test_both_runtimes_train_the_same_head(module32, three_colours, tmp_path):
    metrics = {}
    for runtime in ("keras", "litert"):
        out = tmp_path / runtime
        assert tl.main(["--data-dir", str(three_colours), "--model-handle", module32, "--image-size", "32",
                        "--epochs", "5", "--features-with", runtime, "--output-dir", str(out), "--no-show"]) == 0
        metrics[runtime] = json.load(open(out / "metrics.json"))
        assert metrics[runtime]["features_with"] == runtime and metrics[runtime]["export_check"]["passed"]
    keras, litert = metrics["keras"], metrics["litert"]
    assert litert["test_accuracy"] == keras["test_accuracy"]
    assert litert["confusion_matrix"] == keras["confusion_matrix"]
    assert litert["test_loss"] == pytest.approx(keras["test_loss"], abs=1e-4)


def test_without_litert_installed_it_falls_back_to_keras_with_one_line(module32, three_colours, tmp_path):
    out = tmp_path / "run"
    blocked = ("import runpy, sys; sys.modules['ai_edge_litert'] = None; sys.argv = sys.argv[1:]; "
               "runpy.run_path(sys.argv[0], run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", blocked, SCRIPT, "--data-dir", str(three_colours),
                             "--model-handle", module32, "--image-size", "32", "--epochs", "2",
                             "--features-with", "litert", "--output-dir", str(out), "--no-show"],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert script_lines(result.stderr) == ["warning: LiteRT is not installed (pip install ai-edge-litert); "
                                           "computing the features with Keras"]
    metrics = json.load(open(out / "metrics.json"))
    assert metrics["features_with"] == "keras" and metrics["versions"]["litert"] is False
