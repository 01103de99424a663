"""Shared fixtures: tiny feature-vector modules and small image folders, all offline.

The tests never touch the network: a TF Hub module is a SavedModel that we
build here in a second, and images come from a slice of ../shared/data.
"""
import hashlib
import os
import shutil
import subprocess
import sys

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "transfer_learning.py")
CATDOG = os.path.join(REPO, "..", "shared", "data", "cifar10-catdog")
sys.path.insert(0, REPO)

import transfer_learning as tl  # noqa: E402


def save_feature_vector(path, image_size, features=16):
    """A tiny stand-in for MobileNetV2: [0, 1] images in, a feature vector out.

    It has a convolution and a BatchNormalization, so tests can check that a
    frozen base really stays frozen (weights and BatchNorm statistics alike).
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
    """$TFHUB_CACHE_DIR seeded with a 224x224 module under the default handle."""
    cache = tmp_path_factory.mktemp("tfhub_cache")
    digest = hashlib.sha1(tl.DEFAULT_HANDLE.encode("utf8")).hexdigest()
    save_feature_vector(str(cache / digest), 224, features=8)
    return str(cache)


def exported_base_weights(run_dir):
    """The weights of the base inside an exported run, by name (the head's left out)."""
    model = tf.saved_model.load(os.path.join(str(run_dir), "model"))
    return {v.name: v.numpy() for v in model.variables if not v.name.startswith("classifier/")}


def copy_slice(split, classes, per_class, target):
    """Copy the first per_class CIFAR cat/dog JPEGs of a split into target/<class>/."""
    for name in classes:
        os.makedirs(target / name, exist_ok=True)
        files = sorted(os.listdir(os.path.join(CATDOG, split, name)))[:per_class]
        for f in files:
            shutil.copy(os.path.join(CATDOG, split, name, f), target / name / f)
    return target


@pytest.fixture(scope="session")
def catdog(tmp_path_factory):
    """A small slice of the real cat/dog JPEGs with train/ and test/ folders."""
    root = tmp_path_factory.mktemp("catdog")
    copy_slice("train", ["cat", "dog"], 60, root / "train")
    copy_slice("test", ["cat", "dog"], 20, root / "test")
    return root


def write_colour_images(folder, colours, per_class, size=32, seed=0):
    """Classes that differ only by colour: separable by any feature vector."""
    rng = np.random.default_rng(seed)
    for name, colour in colours.items():
        os.makedirs(folder / name, exist_ok=True)
        for i in range(per_class):
            noise = rng.integers(-40, 40, (size, size, 3))
            pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
            tf.io.write_file(str(folder / name / f"{i:03d}.png"), tf.io.encode_png(pixels))
    return folder


@pytest.fixture(scope="session")
def three_colours(tmp_path_factory):
    """Three separable classes (red, green, blue) in one folder, no train/test split."""
    return write_colour_images(tmp_path_factory.mktemp("colours"),
                               {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}, 40)


def run_script(*args, env=None, timeout=300):
    """Run transfer_learning.py as a user would, in a subprocess."""
    full_env = dict(os.environ, MPLBACKEND="Agg", **(env or {}))
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], capture_output=True,
                          text=True, env=full_env, timeout=timeout, cwd=REPO)
