"""Transfer learning: a frozen MobileNetV2 from TensorFlow Hub learns your classes.

You build an image classifier (cats vs dogs from CIFAR-10, or your own photos) on MobileNetV2,
a network that already learned to see from 1.3 million ImageNet photos. Its weights stay frozen;
only a small Dropout + Dense "head" is trained, on features computed once per image. In order:
  1. Data                 CIFAR-10 cats and dogs, as floats in [0, 1] at the network's size.
  2. Model                a frozen TF Hub feature vector under a new Dropout + Dense head.
  3. Bottleneck features  why a frozen base runs once per image.
  4. Training the head    on those features, in seconds.
  5. Evaluation           accuracy on unseen images, and where the network looks.
  6. Plots and 7. Export; then run_lesson() runs them all in order.
  Extra lessons, off by default: --augment, --fine-tune-epochs, --tflite, --predict.
  Then the plumbing: your own photos (--data-dir), flags, errors, main().
Run it: python transfer_learning.py [--max-images 500 for a quick first run] [--help]
"""
import argparse
import json
import os
import platform
import shutil
import signal
import sys
import time

# tensorflow_hub's KerasLayer is a Keras 2 layer: ask for Keras 2 (tf-keras) before TensorFlow is imported,
# and for fewer start-up messages (TF_CPP_MIN_LOG_LEVEL=0 shows them all).
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The BFC allocator reuses one batch's memory for the next: the default made the feature pass 3x slower.
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
try:
    import matplotlib.pyplot as plt
    import numpy as np
    import tensorflow as tf
    import tensorflow_hub as hub
except KeyboardInterrupt:  # Ctrl-C while TensorFlow loads
    print("Interrupted.", file=sys.stderr)
    sys.exit(130)
try:  # LiteRT, MobileNet's own runtime, has no wheels for some platforms
    from ai_edge_litert.interpreter import Interpreter as LiteRT
except ImportError:
    LiteRT = None

# MobileNetV2 trained on ImageNet, as a feature vector: 224x224 images in [0, 1] in, 1280 numbers out.
DEFAULT_HANDLE = "https://tfhub.dev/google/tf2-preview/mobilenet_v2/feature_vector/4"
CIFAR10_CAT, CIFAR10_DOG = 3, 5
INFERENCE_BATCH_SIZE = 32  # for running the network: on a CPU, 15% faster than 64
LITERT_MIN_IMAGES = 1000  # converting for LiteRT takes about 5 s: it pays from about this many
OCCLUSION_GRID = 4  # where_it_looks.png hides each of 4x4 patches in turn
AUTOTUNE = tf.data.AUTOTUNE

# 1. Data ----------------------------------------------------------------------
# A split is a pair (x, y): x holds images (CIFAR-10's arrays) or image file paths, y the class numbers.
def load_cifar10_cats_and_dogs():
    """CIFAR-10's cats (3) and dogs (5), relabelled 0 = cat, 1 = dog."""
    splits = {}
    for name, (x, y) in zip(("train", "test"), tf.keras.datasets.cifar10.load_data()):
        keep = np.isin(y[:, 0], (CIFAR10_CAT, CIFAR10_DOG))
        splits[name] = (x[keep], (y[keep, 0] == CIFAR10_DOG).astype(np.int64))
    return splits, ["cat", "dog"]

def read_image(path):
    """Any JPEG, PNG, BMP, GIF or WebP becomes an RGB uint8 image (grey, alpha and palettes too)."""
    return tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)

def scale_and_resize(image, image_size):
    """Float pixels in [0, 1], as TF Hub image modules take them, at image_size square. The network
    learned on 224x224 photos: upscaling CIFAR's 32x32 images shows it objects at the scale it knows.
    Floats first: convert_image_dtype divides by 255 only while the pixels are integers."""
    return tf.image.resize(tf.image.convert_image_dtype(image, tf.float32), (image_size, image_size))

def make_dataset(x, y, image_size, batch_size, shuffle=False, augment=False, seed=0):
    """A tf.data pipeline that decodes, scales and resizes on the fly: nothing is stored
    upscaled (12000 images at 224x224 in float32 would be 7 GB)."""
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed)
    if x.dtype.kind == "U":  # file paths, not pixels
        ds = ds.map(lambda path, label: (read_image(path), label), num_parallel_calls=AUTOTUNE)
    ds = ds.map(lambda image, label: (scale_and_resize(image, image_size), label),
                num_parallel_calls=AUTOTUNE).batch(batch_size)
    if augment:  # an extra lesson: random flips, small rotations and zooms make new variants every epoch.
        # In the pipeline, not the model: the exported model stays a plain classifier.
        augmenter = tf.keras.Sequential([tf.keras.layers.RandomFlip("horizontal"),
                                         tf.keras.layers.RandomRotation(0.05), tf.keras.layers.RandomZoom(0.1)])
        ds = ds.map(lambda images, labels: (augmenter(images, training=True), labels), num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)

# 2. Model ---------------------------------------------------------------------
def build_model(handle, image_size, num_classes, dropout):
    """The frozen base, and three Keras models that share its layers and the head's.

    model      images -> MobileNetV2 -> Dropout -> Dense: what we evaluate and export.
    extractor  images -> MobileNetV2 features: run once per image.
    head       features -> Dropout -> Dense: what we train; it shares those layers, so it trains the model too.
    Dropout hides random features in training, so the head cannot lean on a few (1280 inputs, a few thousand images).
    """
    images = tf.keras.Input(shape=(image_size, image_size, 3), name="images")
    base = hub.KerasLayer(handle, trainable=False, name="mobilenet_v2")
    # training=False keeps BatchNorm in inference mode even when fine-tuning: on a small
    # dataset, updating its ImageNet statistics would wreck the features already learned.
    features = base(images, training=False)
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

# 3. Bottleneck features -------------------------------------------------------
# The central idea. The "bottleneck" is the base's last layer: the 1280 features it boils each image down to. Frozen,
# the base gives an image the same features in every epoch. Running MobileNetV2 is nearly all the work, so we run it
# once per image, keep the features (5 KB each), and train the head on them: seconds an epoch, not minutes.
# run_lesson keeps them; the functions below choose and run what computes them.
def choose_feature_runtime(wanted, num_images, device):
    """LiteRT on a CPU when there are enough images to repay converting the network."""
    if wanted == "auto":
        wanted = "litert" if device == "CPU" and num_images >= LITERT_MIN_IMAGES else "keras"
    if wanted == "litert" and LiteRT is None:
        print("warning: LiteRT is not installed (pip install ai-edge-litert); "
              "computing the features with Keras", file=sys.stderr)
        return "keras"
    return wanted

def feature_function(extractor, runtime):
    """A function from a dataset of images to their features, run by Keras or by LiteRT. MobileNet was designed for
    phones, and LiteRT (formerly TensorFlow Lite) is its native runtime: on a CPU it runs the same network about twice
    as fast. The features agree to float rounding (2e-5), so the head learns the same from either."""
    if runtime == "keras":
        return extractor.predict
    traced = tf.function(extractor).get_concrete_function(tf.TensorSpec(extractor.input_shape, tf.float32))
    converter = tf.lite.TFLiteConverter.from_concrete_functions([traced], extractor)
    converter.experimental_lower_to_saved_model = False  # a frozen graph: 5 s, not 20 s via a SavedModel
    interpreter = LiteRT(model_content=converter.convert(), num_threads=os.cpu_count())
    (images_in,), (features_out,) = interpreter.get_input_details(), interpreter.get_output_details()
    def run(batch):
        interpreter.resize_tensor_input(images_in["index"], batch.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(images_in["index"], batch)
        interpreter.invoke()
        return interpreter.get_tensor(features_out["index"])
    return lambda images: np.concatenate([run(x.numpy()) for x, _ in images])

# 4. Training the head on the features -----------------------------------------
def train(model, train_data, val_data, epochs):
    """model.fit, keeping the weights of the epoch with the lowest validation loss. Chosen on
    validation data, never on the test images: those stay unseen to tell honestly how it does on
    new photos. Loss, not accuracy: many epochs tie on accuracy. patience=epochs: never stops early."""
    keep_best = tf.keras.callbacks.EarlyStopping(monitor="val_loss", patience=epochs,
                                                 restore_best_weights=True, verbose=1)
    return model.fit(train_data, validation_data=val_data, epochs=epochs, callbacks=[keep_best]).history

def best_epoch_val_accuracy(history):
    """The validation accuracy of the epoch whose weights were kept."""
    return history["val_accuracy"][int(np.argmin(history["val_loss"]))]

# 5. Evaluation ----------------------------------------------------------------
def evaluate(model, test_data, y_test, num_classes):
    """Accuracy, loss and confusion matrix on test data the model has never seen."""
    probabilities = model.predict(test_data, verbose=0)
    predicted = probabilities.argmax(axis=1)
    return dict(probabilities=probabilities, accuracy=float(np.mean(predicted == y_test)),
                loss=float(np.mean(tf.keras.losses.sparse_categorical_crossentropy(y_test, probabilities))),
                confusion=tf.math.confusion_matrix(y_test, predicted, num_classes=num_classes).numpy())

def occlusion_map(model, images, patch):
    """How much each image's predicted-class probability drops with a grey patch at each place.

    Occlusion sensitivity (Zeiler and Fergus, 2014): hide one patch at a time and see how much less
    sure the model gets. Where it drops most is what the model looked at: the animal, or the
    background? No gradients needed, so it works for any module. A coarse localisation from a
    classifier, not a detector; CIFAR's 32x32 images make it coarser still. Returns [N, rows, cols].
    """
    n, cells = len(images), images.shape[1] // patch
    copies = np.repeat(images[:, None], cells * cells, axis=1)  # [N, cells * cells, S, S, 3]
    for k, (row, col) in enumerate(np.ndindex(cells, cells)):
        copies[:, k, row * patch:(row + 1) * patch, col * patch:(col + 1) * patch] = 0.5
    before = model.predict(images, verbose=0)
    predicted = before.argmax(axis=1)
    after = model.predict(copies.reshape(-1, *images.shape[1:]), batch_size=INFERENCE_BATCH_SIZE, verbose=0)
    p_before = before[np.arange(n), predicted]  # [N]: each image's predicted class
    p_after = after.reshape(n, cells * cells, -1)[np.arange(n), :, predicted]  # [N, cells * cells]
    return (p_before[:, None] - p_after).reshape(n, cells, cells)

def pick_examples(labels, predicted, count):
    """Up to count indices: wrong and right predictions of every class, in turn."""
    groups = [np.flatnonzero((labels == c) & ((predicted == labels) == right))
              for right in (False, True) for c in np.unique(labels)]
    return np.array([g[i] for i in range(len(labels)) for g in groups if i < len(g)][:count], int)

# 6. Plots ---------------------------------------------------------------------
def plot_history(history, fine_tune_start, path):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    epochs = np.arange(1, len(history["loss"]) + 1)
    for ax, metric in zip(axes, ("loss", "accuracy")):
        ax.plot(epochs, history[metric], "o-", label="train")
        ax.plot(epochs, history["val_" + metric], "o-", label="validation")
        if fine_tune_start:
            ax.axvline(fine_tune_start + 0.5, color="grey", linestyle="--", label="fine-tuning starts")
        ax.set(title=metric.capitalize(), xlabel="epoch")
        ax.legend()
    fig.savefig(path)

def plot_predictions(images, labels, probabilities, classes, path, heatmaps=None, title=None):
    """Test images titled with predicted class and confidence, green if right, red if wrong;
    occlusion maps laid over them, if given: red where hiding a patch lowered the prediction most."""
    rows = int(np.ceil(len(images) / 4))
    fig, axes = plt.subplots(rows, 4, figsize=(10, 2.75 * rows), squeeze=False, layout="constrained")
    for k, (ax, image, label, p) in enumerate(zip(axes.flat, images, labels, probabilities)):
        ax.imshow(image)
        if heatmaps is not None:
            edge = image.shape[0] - 0.5
            ax.imshow(heatmaps[k], cmap="jet", alpha=0.4, extent=(-0.5, edge, edge, -0.5), interpolation="bilinear")
        ax.set_title(f"{classes[p.argmax()]} {p.max():.0%}\n(true: {classes[label]})",
                     color="green" if p.argmax() == label else "red", fontsize=10)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(title)
    fig.savefig(path)

def plot_confusion_matrix(confusion, classes, path):
    fig, ax = plt.subplots(figsize=(2 + len(classes), 1.5 + len(classes)), layout="constrained")
    ax.imshow(confusion, cmap="Blues", vmin=0)
    for (i, j), count in np.ndenumerate(confusion):
        ax.text(j, i, count, ha="center", va="center", color="white" if count > confusion.max() / 2 else "black")
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xticklabels=classes,
           yticklabels=classes, xlabel="predicted", ylabel="true", title="Test confusion matrix")
    fig.savefig(path)

# 7. Export --------------------------------------------------------------------
def export_model(model, classes, work_dir, images, probabilities, tolerance):
    """Save the model and its labels, reload them and check on images that it predicts as before. model.export keeps
    just the forward pass, as serve(images): any TensorFlow program (or TF Serving) runs it without Keras or TF Hub."""
    tf.keras.utils.disable_interactive_logging()  # else export lists every variable
    model.export(os.path.join(work_dir, "model"))
    tf.keras.utils.enable_interactive_logging()
    tf.io.write_file(os.path.join(work_dir, "labels.txt"), "".join(c + "\n" for c in classes))
    reloaded = tf.saved_model.load(os.path.join(work_dir, "model"))  # keep it: serve() uses its variables
    again = reloaded.serve(images).numpy()
    check = dict(images=len(images), same_class=float(np.mean(again.argmax(1) == probabilities.argmax(1))),
                 largest_difference=float(np.abs(again - probabilities).max()), tolerance=tolerance)
    check["passed"] = check["same_class"] == 1 and check["largest_difference"] <= tolerance
    print(f"Reloaded model/: same class for {check['same_class']:.0%} of {len(images)} test images, "
          f"probabilities within {check['largest_difference']:.1e}.")
    if not check["passed"]:
        print(f"warning: the exported model differs from the trained one by more than {tolerance} "
              "(see export_check in metrics.json); the run is kept", file=sys.stderr)
    return check

# The lesson in order: the table of contents -----------------------------------
def run_lesson(args, work_dir, results):
    """Every step of the lesson, in order; the files go into work_dir, the numbers into results."""
    device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"  # TensorFlow picks a GPU itself
    print(f"Running on {device}." + (" (No GPU found: TF_CPP_MIN_LOG_LEVEL=0 shows why.)" if device == "CPU" else ""))
    step("1. Data")  # CIFAR-10's cats and dogs or your photos, split three ways (load_data, below)
    splits, classes = load_data(args, results)
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = splits.values()
    datasets = {name: make_dataset(x, y, args.image_size, INFERENCE_BATCH_SIZE) for name, (x, y) in splits.items()}
    step("2. Model")  # only the head's Dense layer has trainable weights
    model, base, extractor, head = build_checked_model(args, len(classes))
    model.summary()
    step("3. Bottleneck features")  # with --augment only the test images': training images change every epoch
    feature_splits = ["test"] if args.augment else ["train", "validation", "test"]
    runtime = choose_feature_runtime(args.features_with, sum(len(splits[s][1]) for s in feature_splits), device)
    print(f"Computing MobileNetV2 features, once per image, with {runtime}:")
    features_of = feature_function(extractor, runtime)
    features = {name: features_of(datasets[name]) for name in feature_splits}
    step("4. Training the head")
    if args.augment:  # an extra lesson: the head learns from changing images, through the frozen base
        to_train, val_data = model, datasets["validation"]
        train_data = make_dataset(x_train, y_train, args.image_size, args.batch_size, shuffle=True, augment=True,
                                  seed=args.seed)
    else:
        to_train = head
        train_data = (tf.data.Dataset.from_tensor_slices((features["train"], y_train))
                      .shuffle(len(y_train), seed=args.seed).batch(args.batch_size))
        val_data = tf.data.Dataset.from_tensor_slices((features["validation"], y_val)).batch(args.batch_size)
    compile_for_training(to_train, args.learning_rate)
    results["accuracy_before_training"] = to_train.evaluate(val_data, verbose=0, return_dict=True)["accuracy"]
    print(f"Validation accuracy before training: {results['accuracy_before_training']:.3f} "
          f"(chance is about {1 / len(classes):.3f})")
    history = train(to_train, train_data, val_data, args.epochs)
    results["val_accuracy"] = {"after_head": best_epoch_val_accuracy(history)}
    fine_tune_start = None
    if args.fine_tune_epochs:  # an extra lesson: unfreezing changes the base, and so its features
        results["head_test_accuracy"] = evaluate(head, features["test"], y_test, len(classes))["accuracy"]
        history, fine_tune_start = fine_tune(model, base, splits, datasets, args, results, history)
    step("5. Evaluation")  # test images' features through the head, or the images through the whole model
    result = (evaluate(model, datasets["test"], y_test, len(classes)) if args.fine_tune_epochs
              else evaluate(head, features["test"], y_test, len(classes)))
    print(f"Test accuracy {result['accuracy']:.4f}, loss {result['loss']:.4f} on {len(y_test)} images")
    print("Confusion matrix (rows: true class, columns: predicted):\n", result["confusion"])
    results.update(test_accuracy=result["accuracy"], test_loss=result["loss"],
                   confusion_matrix=result["confusion"].tolist(), features_with=runtime, device=device)
    sample = next(iter(datasets["test"]))[0].numpy()  # the first batch of test images, as in y_test
    sample_labels, sample_probabilities = y_test[:len(sample)], result["probabilities"][:len(sample)]
    picks = pick_examples(sample_labels, sample_probabilities.argmax(1), 8)
    heatmaps = occlusion_map(model, sample[picks], args.image_size // OCCLUSION_GRID)
    step("6. Plots")
    plot_history(history, fine_tune_start, os.path.join(work_dir, "history.png"))
    plot_predictions(sample[:16], sample_labels[:16], sample_probabilities[:16], classes,
                     os.path.join(work_dir, "predictions.png"))
    plot_confusion_matrix(result["confusion"], classes, os.path.join(work_dir, "confusion_matrix.png"))
    plot_predictions(sample[picks], sample_labels[picks], sample_probabilities[picks], classes,
                     os.path.join(work_dir, "where_it_looks.png"), heatmaps,
                     "Where it looks: red where a grey patch lowers the prediction most")
    step("7. Export")  # the sample through the reloaded model: it differs by float rounding (TF32 on a GPU)
    tolerance = 1e-2 if device == "GPU" else 1e-3
    results["export_check"] = export_model(model, classes, work_dir, sample, sample_probabilities, tolerance)
    if args.tflite:
        results["tflite_agreement"] = export_tflite(model, work_dir, sample, sample_probabilities)

# Extra lessons ----------------------------------------------------------------
def fine_tune(model, base, splits, datasets, args, results, history):
    """Unfreeze the base and nudge all of its weights towards our classes.

    The learning rate is far smaller than the head's, so that noisy gradients from a few thousand
    images cannot overwrite ImageNet's features. It warms up (Adam's first steps move every weight
    by the full rate, which knocked the model below the frozen one) and decays to zero. BatchNorm
    keeps its ImageNet statistics (build_model). If it does not beat the frozen model, that one stays.
    """
    step("4b. Fine-tuning")
    before, val_accuracy_before = model.get_weights(), results["val_accuracy"]["after_head"]
    train_images = make_dataset(*splits["train"], args.image_size, args.batch_size, shuffle=True, augment=args.augment,
                                seed=args.seed)
    base.trainable = True
    steps = args.fine_tune_epochs * len(train_images)  # len() of a batched dataset counts batches
    schedule = tf.keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0, warmup_target=args.fine_tune_learning_rate, warmup_steps=steps // 10,
        decay_steps=steps - steps // 10)
    compile_for_training(model, schedule)  # compile() fixes what is trainable
    tuned = train(model, train_images, datasets["validation"], args.fine_tune_epochs)
    results["val_accuracy"]["after_fine_tuning"] = max(val_accuracy_before, best_epoch_val_accuracy(tuned))
    if best_epoch_val_accuracy(tuned) < val_accuracy_before:
        print("Fine-tuning did not beat the frozen model on validation; keeping the frozen one.")
        model.set_weights(before)
    return {k: history[k] + tuned[k] for k in history}, len(history["loss"])

def export_tflite(model, work_dir, images, probabilities):
    """MobileNet was made for phones: TFLite is how it gets onto one, and LiteRT runs it."""
    tflite = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    tf.io.write_file(os.path.join(work_dir, "model.tflite"), tflite)
    run = (LiteRT or tf.lite.Interpreter)(model_content=tflite).get_signature_runner()
    agree = float(np.mean(run(images=images)["classifier"].argmax(1) == probabilities.argmax(1)))
    print(f"model.tflite: {len(tflite) / 1e6:.1f} MB, same class as the trained model "
          f"on {agree:.0%} of {len(images)} test images.")
    return agree

def predict_images(paths, model_dir):
    """Classify new photos with an exported run: one line per image, top 3 of many classes."""
    model, image_size, classes = load_exported_run(model_dir)
    unreadable = find_unreadable_images(paths)
    for path in unreadable:
        print(f"error: cannot read {path} as an image; skipping it", file=sys.stderr)
    for path in [p for p in paths if p not in unreadable]:
        p = model.serve(scale_and_resize(read_image(path), image_size)[None]).numpy()[0]
        top = p.argsort()[::-1][:3 if len(classes) > 2 else 1]
        print(f"{path}: " + ", ".join(f"{classes[i]} {p[i]:.1%}" for i in top))
    return 2 if unreadable else 0

# Your own photos: class folders, splits, unreadable files ---------------------
# Not tf.keras.utils.image_dataset_from_directory: it stops at the first broken file and
# splits only two ways, without keeping each class's share.
SPLIT_FOLDERS = {"train": ["train"], "validation": ["validation", "val", "valid"], "test": ["test"]}

def visible(folder, wanted=os.path.isdir):
    """The names in folder that are not hidden and pass wanted (by default: sub-folders)."""
    return sorted(f for f in os.listdir(folder) if not f.startswith(".") and wanted(os.path.join(folder, f)))

def find_split_folders(data_dir):
    """{split: folder} when DIR/train/ holds class folders; {} when DIR holds the class folders."""
    train = os.path.join(data_dir, "train")
    if not (os.path.isdir(train) and visible(train)):  # else train/ is a class folder of images
        return {}
    found = {split: [n for n in names if os.path.isdir(os.path.join(data_dir, n))]
             for split, names in SPLIT_FOLDERS.items()}
    return {split: os.path.join(data_dir, names[0]) for split, names in found.items() if names}

def list_files(folder, classes):
    """Every file in folder/<class>/ for each class; hidden files are ignored."""
    paths, labels = [], []
    for label, name in enumerate(classes):
        class_dir = os.path.join(folder, name)
        files = visible(class_dir, os.path.isfile) if os.path.isdir(class_dir) else []
        if not files:
            fail(f"class folder {class_dir} has no images; add some or remove the class")
        paths += [os.path.join(class_dir, f) for f in files]
        labels += [label] * len(files)
    return np.array(paths), np.array(labels, dtype=np.int64)

def find_unreadable_images(paths):
    """Decode every file once, in parallel; files that fail (or whose names are not UTF-8) are returned."""
    utf8 = np.array([p for p in paths if p.encode("utf-8", "replace").decode() == p], dtype=str)
    readable = (tf.data.Dataset.from_tensor_slices(utf8).map(lambda p: (p, tf.shape(read_image(p))),
                num_parallel_calls=AUTOTUNE).ignore_errors().batch(1024))
    ok = {p.decode() for batch, _ in readable.as_numpy_iterator() for p in batch}
    return [p for p in paths if p not in ok]

def load_image_folders(data_dir, results):
    """Readable images of DIR/<class>/, or of DIR/train/<class>/ and the other split folders there are."""
    if not os.path.isdir(data_dir):
        fail(f"--data-dir {data_dir} is not a folder; give a folder with one sub-folder per class")
    folders = find_split_folders(data_dir) or {"train": data_dir}
    classes = visible(folders["train"])
    if len(classes) < 2:
        fail(f"--data-dir {folders['train']} has {len(classes)} class folder(s); "
             "a classifier needs at least 2, e.g. DIR/cat/*.jpg and DIR/dog/*.jpg")
    splits, skipped = {}, []
    for split, folder in folders.items():
        x, y = list_files(folder, classes)
        bad = np.isin(x, find_unreadable_images(x))
        splits[split] = x[~bad], y[~bad]
        skipped += [os.fsencode(p).decode(errors="backslashreplace") for p in x[bad]]
    for label in set(range(len(classes))) - set(splits["train"][1]):
        fail(f"class folder {os.path.join(folders['train'], classes[label])} has no readable images; "
             "add good images or remove the folder")
    if skipped:
        print(f"warning: skipped {len(skipped)} file(s) that are not images TensorFlow can read: "
              f"{', '.join(skipped[:5])}{', ...' if len(skipped) > 5 else ''} (all in metrics.json)", file=sys.stderr)
    results["skipped_files"] = skipped
    return splits, classes

def shuffled(x, y, seed):
    order = np.random.default_rng(seed).permutation(len(x))
    return x[order], y[order]

def split_off(x, y, fraction, seed):
    """Cut the same fraction off every class (stratified), the same way for the same --seed."""
    rng, held = np.random.default_rng(seed), np.zeros(len(y), bool)
    for label in np.unique(y):
        held[rng.permutation(np.flatnonzero(y == label))[:max(1, round(np.sum(y == label) * fraction))]] = True
    return shuffled(x[~held], y[~held], seed), shuffled(x[held], y[held], seed)

def load_data(args, results):
    """Train, validation and test splits of CIFAR-10 or --data-dir, checked before the lesson uses them."""
    splits, classes = download_cifar10() if args.data_dir is None else load_image_folders(args.data_dir, results)
    splits = {name: shuffled(x, y, args.seed) for name, (x, y) in splits.items()}  # for --max-images
    missing = [split for split in ("test", "validation") if split not in splits]
    for label, name in enumerate(classes):
        if np.sum(splits["train"][1] == label) <= len(missing):
            fail(f"class {name} has {np.sum(splits['train'][1] == label)} image(s) in {args.data_dir}; it needs "
                 f"at least {len(missing) + 1}, one for training and one for each split carved out of it")
    for split in missing:
        splits["train"], splits[split] = split_off(*splits["train"], args.validation_split, args.seed)
    splits = {name: (splits[name][0][:args.max_images], splits[name][1][:args.max_images])
              for name in ("train", "validation", "test")}
    for name, (x, y) in splits.items():
        print(f"{name:>10}: {len(x):5d} images ({', '.join(f'{np.sum(y == i)} {c}' for i, c in enumerate(classes))})")
    results.update(classes=classes, num_train=len(splits["train"][1]), num_val=len(splits["validation"][1]),
                   num_test=len(splits["test"][1]), data=args.data_dir or "CIFAR-10")
    return splits, classes

# The command line, checks, the output folder and errors -----------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Train an image classifier on a frozen TF Hub MobileNetV2.")
    p.add_argument("--data-dir", help="your images: DIR/<class>/*.jpg, or DIR/train/<class>/ with DIR/validation/ "
                   "(or val/, valid/) and DIR/test/; missing splits are carved out of train (default: CIFAR-10)")
    p.add_argument("--model-handle", default=DEFAULT_HANDLE, help="TF Hub URL or SavedModel folder of a feature vector")
    p.add_argument("--image-size", type=int, default=224, help="pixels per side the module expects (default: 224)")
    p.add_argument("--epochs", type=int, default=10, help="epochs to train the head (default: 10)")
    p.add_argument("--batch-size", type=int, default=64, help="images per training batch (default: 64)")
    p.add_argument("--learning-rate", type=float, default=1e-3, help="for the head (default: 0.001)")
    p.add_argument("--dropout", type=float, default=0.2, help="dropout rate before the head (default: 0.2)")
    p.add_argument("--validation-split", type=float, default=0.1, help="fraction of each class held out for "
                   "validation, and for testing when DIR has no test/ (default: 0.1)")
    p.add_argument("--max-images", type=int, help="at most this many images per split, for a quick first run")
    p.add_argument("--features-with", choices=["auto", "keras", "litert"], default="auto", help="litert: twice as "
                   f"fast on a CPU, after a 5 s conversion; auto: litert on a CPU for {LITERT_MIN_IMAGES}+ images")
    p.add_argument("--output-dir", help="folder for this run (default: a new runs/<date-time>)")
    p.add_argument("--no-show", action="store_true", help="save the plots without showing them")
    p.add_argument("--seed", type=int, default=42, help="random seed for splits and training (default: 42)")
    p.add_argument("--augment", action="store_true", help="random flips, rotations and zooms of training images "
                   "(much slower: they change every epoch, so their features cannot be computed once)")
    p.add_argument("--fine-tune-epochs", type=int, default=0, help="then unfreeze the base for N epochs (default: 0)")
    p.add_argument("--fine-tune-learning-rate", type=float, default=1e-4, help="peak (default: 0.0001)")
    p.add_argument("--tflite", action="store_true", help="also export model.tflite, for phones")
    p.add_argument("--predict", nargs="+", metavar="IMAGE", help="classify these images with --model-dir's run")
    p.add_argument("--model-dir", help="a run folder written by an earlier training run, for --predict")
    p.error = fail  # a mistyped flag gets the same one-line error as any other bad input
    return p.parse_args(argv)

def fail(message):
    """Bad input ends here: one line saying what is wrong and how to fix it."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)

def check_args(args):
    for ok, message in [(args.epochs >= 1, "--epochs must be at least 1"),
            (args.batch_size >= 1, "--batch-size must be at least 1"),
            (0 < args.validation_split < 1, "--validation-split must be between 0 and 1, e.g. 0.1"),
            (0 <= args.dropout < 1, "--dropout must be in [0, 1), e.g. 0.2"),
            (args.image_size >= 32, "--image-size must be 32 or more (224 for the default module)"),
            (args.learning_rate > 0 and args.fine_tune_learning_rate > 0, "learning rates must be positive"),
            (args.fine_tune_epochs >= 0, "--fine-tune-epochs cannot be negative"),
            (args.max_images is None or args.max_images >= 1, "--max-images must be at least 1"),
            (not args.predict or args.model_dir, "--predict needs --model-dir RUN_DIR, a folder of an earlier run")]:
        if not ok:
            fail(message)

def download_cifar10():
    try:
        return load_cifar10_cats_and_dogs()
    except Exception as e:
        fail(f"could not download CIFAR-10 ({type(e).__name__}); offline, use your own images: --data-dir DIR")

def build_checked_model(args, num_classes):
    """build_model, or one line saying why the module cannot be used."""
    handle, size = args.model_handle, args.image_size
    try:
        model, base, extractor, head = build_model(handle, size, num_classes, args.dropout)
    except Exception:
        try:
            hub.load(handle)
        except Exception as e:
            where = ("a local path as --model-handle, or the module placed in $TFHUB_CACHE_DIR" if "://" in handle
                     else "a folder holding a TF2 SavedModel (saved_model.pb)")
            fail(f"cannot load --model-handle {handle} ({type(e).__name__}); to run offline use {where}, "
                 "and --data-dir instead of the CIFAR-10 download")
        fail(f"the module {handle} does not accept {size}x{size} images; set --image-size to its own")
    if len(extractor.output_shape) != 2:
        fail(f"the module {handle} returns shape {extractor.output_shape}, not a feature vector; "
             "use an image feature-vector module, not a classifier or a raw SavedModel")
    return model, base, extractor, head

def load_exported_run(model_dir):
    """The exported model, its image size and class names, from a run folder."""
    try:
        with open(os.path.join(model_dir, "labels.txt")) as f:
            model, classes = tf.saved_model.load(os.path.join(model_dir, "model")), f.read().splitlines()
        return model, model.signatures["serving_default"].inputs[0].shape[1], classes
    except Exception as e:
        fail(f"--model-dir {model_dir} holds no complete exported run ({type(e).__name__}); give the folder "
             "of an earlier training run, or train again to export one")

def prepare_output_dir(output_dir):
    """Never touch an earlier run: this one is written into OUTPUT.partial."""
    if output_dir is None:  # a new folder per run, even for two runs in the same second
        output_dir = stamp = os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
        n = 2
        while os.path.exists(output_dir) or os.path.exists(output_dir + ".partial"):
            output_dir, n = f"{stamp}-{n}", n + 1
    if os.path.isfile(output_dir):
        fail(f"--output-dir {output_dir} is a file; give a folder name")
    if os.path.isdir(output_dir) and os.listdir(output_dir):
        fail(f"--output-dir {output_dir} already holds a run; choose a new folder so it is not overwritten")
    work_dir = output_dir.rstrip("/\\") + ".partial"
    try:
        os.makedirs(work_dir)
    except FileExistsError:
        fail(f"{work_dir} exists: another run is writing there, or one was killed; delete it or pick another")
    except OSError as e:
        fail(f"cannot create --output-dir {output_dir} ({e.strerror}); choose a folder you can write to")
    return output_dir, work_dir

STEPS = []  # (name, start time) of each step of the lesson, for metrics.json

def step(name):  # announce the next step of the lesson, and note when it starts
    print(f"\n== {name} ==")
    STEPS.append((name, time.perf_counter()))

def save_metrics(work_dir, args, results):
    """metrics.json: the results, every setting and version that shaped them, seconds per step."""
    STEPS.append(("end", time.perf_counter()))
    seconds = {name: round(t - t0, 2) for (name, t0), (_, t) in zip(STEPS, STEPS[1:])}
    versions = dict(python=platform.python_version(), tensorflow=tf.__version__, tensorflow_hub=hub.__version__,
                    litert=LiteRT is not None)
    results.update(settings=vars(args), seconds=seconds, versions=versions)
    tf.io.write_file(os.path.join(work_dir, "metrics.json"), json.dumps(results, indent=2))

def main(argv=None):
    args = parse_args(argv)
    check_args(args)
    if args.predict:
        return predict_images(args.predict, args.model_dir)
    if not issubclass(hub.KerasLayer, tf.keras.layers.Layer):  # a notebook imported TensorFlow first
        fail("TensorFlow was imported with Keras 3 before this script could ask for Keras 2, which TF Hub needs; "
             "run it in a fresh Python (restart the notebook's kernel), or set TF_USE_LEGACY_KERAS=1 first")
    if args.no_show:
        plt.switch_backend("Agg")
    tf.keras.utils.set_random_seed(args.seed)
    output_dir, work_dir = prepare_output_dir(args.output_dir)
    results, status, STEPS[:] = {}, 0, []
    previous = signal.signal(signal.SIGINT, lambda *_: leave_on_ctrl_c(work_dir, output_dir))
    try:
        try:
            run_lesson(args, work_dir, results)
        except Exception as e:  # once there are test results, a failing plot or export keeps the run
            if "test_accuracy" not in results:
                raise
            results["last_step_error"], status = f"{type(e).__name__}: {e}", 1
            print(f"error: {results['last_step_error']}; the rest of the run is saved", file=sys.stderr)
        save_metrics(work_dir, args, results)
        os.replace(work_dir, output_dir)  # the run appears whole, or not at all
        print(f"Saved the run to {output_dir}/")
        if not args.no_show and plt.get_backend().lower() != "agg":
            plt.show()
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
        signal.signal(signal.SIGINT, previous)
    plt.close("all")
    return status

def leave_on_ctrl_c(work_dir, output_dir):
    """Ctrl-C ends a run at once, wherever it lands (a KeyboardInterrupt raised inside TensorFlow
    can be swallowed there, and training would go on). A saved run stays; an unfinished one goes."""
    sys.stdout.flush()
    if os.path.exists(os.path.join(output_dir, "metrics.json")):
        print(f"\nInterrupted; the run is saved in {output_dir}/", file=sys.stderr, flush=True)
    else:
        shutil.rmtree(work_dir, ignore_errors=True)
        print("\nInterrupted: no run folder was written; earlier runs are untouched.", file=sys.stderr, flush=True)
    os._exit(130)

if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\nInterrupted: no run folder was written; earlier runs are untouched.", file=sys.stderr)
        sys.exit(130)
