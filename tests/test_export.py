"""7. Export: model/ takes photos as they come, and --predict goes through exactly that."""
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import exported_base_weights, jpeg_bytes, run_main, run_script, script_lines, tl
from conftest import write_colour_images

COLOURS = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}


def photo(colour, height, width, seed):
    rng = np.random.default_rng(seed)
    return np.clip(np.array(colour) + rng.integers(-40, 40, (height, width, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def photo_run(module32, tmp_path_factory):
    """Photos of three sizes; a run trained and exported on them, and the Keras model it trained."""
    root = tmp_path_factory.mktemp("photos")
    for name, colour in COLOURS.items():
        os.makedirs(root / name)
        for i in range(14):
            height, width = SIZES[i % 3]
            (root / name / f"{i:02d}.jpg").write_bytes(jpeg_bytes(photo(colour, height, width, i)))
    out, built = tmp_path_factory.mktemp("runs") / "run", []
    with pytest.MonkeyPatch.context() as patch:
        build_model = tl.build_model
        patch.setattr(tl, "build_model", lambda *args: built.append(build_model(*args)) or built[0])
        status, metrics = run_main("--data-dir", root, "--model-handle", module32, "--image-size",
                                   32, "--epochs", 10, "--learning-rate", 0.05, "--no-show",
                                   "--output-dir", out)
    assert status == 0
    return root, out, metrics, built[0][0]


SIZES = [(40, 30), (90, 120), (300, 200)]  # heights and widths; the last two decoded at 1/2, 1/4


@pytest.mark.parametrize("size", SIZES)
def test_serve_takes_uint8_photos_and_gives_the_training_pipelines_probabilities(photo_run, size):
    root, out, _, trained = photo_run
    model = tf.saved_model.load(str(out / "model"))  # plain TensorFlow, as whoever deploys it
    spec = model.signatures["serving_default"].structured_input_signature[1]["images"]
    assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, None, None, 3]
    paths = np.array([str(root / c / f"{i:02d}.jpg") for c in COLOURS for i in range(14)
                      if SIZES[i % 3] == size][:6])
    pixels = np.stack([np.asarray(Image.open(path).convert("RGB")) for path in paths])  # in full
    served = model.serve(pixels).numpy()
    pipeline = trained.predict(tl.make_dataset(paths, np.zeros(len(paths), int), 32), verbose=0)
    assert served.shape == (6, 3)
    np.testing.assert_allclose(served, pipeline, atol=1e-3)


def test_export_check_reloads_the_model_and_passes(photo_run):
    _, _, m, _ = photo_run
    check = m["export_check"]
    assert check["passed"] and check["images"] == min(8, m["num_test"])
    assert check["largest_difference"] < 1e-4


def test_exported_base_weights_are_the_modules_own(photo_run, module32):
    _, out, _, _ = photo_run
    original = {v.name: v.numpy() for v in tf.saved_model.load(module32).variables}
    exported = exported_base_weights(out)
    assert exported.keys() == original.keys()
    for name in original:
        np.testing.assert_array_equal(exported[name], original[name])


def test_an_export_that_differs_is_reported_and_the_files_kept(module32, tmp_path, capfd):
    model = tl.build_model(tl.load_module(module32, 32), 32, 2, 0.0)[0]
    x = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3)).astype(np.uint8)
    probabilities = model.predict(tl.scale_and_resize(x, 32), verbose=0)
    shifted = probabilities + np.array([0.2, -0.2], np.float32)  # as if from another device
    test = tl.Split(x, np.zeros(6, int), np.array(list("abcdef")))
    check = tl.export_model(model, ["a", "b"], test, {"probabilities": shifted}, 32, str(tmp_path))
    assert check["passed"] is False and check["images"] == 6
    assert check["largest_difference"] == pytest.approx(0.2, abs=1e-3)
    assert os.path.isfile(tmp_path / "model" / "saved_model.pb")
    assert (tmp_path / "labels.txt").read_text() == "a\nb\n"
    lines = script_lines(capfd.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("warning:") and "metrics.json" in lines[0]


# --predict ------------------------------------------------------------------------------------

def test_predict_prints_the_class_of_each_photo_top_3_of_3(photo_run, tmp_path):
    root, out, _, _ = photo_run
    big_blue = tmp_path / "big_blue.jpg"  # another size than any in training
    big_blue.write_bytes(jpeg_bytes(photo((30, 30, 220), 500, 375, 99)))
    red = root / "red" / "00.jpg"
    result = run_script("--predict", red, big_blue, "--model-dir", out)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()[-2:]
    assert lines[0].startswith(f"{red}: red ") and lines[1].startswith(f"{big_blue}: blue ")
    assert len(lines[0].split(", ")) == 3  # three classes: all three, likeliest first


def test_predict_goes_through_serve_and_a_sideways_phone_photo_is_turned(photo_run, tmp_path,
                                                                         monkeypatch, capsys):
    _, out, _, _ = photo_run
    upright = photo((30, 30, 220), 64, 48, 5)
    upright[:32] = (220, 30, 30)  # red top half, blue bottom: a sideways read looks different
    (tmp_path / "up.jpg").write_bytes(jpeg_bytes(upright))
    (tmp_path / "side.jpg").write_bytes(jpeg_bytes(np.rot90(upright, 1).copy(), orientation=6))
    served = []
    load = tf.saved_model.load
    def recording_load(path):
        model = load(path)
        serve = model.serve
        model.serve = lambda images: served.append(np.asarray(images)) or serve(images)
        return model
    monkeypatch.setattr(tl.tf.saved_model, "load", recording_load)
    assert tl.main(["--predict", str(tmp_path / "up.jpg"), str(tmp_path / "side.jpg"),
                    "--model-dir", str(out)]) == 0
    assert len(served) == 2 and served[0].dtype == np.uint8
    assert served[0].shape == served[1].shape == (1, 64, 48, 3)
    assert np.abs(served[0].astype(int) - served[1]).mean() < 10
    up, side = capsys.readouterr().out.strip().splitlines()[-2:]
    assert up.split(": ")[1] == side.split(": ")[1]


def test_predict_on_a_folder_classifies_the_photos_in_it(photo_run, tmp_path):
    root, out, _, _ = photo_run
    folder = tmp_path / "new"
    folder.mkdir()
    for name in ("a.jpg", "b.jpg"):
        shutil.copy(root / "green" / "03.jpg", folder / name)
    (folder / "notes.txt").write_text("not a photo")
    (folder / ".hidden.jpg").write_bytes(b"hidden: never read")
    result = run_script("--predict", folder, "--model-dir", out)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()[-2:]
    assert lines[0].startswith(f"{folder / 'a.jpg'}: green") and lines[1].startswith(
        f"{folder / 'b.jpg'}: green")
    assert script_lines(result.stderr) == []
    assert "notes.txt" not in result.stdout and ".hidden" not in result.stdout


def test_predict_on_a_folder_names_a_broken_photo_in_it_and_exits_2(photo_run, tmp_path):
    root, out, _, _ = photo_run
    folder = tmp_path / "new"
    folder.mkdir()
    shutil.copy(root / "green" / "03.jpg", folder / "a.jpg")
    (folder / "b.jpg").write_bytes((root / "green" / "03.jpg").read_bytes()[:200])  # cut short
    result = run_script("--predict", folder, "--model-dir", out)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith(f"{folder / 'a.jpg'}: green")
    assert script_lines(result.stderr) == [
        f"error: {folder / 'b.jpg'}: not a photo it can read; skipping it"]


def test_predict_on_an_empty_folder_is_a_one_line_error(photo_run, tmp_path, capfd):
    _, out, _, _ = photo_run
    folder = tmp_path / "empty"
    folder.mkdir()
    with pytest.raises(SystemExit) as exit_info:
        tl.main(["--predict", str(folder), "--model-dir", str(out)])
    captured = capfd.readouterr()
    lines = script_lines(captured.err)
    assert exit_info.value.code == 2 and len(lines) == 1 and "Traceback" not in captured.err
    assert lines[0].startswith("error:") and str(folder) in lines[0] and "--predict" in lines[0]


def test_predict_says_no_such_file_and_still_predicts_the_rest(photo_run, tmp_path, capsys):
    root, out, _, _ = photo_run
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    green = root / "green" / "01.jpg"
    assert tl.main(["--predict", str(tmp_path / "missing.jpg"), str(broken), str(green),
                    "--model-dir", str(out)]) == 2
    printed = capsys.readouterr()
    assert f"{green}: green" in printed.out
    errors = printed.err.strip().splitlines()
    assert errors == [f"error: {tmp_path / 'missing.jpg'}: no such file; skipping it",
                      f"error: {broken}: not a photo it can read; skipping it"]


def test_predict_with_two_classes_prints_only_the_likeliest(module32, tmp_path, capsys):
    write_colour_images(tmp_path / "two", {"red": COLOURS["red"], "blue": COLOURS["blue"]}, 10)
    status, _ = run_main("--data-dir", tmp_path / "two", "--model-handle", module32, "--image-size",
                         32, "--epochs", 5, "--no-show", "--output-dir", tmp_path / "run")
    assert status == 0
    capsys.readouterr()
    assert tl.main(["--predict", str(tmp_path / "two" / "red" / "000.png"), "--model-dir",
                    str(tmp_path / "run")]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.count("%") == 1 and ": red " in line


def test_predict_without_an_exported_run_is_a_clear_error(tmp_path):
    result = run_script("--predict", "x.jpg", "--model-dir", tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--model-dir" in result.stderr and len(script_lines(result.stderr)) == 1


@pytest.mark.parametrize("damage", ["truncated saved_model.pb", "a SavedModel without serve()",
                                    "no serving_default signature", "no metrics.json"])
def test_predict_with_a_damaged_run_is_a_clear_error(photo_run, tmp_path, damage):
    root, out, _, _ = photo_run
    damaged = tmp_path / "run"
    shutil.copytree(out, damaged)
    if damage == "truncated saved_model.pb":
        (damaged / "model" / "saved_model.pb").write_bytes(b"truncated")
    elif damage == "a SavedModel without serve()":  # such as a run exported by model.save
        shutil.rmtree(damaged / "model")
        tf.saved_model.save(tf.Module(), str(damaged / "model"))
    elif damage == "no serving_default signature":
        shutil.rmtree(damaged / "model")
        module = tf.Module()
        module.serve = tf.function(lambda images: images,
                                   input_signature=[tf.TensorSpec([None, 32, 32, 3])])
        tf.saved_model.save(module, str(damaged / "model"), signatures={})
    else:
        os.remove(damaged / "metrics.json")
    result = run_script("--predict", root / "red" / "00.jpg", "--model-dir", damaged)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "train again" in result.stderr and len(script_lines(result.stderr)) == 1
