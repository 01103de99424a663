"""Traps a reviewer fell into: each test drives the script as a user would and checks what the user
would notice (stdout, stderr, the exit status, metrics.json, the files written)."""
import os
import shlex
import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import run_main, script_lines, tl, write_colour_images

COLOURS = {"red": (200, 40, 40), "blue": (40, 40, 200)}


def quick(data, module, out, *extra):
    """The argv of a quick run on --data-dir data with the tiny 32x32 module."""
    return ["--data-dir", data, "--model-handle", module, "--image-size", 32, "--epochs", 1,
            "--no-show", "--output-dir", out, *extra]


def trained_run(tmp_path, module):
    """A finished, exported run on two colours, for --predict."""
    data = write_colour_images(tmp_path / "train_photos", COLOURS, 8)
    out = tmp_path / "run"
    assert run_main(*quick(data, module, out, "--epochs", 3))[0] == 0
    return out


def errors(err):
    """The lines the script wrote on stderr, without TensorFlow's."""
    return script_lines(err)


def noisy_png(path, colour, seed, size=32):
    """A photo of one colour, with noise of its own: no two are copies."""
    noise = np.random.default_rng(seed).integers(-40, 40, (size, size, 3))
    Image.fromarray(np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)).save(path)


def png_bomb(path, side):
    """A valid black PNG of side x side pixels, 1 bit each: a few kB on disk, side**2 pixels once
    decoded (Pillow keeps a byte per pixel; RGB and float32 copies take 3 and 12 times that)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    row, squeeze = b"\x00" + bytes((side + 7) // 8), zlib.compressobj(9)
    pixels = b"".join(squeeze.compress(row) for _ in range(side)) + squeeze.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1 bit, grey
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels)
                + chunk(b"IEND", b""))
    return path


# 1. Kept features after an edit of the code that computes them ---------------------------------

def test_kept_features_are_computed_afresh_after_the_image_preparation_is_edited(
        module32, tmp_path, monkeypatch, capsys):
    photos = write_colour_images(tmp_path / "photos", COLOURS, 12)
    status, first = run_main(*quick(photos, module32, tmp_path / "first"))
    assert status == 0 and first["features_from_cache"] is False
    # The learner edits scale_and_resize (here: the images come out inverted), then runs again.
    scale_and_resize = tl.scale_and_resize
    monkeypatch.setattr(tl, "scale_and_resize", lambda images, size: 1.0 - scale_and_resize(
        images, size))
    capsys.readouterr()
    status, edited = run_main(*quick(photos, module32, tmp_path / "edited"))
    printed = capsys.readouterr()
    assert status == 0
    assert edited["features_from_cache"] is False, "the features of the unedited code were read"
    said = [line for line in (printed.out + printed.err).splitlines() if "afresh" in line]
    assert len(said) == 1, printed.out
    # A run that changes only the head reads the features the edited code computed.
    status, head_only = run_main(*quick(photos, module32, tmp_path / "dropout", "--dropout", 0.5))
    assert status == 0 and head_only["features_from_cache"] is True


# 2. A decompression bomb among the photos ------------------------------------------------------

def test_a_decompression_bomb_is_skipped_and_named_and_a_12_megapixel_jpeg_is_used(
        module32, tmp_path, capfd):
    photos = write_colour_images(tmp_path / "photos", COLOURS, 10)
    # 100 megapixels: 12 kB on disk; the old code took about 2 GB to read it (7.6 GB at 20000^2).
    bomb = png_bomb(photos / "red" / "bomb.png", 10000)
    phone = photos / "blue" / "phone.jpg"  # 4000x3000, as a phone takes them: draft() shrinks it
    Image.new("RGB", (4000, 3000), COLOURS["blue"]).save(phone, quality=90)
    status, m = run_main(*quick(photos, module32, tmp_path / "run", "--epochs", 3))
    err = capfd.readouterr().err
    assert status == 0, err
    warnings = [line for line in errors(err) if line.startswith("warning:")]
    assert len(warnings) == 1 and str(bomb) in warnings[0], err
    assert m["skipped_files"] == [str(bomb)]
    assert m["num_train"] + m["num_validation"] + m["num_test"] == 21  # the phone photo is used
    # --predict refuses it too, named like an unreadable file, and classifies the phone photo
    assert tl.main(["--predict", str(bomb), str(phone), "--model-dir", str(tmp_path / "run")]) == 2
    printed = capfd.readouterr()
    assert [line for line in errors(printed.err) if str(bomb) in line], printed.err
    assert f"{phone}: blue" in printed.out


# 3. labels.csv without a header row ------------------------------------------------------------

def test_labels_csv_without_a_header_row_keeps_its_first_photo(module32, tmp_path, capfd):
    rows = []
    for i in range(30):
        name = ["red", "blue"][i % 2]
        noisy_png(tmp_path / f"{i:02d}.png", COLOURS[name], i)
        rows.append(f"{i:02d}.png,{name}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")  # no header row
    status, m = run_main(*quick(tmp_path, module32, tmp_path / "run"))
    assert status == 0
    said = [line for line in errors(capfd.readouterr().err) if line.startswith(("warning", "error"))]
    assert said == []  # every photo has its row: nothing to warn about
    assert m["num_train"] + m["num_validation"] + m["num_test"] == 30


# 4. --predict on an empty folder, and on a folder with a broken photo --------------------------

def test_predict_on_an_empty_folder_is_an_error_and_a_broken_photo_in_a_folder_is_named(
        module32, tmp_path, capfd):
    out = trained_run(tmp_path, module32)
    capfd.readouterr()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit) as exit_info:
        tl.main(["--predict", str(empty), "--model-dir", str(out)])
    err = capfd.readouterr().err
    assert exit_info.value.code == 2
    assert len(errors(err)) == 1 and errors(err)[0].startswith("error:") and str(empty) in err, err
    folder = tmp_path / "new"
    folder.mkdir()
    noisy_png(folder / "red.png", COLOURS["red"], 0)
    (folder / "broken.jpg").write_bytes(b"not a photo after all")
    (folder / "notes.txt").write_text("not an image, and not meant to be one")
    assert tl.main(["--predict", str(folder), "--model-dir", str(out)]) == 2
    printed = capfd.readouterr()
    assert f"{folder / 'red.png'}: red" in printed.out
    said = [line for line in errors(printed.err) if line.startswith(("warning", "error"))]
    assert said == [f"error: {folder / 'broken.jpg'}: not a photo it can read; skipping it"], said


# 5. What to try next, after a run on your own photos -------------------------------------------

def test_what_to_try_next_suggests_commands_on_the_same_data_and_settings(module32, tmp_path,
                                                                        capsys):
    photos = write_colour_images(tmp_path / "my photos", COLOURS, 12)
    settings = ["--validation-split", "0.2", "--seed", "7"]
    assert run_main(*quick(photos, module32, tmp_path / "run", *settings))[0] == 0
    printed = capsys.readouterr().out
    tail = printed[printed.index("What to try next:"):]
    commands = [shlex.split(line) for line in tail.splitlines()
                if line.strip().startswith("python transfer_learning.py")]
    assert commands
    for command in commands:
        if "--predict" in command:
            continue
        args = tl.parse_args(command[2:])
        assert args.data_dir == str(photos) and args.model_handle == str(module32), command
        assert (args.image_size, args.validation_split, args.seed) == (32, 0.2, 7), command
    # "Only the head changes, so the features come from disk": run it and see
    head_only = next(c for c in commands if "--dropout" in c)
    status, m = run_main(*head_only[2:], "--no-show", "--output-dir", tmp_path / "next")
    assert status == 0 and m["features_from_cache"] is True and m["settings"]["data_dir"] == str(photos)


# 6. metrics.json after fine-tuning describes the model saved -----------------------------------

def test_after_fine_tuning_every_number_describes_the_saved_model(module32, tmp_path, capsys):
    data = tmp_path / "data"
    for split, seed in (("train", 0), ("validation", 1), ("test", 2)):
        write_colour_images(data / split, {"red": (130, 100, 100), "blue": (100, 100, 130)}, 16,
                            seed=seed)  # the head barely trained: 0.5; fine-tuned: 1.0
    out = tmp_path / "run"
    status, m = run_main(*quick(data, module32, out, "--learning-rate", "1e-4", "--batch-size", 16,
                                "--fine-tune-epochs", 2, "--fine-tune-learning-rate", "0.03"))
    printed = capsys.readouterr().out
    assert status == 0
    kept = m["fine_tuning_kept"]
    assert kept in (True, False)
    said = {"fine-tuned": "The fine-tuned model is saved" in printed,
            "head-only": "The head-only model is saved" in printed}
    assert said == {"fine-tuned": kept, "head-only": not kept}, said
    if kept:
        assert 1 <= m["kept_epoch"] <= 2  # an epoch of fine-tuning
    else:
        assert "after training on the images" not in printed
    # The saved model's accuracy on the validation photos is the val_accuracy reported.
    model = tf.saved_model.load(str(out / "model"))
    right = []
    for label, name in enumerate(["blue", "red"]):
        for path in sorted((data / "validation" / name).iterdir()):
            pixels = np.asarray(Image.open(path).convert("RGB"))
            right.append(model.serve(pixels[None]).numpy()[0].argmax() == label)
    assert m["val_accuracy"] == pytest.approx(np.mean(right), abs=1e-6)


# 7. A failure after the test results keeps its traceback ---------------------------------------

def test_a_failure_after_the_test_results_keeps_its_traceback(module32, tmp_path, monkeypatch,
                                                             capfd):
    def plot_where_it_looks(*args):
        raise RuntimeError("the plot could not be drawn")
    monkeypatch.setattr(tl, "plot_where_it_looks", plot_where_it_looks)
    photos = write_colour_images(tmp_path / "photos", COLOURS, 8)
    out = tmp_path / "run"
    status, m = run_main(*quick(photos, module32, out))
    err = capfd.readouterr().err
    assert status == 1
    for text in ("Traceback (most recent call last)", "in plot_where_it_looks",
                 "RuntimeError: the plot could not be drawn"):
        assert text in err, err
    texts = [path.read_text(errors="replace") for path in out.iterdir() if path.is_file()]
    saved = [text for text in texts
             if "Traceback (most recent call last)" in text and "in plot_where_it_looks" in text]
    assert saved, f"no file in {out} keeps the traceback"
    assert "test_accuracy" in m and "the plot could not be drawn" in m["last_step_error"]
    assert {"model", "labels.txt", "metrics.json", "history.png"} <= set(os.listdir(out))
    assert not os.path.exists(str(out) + ".partial")


# 8. What the 95% interval says -----------------------------------------------------------------

def test_the_interval_sentence_does_not_call_runs_within_its_half_width_a_tie(module32, tmp_path,
                                                                             capsys):
    photos = write_colour_images(tmp_path / "photos", COLOURS, 8)
    assert run_main(*quick(photos, module32, tmp_path / "run"))[0] == 0
    printed = capsys.readouterr().out
    reading = printed[printed.index("== 9. Reading the results =="):]
    assert "95% interval" in reading
    assert "tie" not in reading.split("Most confident mistakes")[0], reading


# 9. Every class keeps training images; each carved split is --validation-split of each class ---

def test_every_class_keeps_training_images_and_each_carved_split_is_the_fraction_asked(
        module32, tmp_path, capfd):
    few = tmp_path / "few"
    write_colour_images(few, {"big": (200, 40, 40)}, 41)  # 20 + 20 carved out, 1 left
    write_colour_images(few, {"small": (40, 40, 200)}, 3, seed=1)  # 2 + 2 carved out: none left
    with pytest.raises(SystemExit) as exit_info:
        tl.main([str(a) for a in quick(few, module32, tmp_path / "few_run",
                                       "--validation-split", 0.5)])
    lines = errors(capfd.readouterr().err)
    assert exit_info.value.code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error:") and "class small" in lines[0], lines
    # 50 images a class: validation and test both get a tenth of each class, 5 images
    fifty = write_colour_images(tmp_path / "fifty", COLOURS, 50)
    status, m = run_main(*quick(fifty, module32, tmp_path / "run"))
    assert status == 0
    assert (m["num_train"], m["num_validation"], m["num_test"]) == (80, 10, 10)


# 10. labels.csv listing a photo twice ----------------------------------------------------------

def test_labels_csv_listing_a_photo_with_two_classes_leaves_it_out_and_says_so(module32, tmp_path,
                                                                               capfd):
    rows = ["file,colour"]
    for i in range(20):
        name = ["red", "blue"][i % 2]
        noisy_png(tmp_path / f"{i:02d}.png", COLOURS[name], i)
        rows.append(f"{i:02d}.png,{name}")
    rows += ["00.png,blue",  # 00.png is red above: which is it? Neither: left out
             "01.png,blue"]  # the same class twice: used once
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    status, m = run_main(*quick(tmp_path, module32, tmp_path / "run"))
    assert status == 0
    warnings = [line for line in errors(capfd.readouterr().err) if line.startswith("warning:")]
    assert len(warnings) == 1 and "00.png" in warnings[0], warnings
    assert "name no file" not in warnings[0] and "01.png" not in warnings[0], warnings
    assert m["num_train"] + m["num_validation"] + m["num_test"] == 19


# 11. Keras' logging after a failing export -----------------------------------------------------

def test_a_failing_export_leaves_keras_logging_on(module32, tmp_path, monkeypatch):
    def write_out(*args, **kwargs):
        raise OSError("No space left on device")
    monkeypatch.setattr(tf.keras.export.ExportArchive, "write_out", write_out)
    photos = write_colour_images(tmp_path / "photos", COLOURS, 8)
    try:
        status, _ = run_main(*quick(photos, module32, tmp_path / "run"))
        assert status == 1
        assert tf.keras.utils.is_interactive_logging_enabled(), "Keras' logging is left off"
    finally:
        tf.keras.utils.enable_interactive_logging()  # for the tests that follow


def test_what_to_try_next_says_when_this_run_kept_no_features(capsys):
    """After --no-cache, the next run computes the features: "seconds" needs a caveat then only."""
    for flags, caveat in (([], False), (["--no-cache"], True)):
        tl.print_what_to_try_next(tl.parse_args(flags), "runs/20261201-120000")
        printed = capsys.readouterr().out
        assert ("once a run without --no-cache has kept the features" in printed) == caveat, printed
