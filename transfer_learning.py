"""Transfer learning with a frozen MobileNetV2 from TensorFlow Hub.

What you build: an image classifier for your own classes (cats vs dogs from
CIFAR-10 by default) on top of MobileNetV2, a network that already learned to
see from 1.3 million ImageNet photos. Its weights stay frozen; only a small
Dropout + Dense "head" is trained, on features computed once per image.

What you learn, in the order the file reads:
  1. Configuration        every setting is a command-line flag with a default.
  2. Data                 CIFAR-10 cats and dogs, or your own folders of photos.
  3. Model                a TF Hub feature vector plus a new classification head.
  4. Bottleneck features  why a frozen base lets us run it once per image.
  5. Training             the head trains in seconds and keeps its best epoch.
  6. Evaluation           accuracy, loss and a confusion matrix on unseen images.
  7. Plots                training history, sample predictions, confusions.
  8. Export               a SavedModel (and TFLite) that you can reload and use.
  Extra lessons, off by default: --augment, --fine-tune-epochs, --tflite,
  and --predict to classify new photos with an exported run.

Run it:
    python transfer_learning.py                      # CIFAR-10 cats vs dogs
    python transfer_learning.py --max-images 500     # a quick first run
    python transfer_learning.py --data-dir photos/   # photos/<class>/*.jpg
    python transfer_learning.py --predict a.jpg --model-dir runs/<run>
"""
import argparse
import json
import os
import shutil
import sys
import time

# tensorflow_hub's KerasLayer is a Keras 2 layer: ask TensorFlow for Keras 2
# (the tf-keras package) before TensorFlow is imported.
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# A batch of MobileNetV2 activations is tens of MB. TensorFlow's BFC allocator
# reuses that memory; the default CPU allocator asks the operating system for
# fresh pages every batch, which made the feature pass 3x slower here.
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")


def interrupted():
    print("\nInterrupted: no run folder was written; earlier runs are untouched.", file=sys.stderr)
    sys.exit(130)


# TensorFlow's C++ core prints start-up chatter (such as CUDA probes on a
# machine without a GPU) before any setting can quiet it: mute stderr while
# it loads, so that our own messages stand alone.
stderr_fd = os.dup(2)
os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
try:
    import matplotlib.pyplot as plt
    import numpy as np
    import tensorflow as tf
    import tensorflow_hub as hub
except KeyboardInterrupt:
    os.dup2(stderr_fd, 2)
    interrupted()
finally:
    os.dup2(stderr_fd, 2)

# 1. Configuration -----------------------------------------------------------
# MobileNetV2 trained on ImageNet, as a feature vector: it takes float images
# in [0, 1] of 224x224 pixels and returns 1280 numbers describing each image.
DEFAULT_HANDLE = "https://tfhub.dev/google/tf2-preview/mobilenet_v2/feature_vector/4"
CIFAR10_CAT, CIFAR10_DOG = 3, 5
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
# Only running the network, not training it: on a CPU, batches of 32 keep
# more activations in cache than 64 (15% faster here); a GPU is fine either way.
INFERENCE_BATCH_SIZE = 32
AUTOTUNE = tf.data.AUTOTUNE


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Train an image classifier on a frozen TF Hub MobileNetV2.")
    p.add_argument("--data-dir", help="your images: DIR/<class>/*.jpg, or DIR/train/<class>/ and "
                   "DIR/test/<class>/ (default: CIFAR-10 cats and dogs, downloaded)")
    p.add_argument("--model-handle", default=DEFAULT_HANDLE, help="TF Hub URL or local SavedModel "
                   "folder of an image feature vector (default: MobileNetV2 on TF Hub)")
    p.add_argument("--image-size", type=int, default=224, help="pixels per side the module expects (default: 224)")
    p.add_argument("--epochs", type=int, default=10, help="epochs to train the head (default: 10)")
    p.add_argument("--batch-size", type=int, default=64, help="images per training batch (default: 64)")
    p.add_argument("--learning-rate", type=float, default=1e-3, help="for the head (default: 0.001)")
    p.add_argument("--dropout", type=float, default=0.2, help="dropout rate before the head (default: 0.2)")
    p.add_argument("--validation-split", type=float, default=0.1, help="fraction of training images "
                   "held out for validation, and for testing when DIR has no test/ (default: 0.1)")
    p.add_argument("--max-images", type=int, help="use at most this many images per split, "
                   "for a quick first run on a CPU (default: all)")
    p.add_argument("--output-dir", help="folder for this run (default: a new runs/<date-time>)")
    p.add_argument("--no-show", action="store_true", help="save the plots without showing them")
    p.add_argument("--seed", type=int, default=42, help="random seed for splits and training (default: 42)")
    p.add_argument("--augment", action="store_true", help="random flips, rotations and zooms of "
                   "training images; augmented images change every epoch, so features cannot be "
                   "computed once and every epoch runs MobileNetV2 again (much slower)")
    p.add_argument("--fine-tune-epochs", type=int, default=0, help="then unfreeze the base for N epochs (default: 0)")
    p.add_argument("--fine-tune-learning-rate", type=float, default=1e-4,
                   help="learning rate while fine-tuning, a tenth of the head's (default: 0.0001)")
    p.add_argument("--tflite", action="store_true", help="also export model.tflite, for phones")
    p.add_argument("--predict", nargs="+", metavar="IMAGE",
                   help="classify these images with the run in --model-dir instead of training")
    p.add_argument("--model-dir", help="a run folder written by an earlier training run, for --predict")
    p.error = fail  # a mistyped flag gets the same one-line error as any other bad input
    return p.parse_args(argv)


def fail(message):
    """Bad input ends here: one line saying what is wrong and how to fix it."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def check_args(args):
    checks = [
        (args.epochs >= 1, "--epochs must be at least 1"),
        (args.batch_size >= 1, "--batch-size must be at least 1"),
        (0 < args.validation_split < 1, "--validation-split must be between 0 and 1, e.g. 0.1"),
        (0 <= args.dropout < 1, "--dropout must be in [0, 1), e.g. 0.2"),
        (args.image_size >= 32, "--image-size is too small for MobileNetV2; use 32 or more (224 for the default module)"),
        (args.learning_rate > 0 and args.fine_tune_learning_rate > 0, "learning rates must be positive"),
        (args.fine_tune_epochs >= 0, "--fine-tune-epochs cannot be negative"),
        (args.max_images is None or args.max_images >= 1, "--max-images must be at least 1"),
        (not args.predict or args.model_dir, "--predict needs --model-dir RUN_DIR, a folder written by an earlier run"),
    ]
    for ok, message in checks:
        if not ok:
            fail(message)


def prepare_output_dir(output_dir):
    """Never touch an earlier run: this one is written into OUTPUT.partial."""
    if output_dir is None:  # a new folder per run, even for two runs in the same second
        stamp = os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
        output_dir, n = stamp, 1
        while os.path.exists(output_dir) or os.path.exists(output_dir + ".partial"):
            n += 1
            output_dir = f"{stamp}-{n}"
    if os.path.isfile(output_dir):
        fail(f"--output-dir {output_dir} is a file; give a folder name")
    if os.path.isdir(output_dir) and os.listdir(output_dir):
        fail(f"--output-dir {output_dir} already holds a run; choose a new folder so it is not overwritten")
    work_dir = output_dir.rstrip("/\\") + ".partial"
    if os.path.exists(work_dir):
        fail(f"{work_dir} exists: another run is writing there, or one was killed; "
             "delete it or choose another --output-dir")
    try:
        os.makedirs(work_dir)
    except OSError as e:
        fail(f"cannot create --output-dir {output_dir} ({e.strerror}); choose a folder you can write to")
    return output_dir, work_dir


# 2. Data --------------------------------------------------------------------
# Each split is a pair (x, y): x holds either the images themselves (CIFAR-10
# arrives as arrays) or image file paths (your folders), y the class numbers.

def load_cifar10_cats_and_dogs():
    """CIFAR-10 keeps only cats (3) and dogs (5), relabelled 0 = cat, 1 = dog."""
    try:
        (x_train, y_train), (x_test, y_test) = tf.keras.datasets.cifar10.load_data()
    except Exception as e:
        fail(f"could not download CIFAR-10 ({type(e).__name__}); when offline, "
             "train on your own images with --data-dir DIR instead")
    splits = {}
    for name, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        y = y.reshape(-1)
        keep = (y == CIFAR10_CAT) | (y == CIFAR10_DOG)
        splits[name] = (x[keep], (y[keep] == CIFAR10_DOG).astype(np.int64))
    return splits, ["cat", "dog"]


# Why not tf.keras.utils.image_dataset_from_directory? It stops at the first
# broken file and splits only two ways; listing the files ourselves lets us
# skip broken ones up front and carve out validation and test alike.

def list_images(folder, classes):
    """Image files in folder/<class>/ for each class; hidden files are ignored."""
    paths, labels = [], []
    for label, name in enumerate(classes):
        class_dir = os.path.join(folder, name)
        files = sorted(f for f in os.listdir(class_dir) if not f.startswith(".")
                       and f.lower().endswith(IMAGE_EXTENSIONS)) if os.path.isdir(class_dir) else []
        if not files:
            fail(f"class folder {class_dir} has no images ({', '.join(IMAGE_EXTENSIONS)}); "
                 "add some or remove the folder")
        paths += [os.path.join(class_dir, f) for f in files]
        labels += [label] * len(files)
    return np.array(paths), np.array(labels, dtype=np.int64)


def load_image_folders(data_dir):
    """DIR/<class>/ images, or DIR/train/<class>/ and DIR/test/<class>/."""
    if not os.path.isdir(data_dir):
        fail(f"--data-dir {data_dir} is not a folder; give a folder with one sub-folder per class")
    has_splits = all(os.path.isdir(os.path.join(data_dir, s)) for s in ("train", "test"))
    train_dir = os.path.join(data_dir, "train") if has_splits else data_dir
    classes = sorted(d for d in os.listdir(train_dir)
                     if os.path.isdir(os.path.join(train_dir, d)) and not d.startswith("."))
    if len(classes) < 2:
        fail(f"--data-dir {train_dir} has {len(classes)} class folder(s); "
             "a classifier needs at least 2, e.g. DIR/cat/*.jpg and DIR/dog/*.jpg")
    splits = {"train": list_images(train_dir, classes)}
    if has_splits:
        splits["test"] = list_images(os.path.join(data_dir, "test"), classes)
    return splits, classes


def read_image(path):
    """Any JPEG, PNG, BMP or GIF becomes an RGB uint8 image (grey, alpha and palettes too)."""
    return tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)


def find_unreadable_images(paths):
    """Decode every file once, in parallel; the files that fail are returned."""
    readable = (tf.data.Dataset.from_tensor_slices(paths)
                .map(lambda p: (p, tf.shape(read_image(p))), num_parallel_calls=AUTOTUNE)
                .ignore_errors().batch(1024))
    ok = {p.decode() for batch, _ in readable.as_numpy_iterator() for p in batch}
    return [p for p in paths if p not in ok]


def shuffled(x, y, seed):
    order = np.random.default_rng(seed).permutation(len(x))
    return x[order], y[order]


def split_off(x, y, fraction, seed):
    """Shuffle (the same way for the same --seed) and cut off a fraction as a new split."""
    x, y = shuffled(x, y, seed)
    cut = max(1, round(len(x) * fraction))
    return (x[cut:], y[cut:]), (x[:cut], y[:cut])


def load_data(args):
    if args.data_dir is not None:
        splits, classes = load_image_folders(args.data_dir)
    else:
        splits, classes = load_cifar10_cats_and_dogs()
    if "test" not in splits:
        splits["train"], splits["test"] = split_off(*splits["train"], args.validation_split, args.seed)
    else:  # shuffled, so that a --max-images slice and the sample plot show every class
        splits["test"] = shuffled(*splits["test"], args.seed)
    splits["train"], splits["validation"] = split_off(*splits["train"], args.validation_split, args.seed)
    skipped = []
    for name, (x, y) in splits.items():
        x, y = x[:args.max_images], y[:args.max_images]
        if x.dtype.kind == "U":  # file paths: drop the ones that cannot be decoded
            bad = find_unreadable_images(x)
            skipped += bad
            readable = ~np.isin(x, bad)
            x, y = x[readable], y[readable]
        if len(x) == 0:
            fail(f"the {name} split has no readable images; add more images to --data-dir")
        splits[name] = (x, y)
    for i in set(range(len(classes))) - set(splits["train"][1]):
        fail(f"no readable training images of class {classes[i]} in {args.data_dir or 'CIFAR-10'}; "
             "add good images to its folder or remove the folder")
    if skipped:
        print(f"warning: skipped {len(skipped)} unreadable image file(s): {', '.join(skipped)}",
              file=sys.stderr)
    for name, (x, y) in splits.items():
        counts = ", ".join(f"{np.sum(y == i)} {c}" for i, c in enumerate(classes))
        print(f"{name:>10}: {len(x):5d} images ({counts})")
    return splits, classes, skipped


def network_input(image, image_size):
    """Float pixels in [0, 1], as TF Hub modules take them, at image_size square.

    The network learned on 224x224 photos: upscaling CIFAR's 32x32 images lets
    its filters see objects at the scale they know. Pixels become floats first:
    convert_image_dtype divides by 255 only while they are integers.
    """
    pixels = tf.image.convert_image_dtype(image, tf.float32)
    return tf.image.resize(pixels, (image_size, image_size))


def make_dataset(x, y, image_size, batch_size, shuffle=False, augment=False, seed=0):
    """A tf.data pipeline that decodes, resizes and scales images on the fly.

    Nothing is stored upscaled: 12000 images at 224x224 in float32 would be 7 GB.
    """
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed)
    if x.dtype.kind == "U":  # file paths, not pixels
        ds = ds.map(lambda path, label: (read_image(path), label), num_parallel_calls=AUTOTUNE)
    ds = ds.map(lambda image, label: (network_input(image, image_size), label), num_parallel_calls=AUTOTUNE)
    ds = ds.batch(batch_size)
    if augment:  # in the pipeline, not the model: the exported model stays a plain classifier
        augmenter = tf.keras.Sequential([tf.keras.layers.RandomFlip("horizontal"),
                                         tf.keras.layers.RandomRotation(0.05),
                                         tf.keras.layers.RandomZoom(0.1)])
        ds = ds.map(lambda images, labels: (augmenter(images, training=True), labels),
                    num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


# 3. Model -------------------------------------------------------------------

def build_model(handle, image_size, num_classes, dropout):
    """The frozen base, and three Keras models that share its layers and the head's.

    model      images -> MobileNetV2 -> Dropout -> Dense: what we evaluate and export.
    extractor  images -> MobileNetV2 features: run once per image.
    head       features -> Dropout -> Dense: what we train.
    Training the head trains the model, because they share the Dropout and
    Dense layers. Dropout hides random features during training, so that
    the head cannot lean on a few of them (1280 inputs, few thousand images).
    """
    images = tf.keras.Input(shape=(image_size, image_size, 3), name="images")
    try:
        base = hub.KerasLayer(handle, trainable=False, name="mobilenet_v2")
    except Exception as e:
        where = ("a local path as --model-handle, or the module placed in $TFHUB_CACHE_DIR"
                 if "://" in handle else "a folder holding a TF2 SavedModel (saved_model.pb)")
        fail(f"cannot load --model-handle {handle} ({type(e).__name__}); "
             f"to run offline use {where}, and --data-dir instead of the CIFAR-10 download")
    try:
        # training=False keeps the base's BatchNorm layers in inference mode even
        # when fine-tuning: on a small dataset, updating their ImageNet statistics
        # would wreck the features the base has already learned.
        features = base(images, training=False)
    except (ValueError, TypeError):
        fail(f"the module {handle} does not accept {image_size}x{image_size} images; "
             "set --image-size to the size it was built for (224 for MobileNetV2)")
    if len(features.shape) != 2:
        fail(f"the module {handle} returns shape {features.shape}, not a feature vector; "
             "use an image feature-vector module, not a classifier or a raw SavedModel")
    drop = tf.keras.layers.Dropout(dropout, name="dropout")
    classify = tf.keras.layers.Dense(num_classes, activation="softmax", name="classifier")
    model = tf.keras.Model(images, classify(drop(features)), name="classifier_model")
    extractor = tf.keras.Model(images, features, name="feature_extractor")
    feature_input = tf.keras.Input(shape=features.shape[1:], name="features")
    head = tf.keras.Model(feature_input, classify(drop(feature_input)), name="head")
    return model, base, extractor, head


def compile_for_training(model, learning_rate):
    model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])


# 4. Bottleneck features -----------------------------------------------------
# The central idea. The "bottleneck" is the base's last layer: the 1280
# features it boils each image down to. The base is frozen, so it gives the
# same features for an image in every epoch. Running MobileNetV2 is nearly
# all the work, so we run it once per image, keep the features (5 KB each),
# and train the head on them: an epoch then takes under a second, not minutes.

def extract_features(extractor, images, labels):
    """A dataset of (features, label) pairs, held in memory."""
    return tf.data.Dataset.from_tensor_slices((extractor.predict(images), labels))


# 5. Training ----------------------------------------------------------------

def train(model, train_data, val_data, epochs):
    """model.fit, keeping the weights of the epoch with the lowest validation loss.

    The best epoch is chosen on validation data, never on the test images:
    those must stay unseen to tell honestly how the model does on new photos.
    Loss rather than accuracy: on a small validation set many epochs tie on
    accuracy. patience=epochs: EarlyStopping never stops early, only restores.
    """
    keep_best = tf.keras.callbacks.EarlyStopping(monitor="val_loss", patience=epochs,
                                                 restore_best_weights=True, verbose=1)
    return model.fit(train_data, validation_data=val_data, epochs=epochs,
                     callbacks=[keep_best]).history


def kept_val_accuracy(history):
    """The validation accuracy of the epoch whose weights were kept."""
    return history["val_accuracy"][int(np.argmin(history["val_loss"]))]


def fine_tune(model, base, train_images, val_images, args, val_accuracy_before):
    """Unfreeze the base and nudge all of its weights towards our classes.

    The learning rate is far smaller than the head's, so that noisy gradients
    from a few thousand images cannot overwrite ImageNet's features. It warms
    up (Adam's first steps move every weight by the full rate, which knocked
    the model below the frozen one) and decays to zero. BatchNorm keeps its
    ImageNet statistics (see build_model). If no epoch beats the frozen model
    on validation, the frozen one is kept.
    """
    before = model.get_weights()
    base.trainable = True
    steps = args.fine_tune_epochs * len(train_images)  # len() of a batched dataset counts batches
    warmup = steps // 10
    schedule = tf.keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0, warmup_target=args.fine_tune_learning_rate, warmup_steps=warmup,
        decay_steps=steps - warmup)
    compile_for_training(model, schedule)  # compile() fixes what is trainable
    history = train(model, train_images, val_images, args.fine_tune_epochs)
    if kept_val_accuracy(history) < val_accuracy_before:
        print("Fine-tuning did not beat the frozen model on validation; keeping the frozen one.")
        model.set_weights(before)
    return history


# 6. Evaluation --------------------------------------------------------------

def evaluate(model, test_images, y_test, num_classes):
    """One pass of the whole model over the test images, as a user will run it."""
    probabilities = model.predict(test_images)
    predicted = probabilities.argmax(axis=1)
    return dict(probabilities=probabilities, accuracy=float(np.mean(predicted == y_test)),
                loss=float(np.mean(tf.keras.losses.sparse_categorical_crossentropy(y_test, probabilities))),
                confusion=tf.math.confusion_matrix(y_test, predicted, num_classes=num_classes).numpy())


# 7. Plots -------------------------------------------------------------------

def plot_history(history, fine_tune_start, path):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    epochs = np.arange(1, len(history["loss"]) + 1)
    for ax, metric in zip(axes, ("loss", "accuracy")):
        ax.plot(epochs, history[metric], "o-", label="train")
        ax.plot(epochs, history["val_" + metric], "o-", label="validation")
        if fine_tune_start:
            ax.axvline(fine_tune_start + 0.5, color="grey", linestyle="--", label="fine-tuning starts")
        ax.set(title=metric.capitalize(), xlabel="epoch")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def plot_predictions(images, labels, probabilities, classes, path):
    """Sample test images: predicted class and confidence, green if right, red if wrong."""
    fig, axes = plt.subplots(4, 4, figsize=(10, 11))
    for ax, image, label, p in zip(axes.flat, images, labels, probabilities):
        ax.imshow(image)
        ax.set_title(f"{classes[p.argmax()]} {p.max():.0%}\n(true: {classes[label]})",
                     color="green" if p.argmax() == label else "red", fontsize=10)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)


def plot_confusion_matrix(confusion, classes, path):
    fig, ax = plt.subplots(figsize=(2 + len(classes), 1.5 + len(classes)))
    ax.imshow(confusion, cmap="Blues")
    for (i, j), count in np.ndenumerate(confusion):
        ax.text(j, i, count, ha="center", va="center",
                color="white" if count > confusion.max() / 2 else "black")
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xticklabels=classes,
           yticklabels=classes, xlabel="predicted", ylabel="true", title="Test confusion matrix")
    fig.tight_layout()
    fig.savefig(path)


# 8. Export ------------------------------------------------------------------

def export_model(model, classes, work_dir, check_images, check_probabilities):
    """Save the model and its labels for inference, reload it, check it predicts as before.

    model.export keeps only the forward pass, as serve(images): any TensorFlow
    program (or TF Serving) runs it without Keras or tensorflow_hub, and it
    saves in a third of the time of model.save, which keeps training too.
    """
    tf.keras.utils.disable_interactive_logging()  # else export lists every variable
    model.export(os.path.join(work_dir, "model"))
    tf.keras.utils.enable_interactive_logging()
    with open(os.path.join(work_dir, "labels.txt"), "w") as f:
        f.write("".join(c + "\n" for c in classes))
    reloaded = tf.saved_model.load(os.path.join(work_dir, "model"))
    difference = np.abs(reloaded.serve(check_images).numpy() - check_probabilities).max()
    print(f"Reloaded model/ predicts as the trained model (largest difference {difference:.1e}).")
    if difference > 1e-4:
        raise RuntimeError("the exported model does not reproduce the trained model")


def export_tflite(model, work_dir, check_images, check_probabilities):
    """MobileNet was made for phones: TFLite is how it gets onto one."""
    tflite = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    path = os.path.join(work_dir, "model.tflite")
    with open(path, "wb") as f:
        f.write(tflite)
    runner = tf.lite.Interpreter(model_path=path).get_signature_runner()
    tflite_classes = [runner(images=image[None])["classifier"].argmax() for image in check_images]
    agree = float(np.mean(tflite_classes == check_probabilities.argmax(1)))
    print(f"model.tflite: {len(tflite) / 1e6:.1f} MB, same class as the SavedModel "
          f"on {agree:.0%} of {len(check_images)} test images.")
    return agree


def predict_images(paths, model_dir):
    """Classify new photos with an exported run: one line per image."""
    if not os.path.isfile(os.path.join(model_dir, "labels.txt")):
        fail(f"--model-dir {model_dir} is not an exported run (no labels.txt); "
             "give a folder written by an earlier training run")
    with open(os.path.join(model_dir, "labels.txt")) as f:
        classes = f.read().splitlines()
    try:
        model = tf.saved_model.load(os.path.join(model_dir, "model"))
        serve = model.serve  # runs exported before model.export have none
    except Exception as e:
        fail(f"cannot load the model in {model_dir}/model ({type(e).__name__}); "
             "train again to export a complete run")
    size = model.signatures["serving_default"].inputs[0].shape[1]  # the size it was trained at
    failed = 0
    for path in paths:
        try:
            image = network_input(read_image(path), size)
        except Exception:
            print(f"error: cannot read {path} as an image; skipping it", file=sys.stderr)
            failed += 1
            continue
        p = serve(image[None]).numpy()[0]
        top = p.argsort()[::-1][:3 if len(classes) > 2 else 1]
        print(f"{path}: " + ", ".join(f"{classes[i]} {p[i]:.1%}" for i in top))
    return 2 if failed else 0


# The whole lesson in order, and main() -------------------------------------

def run(args, work_dir):
    """Every step of the lesson, in order; the files go into work_dir."""
    clock = [("start", time.perf_counter())]
    # TensorFlow puts the work on a GPU by itself when it sees one.
    device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
    print(f"Running on {device}.")

    # 2. Data: pipelines that stream images. Those in `datasets` keep file order,
    # so that features line up with labels; train_images is shuffled, for
    # training the whole model on images (--augment, fine-tuning).
    splits, classes, skipped = load_data(args)
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (
        splits["train"], splits["validation"], splits["test"])
    datasets = {name: make_dataset(x, y, args.image_size, INFERENCE_BATCH_SIZE)
                for name, (x, y) in splits.items()}
    train_images = make_dataset(x_train, y_train, args.image_size, args.batch_size,
                                shuffle=True, augment=args.augment, seed=args.seed)
    clock.append(("data", time.perf_counter()))

    # 3. Model: only the head's Dense layer has trainable weights.
    model, base, extractor, head = build_model(args.model_handle, args.image_size,
                                               len(classes), args.dropout)
    model.summary()
    clock.append(("model", time.perf_counter()))

    # 4. Features, once per image, and the head that trains on them; with
    # --augment the images change every epoch, so the base sees them every epoch.
    if args.augment:
        trainee, train_data, val_data = model, train_images, datasets["validation"]
    else:
        print("Computing MobileNetV2 features, once per image:")
        trainee = head
        train_data = (extract_features(extractor, datasets["train"], y_train)
                      .shuffle(len(y_train), seed=args.seed).batch(args.batch_size))
        val_data = extract_features(extractor, datasets["validation"], y_val).batch(args.batch_size)
    clock.append(("features", time.perf_counter()))

    # 5. Training
    compile_for_training(trainee, args.learning_rate)
    accuracy_before = trainee.evaluate(val_data, verbose=0)[1]
    print(f"Validation accuracy before training: {accuracy_before:.3f} "
          f"(chance is about {1 / len(classes):.3f})")
    history = train(trainee, train_data, val_data, args.epochs)
    val_accuracy = {"after_head": kept_val_accuracy(history)}
    clock.append(("training", time.perf_counter()))

    fine_tune_start, head_test_accuracy = None, None
    if args.fine_tune_epochs:
        head_test_accuracy = evaluate(model, datasets["test"], y_test, len(classes))["accuracy"]
        print(f"Test accuracy with the frozen base: {head_test_accuracy:.4f}")
        more = fine_tune(model, base, train_images, datasets["validation"], args,
                         val_accuracy["after_head"])
        fine_tune_start = len(history["loss"])
        history = {k: history[k] + more[k] for k in history}
        val_accuracy["after_fine_tuning"] = max(val_accuracy["after_head"], kept_val_accuracy(more))
        clock.append(("fine_tuning", time.perf_counter()))

    # 6. Evaluation: the whole model, on test images it has never seen.
    result = evaluate(model, datasets["test"], y_test, len(classes))
    print(f"Test accuracy {result['accuracy']:.4f}, loss {result['loss']:.4f} on {len(y_test)} images")
    print("Confusion matrix (rows: true class, columns: predicted):\n", result["confusion"])
    clock.append(("evaluation", time.perf_counter()))

    # 7. Plots
    sample_images = next(iter(datasets["test"]))[0][:16].numpy()
    plot_history(history, fine_tune_start, os.path.join(work_dir, "history.png"))
    plot_predictions(sample_images, y_test[:16], result["probabilities"][:16], classes,
                     os.path.join(work_dir, "predictions.png"))
    plot_confusion_matrix(result["confusion"], classes, os.path.join(work_dir, "confusion_matrix.png"))
    clock.append(("plots", time.perf_counter()))

    # 8. Export
    check = (sample_images, result["probabilities"][:len(sample_images)])
    export_model(model, classes, work_dir, *check)
    tflite_agreement = export_tflite(model, work_dir, *check) if args.tflite else None
    clock.append(("export", time.perf_counter()))
    metrics = dict(
        classes=classes, num_train=len(y_train), num_val=len(y_val), num_test=len(y_test),
        skipped_files=skipped, accuracy_before_training=accuracy_before, val_accuracy=val_accuracy,
        head_test_accuracy=head_test_accuracy, test_accuracy=result["accuracy"],
        test_loss=result["loss"], confusion_matrix=result["confusion"].tolist(), epochs=args.epochs,
        fine_tune_epochs=args.fine_tune_epochs, augment=args.augment, tflite_agreement=tflite_agreement,
        image_size=args.image_size, model_handle=args.model_handle,
        data=args.data_dir or "CIFAR-10", device=device,
        seconds={phase: round(t - t0, 2) for (_, t0), (phase, t) in zip(clock, clock[1:])})
    with open(os.path.join(work_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)


def main(argv=None):
    args = parse_args(argv)
    check_args(args)
    if args.predict:
        return predict_images(args.predict, args.model_dir)
    if args.no_show:
        plt.switch_backend("Agg")
    tf.keras.utils.set_random_seed(args.seed)
    output_dir, work_dir = prepare_output_dir(args.output_dir)
    try:
        run(args, work_dir)
        os.replace(work_dir, output_dir)  # the run appears whole, or not at all
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    print(f"Saved the run to {output_dir}/")
    if not args.no_show and plt.get_backend().lower() != "agg":
        try:
            plt.show()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        interrupted()
