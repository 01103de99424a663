"""Extra lessons: fine-tuning, augmentation, TFLite export, predicting new photos."""
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from conftest import exported_base_weights, run_script, script_lines, tl

FAST = ["--image-size", "32", "--learning-rate", "0.05", "--no-show"]


def train_run(data, module, out, *extra):
    assert tl.main(["--data-dir", str(data), "--model-handle", module, "--output-dir", str(out),
                    *FAST, *extra]) == 0
    return json.load(open(out / "metrics.json"))


@pytest.fixture(scope="module")
def fine_tuned(three_colours, module32, tmp_path_factory):
    out = tmp_path_factory.mktemp("fine") / "run"
    return out, train_run(three_colours, module32, out, "--epochs", "30", "--fine-tune-epochs", "2",
                          "--fine-tune-learning-rate", "1e-3", "--tflite")


def test_fine_tuning_changes_the_base_but_not_its_batchnorm_statistics(fine_tuned, module32):
    out, m = fine_tuned
    original = {v.name: v.numpy() for v in tf.saved_model.load(module32).variables}
    tuned = exported_base_weights(out)
    assert tuned.keys() == original.keys()
    stats = [n for n in original if "moving_" in n]
    kernels = [n for n in original if "kernel" in n]
    assert stats and kernels
    for name in stats:
        np.testing.assert_array_equal(tuned[name], original[name])
    assert any(not np.allclose(tuned[n], original[n]) for n in kernels)


def test_fine_tuning_reports_both_phases_and_never_ends_below_the_head(fine_tuned):
    _, m = fine_tuned
    assert m["settings"]["fine_tune_epochs"] == 2 and set(m["val_accuracy"]) == {"after_head", "after_fine_tuning"}
    assert m["val_accuracy"]["after_fine_tuning"] >= m["val_accuracy"]["after_head"]
    assert m["head_test_accuracy"] is not None and m["test_accuracy"] >= 0.9
    assert "4b. Fine-tuning" in m["seconds"]


def test_tflite_model_predicts_the_same_classes(fine_tuned, three_colours):
    out, m = fine_tuned
    assert m["tflite_agreement"] == 1.0
    interpreter = (tl.LiteRT or tf.lite.Interpreter)(model_path=str(out / "model.tflite"))
    run = interpreter.get_signature_runner()
    x, y = tl.list_files(str(three_colours), ["blue", "green", "red"])
    images = next(iter(tl.make_dataset(x[::10], y[::10], 32, 16)))[0].numpy()
    saved_model = tf.saved_model.load(str(out / "model"))
    saved = saved_model.serve(images).numpy()
    name = next(iter(run.get_input_details()))
    lite = np.concatenate([next(iter(run(**{name: i[None]}).values())) for i in images])
    np.testing.assert_allclose(lite, saved, atol=1e-4)


def test_augmentation_trains_on_images_and_still_learns(three_colours, module32, tmp_path, monkeypatch):
    computed, feature_function = [], tl.feature_function  # features computed once, outside training
    def counting(extractor, runtime):
        features_of = feature_function(extractor, runtime)
        return lambda images: computed.append(features_of(images)) or computed[-1]
    monkeypatch.setattr(tl, "feature_function", counting)
    m = train_run(three_colours, module32, tmp_path / "run", "--epochs", "15", "--augment")
    assert m["settings"]["augment"] is True
    assert m["test_accuracy"] > 0.7  # chance is 1/3
    assert sum(map(len, computed)) == m["num_test"]  # only the test images: the whole model trains on images


def test_augmentation_flips_rotates_and_zooms_only_training_images():
    x = np.zeros((8, 32, 32, 3), np.uint8)
    x[:, :, :8] = 255  # a white band on the left
    y = np.zeros(8, np.int64)
    augmented = next(iter(tl.make_dataset(x, y, 32, 8, augment=True)))[0].numpy()
    plain = next(iter(tl.make_dataset(x, y, 32, 8)))[0].numpy()
    assert not np.allclose(augmented, plain)
    assert np.allclose(plain[:, :, :8], 1) and np.allclose(plain[:, :, 8:], 0)
    assert "features cannot be computed once" in " ".join(run_script("--help").stdout.split())


@pytest.fixture(scope="module")
def colour_run(three_colours, module32, tmp_path_factory):
    out = tmp_path_factory.mktemp("predict") / "run"
    train_run(three_colours, module32, out, "--epochs", "20")
    return out


def test_predict_prints_one_line_per_image_with_class_and_probability(colour_run, three_colours, tmp_path):
    red = three_colours / "red" / "000.png"
    big_blue = tmp_path / "big_blue.jpg"  # another size and format than in training
    tf.io.write_file(str(big_blue), tf.io.encode_jpeg(np.full((300, 200, 3), (30, 30, 220), np.uint8)))
    result = run_script("--predict", red, big_blue, "--model-dir", colour_run)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()[-2:]
    assert lines[0].startswith(f"{red}: red ") and lines[1].startswith(f"{big_blue}: blue ")
    assert len(lines[0].split(", ")) == 3 and lines[0].split()[2].endswith("%,")  # top 3 of 3 classes


def test_predict_reports_unreadable_files_and_still_predicts_the_rest(colour_run, three_colours, tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    green = three_colours / "green" / "001.png"
    assert tl.main(["--predict", str(broken), str(green), "--model-dir", str(colour_run)]) == 2
    out, err = capsys.readouterr()
    assert f"{green}: green" in out
    assert str(broken) in err and len(err.strip().splitlines()) == 1


def test_predict_without_an_exported_run_is_a_clear_error(tmp_path):
    result = run_script("--predict", "x.jpg", "--model-dir", tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--model-dir" in result.stderr and len(script_lines(result.stderr)) == 1


@pytest.mark.parametrize("damage", ["truncated saved_model.pb", "a SavedModel without serve()",
                                    "no serving_default signature"])
def test_predict_with_a_damaged_model_is_a_clear_error(colour_run, three_colours, tmp_path, damage):
    damaged = tmp_path / "run"
    shutil.copytree(colour_run, damaged)
    if damage == "truncated saved_model.pb":
        (damaged / "model" / "saved_model.pb").write_bytes(b"truncated")
    elif damage == "a SavedModel without serve()":  # such as a run exported by model.save
        shutil.rmtree(damaged / "model")
        tf.saved_model.save(tf.Module(), str(damaged / "model"))
    else:
        shutil.rmtree(damaged / "model")
        module = tf.Module()
        module.serve = tf.function(lambda images: images, input_signature=[tf.TensorSpec([None, 32, 32, 3])])
        tf.saved_model.save(module, str(damaged / "model"), signatures={})
    result = run_script("--predict", three_colours / "red" / "000.png", "--model-dir", damaged)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "train again" in result.stderr and len(script_lines(result.stderr)) == 1
