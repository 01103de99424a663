"""2. Data: the right images reach the right splits with the right labels."""
import numpy as np
import pytest
import tensorflow as tf

from conftest import tl


def fake_cifar10(n_train=300, n_test=100, seed=0):
    """Arrays shaped and typed like tf.keras.datasets.cifar10.load_data()."""
    rng = np.random.default_rng(seed)
    def split(n):
        y = rng.integers(0, 10, (n, 1)).astype(np.uint8)
        x = rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8)
        x[..., 0] = y[:, :, None] * 20  # label readable from the pixels, to check pairing
        return x, y
    return split(n_train), split(n_test)


def args_for(*argv):
    args = tl.parse_args(list(argv))
    tl.check_args(args)
    return args


def test_cifar10_keeps_only_cats_and_dogs_relabelled(monkeypatch):
    (x_train, y_train), (x_test, y_test) = data = fake_cifar10()
    monkeypatch.setattr(tf.keras.datasets.cifar10, "load_data", lambda: data)
    splits, classes, skipped = tl.load_data(args_for())
    assert classes == ["cat", "dog"] and skipped == []
    expected_train = np.isin(y_train, [3, 5]).sum()
    assert len(splits["train"][0]) + len(splits["validation"][0]) == expected_train
    assert len(splits["validation"][0]) == round(expected_train * 0.1)
    assert len(splits["test"][0]) == np.isin(y_test, [3, 5]).sum()
    for x, y in splits.values():
        assert set(np.unique(y)) == {0, 1}
        original = x[:, 0, 0, 0] // 20  # 3 for cats, 5 for dogs
        assert np.array_equal(original == 5, y == 1) and set(np.unique(original)) == {3, 5}
        assert x.shape[1:] == (32, 32, 3) and x.dtype == np.uint8


def test_validation_split_is_deterministic_for_a_seed(monkeypatch):
    data = fake_cifar10()
    monkeypatch.setattr(tf.keras.datasets.cifar10, "load_data", lambda: data)
    first = tl.load_data(args_for("--seed", "1"))[0]["validation"][0]
    again = tl.load_data(args_for("--seed", "1"))[0]["validation"][0]
    other = tl.load_data(args_for("--seed", "2"))[0]["validation"][0]
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_class_folders_with_train_and_test(catdog):
    splits, classes, skipped = tl.load_data(args_for("--data-dir", str(catdog)))
    assert classes == ["cat", "dog"] and skipped == []
    assert len(splits["test"][0]) == 40
    assert len(splits["train"][0]) + len(splits["validation"][0]) == 120
    for x, y in splits.values():
        folder_class = np.array(["/dog/" in p for p in x])
        assert np.array_equal(folder_class, y == 1)
    assert not set(splits["train"][0]) & set(splits["validation"][0])


def test_three_classes_in_one_folder_are_split_three_ways(three_colours):
    splits, classes, _ = tl.load_data(args_for("--data-dir", str(three_colours)))
    assert classes == ["blue", "green", "red"]
    sizes = {name: len(x) for name, (x, y) in splits.items()}
    assert sum(sizes.values()) == 120 and sizes["test"] == 12 and sizes["validation"] == 11
    paths = [set(x) for x, _ in splits.values()]
    assert not (paths[0] & paths[1]) and not (paths[0] & paths[2]) and not (paths[1] & paths[2])


def test_max_images_caps_every_split_and_keeps_both_classes(catdog):
    splits, _, _ = tl.load_data(args_for("--data-dir", str(catdog), "--max-images", "10"))
    for x, y in splits.values():
        assert len(x) <= 10
    assert set(splits["test"][1]) == {0, 1}


@pytest.mark.parametrize("source", ["arrays", "files"])
def test_pipeline_resizes_on_the_fly_to_floats_in_0_1(source, catdog):
    if source == "files":
        x, y = tl.list_images(str(catdog / "test"), ["cat", "dog"])
    else:
        x = np.full((5, 32, 32, 3), 255, np.uint8)
        y = np.arange(5)
    images, labels = next(iter(tl.make_dataset(x[:5], y[:5], 96, 4)))
    assert images.shape == (4, 96, 96, 3) and images.dtype == tf.float32
    assert 0.0 <= images.numpy().min() and images.numpy().max() <= 1.0
    assert np.array_equal(labels.numpy(), y[:4])
