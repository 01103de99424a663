"""2-4. The model, the bottleneck features and the head: frozen base, trained head, honest choices."""
import json
import math
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO, SCRIPT, run_main, script_lines, tl, write_colour_images

FAST = ["--image-size", "32", "--no-show"]


def colour_split(n, seed):
    """Red, green and blue noisy images: separable by any feature vector."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.integers(0, 120, (n, 32, 32, 3))
    x[np.arange(n), :, :, y] += 135
    return tl.Split(x.astype(np.uint8), y, np.array([f"image {i}" for i in range(n)]))


def build(module, classes=3, dropout=0.2):
    return tl.build_model(tl.load_module(module, 32), 32, classes, dropout)


def frozen_state(base):
    """Every weight of the base, BatchNorm's moving averages included."""
    return [w.numpy().copy() for w in base.weights]


def test_only_the_head_is_trainable(module32):
    model, extractor, head = build(module32)
    assert model.output_shape == (None, 3) and extractor.output_shape == head.input_shape
    assert [w.name.split("/")[0] for w in model.trainable_weights] == ["classifier", "classifier"]
    assert model.get_layer("mobilenet_v2").non_trainable_weights
    probabilities = model.predict(np.random.rand(4, 32, 32, 3).astype("float32"), verbose=0)
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)


def test_training_the_whole_model_on_images_leaves_the_frozen_base_unchanged(module32):
    """Not just the head: the whole model, so an unfrozen base or BatchNorm in training mode
    would show."""
    tf.keras.utils.set_random_seed(0)
    model, _, _ = build(module32)
    base = model.get_layer("mobilenet_v2")
    before, head_before = frozen_state(base), model.get_layer("classifier").get_weights()
    x, y, _ = colour_split(64, 0)
    tl.compile_for_training(model, 0.1)
    model.fit(tl.make_dataset(x, y, 32, 16), epochs=2, verbose=0)
    for old, new in zip(before, frozen_state(base)):
        np.testing.assert_array_equal(old, new)
    assert not np.allclose(head_before[0], model.get_layer("classifier").get_weights()[0])


def test_features_are_the_frozen_base_output_one_row_per_image(module32):
    _, extractor, _ = build(module32)
    splits = {"train": colour_split(70, 1), "validation": colour_split(20, 2),
              "test": colour_split(33, 3)}
    datasets = {name: tl.make_dataset(x, y, 32) for name, (x, y, _) in splits.items()}
    features = tl.compute_features(extractor, datasets, splits)
    for name, (x, _, _) in splits.items():
        assert features[name].shape == (len(x), extractor.output_shape[1])
        expected = extractor.predict(x.astype(np.float32) / 255, verbose=0)
        np.testing.assert_allclose(features[name], expected, atol=1e-5)


def test_progress_written_to_a_log_is_a_line_a_tenth_ending_with_all_images(module32, capsys):
    """Not a terminal (a file, a pipe): not a progress entry per batch, flooding the log."""
    _, extractor, _ = build(module32)
    x, y, _ = colour_split(3000, 0)  # 94 batches
    assert not tl.sys.stdout.isatty()
    progress = tl.show_progress("train", len(y))  # as compute_features uses it
    extractor.predict(tl.make_dataset(x, y, 32), verbose=0, callbacks=[progress])
    updates = [line for line in capsys.readouterr().out.replace("\r", "\n").splitlines()
               if "images/s" in line]
    assert 1 <= len(updates) <= 11, updates
    assert "3000/3000 images" in updates[-1]


def test_the_head_learns_separable_classes_well_above_chance(module32, three_colours, tmp_path):
    status, m = run_main("--data-dir", three_colours, "--model-handle", module32, "--epochs", 30,
                         "--learning-rate", 0.01, "--output-dir", tmp_path / "run", *FAST)
    assert status == 0 and m["classes"] == ["blue", "green", "red"]
    assert m["test_accuracy"] >= 0.9 > m["accuracy_before_training"] + 0.2


def test_the_kept_epoch_has_the_lowest_validation_loss(module32):
    """Validation labels that contradict training: the better the head learns, the worse
    validation gets, so the epoch to keep is an early one, not the last."""
    tf.keras.utils.set_random_seed(0)
    _, extractor, head = build(module32, dropout=0.0)
    train, val = colour_split(120, 0), colour_split(60, 1)
    val = tl.Split(val.x, (val.y + 1) % 3, val.names)
    features = {name: extractor.predict(x.astype(np.float32) / 255, verbose=0)
                for name, (x, _, _) in (("train", train), ("validation", val))}
    s = tl.parse_args(["--epochs", "8", "--learning-rate", "0.05", "--batch-size", "16"])
    # No test split at all: if training looked at the test images it would fail with a KeyError.
    history, measured = tl.train_head(head, features, {"train": train, "validation": val}, 3, s)
    kept = int(np.argmin(history["val_loss"]))
    assert kept < 7 and measured["kept_epoch"] == kept + 1
    loss, accuracy = head.evaluate(features["validation"], val[1], verbose=0)
    assert loss == pytest.approx(history["val_loss"][kept], rel=1e-4)
    assert measured["val_accuracy"] == history["val_accuracy"][kept] == pytest.approx(accuracy)
    assert measured["train_accuracy"] == history["accuracy"][kept]


def test_accuracy_before_training_is_measured_on_the_validation_images(module32):
    """The same features, with the labels swapped between the splits: the untrained head's
    accuracy on validation is 1 minus its accuracy on training (31 images: never a tie)."""
    tf.keras.utils.set_random_seed(0)
    _, _, head = build(module32, classes=2, dropout=0.0)
    features = np.random.default_rng(0).normal(size=(31, head.input_shape[1])).astype(np.float32)
    predicted = head.predict(features, verbose=0).argmax(axis=1)
    names = np.arange(31).astype(str)
    splits = {"train": tl.Split(None, 1 - predicted, names),
              "validation": tl.Split(None, predicted, names)}
    _, measured = tl.train_head(head, {"train": features, "validation": features}, splits, 2,
                                tl.parse_args(["--epochs", "1"]))
    assert measured["accuracy_before_training"] == 1.0  # on training it would be 0.0


def test_the_numbers_reported_are_the_kept_epochs(module32, monkeypatch, capsys):
    """Training that gives this history (the weights loaded back are the kept epoch's): the
    second epoch's numbers are the ones reported, not the last epoch's."""
    history = {"loss": [0.9, 0.7, 0.5, 0.3], "accuracy": [0.5, 0.6, 0.7, 0.9],
               "val_loss": [0.8, 0.6, 0.65, 0.7], "val_accuracy": [0.55, 0.66, 0.64, 0.61]}
    _, _, head = build(module32)
    monkeypatch.setattr(head, "fit", lambda *args, **kwargs: SimpleNamespace(history=history))
    monkeypatch.setattr(head, "load_weights", lambda path: None)
    split = colour_split(30, 0)
    features = {name: np.zeros((30, head.input_shape[1]), np.float32)
                for name in ("train", "validation")}
    _, measured = tl.train_head(head, features, {"train": split, "validation": split}, 3,
                                tl.parse_args([]))
    assert (measured["kept_epoch"], measured["train_accuracy"], measured["val_accuracy"]) == (
        2, 0.6, 0.66)
    assert "Kept epoch 2: training accuracy 0.600, validation 0.660" in capsys.readouterr().out


def test_the_test_images_never_choose_the_epoch(module32, tmp_path):
    """Test images whose labels are swapped: if they chose the epoch, it would be the first."""
    colours = {"red": (220, 30, 30), "blue": (30, 30, 220)}
    write_colour_images(tmp_path / "data" / "train", colours, 30)
    write_colour_images(tmp_path / "data" / "val", colours, 10, seed=1)
    write_colour_images(tmp_path / "data" / "test", {"red": colours["blue"],
                                                     "blue": colours["red"]}, 10, seed=2)
    status, m = run_main("--data-dir", tmp_path / "data", "--model-handle", module32, "--epochs", 6,
                         "--learning-rate", 0.02, "--dropout", 0, "--output-dir",
                         tmp_path / "run", *FAST)
    assert status == 0 and m["test_accuracy"] < 0.5  # the test labels really are swapped
    assert m["kept_epoch"] == 6


def test_test_loss_is_the_cross_entropy_of_the_true_class(tmp_path):
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]], np.float32)
    labels = np.array([0, 1, 1, 0])
    model = tf.keras.Sequential([tf.keras.layers.Lambda(lambda x: x)])
    test_split = tl.Split(np.zeros(4), labels, np.array(list("abcd")))
    test, measured = tl.evaluate(model, probabilities, test_split, ["x", "y"])
    expected = -np.mean(np.log([0.9, 0.8, 0.4, 0.3]))
    assert measured["test_loss"] == pytest.approx(expected, rel=1e-5)
    assert measured["test_accuracy"] == 0.5 and measured["per_class_accuracy"] == {"x": 0.5, "y": 0.5}
    assert measured["confusion_matrix"] == [[1, 1], [1, 1]]
    np.testing.assert_allclose(test["probabilities"], probabilities)
    np.testing.assert_array_equal(test["confusion"], [[1, 1], [1, 1]])


@pytest.fixture
def captured(monkeypatch):
    """What main builds and trains on, recorded as it goes."""
    seen = {}
    build_model, fit = tl.build_model, tl.fit_keeping_the_best_epoch
    def recording_build(*args):
        seen["model"], seen["extractor"], seen["head"] = built = build_model(*args)
        return built
    def recording_fit(model, training, validation, epochs):
        seen.setdefault("training", training)
        return fit(model, training, validation, epochs)
    monkeypatch.setattr(tl, "build_model", recording_build)
    monkeypatch.setattr(tl, "fit_keeping_the_best_epoch", recording_fit)
    return seen


def test_dropout_and_batch_size_reach_the_head_and_its_batches_are_shuffled(
        module32, three_colours, tmp_path, captured):
    status, m = run_main("--data-dir", three_colours, "--model-handle", module32, "--epochs", 1,
                         "--dropout", 0.37, "--batch-size", 10, "--output-dir", tmp_path / "run",
                         *FAST)
    assert status == 0 and captured["model"].get_layer("dropout").rate == pytest.approx(0.37)
    batches = list(captured["training"])
    assert len(batches) == math.ceil(m["num_train"] / 10) and len(batches[0][0]) == 10
    first = np.concatenate([y.numpy() for _, y in batches])
    again = np.concatenate([y.numpy() for _, y in captured["training"]])
    assert sorted(first) == sorted(again) and len(first) == m["num_train"]
    assert list(first) != sorted(first), "the training features are in class order"
    assert list(first) != list(again), "the order is not new in every epoch"


def test_the_seed_reaches_the_heads_first_weights_and_training_order_not_only_the_splits(
        module32, tmp_path, monkeypatch):
    """Split folders: nothing is carved at random, so every seed gets the same splits."""
    colours = {"red": (200, 40, 40), "blue": (40, 40, 200)}
    for split, count, seed in (("train", 20, 0), ("val", 5, 1), ("test", 5, 2)):
        write_colour_images(tmp_path / "data" / split, colours, count, seed=seed)
    seen = []
    build_model, fit = tl.build_model, tl.fit_keeping_the_best_epoch
    def recording_build(*args):
        built = build_model(*args)
        seen.append({"first weights": built[2].get_layer("classifier").get_weights()[0]})
        return built
    def recording_fit(model, training, validation, epochs):
        history = fit(model, training, validation, epochs)
        seen[-1]["order"] = np.concatenate([x.numpy().sum(1) for x, _ in training])  # once more
        seen[-1]["trained weights"] = model.get_layer("classifier").get_weights()[0]
        return history
    monkeypatch.setattr(tl, "build_model", recording_build)
    monkeypatch.setattr(tl, "fit_keeping_the_best_epoch", recording_fit)
    for i, seed in enumerate((1, 1, 2)):
        status, m = run_main("--data-dir", tmp_path / "data", "--model-handle", module32,
                             "--epochs", 2, "--seed", seed, "--output-dir", tmp_path / str(i),
                             *FAST)
        assert status == 0 and (m["num_train"], m["num_validation"], m["num_test"]) == (40, 10, 10)
    same, other = seen[1], seen[2]
    for name in ("first weights", "order", "trained weights"):
        np.testing.assert_array_equal(seen[0][name], same[name], err_msg=name)
        assert not np.allclose(seen[0][name], other[name]), f"{name}: the same for another seed"
    assert sorted(seen[0]["order"]) == sorted(other["order"])  # the same training images


# LiteRT for the feature pass ------------------------------------------------------------------

needs_litert = pytest.mark.skipif(tl.LiteRT is None, reason="LiteRT has no wheel for this platform")


@needs_litert
def test_litert_features_equal_keras_features(module32):
    _, extractor, _ = build(module32)
    x, y, _ = colour_split(70, 2)
    images = tl.make_dataset(x, y, 32, 32)  # 32 + 32 + 6: the last batch is smaller
    keras = extractor.predict(images, verbose=0)
    litert = tl.litert_extractor(extractor).predict(images)
    assert litert.shape == keras.shape == (70, extractor.output_shape[1])
    np.testing.assert_allclose(litert, keras, atol=1e-4)


@pytest.mark.parametrize("images, device, chosen", [
    (300, "CPU", "keras"),     # --max-images 100: too few to repay the conversion
    (999, "CPU", "keras"),
    (1000, "CPU", "litert"),
    (1500, "CPU", "litert"),
    (12000, "CPU", "litert"),  # all of CIFAR-10's cats and dogs
    (12000, "GPU", "keras"),
])
def test_auto_uses_litert_only_on_a_cpu_with_enough_images(images, device, chosen, monkeypatch):
    monkeypatch.setattr(tl, "device", lambda: device)
    splits = {"train": tl.Split(None, np.zeros(images), None)}
    for wanted, expected in (("auto", chosen), ("keras", "keras"), ("litert", "litert")):
        s = tl.parse_args(["--features-with", wanted])
        assert tl.choose_runtime(s, splits) == expected


@needs_litert
def test_both_runtimes_train_the_same_head(module32, three_colours, tmp_path):
    metrics = {}
    for runtime in ("keras", "litert"):
        status, metrics[runtime] = run_main(
            "--data-dir", three_colours, "--model-handle", module32, "--epochs", 5, "--no-cache",
            "--features-with", runtime, "--output-dir", tmp_path / runtime, *FAST)
        assert status == 0 and metrics[runtime]["features_with"] == runtime
    keras, litert = metrics["keras"], metrics["litert"]
    assert litert["test_accuracy"] == keras["test_accuracy"]
    assert litert["confusion_matrix"] == keras["confusion_matrix"]
    assert litert["test_loss"] == pytest.approx(keras["test_loss"], abs=1e-4)


def test_without_litert_installed_it_falls_back_to_keras_with_one_line(module32, three_colours,
                                                                        tmp_path):
    out = tmp_path / "run"
    blocked = ("import runpy, sys; sys.modules['ai_edge_litert'] = None; sys.argv = sys.argv[1:]; "
               "runpy.run_path(sys.argv[0], run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", blocked, SCRIPT, "--data-dir", str(three_colours),
                             "--model-handle", module32, "--image-size", "32", "--epochs", "2",
                             "--features-with", "litert", "--output-dir", str(out), "--no-show"],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert script_lines(result.stderr) == ["warning: LiteRT is not installed (pip install "
                                           "ai-edge-litert); computing the features with Keras"]
    metrics = json.load(open(out / "metrics.json"))
    assert metrics["features_with"] == "keras" and metrics["versions"]["litert"] is False
