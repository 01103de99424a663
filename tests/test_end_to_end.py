"""The whole run as a user starts it: the lesson's output, every file written, the model exported."""
import dataclasses
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import fake_cifar10, run_main, run_script, tl

FILES = ["data.png", "history.png", "predictions.png", "confusion_matrix.png", "where_it_looks.png",
         "predictions.csv", "labels.txt", "metrics.json", "model/saved_model.pb"]
STEPS = ["1. Data", "2. Model", "3. Bottleneck features", "4. Training the head", "5. Evaluation",
         "6. Plots", "7. Export", "9. Reading the results"]


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
    for name in FILES:
        assert os.path.getsize(out / name) > 0, name
    assert not os.path.exists(str(out) + ".partial")
    assert open(out / "labels.txt").read() == "cat\ndog\n"
    assert "Running on the CPU" in result.stdout or "Running on the GPU" in result.stdout


def test_the_lesson_prints_its_steps_and_reads_its_results_aloud(default_run):
    out, result = default_run
    printed = result.stdout
    positions = [printed.index(f"== {step} ==") for step in STEPS]
    assert positions == sorted(positions)
    assert "The base gets batches of shape (32, 224, 224, 3)" in printed
    assert "train: features of shape (108, 11)" in printed  # the test module gives 11 numbers
    assert "Kept epoch" in printed and "overfitting" in printed
    assert "95% interval" in printed
    assert printed.rstrip().splitlines()[-1] == f"Saved the run to {out}/"
    tail = printed[printed.index("What to try next:"):]
    for command in ("--dropout", "--data-dir", "--fine-tune-epochs", f"--predict photo.jpg "
                    f"--model-dir {out}"):
        assert command in tail


def test_metrics_report_the_run(default_run):
    out, _ = default_run
    m = json.load(open(out / "metrics.json"))
    assert m["classes"] == ["cat", "dog"] and m["output_dir"] == str(out)
    assert (m["num_train"], m["num_validation"], m["num_test"]) == (108, 12, 40)
    settings = m["settings"]  # every flag, so that the run can be repeated
    assert settings["model_handle"] == tl.DEFAULT_HANDLE and settings["image_size"] == 224
    assert (settings["epochs"], settings["seed"], settings["batch_size"], settings["dropout"]) == (
        3, 42, 64, 0.2)
    assert dataclasses.asdict(tl.parse_args([])).keys() == settings.keys()
    assert {"python", "tensorflow", "tensorflow_hub", "litert"} <= set(m["versions"])
    assert 0 <= m["accuracy_before_training"] <= 1 and 0 <= m["test_accuracy"] <= 1
    assert 1 <= m["kept_epoch"] <= 3 and 0 <= m["train_accuracy"] <= 1
    assert m["test_loss"] > 0 and np.sum(m["confusion_matrix"]) == 40
    assert m["features_with"] == "keras" and m["features_from_cache"] is False  # 160 images
    assert m["export_check"]["passed"]
    assert list(m["seconds"]) == STEPS and m["copies_across_splits"] == []


def test_exported_model_reproduces_the_reported_test_accuracy(default_run, catdog):
    out, _ = default_run
    m = json.load(open(out / "metrics.json"))
    model = tf.saved_model.load(str(out / "model"))  # plain TensorFlow, as a user would
    x, y, _ = tl.list_files(str(catdog / "test"), ["cat", "dog"])
    probabilities = np.concatenate([model.serve(tl.read_photo(path, 224)[None]).numpy()
                                    for path in x])
    assert probabilities.shape == (40, 2) and np.allclose(probabilities.sum(1), 1, atol=1e-5)
    assert np.mean(probabilities.argmax(1) == y) == pytest.approx(m["test_accuracy"])
    confusion = tf.math.confusion_matrix(y, probabilities.argmax(1)).numpy()
    assert confusion.tolist() == m["confusion_matrix"]


@pytest.fixture
def quick_cifar_run(module32, monkeypatch, tmp_path):
    """A quick run on CIFAR-10 (patched: no download), as `--max-images 64` gives."""
    data = fake_cifar10(4000, 2000)
    monkeypatch.setattr(tf.keras.datasets.cifar10, "load_data", lambda: data)
    def run(*extra):
        out = tmp_path / f"run{len(os.listdir(tmp_path))}"
        status, metrics = run_main("--model-handle", module32, "--image-size", 32, "--epochs", 2,
                                   "--max-images", 64, "--no-show", "--output-dir", out, *extra)
        assert status == 0
        return out, metrics
    return data, run


def test_a_quick_cifar10_run_writes_everything(quick_cifar_run, capsys):
    data, run = quick_cifar_run
    out, m = run()
    printed = capsys.readouterr().out
    for name in FILES:
        assert os.path.getsize(out / name) > 0, name
    assert m["classes"] == ["cat", "dog"] and m["settings"]["data_dir"] is None
    assert (m["num_train"], m["num_validation"], m["num_test"]) == (64, 64, 64)
    assert "Kept epoch" in printed and "training accuracy" in printed and "validation" in printed
    assert "What to try next:" in printed
    with open(out / "predictions.csv") as f:
        assert all(line.startswith("CIFAR-10 test image ") for line in f.read().splitlines()[1:])


def test_a_quick_fine_tuning_run_reports_the_test_accuracy_before_and_after(quick_cifar_run,
                                                                           capsys):
    _, run = quick_cifar_run
    _, m = run("--fine-tune-epochs", 1)
    printed = capsys.readouterr().out
    assert "== 8. Fine-tuning ==" in printed and 0 <= m["test_accuracy"] <= 1
    if m["fine_tuning_kept"]:
        assert 0 <= m["head_alone"]["test_accuracy"] <= 1
        assert (f"Test accuracy: {m['head_alone']['test_accuracy']:.4f} with the head alone, "
                f"{m['test_accuracy']:.4f} after training on the images.") in printed
    else:
        assert m["fine_tuning_kept"] is False and "head_alone" not in m
        assert "The head alone did better on the validation images" in printed
