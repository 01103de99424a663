"""Shared fixtures: tiny feature-vector modules, small image folders and photos, all offline.

The tests never touch the network: a TF Hub module is a SavedModel built here in a second, the
images are written here, and CIFAR-10 is patched. They set their own environment, so the caller's
TF_CPP_MIN_LOG_LEVEL, MPLBACKEND or cache folders do not matter.
"""
import hashlib
import io
import os
import re
import struct
import subprocess
import sys
import tempfile

os.environ.update(TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", MPLBACKEND="Agg",
                  XDG_CACHE_HOME=tempfile.mkdtemp(prefix="features_cache_"),
                  TFHUB_CACHE_DIR=tempfile.mkdtemp(prefix="empty_tfhub_cache_"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "transfer_learning.py")
sys.path.insert(0, REPO)

import transfer_learning as tl  # noqa: E402
import benchmark  # noqa: E402  (its step 1, shared with the tests)


@pytest.fixture(autouse=True)
def own_feature_cache(tmp_path, monkeypatch):
    """Every test starts with an empty feature cache of its own (runs in subprocesses too)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg_cache"))
    return tmp_path / "xdg_cache" / "transfer_learning"


def save_feature_vector(path, image_size, features=16):
    """A tiny stand-in for MobileNetV2: [0, 1] images in, a feature vector out.

    It has a convolution and a BatchNormalization, so tests can check that a frozen base really
    stays frozen (weights and BatchNorm statistics alike), and the mean colour, so that classes
    of different colours are easy to tell apart.
    """
    tf.keras.utils.set_random_seed(0)
    images = tf.keras.Input((image_size, image_size, 3))
    x = tf.keras.layers.Conv2D(features, 3, strides=2, activation="relu")(images)
    x = tf.keras.layers.BatchNormalization()(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    mean_colour = tf.keras.layers.GlobalAveragePooling2D()(images)
    outputs = tf.keras.layers.Concatenate()([x, mean_colour])
    tf.saved_model.save(tf.keras.Model(images, outputs), path)
    return path


@pytest.fixture(scope="session")
def module32(tmp_path_factory):
    """A feature-vector module for 32x32 images, passed as a local path."""
    return save_feature_vector(str(tmp_path_factory.mktemp("module32")), 32)


@pytest.fixture(scope="session")
def hub_cache(tmp_path_factory):
    """A $TFHUB_CACHE_DIR seeded with a 224x224 module under the default handle."""
    cache = tmp_path_factory.mktemp("tfhub_cache")
    digest = hashlib.sha1(tl.DEFAULT_HANDLE.encode("utf8")).hexdigest()
    save_feature_vector(str(cache / digest), 224, features=8)
    return str(cache)


def exported_base_weights(run_dir):
    """The weights of the base inside an exported run, by name (the head's left out)."""
    model = tf.saved_model.load(os.path.join(str(run_dir), "model"))
    return {v.name: v.numpy() for v in model.variables if not v.name.startswith("classifier/")}


def write_colour_images(folder, colours, per_class, size=32, seed=0, jpeg=False):
    """Classes that differ only by colour: separable by any feature vector."""
    rng = np.random.default_rng(seed)
    for name, colour in colours.items():
        os.makedirs(folder / name, exist_ok=True)
        for i in range(per_class):
            noise = rng.integers(-40, 40, (size, size, 3))
            pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
            encoded = tf.io.encode_jpeg(pixels) if jpeg else tf.io.encode_png(pixels)
            tf.io.write_file(str(folder / name / f"{i:03d}.{'jpg' if jpeg else 'png'}"), encoded)
    return folder


def jpeg_bytes(pixels, quality=90, orientation=None):
    """pixels as a JPEG file's bytes, optionally with an EXIF orientation tag."""
    buffer, exif = io.BytesIO(), Image.Exif()
    if orientation:
        exif[274] = orientation
    Image.fromarray(pixels).save(buffer, "JPEG", quality=quality, exif=exif.tobytes())
    return buffer.getvalue()


def phone_jpeg_bytes(pixels):
    """pixels as a phone stores them: a JPEG whose EXIF segment holds a small JPEG thumbnail,
    with an end-of-image marker (FF D9) of its own, near the start of the file."""
    thumbnail = jpeg_bytes(np.full((12, 16, 3), 128, np.uint8))
    # EXIF is a TIFF file: its header, an empty first directory (IFD0) pointing to the second
    # (IFD1), which gives the thumbnail's offset and length; then the thumbnail itself.
    tiff = b"MM\x00\x2a" + struct.pack(">IHI", 8, 0, 14) + struct.pack(
        ">HHHIIHHIII", 2, 0x201, 4, 1, 44, 0x202, 4, 1, len(thumbnail), 0) + thumbnail
    exif = b"Exif\x00\x00" + tiff
    photo = jpeg_bytes(pixels)
    return photo[:2] + b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif + photo[2:]


@pytest.fixture(scope="session")
def catdog(tmp_path_factory):
    """Small 32x32 'cat' and 'dog' JPEGs in train/ (60 each) and test/ (20 each), like CIFAR-10's."""
    root = tmp_path_factory.mktemp("catdog")
    colours = {"cat": (150, 110, 80), "dog": (90, 100, 140)}
    write_colour_images(root / "train", colours, 60, jpeg=True)
    write_colour_images(root / "test", colours, 20, seed=1, jpeg=True)
    return root


@pytest.fixture(scope="session")
def three_colours(tmp_path_factory):
    """Three separable classes (red, green, blue) in one folder, no train/test split."""
    return write_colour_images(tmp_path_factory.mktemp("colours"),
                               {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)},
                               40)


def fake_cifar10(n_train=300, n_test=100, seed=0):
    """Arrays shaped and typed like tf.keras.datasets.cifar10.load_data(). Each image carries its
    original label in its red channel, so that the tests can check how images and labels pair."""
    rng = np.random.default_rng(seed)
    def split(n):
        y = rng.integers(0, 10, (n, 1)).astype(np.uint8)
        x = rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8)
        x[..., 0] = y[:, :, None] * 20
        return x, y
    return split(n_train), split(n_test)


def load_data(s, results):
    """Step 1 of run_lesson, as it runs there: (splits, classes); results gets what it records."""
    return benchmark.load_data(tl, s, results)


def run_script(*args, env=None, timeout=300):
    """Run transfer_learning.py as a user would, in a subprocess."""
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], capture_output=True,
                          text=True, env=dict(os.environ, **(env or {})), timeout=timeout, cwd=REPO)


def run_main(*argv):
    """tl.main in this process; returns (exit status, metrics.json of the run or None)."""
    import json
    argv = [str(a) for a in argv]
    status = tl.main(argv)
    out = argv[argv.index("--output-dir") + 1] if "--output-dir" in argv else None
    metrics = os.path.join(out, "metrics.json") if out else None
    return status, (json.load(open(metrics)) if metrics and os.path.exists(metrics) else None)


# TensorFlow 2.21 logs a few lines through absl before its logging is set up (e.g. "Could not
# find cuda drivers" on a machine without CUDA), whatever TF_CPP_MIN_LOG_LEVEL says; LiteRT
# announces its XNNPACK delegate.
TF_LOG_LINE = re.compile(r"^(WARNING: All log messages before absl|[IWEF]\d{4} \d\d:\d\d:\d\d|"
                         r"INFO: Created TensorFlow Lite|import time:)")


def script_lines(stderr):
    """What the script itself wrote on stderr, without TensorFlow's own log lines."""
    return [line for line in stderr.splitlines() if line.strip() and not TF_LOG_LINE.match(line)]
