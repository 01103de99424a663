"""8. The extra lessons: fine-tuning, augmentation and TFLite."""
import numpy as np
import pytest
import tensorflow as tf

from conftest import exported_base_weights, run_main, tl, write_colour_images

FAST = ["--image-size", "32", "--learning-rate", "0.05", "--no-show"]


@pytest.fixture(scope="module")
def fine_tuned(three_colours, module32, tmp_path_factory):
    out, learning_rates = tmp_path_factory.mktemp("fine") / "run", []
    with pytest.MonkeyPatch.context() as patch:  # record the learning rate fine-tuning gets
        compile_for_training = tl.compile_for_training
        patch.setattr(tl, "compile_for_training", lambda model, rate: learning_rates.append(rate)
                      or compile_for_training(model, rate))
        status, m = run_main("--data-dir", three_colours, "--model-handle", module32, "--output-dir",
                             out, *FAST, "--epochs", 30, "--fine-tune-epochs", 2,
                             "--fine-tune-learning-rate", "1e-3", "--batch-size", 16, "--tflite")
    assert status == 0
    return out, m, learning_rates


def test_fine_tuning_changes_the_base_but_not_its_batchnorm_statistics(fine_tuned, module32):
    out, m, _ = fine_tuned
    assert m["fine_tuning_kept"] is True  # the model exported is the fine-tuned one
    original = {v.name: v.numpy() for v in tf.saved_model.load(module32).variables}
    tuned = exported_base_weights(out)
    assert tuned.keys() == original.keys()
    stats = [n for n in original if "moving_" in n]
    kernels = [n for n in original if "kernel" in n]
    assert stats and kernels
    for name in stats:
        np.testing.assert_array_equal(tuned[name], original[name])
    assert any(not np.allclose(tuned[n], original[n]) for n in kernels)


def test_fine_tuning_reports_the_test_accuracy_before_and_after(fine_tuned):
    _, m, _ = fine_tuned
    assert m["settings"]["fine_tune_epochs"] == 2 and m["fine_tuning_kept"] is True
    assert 0 < m["head_alone"]["test_accuracy"] <= 1 and 1 <= m["head_alone"]["kept_epoch"] <= 30
    assert m["test_accuracy"] >= 0.9 and 1 <= m["kept_epoch"] <= 2  # the fine-tuned model's
    assert list(m["seconds"]) == ["1. Data", "2. Model", "3. Bottleneck features",
                                  "4. Training the head", "5. Evaluation", "6. Plots", "7. Export",
                                  "8. Fine-tuning", "8. Evaluation, plots and export again",
                                  "9. Reading the results", "10. A model for phones"]


def test_fine_tuning_warms_up_then_decays_to_zero_well_below_the_heads_rate(fine_tuned):
    _, m, rates = fine_tuned
    head_rate, schedule = rates
    assert head_rate == 0.05
    steps = 2 * int(np.ceil(m["num_train"] / 16))
    values = [float(schedule(step)) for step in range(steps + 1)]
    peak = int(np.argmax(values))
    assert values[0] == 0 and 0 < peak <= steps // 5  # a short warm-up...
    assert values[peak] == pytest.approx(1e-3, rel=1e-3) and max(values) < head_rate / 10
    assert values[-1] == pytest.approx(0, abs=1e-7)  # ...then down to nothing
    assert all(a >= b for a, b in zip(values[peak:], values[peak + 1:]))


def test_fine_tuning_takes_batches_of_16_at_a_rate_scaled_to_match(three_colours, module32,
                                                                    tmp_path, monkeypatch):
    """Batches of 64 at 224 pixels took 6 GB to fine-tune MobileNetV2; 16 fit an 8 GB laptop."""
    batches, rates = [], []
    fit, compile_for_training = tl.fit_keeping_the_best_epoch, tl.compile_for_training
    def fit_recording_the_batch(model, training, validation, epochs):
        batches.append(len(next(iter(training))[1]))
        return fit(model, training, validation, epochs)
    monkeypatch.setattr(tl, "fit_keeping_the_best_epoch", fit_recording_the_batch)
    monkeypatch.setattr(tl, "compile_for_training", lambda model, rate: rates.append(rate)
                        or compile_for_training(model, rate))
    status, m = run_main("--data-dir", three_colours, "--model-handle", module32, "--output-dir",
                         tmp_path / "run", *FAST, "--epochs", 1, "--fine-tune-epochs", 1,
                         "--fine-tune-learning-rate", "1e-3", "--batch-size", 64)
    assert status == 0 and batches == [64, 16]  # the head's batches, then fine-tuning's
    steps = int(np.ceil(m["num_train"] / 16))
    peak = max(float(rates[1](step)) for step in range(steps))
    assert peak == pytest.approx(1e-3 / 2, rel=1e-3)  # 1e-3 times the square root of 16 / 64


def test_fine_tuning_that_does_worse_gives_back_the_frozen_models_weights(three_colours, module32,
                                                                          tmp_path, monkeypatch,
                                                                          capsys):
    """A learning rate so high that fine-tuning changes every weight of the base, and a
    validation loss worse than the head's: the head-only weights return, and its numbers."""
    fit, seen = tl.fit_keeping_the_best_epoch, []
    def fit_doing_worse_on_images(model, training, validation, epochs):
        seen.append((model, model.get_weights()))
        history, kept = fit(model, training, validation, epochs)
        if len(seen) == 2:  # on the images: worse on validation than any epoch of the head's
            history = dict(history, val_loss=[loss + 100 for loss in history["val_loss"]])
        return history, kept
    monkeypatch.setattr(tl, "fit_keeping_the_best_epoch", fit_doing_worse_on_images)
    status, m = run_main("--data-dir", three_colours, "--model-handle", module32, "--output-dir",
                         tmp_path / "run", *FAST, "--epochs", 30, "--fine-tune-epochs", 1,
                         "--fine-tune-learning-rate", 50)
    assert status == 0 and len(seen) == 2
    printed = capsys.readouterr().out
    assert "The head alone did better on the validation images" in printed
    model, weights_before = seen[1]  # the model fine-tuned, as it was before fine-tuning
    for before, now in zip(weights_before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(before, now)
    original = {v.name: v.numpy() for v in tf.saved_model.load(module32).variables}
    exported = exported_base_weights(tmp_path / "run")
    for name in original:
        np.testing.assert_array_equal(exported[name], original[name])
    assert m["fine_tuning_kept"] is False and "head_alone" not in m
    [evaluated] = [line for line in printed.splitlines() if line.startswith("Test accuracy ")]
    assert evaluated.startswith(f"Test accuracy {m['test_accuracy']:.4f} on {m['num_test']} "
                                f"images, loss {m['test_loss']:.4f}.")  # the head's, step 5


def test_tflite_model_predicts_the_same_classes(fine_tuned, three_colours):
    out, m, _ = fine_tuned
    assert m["tflite_agreement"] == 1.0 and m["tflite_largest_difference"] < 1e-3
    interpreter = (tl.LiteRT or tf.lite.Interpreter)(model_path=str(out / "model.tflite"))
    run = interpreter.get_signature_runner()
    x, y, _ = tl.list_files(str(three_colours), ["blue", "green", "red"])
    images = next(iter(tl.make_dataset(x[::10], y[::10], 32, 16)))[0].numpy()
    exported = tf.saved_model.load(str(out / "model"))
    saved = exported.serve(tf.image.convert_image_dtype(images, tf.uint8)).numpy()
    lite = np.concatenate([run(images=image[None])["classifier"] for image in images])
    np.testing.assert_allclose(lite, saved, atol=0.02)  # uint8 rounding of the served images


# Augmentation -----------------------------------------------------------------------------------

def run_augmented(module, tmp_path, monkeypatch, pattern):
    """A run with --augment on images of one pattern that a flip cannot change; returns the
    training and validation datasets it trained with."""
    seen = {}
    def record(model, training, validation, epochs):
        seen["training"], seen["validation"] = training, validation  # the last: on images
        history = {"loss": [1.0], "val_loss": [9.0], "accuracy": [0.5], "val_accuracy": [0.5]}
        return history, dict(kept_epoch=1, train_accuracy=0.5, val_accuracy=0.5)
    monkeypatch.setattr(tl, "fit_keeping_the_best_epoch", record)
    rows, cols = np.mgrid[:32, :32]
    shape = {"bar": np.abs(rows - 15.5) < 2,  # a horizontal bar across the middle
             "disk": (rows - 15.5) ** 2 + (cols - 15.5) ** 2 < 8 ** 2}[pattern]
    for name, brightness in {"a": 255, "b": 160}.items():
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(16):
            pixels = (shape[..., None] * np.full(3, brightness)).astype(np.uint8)
            tf.io.write_file(str(tmp_path / "data" / name / f"{i}.png"), tf.io.encode_png(pixels))
    status, _ = run_main("--data-dir", tmp_path / "data", "--model-handle", module,
                         "--output-dir", tmp_path / "run", *FAST, "--epochs", 1, "--augment")
    assert status == 0
    return [np.concatenate([batch.numpy() for batch, _ in seen[name]])
            for name in ("training", "validation")]


def test_augmentation_turns_training_images(module32, tmp_path, monkeypatch):
    training, validation = run_augmented(module32, tmp_path, monkeypatch, "bar")
    def tilt(images):  # how far the bar's middle moves from the left edge to the right
        left = images[:, :, :4, 0].mean(axis=2).argmax(axis=1)
        right = images[:, :, -4:, 0].mean(axis=2).argmax(axis=1)
        return np.abs(left - right)
    assert (tilt(training) >= 2).sum() >= 4, "no training image is turned"
    assert np.all(tilt(validation) == 0), "validation images are turned too"
    bright = validation[..., 0] > 0.25
    assert np.all(bright[:, 14:18]) and not bright[:, :13].any() and not bright[:, 19:].any()


def test_augmentation_zooms_training_images(module32, tmp_path, monkeypatch):
    training, validation = run_augmented(module32, tmp_path, monkeypatch, "disk")
    area = (training[..., 0] > 0.3).sum(axis=(1, 2))  # a disk looks the same turned or flipped
    plain = (validation[..., 0] > 0.3).sum(axis=(1, 2))
    assert len(set(plain)) == 1, "validation images are zoomed too"
    assert (np.abs(area / plain[0] - 1) > 0.08).sum() >= 4, "no training image is zoomed"


def test_augmentation_alone_keeps_the_base_frozen_and_reports_both_accuracies(module32, tmp_path):
    write_colour_images(tmp_path / "data", {"a": (200, 40, 40), "b": (40, 40, 200)}, 10)
    status, m = run_main("--data-dir", tmp_path / "data", "--model-handle", module32,
                         "--output-dir", tmp_path / "run", *FAST, "--epochs", 2, "--augment")
    assert status == 0 and m["augmented_training_kept"] is True and "fine_tuning_kept" not in m
    assert 0 <= m["head_alone"]["test_accuracy"] <= 1 and 0 <= m["test_accuracy"] <= 1
    assert "8. Training on augmented images" in m["seconds"]
    original = {v.name: v.numpy() for v in tf.saved_model.load(module32).variables}
    exported = exported_base_weights(tmp_path / "run")
    for name in original:
        np.testing.assert_array_equal(exported[name], original[name])


def test_fine_tuning_says_the_batch_size_and_the_peak_rate_it_uses(capsys):
    """16 images a batch instead of --batch-size 64: the peak rate is halved, and the run says so."""
    s = tl.parse_args(["--fine-tune-epochs", "2", "--fine-tune-learning-rate", "1e-4"])
    schedule = tl.fine_tuning_rate(s, 16, 10)
    assert "Fine-tuning in batches of 16 images; the rate peaks at 5e-05." in capsys.readouterr().out
    assert max(float(schedule(step)) for step in range(21)) == pytest.approx(5e-5, rel=1e-3)
