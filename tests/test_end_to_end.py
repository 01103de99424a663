"""The whole run as a user starts it: files written, model exported and reloadable."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import exported_base_weights, run_script, tl


@pytest.fixture(scope="module")
def default_run(catdog, hub_cache, tmp_path_factory):
    """`python transfer_learning.py --data-dir ...` with the default handle, offline."""
    out = tmp_path_factory.mktemp("runs") / "run"
    result = run_script("--data-dir", catdog, "--output-dir", out, "--epochs", "3", "--no-show",
                        env={"TFHUB_CACHE_DIR": hub_cache})
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_every_output_file_is_written(default_run):
    out, result = default_run
    for name in ["history.png", "predictions.png", "confusion_matrix.png", "where_it_looks.png",
                 "labels.txt", "metrics.json", "model/saved_model.pb"]:
        assert os.path.getsize(out / name) > 0, name
    assert not os.path.exists(str(out) + ".partial")
    assert open(out / "labels.txt").read() == "cat\ndog\n"
    assert "Running on CPU" in result.stdout or "Running on GPU" in result.stdout


def test_metrics_report_the_run(default_run):
    out, _ = default_run
    m = json.load(open(out / "metrics.json"))
    assert m["classes"] == ["cat", "dog"]
    assert (m["num_train"], m["num_val"], m["num_test"]) == (108, 12, 40)
    settings = m["settings"]  # every flag, so that the run can be repeated
    assert settings["model_handle"] == tl.DEFAULT_HANDLE and settings["image_size"] == 224
    assert (settings["epochs"], settings["seed"], settings["batch_size"], settings["dropout"]) == (3, 42, 64, 0.2)
    assert set(vars(tl.parse_args([]))) == set(settings)
    assert {"python", "tensorflow", "tensorflow_hub"} <= set(m["versions"])
    assert 0 <= m["accuracy_before_training"] <= 1 and 0 <= m["test_accuracy"] <= 1
    assert m["test_loss"] > 0 and np.sum(m["confusion_matrix"]) == 40
    assert m["features_with"] == "keras"  # 160 images: not worth converting for LiteRT
    assert m["export_check"]["passed"] and m["export_check"]["same_class"] == 1
    assert list(m["seconds"]) == ["1. Data", "2. Model", "3. Bottleneck features", "4. Training the head",
                                  "5. Evaluation", "6. Plots", "7. Export"]


def test_exported_model_reproduces_the_reported_test_accuracy(default_run, catdog, hub_cache):
    out, _ = default_run
    m = json.load(open(out / "metrics.json"))
    model = tf.saved_model.load(str(out / "model"))  # plain TensorFlow, as a user would
    x, y = tl.list_files(str(catdog / "test"), ["cat", "dog"])
    probabilities = np.concatenate([model.serve(images).numpy() for images, _ in tl.make_dataset(x, y, 224, 64)])
    assert model.signatures["serving_default"].inputs[0].shape.as_list() == [None, 224, 224, 3]
    assert probabilities.shape == (40, 2) and np.allclose(probabilities.sum(1), 1, atol=1e-5)
    assert np.mean(probabilities.argmax(1) == y) == pytest.approx(m["test_accuracy"])
    confusion = tf.math.confusion_matrix(y, probabilities.argmax(1)).numpy()
    assert confusion.tolist() == m["confusion_matrix"]


def test_exported_base_weights_are_the_modules_own(default_run, hub_cache):
    out, _ = default_run
    digest = os.listdir(hub_cache)[0]
    module = tf.saved_model.load(os.path.join(hub_cache, digest))
    original = {v.name: v.numpy() for v in module.variables}
    exported = exported_base_weights(out)
    assert exported.keys() == original.keys()
    for name in original:
        np.testing.assert_array_equal(exported[name], original[name])


def test_cifar10_run_in_process_with_load_data_patched(module32, monkeypatch, tmp_path):
    from test_data import fake_cifar10
    data = fake_cifar10(200, 60)
    monkeypatch.setattr(tf.keras.datasets.cifar10, "load_data", lambda: data)
    assert tl.main(["--model-handle", module32, "--image-size", "32", "--epochs", "2",
                    "--output-dir", str(tmp_path / "run"), "--no-show"]) == 0
    m = json.load(open(tmp_path / "run" / "metrics.json"))
    cats_and_dogs = np.isin(data[0][1], [3, 5]).sum()
    assert m["data"] == "CIFAR-10" and m["classes"] == ["cat", "dog"] and m["settings"]["data_dir"] is None
    assert m["num_train"] + m["num_val"] == cats_and_dogs
    assert m["num_test"] == np.isin(data[1][1], [3, 5]).sum()


def test_separable_classes_are_learned_well_above_chance(module32, three_colours, tmp_path):
    assert tl.main(["--data-dir", str(three_colours), "--model-handle", module32,
                    "--image-size", "32", "--epochs", "30", "--learning-rate", "0.01",
                    "--output-dir", str(tmp_path / "run"), "--no-show"]) == 0
    m = json.load(open(tmp_path / "run" / "metrics.json"))
    assert m["classes"] == ["blue", "green", "red"]
    assert m["test_accuracy"] >= 0.9 > m["accuracy_before_training"] + 0.2
