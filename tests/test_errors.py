"""Bad input fails cleanly, damaged images are skipped, nothing is lost.

Every error is one line on stderr naming the problem and its fix, exit status
2, never a traceback. Checks that stop in argument, data or model checking run
main() in-process (capfd sees everything written to the stderr file
descriptor, TensorFlow's C++ logging included); the end-to-end cases run the
script as a user would, in a subprocess.
"""
import hashlib
import io
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import (SCRIPT, REPO, phone_jpeg_bytes, run_script, script_lines, tl,
                      write_colour_images)

COLOURS = {"red": (200, 40, 40), "blue": (40, 40, 200)}


# ----------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------

def quick(module, **flags):
    """The quickest settings that still run the whole pipeline; flags override them,
    e.g. quick(module32, epochs=0) for --epochs 0."""
    settings = {"model-handle": module, "image-size": 32, "epochs": 1}
    settings.update((name.replace("_", "-"), value) for name, value in flags.items())
    return [str(a) for name, value in settings.items() for a in ("--" + name, value)] + ["--no-show"]


@pytest.fixture
def fast(module32):
    """quick() with the tiny 32x32 module."""
    return quick(module32)


@pytest.fixture
def colours(tmp_path):
    """Two separable classes, a few PNGs each: a dataset that works."""
    return write_colour_images(tmp_path / "colours", COLOURS, 6)


def assert_one_line_error(returncode, stderr, *names):
    """The contract of every error: status 2, one line, no traceback, names the problem."""
    assert returncode == 2, f"exit status {returncode}, stderr:\n{stderr}"
    assert "Traceback" not in stderr, stderr
    last = script_lines(stderr)[-1] if script_lines(stderr) else ""
    for name in names:
        assert str(name) in last, f"{name!r} not named in the error line {last!r}"
    assert_one_line(stderr)
    return last


def assert_one_line(stderr):
    if len(script_lines(stderr)) != 1:
        pytest.fail(f"stderr is not one line:\n{stderr}", pytrace=False)


def main_error(capfd, *argv):
    """Run main() in-process and return the error line it must end with."""
    with pytest.raises(SystemExit) as exit_info:
        tl.main([str(a) for a in argv])
    _, err = capfd.readouterr()
    code = exit_info.value.code
    return assert_one_line_error(code if isinstance(code, int) else 1, err)


def assert_nothing_left(output_dir):
    """A failed or interrupted run leaves neither its folder nor its work folder."""
    output_dir = str(output_dir)
    assert not os.path.exists(output_dir), f"{output_dir} was left behind"
    assert not os.path.exists(output_dir + ".partial"), f"{output_dir}.partial was left behind"


def snapshot(folder):
    """Every file under folder with the sha256 of its bytes."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return files


def fake_run(folder):
    """What an earlier run leaves: a few files with content worth keeping."""
    os.makedirs(folder / "model", exist_ok=True)
    (folder / "metrics.json").write_text('{"test_accuracy": 0.93}\n')
    (folder / "labels.txt").write_text("cat\ndog\n")
    (folder / "model" / "saved_model.pb").write_bytes(b"\x08\x01earlier model")
    return snapshot(folder)


# ----------------------------------------------------------------------------
# Nonsense flags
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("flag, value", [
    ("--epochs", 0), ("--epochs", -3),
    ("--batch-size", 0), ("--batch-size", -1),
    ("--validation-split", 0), ("--validation-split", 1), ("--validation-split", 1.5),
    ("--validation-split", -0.1), ("--validation-split", "nan"),
    ("--dropout", 1), ("--dropout", 1.5), ("--dropout", -0.1),
    ("--image-size", 31), ("--image-size", 0), ("--image-size", -224),
    ("--learning-rate", 0), ("--learning-rate", -0.1), ("--fine-tune-learning-rate", 0),
    ("--fine-tune-epochs", -1), ("--max-images", 0),
])
def test_nonsense_flag_is_refused(flag, value, module32, colours, tmp_path, capfd):
    out = tmp_path / "out"
    argv = quick(module32, **{flag[2:].replace("-", "_"): value})
    line = main_error(capfd, *argv, "--data-dir", colours, "--output-dir", out)
    assert flag in line, line
    assert_nothing_left(out)


# ----------------------------------------------------------------------------
# --data-dir
# ----------------------------------------------------------------------------

def data_dir_case(case, tmp_path):
    """Build a bad --data-dir; returns (path, what the error line must name: one thing or a tuple)."""
    root = tmp_path / "data"
    if case == "missing":
        return root, root
    if case == "empty string":
        return "", "--data-dir"
    if case == "a file":
        root.write_bytes(b"not a folder")
        return root, root
    if case == "empty":
        root.mkdir()
        return root, root
    if case == "single class":
        write_colour_images(root, {"red": COLOURS["red"]}, 4)
        return root, root
    if case == "only hidden folders besides one class":
        write_colour_images(root, {"red": COLOURS["red"], ".thumbnails": COLOURS["blue"]}, 4)
        return root, root
    if case == "class folder without images":
        write_colour_images(root, COLOURS, 4)
        (root / "green").mkdir()
        (root / "green" / "notes.txt").write_text("no images here")
        (root / "green" / ".hidden.jpg").write_bytes(b"hidden")
        return root, ("green", root)
    if case == "test class folder without images":
        write_colour_images(root / "train", COLOURS, 4)
        write_colour_images(root / "test", {"red": COLOURS["red"]}, 2)
        (root / "test" / "blue").mkdir()
        return root, root / "test" / "blue"
    if case == "class folder of damaged files only":
        write_colour_images(root, {"red": COLOURS["red"]}, 20)
        (root / "blue").mkdir()
        for i in range(4):
            (root / "blue" / f"{i}.jpg").write_bytes(b"this is not a JPEG")
        return root, ("blue", root)  # the class folder, in full or as class and --data-dir
    if case in ("test folder of damaged files only", "validation folder of damaged files only"):
        split = case.split()[0]
        write_colour_images(root / "train", COLOURS, 10)
        for name in COLOURS:
            (root / split / name).mkdir(parents=True)
            (root / split / name / "0.jpg").write_bytes(b"this is not a JPEG")
        return root, (root / split, "no readable images")
    raise ValueError(case)


@pytest.mark.parametrize("case", [
    "missing", "empty string", "a file", "empty", "single class",
    "only hidden folders besides one class", "class folder without images",
    "test class folder without images", "class folder of damaged files only",
    "test folder of damaged files only", "validation folder of damaged files only"])
def test_bad_data_dir_is_refused(case, fast, tmp_path, capfd, monkeypatch):
    downloads = []
    def no_download():
        downloads.append(1)
        raise OSError("offline")
    monkeypatch.setattr(tf.keras.datasets.cifar10, "load_data", no_download)
    data_dir, named = data_dir_case(case, tmp_path)
    out = tmp_path / "out"
    line = main_error(capfd, *fast, "--data-dir", data_dir, "--output-dir", out)
    assert not downloads, "a bad --data-dir fell back to downloading CIFAR-10"
    for name in named if isinstance(named, tuple) else [named]:
        assert str(name) in line, line
    assert_nothing_left(out)


# ----------------------------------------------------------------------------
# --model-handle
# ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def feature_map_module(tmp_path_factory):
    """A SavedModel whose output is a 4-D feature map, not a feature vector."""
    images = tf.keras.Input((32, 32, 3))
    maps = tf.keras.layers.Conv2D(8, 3, strides=2, activation="relu")(images)
    path = str(tmp_path_factory.mktemp("feature_map"))
    tf.saved_model.save(tf.keras.Model(images, maps), path)
    return path


@pytest.fixture(scope="module")
def classifier_modules(tmp_path_factory):
    """Modules that return class scores: ImageNet's 1001 probabilities, or 1000 logits."""
    folders = {}
    for name, classes, activation in (("softmax", 1001, "softmax"), ("logits", 1000, None)):
        images = tf.keras.Input((32, 32, 3))
        pooled = tf.keras.layers.GlobalAveragePooling2D()(images)
        scores = tf.keras.layers.Dense(classes, activation=activation)(pooled)
        folders[name] = str(tmp_path_factory.mktemp(name))
        tf.saved_model.save(tf.keras.Model(images, scores), folders[name])
    return folders


@pytest.mark.parametrize("kind", ["softmax", "logits"])
def test_a_classifier_module_is_refused_naming_the_feature_vector_to_use(kind, classifier_modules,
                                                                        colours, tmp_path, capfd):
    line = main_error(capfd, *quick(classifier_modules[kind]), "--data-dir", colours,
                      "--output-dir", tmp_path / "out")
    assert classifier_modules[kind] in line and "class scores" in line and tl.DEFAULT_HANDLE in line
    assert_nothing_left(tmp_path / "out")


def test_a_half_downloaded_module_names_its_folder_and_says_to_delete_it(tmp_path, colours, module32):
    """A first run cut short while TF Hub downloaded the module: saved_model.pb, no variables."""
    cache = tmp_path / "tfhub_cache"
    folder = cache / hashlib.sha1(tl.DEFAULT_HANDLE.encode()).hexdigest()
    os.makedirs(folder / "variables")
    with open(os.path.join(module32, "saved_model.pb"), "rb") as f:
        (folder / "saved_model.pb").write_bytes(f.read())
    result = run_script("--data-dir", colours, "--image-size", 32, "--epochs", 1, "--no-show",
                        "--output-dir", tmp_path / "out", env={"TFHUB_CACHE_DIR": str(cache)})
    line = assert_one_line_error(result.returncode, result.stderr, tl.DEFAULT_HANDLE, folder)
    assert "delete" in line and "offline" not in line
    assert_nothing_left(tmp_path / "out")


def model_handle_case(case, tmp_path, module32, feature_map_module):
    """Returns (handle, --image-size, what the error line must name)."""
    if case == "path that does not exist":
        return str(tmp_path / "no-such-module"), 32, tmp_path / "no-such-module"
    folder = tmp_path / "not-a-module"
    folder.mkdir()
    if case == "empty folder":
        return str(folder), 32, folder
    if case == "folder of other files":
        (folder / "weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
        (folder / "README.md").write_text("my model")
        return str(folder), 32, folder
    if case == "damaged saved_model.pb":
        (folder / "saved_model.pb").write_bytes(b"\xff\xfe garbage, not a protocol buffer")
        (folder / "variables").mkdir()
        return str(folder), 32, folder
    if case == "a regular file":
        (folder / "model.tflite").write_bytes(b"TFL3" + b"\0" * 64)
        return str(folder / "model.tflite"), 32, folder / "model.tflite"
    if case == "input size does not match --image-size":
        return module32, 64, "--image-size"
    if case == "output is a feature map, not a feature vector":
        return feature_map_module, 32, feature_map_module
    raise ValueError(case)


@pytest.mark.parametrize("case", [
    "path that does not exist", "empty folder", "folder of other files", "damaged saved_model.pb",
    "a regular file", "input size does not match --image-size",
    "output is a feature map, not a feature vector"])
def test_module_that_cannot_be_used_is_refused(case, tmp_path, colours, module32,
                                               feature_map_module, capfd):
    handle, size, named = model_handle_case(case, tmp_path, module32, feature_map_module)
    out = tmp_path / "out"
    line = main_error(capfd, *quick(handle, image_size=size), "--data-dir", colours, "--output-dir", out)
    assert str(named) in line, line
    assert_nothing_left(out)


def test_unreachable_url_fails_fast_and_says_how_to_run_offline(tmp_path, colours):
    """The default handle is a tfhub.dev URL; offline, with an empty cache, it cannot load."""
    cache, out = tmp_path / "empty_tfhub_cache", tmp_path / "out"
    cache.mkdir()
    start = time.perf_counter()
    result = run_script("--data-dir", colours, "--image-size", 32, "--epochs", 1, "--no-show",
                        "--output-dir", out, env={"TFHUB_CACHE_DIR": str(cache)}, timeout=180)
    seconds = time.perf_counter() - start
    line = assert_one_line_error(result.returncode, result.stderr, tl.DEFAULT_HANDLE)
    for how in ("--model-handle", "TFHUB_CACHE_DIR", "--data-dir"):
        assert how in line, f"{how} missing from {line!r}"
    assert seconds < 60, f"took {seconds:.0f} s to give up"
    assert_nothing_left(out)


# ----------------------------------------------------------------------------
# CIFAR-10 download
# ----------------------------------------------------------------------------

def test_cifar10_download_failure_fails_fast_and_cleanly(tmp_path, fast):
    home, out = tmp_path / "home", tmp_path / "out"
    home.mkdir()
    env = {"HOME": str(home), "KERAS_HOME": str(home / ".keras"),
           "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}
    start = time.perf_counter()
    result = run_script(*fast, "--output-dir", out, env=env, timeout=180)
    seconds = time.perf_counter() - start
    line = assert_one_line_error(result.returncode, result.stderr, "CIFAR-10", "--data-dir")
    assert "Downloading" not in line
    assert seconds < 60, f"took {seconds:.0f} s to give up"
    assert_nothing_left(out)
    # No half-downloaded archive that a later run would take for the real one.
    leftovers = [f for _, _, files in os.walk(home / ".keras") for f in files if "cifar" in f]
    assert leftovers == []


# ----------------------------------------------------------------------------
# --output-dir
# ----------------------------------------------------------------------------

def test_output_dir_that_is_a_file_is_refused(tmp_path, colours, fast, capfd):
    out = tmp_path / "out"
    out.write_text("my notes")
    line = main_error(capfd, *fast, "--data-dir", colours, "--output-dir", out)
    assert str(out) in line
    assert out.read_text() == "my notes"
    assert not os.path.exists(str(out) + ".partial")


def test_output_dir_that_cannot_be_created_is_refused(tmp_path, colours, fast, capfd):
    (tmp_path / "file").write_text("a regular file")
    out = tmp_path / "file" / "run"
    line = main_error(capfd, *fast, "--data-dir", colours, "--output-dir", out)
    assert str(out) in line
    assert (tmp_path / "file").read_text() == "a regular file"


def test_output_dir_holding_a_run_is_refused_in_process(tmp_path, colours, fast, capfd):
    out = tmp_path / "earlier"
    before = fake_run(out)
    line = main_error(capfd, *fast, "--data-dir", colours, "--output-dir", out)
    assert str(out) in line
    assert snapshot(out) == before
    assert not os.path.exists(str(out) + ".partial")


def test_default_output_dir_never_reuses_an_earlier_runs_folder(tmp_path, monkeypatch):
    """Two runs in the same second get the same runs/<date-time>: the second must pick another."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tl.time, "strftime", lambda *_: "20250101-120000")
    earlier = tmp_path / "runs" / "20250101-120000"
    before = fake_run(earlier)
    try:
        output_dir, work_dir = tl.prepare_output_dir(None)
    except SystemExit as e:
        pytest.fail(f"a run without --output-dir was refused (exit {e.code}) because an earlier "
                    "run finished in the same second; it should choose a new folder")
    assert os.path.abspath(output_dir) != str(earlier)
    assert os.path.abspath(work_dir) != str(earlier)
    assert snapshot(earlier) == before


def test_an_existing_partial_folder_is_not_destroyed(tmp_path):
    """OUTPUT.partial that already holds files (a run still writing there, or a run saved
    under that name) must survive: refuse, or write somewhere else, never delete it."""
    out = tmp_path / "run"
    partial = tmp_path / "run.partial"
    before = fake_run(partial)
    try:
        _, work_dir = tl.prepare_output_dir(str(out))
    except SystemExit as e:
        assert e.code == 2
        work_dir = None
    assert snapshot(partial) == before, f"{partial} was emptied by a new run"
    assert work_dir is None or os.path.abspath(work_dir) != str(partial)


# ----------------------------------------------------------------------------
# End to end: a good dataset with damaged, odd and ignored files
# ----------------------------------------------------------------------------

def encoded(image, fmt):
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def messy_dataset(tmp_path_factory):
    """Returns (root, number of usable images, names of the damaged files, ignored files)."""
    root = tmp_path_factory.mktemp("messy")
    write_colour_images(root, COLOURS, 12)
    rng = np.random.default_rng(1)
    red = Image.fromarray(np.clip(np.array(COLOURS["red"]) + rng.integers(-40, 40, (40, 30, 3)),
                                  0, 255).astype(np.uint8))
    blue = Image.fromarray(np.clip(np.array(COLOURS["blue"]) + rng.integers(-40, 40, (45, 45, 3)),
                                   0, 255).astype(np.uint8))
    palette = blue.convert("P")
    palette.info["transparency"] = 0
    odd = {  # converted, and counted as normal images
        "red/grey.jpg": encoded(red.convert("L"), "JPEG"),
        "red/grey.png": encoded(red.convert("L"), "PNG"),
        "red/grey16.png": encoded(red.convert("I;16"), "PNG"),
        "red/rgba.png": encoded(red.convert("RGBA"), "PNG"),
        "red/UPPER.JPG": encoded(red, "JPEG"),
        "blue/palette.png": encoded(blue.convert("P"), "PNG"),
        "blue/palette-transparent.png": encoded(palette, "PNG"),
        "blue/grey-alpha.png": encoded(blue.convert("LA"), "PNG"),
        "blue/tall.jpg": encoded(blue.resize((7, 301)), "JPEG"),
        "blue/wide.png": encoded(blue.resize((97, 13)), "PNG"),
    }
    jpeg, png = encoded(red, "JPEG"), encoded(blue, "PNG")
    phone = phone_jpeg_bytes(np.asarray(red.resize((300, 200))))  # an EXIF thumbnail inside
    damaged = {  # skipped, counted in one warning line, listed in metrics.json
        "red/not-an-image.jpg": b"Lorem ipsum, not an image at all\n",
        "red/truncated.jpg": jpeg[:len(jpeg) // 2],
        "red/phone-truncated.jpg": phone[:len(phone) * 6 // 10],  # past its thumbnail's end
        "blue/truncated.png": png[:len(png) // 2],
        "blue/zero-bytes.png": b"",
        "blue/notes.txt": b"some notes",
        "blue/Thumbs.db": b"\xd0\xcf\x11\xe0",
        "blue/scan.tiff": b"II*\x00 junk",
    }
    ignored = {  # hidden files, and files outside the class folders: never read or reported
        "red/.hidden.jpg": b"hidden junk",
        "red/._0001.jpg": b"\x00\x05\x16\x07 AppleDouble junk",
        "red/.DS_Store": b"\x00\x00\x00\x01Bud1",
        ".ipynb_checkpoints/copy.jpg": jpeg,  # a hidden folder is not a class
        "README.md": b"# my photos",
    }
    for name, data in {**odd, **damaged, **ignored}.items():
        (root / name).parent.mkdir(exist_ok=True)
        (root / name).write_bytes(data)
    return root, 2 * 12 + len(odd), sorted(os.path.basename(n) for n in damaged), ignored


@pytest.fixture(scope="module")
def finished_run(messy_dataset, module32, tmp_path_factory):
    root = messy_dataset[0]
    out = tmp_path_factory.mktemp("runs") / "messy"
    result = run_script("--data-dir", root, "--model-handle", module32, "--image-size", 32,
                        "--epochs", 1, "--no-show", "--output-dir", out)
    return result, out


def test_damaged_images_are_skipped_with_one_warning_line(finished_run, messy_dataset):
    result, out = finished_run
    _, _, damaged, ignored = messy_dataset
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    mentions = [line for line in result.stderr.splitlines()
                if "skip" in line.lower() or any(name in line for name in damaged)]
    assert len(mentions) == 1, f"expected one warning line, got:\n{result.stderr}"
    warning = mentions[0]
    assert sum(name in warning for name in damaged) == 5, f"not the first 5 names: {warning!r}"
    assert "metrics.json" in warning and f"skipped {len(damaged)} file(s)" in warning, warning
    for name in ignored:
        assert os.path.basename(name) not in result.stderr, f"ignored file {name} was reported"


def test_metrics_count_the_images_used(finished_run, messy_dataset):
    result, out = finished_run
    _, usable, damaged, _ = messy_dataset
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["classes"] == ["blue", "red"]
    assert metrics["num_train"] + metrics["num_validation"] + metrics["num_test"] == usable
    assert sorted(os.path.basename(p) for p in metrics["skipped_files"]) == damaged
    assert sum(map(sum, metrics["confusion_matrix"])) == metrics["num_test"]


def test_a_finished_run_is_whole_and_leaves_no_partial_folder(finished_run):
    result, out = finished_run
    assert result.returncode == 0, result.stderr
    assert {"metrics.json", "labels.txt", "model", "history.png"} <= set(os.listdir(out))
    assert os.path.isfile(out / "model" / "saved_model.pb")
    assert not os.path.exists(str(out) + ".partial")


def test_output_dir_holding_a_run_is_refused_and_left_byte_for_byte(finished_run, messy_dataset,
                                                                      module32):
    _, out = finished_run
    before = snapshot(out)
    assert "metrics.json" in before
    result = run_script("--data-dir", messy_dataset[0], "--model-handle", module32,
                        "--image-size", 32, "--epochs", 1, "--no-show", "--output-dir", out)
    assert_one_line_error(result.returncode, result.stderr, out)
    assert snapshot(out) == before
    assert not os.path.exists(str(out) + ".partial")


# ----------------------------------------------------------------------------
# Errors end to end: exit status and stderr as the shell sees them
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["--data-dir missing", "--epochs 0"])
def test_errors_end_to_end(case, tmp_path, colours, module32):
    out = tmp_path / "out"
    if case == "--data-dir missing":
        args, named = quick(module32, data_dir=tmp_path / "no-such-folder"), tmp_path / "no-such-folder"
    else:
        args, named = quick(module32, data_dir=colours, epochs=0), "--epochs"
    result = run_script(*args, "--output-dir", out)
    assert_one_line_error(result.returncode, result.stderr, named)
    assert script_lines(result.stderr)[0].startswith("error:")
    assert_nothing_left(out)


# ----------------------------------------------------------------------------
# Ctrl-C
# ----------------------------------------------------------------------------

def start_script(*args, python_flags=()):
    """Popen the script; the lines it prints arrive on a queue (None at the end), stderr's also
    in a list."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # A shell that runs the tests in the background starts them with Ctrl-C ignored: undo that.
    process = subprocess.Popen([sys.executable, *python_flags, SCRIPT, *map(str, args)], cwd=REPO,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines, stderr = queue.Queue(), []
    def read(stream, into):
        for line in stream:
            into.append(line)
            lines.put(line)
        lines.put(None)
    process.readers = [threading.Thread(target=read, args=(process.stdout, []), daemon=True),
                       threading.Thread(target=read, args=(process.stderr, stderr), daemon=True)]
    for reader in process.readers:
        reader.start()
    return process, lines, stderr


def wait_for(process, lines, stderr, text):
    """Until the process prints a line containing text; it must still be running then."""
    deadline = time.monotonic() + 180
    while True:
        line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        if line is not None and text in line:
            break
        if line is None and process.poll() is not None:
            pytest.fail(f"the script ended before it printed {text!r}:\n" + "".join(stderr))


def interrupt_and_wait(process, stderr):
    """Ctrl-C; returns the seconds it took to exit and all it wrote on stderr."""
    process.send_signal(signal.SIGINT)
    start = time.perf_counter()
    try:
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    seconds = time.perf_counter() - start
    for reader in process.readers:
        reader.join(timeout=10)
    return seconds, "".join(stderr)


def assert_interrupted_cleanly(process, seconds, err, out):
    assert seconds < 15, f"took {seconds:.0f} s to stop"
    assert process.returncode == 130, f"exit status {process.returncode}, stderr ends:\n{err[-600:]}"
    assert "Traceback" not in err, err
    assert_one_line(err)
    assert_nothing_left(out)


def test_ctrl_c_while_working_exits_promptly_and_saves_nothing(tmp_path, module32):
    data = write_colour_images(tmp_path / "data", COLOURS, 20)
    out = tmp_path / "out"
    args = quick(module32, epochs=100000)  # it cannot finish before the Ctrl-C
    process, lines, stderr = start_script(*args, "--data-dir", data, "--output-dir", out)
    try:
        wait_for(process, lines, stderr, "Epoch 1/")  # training, with 100000 epochs to go
        assert process.poll() is None
        assert not os.path.exists(out), "the run folder appeared before the run finished"
        assert os.path.isdir(str(out) + ".partial")
    except BaseException:
        process.kill()
        process.wait()
        raise
    seconds, err = interrupt_and_wait(process, stderr)
    assert_interrupted_cleanly(process, seconds, err, out)


def test_ctrl_c_while_starting_up_exits_cleanly(tmp_path, fast, colours):
    """Ctrl-C during the seconds it takes to import TensorFlow: python -X importtime reports each
    module as it is imported, so the signal goes when TensorFlow's own modules have started."""
    out = tmp_path / "out"
    process, lines, stderr = start_script(*fast, "--data-dir", colours, "--output-dir", out,
                                          python_flags=["-X", "importtime"])
    try:
        wait_for(process, lines, stderr, "tensorflow.python")
    except BaseException:
        process.kill()
        raise
    assert process.poll() is None
    seconds, err = interrupt_and_wait(process, stderr)
    assert_interrupted_cleanly(process, seconds, err, out)


@pytest.mark.parametrize("argv", [["--epochs", "abc"], ["--no-such-flag"]])
def test_mistyped_flag_is_one_line_error(argv, capfd):
    line = main_error(capfd, *argv)
    assert argv[0] in line and line.startswith("error:"), line


def test_predict_without_model_dir_is_a_one_line_error(capfd, tmp_path):
    line = main_error(capfd, "--predict", tmp_path / "photo.jpg")
    assert "--predict" in line and "--model-dir" in line, line


# ----------------------------------------------------------------------------
# Nothing lost at the last step
# ----------------------------------------------------------------------------

def test_a_failing_export_keeps_the_finished_run(module32, colours, tmp_path, monkeypatch, capfd):
    def broken_export(*args):
        raise OSError("No space left on device")
    monkeypatch.setattr(tl, "export_model", broken_export)
    out = tmp_path / "out"
    assert tl.main([*quick(module32), "--data-dir", str(colours), "--output-dir", str(out)]) == 1
    assert {"metrics.json", "history.png", "predictions.png", "confusion_matrix.png"} <= set(os.listdir(out))
    metrics = json.loads((out / "metrics.json").read_text())
    error = metrics["last_step_error"]  # the whole traceback, down to the line that failed
    assert error.startswith("Traceback") and "in broken_export" in error and "test_accuracy" in metrics
    assert error.rstrip().splitlines()[-1] == "OSError: No space left on device"
    err = capfd.readouterr().err
    assert error.rstrip() in err and "OSError: No space left on device" in err
    assert script_lines(err)[-1] == ("error: a step failed (above; also in metrics.json); the rest "
                                     "of the run is saved")
    assert not os.path.exists(str(out) + ".partial")


def exit_raises(monkeypatch):
    """os._exit, which the Ctrl-C handler calls, raises SystemExit instead: pytest lives on."""
    def fake_exit(status):
        raise SystemExit(status)
    monkeypatch.setattr(os, "_exit", fake_exit)


def test_ctrl_c_while_the_plots_are_shown_exits_130_and_keeps_the_run(module32, colours, tmp_path,
                                                                      monkeypatch, capfd):
    exit_raises(monkeypatch)
    monkeypatch.setattr(tl.plt, "get_backend", lambda: "TkAgg")  # as on a desktop
    monkeypatch.setattr(tl.plt, "show", lambda: signal.raise_signal(signal.SIGINT))
    out = tmp_path / "out"
    argv = [a for a in quick(module32) if a != "--no-show"]
    with pytest.raises(SystemExit) as exit:
        tl.main([*argv, "--data-dir", str(colours), "--output-dir", str(out)])
    assert exit.value.code == 130
    assert os.path.isfile(out / "metrics.json")
    assert str(out) in script_lines(capfd.readouterr().err)[-1]


def test_ctrl_c_swallowed_inside_tensorflow_still_ends_the_run(module32, colours, tmp_path, monkeypatch, capfd):
    """A KeyboardInterrupt raised inside TensorFlow's own code can be swallowed there."""
    exit_raises(monkeypatch)
    train = tl.fit_keeping_the_best_epoch
    def train_after_a_swallowed_ctrl_c(*args):
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            pass
        return train(*args)
    monkeypatch.setattr(tl, "fit_keeping_the_best_epoch", train_after_a_swallowed_ctrl_c)
    out, before = tmp_path / "out", signal.getsignal(signal.SIGINT)
    with pytest.raises(SystemExit) as exit:
        tl.main([*quick(module32), "--data-dir", str(colours), "--output-dir", str(out)])
    assert exit.value.code == 130
    assert "Interrupted" in script_lines(capfd.readouterr().err)[-1]
    assert_nothing_left(out)
    assert signal.getsignal(signal.SIGINT) is before  # main gave Ctrl-C back


def test_keras_3_imported_first_is_a_one_line_error(tmp_path, colours, module32):
    """In a notebook TensorFlow may already run Keras 3 when the script asks for Keras 2."""
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    code = ("import sys, tensorflow as tf; tf.keras.layers; sys.path.insert(0, sys.argv[1]); "
            "import transfer_learning as tl; sys.exit(tl.main(sys.argv[2:]))")
    result = subprocess.run([sys.executable, "-c", code, REPO, *quick(module32), "--data-dir", str(colours),
                             "--output-dir", str(tmp_path / "out")], capture_output=True, text=True, env=env)
    line = assert_one_line_error(result.returncode, result.stderr, "Keras 3", "TF_USE_LEGACY_KERAS")
    assert "image" not in line
