"""Transfer learning: MobileNetV2, trained on ImageNet, learns your classes in minutes.

MobileNetV2, from TensorFlow Hub, learned to see from 1.3 million photos. It is our "base", and we
keep it "frozen": its weights never change. It turns each image into 1280 numbers, the image's
"features", and since it never changes, an image always gets the same features. So we compute them
once, and a small new "head", two layers on top, learns your classes from them in seconds:
    images (N, 224, 224, 3) -> frozen base -> features (N, 1280) -> head -> probabilities (N, 2)
Run it: pip install -r requirements.txt, then python transfer_learning.py, about two minutes on a
laptop CPU (--max-images 300: a quick look; --data-dir DIR: your own photos; in a notebook, %run
transfer_learning.py). The head gets about 79 in 100 of CIFAR-10's test cats and dogs right (chance:
50). Read on: the settings, run_lesson() (the table of contents), then steps 1-7, the lesson.
Lessons 8-11 come after it, then the appendix: the machinery of the tool, not needed to learn."""
import argparse, collections, csv, dataclasses, functools, hashlib, io, json, os, platform, shlex
import shutil, signal, sys, tempfile, time, traceback, types

# Start-up, before TensorFlow loads. None of it is part of the lesson: skip to the settings.
os.environ["TF_USE_LEGACY_KERAS"] = "1"  # TF Hub's layers need Keras 2 (tf-keras), not Keras 3
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # only errors from TensorFlow's C++ code
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")  # LiteRT's CPU pass is faster with it
REAL_STDERR, QUIET = os.dup(2), os.open(os.devnull, os.O_WRONLY)  # QUIET: output goes nowhere
if "ipykernel" in sys.modules and os.environ["TF_CPP_MIN_LOG_LEVEL"] != "0":
    os.dup2(QUIET, 2)  # a notebook would show even what TensorFlow's C++ code prints as it loads
try:  # Ctrl-C while the libraries load ends with one line, not a traceback
    import matplotlib.pyplot as plt
    import numpy as np
    import tensorflow as tf
    import tensorflow_hub as hub
    from PIL import ExifTags, Image, ImageOps
    tf.config.list_physical_devices("GPU")  # its first look for CUDA prints too: now, quietly
except KeyboardInterrupt:
    print("Interrupted.", file=sys.stderr)
    sys.exit(130)
finally:
    os.dup2(REAL_STDERR, 2)
# The TF Hub "handle" (address) of the "module" (a saved network) we start from: MobileNetV2.
DEFAULT_HANDLE = "https://tfhub.dev/google/tf2-preview/mobilenet_v2/feature_vector/4"
PREDICT_BATCH = 32  # images the frozen base takes at a time (the head trains in --batch-size)

def setting(default, why, **flag):  # a setting's default, and why, for Settings and --help
    return dataclasses.field(default=default, metadata=dict(help=why, **flag))

@dataclasses.dataclass
class Settings:
    """Every setting, its default and why. Each is a flag too: --data-dir photos/, --epochs 20."""
    data_dir: str = setting(None, "your photos, DIR/<class>/*.jpg; none: CIFAR-10's cats and dogs")
    max_images: int = setting(None, "about this many images per split, for a quick look; none: all")
    validation_split: float = setting(0.1, "each class's share held out for validation (step 1)")
    model_handle: str = setting(DEFAULT_HANDLE, "TF Hub URL or folder of the base's SavedModel")
    image_size: int = setting(224, "pixels per side the base takes: 224 for MobileNetV2")
    dropout: float = setting(0.2, "share of the features hidden at each training step (step 2)")
    epochs: int = setting(10, "passes over the training features; the best one is kept")
    batch_size: int = setting(64, "images per training step of the head (step 4)")
    learning_rate: float = setting(1e-3, "how far each step moves the head's weights")
    seed: int = setting(42, "random seed: the same seed, the same splits and training")
    # For the extra lessons, 8-11, and the tool, after the lesson
    fine_tune_epochs: int = setting(0, "lesson 8: then train the whole network (3 GB of memory)")
    fine_tune_learning_rate: float = setting(1e-4, "lesson 8: the highest rate while fine-tuning")
    augment: bool = setting(False, "lesson 8: train on flipped, turned and zoomed images (slow)")
    tflite: bool = setting(False, "lesson 10: also export model.tflite, for phones")
    predict: str = setting(None, "lesson 10: classify these photos", nargs="+", metavar="PHOTO")
    model_dir: str = setting(None, "lesson 10: the folder of an earlier run, for --predict")
    output_dir: str = setting(None, "folder for this run; none: a new runs/<date-time>")
    no_show: bool = setting(False, "save the pictures without showing them")
    no_cache: bool = setting(False, "compute the features afresh, and keep none for the next run")
    features_with: str = setting("auto", "keras, litert, or auto: litert on a CPU (faster there)")

def run_lesson(s, run_dir, results):
    """The table of contents: a step per function, below in this order; results: metrics.json."""
    print(f"Running on the {device()}.")  # the GPU if TensorFlow finds one
    step("1. Data")  # prints the step's title
    if s.data_dir:  # your own photos, from class folders or a labels.csv (appendix C)
        splits, classes, results["skipped_files"] = load_photos(s)
    else:
        splits, classes = load_cifar10_cats_and_dogs()
    splits = carve_missing_splits(splits, s.validation_split, s.seed)
    splits = sample(splits, s.max_images, s.seed)  # --max-images: a quick look (appendix A)
    results.update(classes=classes, **count_images(splits, classes))  # prints them per class
    if s.data_dir:  # copies of training photos among the test photos flatter it (appendix C)
        results["copies_across_splits"] = find_copies_across_splits(splits)
    datasets = {}  # tf.data pipelines that read and resize each split's images as needed
    for name, split in splits.items():
        datasets[name] = make_dataset(split.x, split.y, s.image_size)
    show_data(splits["train"], classes, s.image_size, os.path.join(run_dir, "data.png"))
    step("2. Model")
    module = load_module(s.model_handle, s.image_size)  # hub.load(), with clear errors
    model, extractor, head = build_model(module, s.image_size, len(classes), s.dropout)
    step("3. Bottleneck features")  # the 1280 numbers the frozen base boils each image down to
    # with_speed_ups (appendix B) swaps in a stand-in extractor that gives the same numbers sooner:
    # those an earlier run kept of these images, or the base's, run by LiteRT on a CPU.
    extractor = with_speed_ups(extractor, datasets, splits, s, results)
    features = compute_features(extractor, datasets, splits)
    step("4. Training the head")
    history, measured = train_head(head, features, splits, len(classes), s)
    results.update(measured)
    step("5. Evaluation")
    evaluated, measured = evaluate(head, features["test"], splits["test"], classes)
    results.update(measured)
    step("6. Plots")
    plot_results([history], evaluated, splits["test"], classes, s.image_size, run_dir)
    step("7. Export")
    results["export_check"] = export_model(model, classes, splits["test"], evaluated, s.image_size,
                                           run_dir)
    # After the lesson: 8 and 10 when asked for; every run reads its results (9), and what next (11)
    if s.fine_tune_epochs or s.augment:
        model, evaluated = train_on_images(model, history, evaluated, splits, datasets, classes,
                                           s, run_dir, results)
    results.update(read_the_results(model, evaluated, splits["test"], classes, s.image_size,
                                    run_dir))
    if s.tflite:
        results.update(export_tflite(model, splits["test"], evaluated, s.image_size, run_dir))
    print_what_to_try_next(s, results["output_dir"])

# 1. Data --------------------------------------------------------------------------------------
# Three splits. Training images teach the head. Validation images pick the best epoch (an epoch:
# one pass over the training images). Test images, unseen until step 5, test it on new photos.
Split = collections.namedtuple("Split", "x y names")  # images (pixels or files), classes, names

def load_cifar10_cats_and_dogs():
    """CIFAR-10's 32x32 photos of cats and dogs: 10000 for training, 2000 for testing."""
    splits = {}
    for name, (x, y) in zip(["train", "test"], download_cifar10()):  # 160 MB, once
        y = y.flatten()  # Keras gives the labels as a column: [[3], [5], ...]
        keep = np.flatnonzero((y == 3) | (y == 5))  # CIFAR-10's class numbers for cat and dog
        names = np.array([f"CIFAR-10 {name} image {i}" for i in keep])
        splits[name] = Split(x[keep], (y[keep] == 5).astype(np.int64), names)  # cat 0, dog 1
    return splits, ["cat", "dog"]

def carve_missing_splits(splits, fraction, seed):
    """A split missing (CIFAR-10 has no validation) is carved out of training, a share per class."""
    missing = [name for name in ("validation", "test") if name not in splits]
    parts = carve(splits["train"], fraction, seed, parts=len(missing))  # [what is left, carved...]
    for name, part in zip(["train"] + missing, parts):
        splits[name] = part
    return {name: splits[name] for name in ("train", "validation", "test")}

def make_dataset(x, y, image_size, batch_size=PREDICT_BATCH, shuffle_seed=None):
    """Batches of (images, labels). tf.data reads and resizes each image only when it is needed, as
    12000 upscaled images would fill 7 GB; prefetch readies the next batch meanwhile."""
    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle_seed is not None:  # a new order every epoch, to train on the images (lesson 8)
        dataset = dataset.shuffle(len(y), seed=shuffle_seed)
    dataset = dataset.map(read_if_photos(x, image_size),  # photos from files; CIFAR's pixels as is
                          num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.map(lambda image, label: (scale_and_resize(image, image_size), label),
                          num_parallel_calls=tf.data.AUTOTUNE)  # AUTOTUNE: on as many cores
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)

def scale_and_resize(images, image_size):
    """Pixels from 0-255 to 0-1, the range TF Hub's image modules expect, and image_size square.
    MobileNetV2 learned on 224x224 photos: upscaled, CIFAR's show it things at a size it knows."""
    images = tf.image.convert_image_dtype(images, tf.float32)  # divides by 255
    # antialias=True: a photo shrunk averages its pixels instead of skipping most of them
    images = tf.image.resize(images, (image_size, image_size), antialias=True)
    return tf.clip_by_value(images, 0.0, 1.0)  # resizing can overshoot, to 1.0000002 say

def show_data(train, classes, size, path):
    """Look before training: 2 images per class (8 classes at most), as stored and as received."""
    rows = min(8, len(classes))
    fig, axes = plt.subplots(rows, 4, figsize=(11, 2.8 * rows), squeeze=False, layout="constrained",
                             subplot_kw=dict(xticks=[], yticks=[]))
    for label in range(rows):
        for k, i in enumerate(np.flatnonzero(train.y == label)[:2]):
            stored = stored_image(train.x[i], size)  # CIFAR's pixels, or a photo's
            received = scale_and_resize(stored, size).numpy()
            axes[label, 2 * k].imshow(stored, interpolation="nearest")  # every stored pixel shows
            axes[label, 2 * k].set_title(f"{classes[label]}: {stored.shape[1]}x{stored.shape[0]}")
            axes[label, 2 * k + 1].imshow(received)
            axes[label, 2 * k + 1].set_title(f"as the network gets it: {size}x{size}")
    save_and_show(fig, path)  # shown now in a notebook, at the end in a window
    print(f"The base gets batches of shape {(PREDICT_BATCH, *received.shape)}: images, height, "
          f"width, colours; values from 0 (black) to 1 (white), here {received.max():.2f} at most.")

# 2. Model -------------------------------------------------------------------------------------
def build_model(module, image_size, num_classes, dropout):
    """The frozen base under a new head, wired as three Keras models that share their layers:
    model      images -> MobileNetV2 -> Dropout -> Dense: what we export (step 7)
    extractor  images -> MobileNetV2 -> features: run once per image (step 3)
    head       features -> Dropout -> Dense: what we train and test (steps 4 and 5)"""
    # trainable=False: the base keeps what ImageNet taught it, whatever we train.
    base = hub.KerasLayer(module, trainable=False, name="mobilenet_v2")
    # A layer turns its input into an output using weights, numbers it can learn. Calling a layer on
    # an input, as in base(images), wires it in; a Keras model runs the wired layers from its Input
    # to its output. The three models call the same layer objects, so they share the same weights:
    # when head learns, model learns too.
    images = tf.keras.Input(shape=(image_size, image_size, 3), name="images")
    features = base(images)
    # Dropout hides random features at each training step, so that the head cannot lean on a few
    # of them: a guard against overfitting, memorising the training images instead of learning.
    drop = tf.keras.layers.Dropout(dropout, name="dropout")
    # Dense scores each class by a weighted sum of the features; softmax makes scores probabilities.
    classify = tf.keras.layers.Dense(num_classes, activation="softmax", name="classifier")
    model = tf.keras.Model(images, classify(drop(features)), name="classifier_model")
    extractor = tf.keras.Model(images, features, name="feature_extractor")
    feature_input = tf.keras.Input(shape=features.shape[1:], name="features")
    head = tf.keras.Model(feature_input, classify(drop(feature_input)), name="head")
    model.summary()  # millions of frozen weights, a few thousand trainable ones on top
    return model, extractor, head

# 3. Bottleneck features -----------------------------------------------------------------------
# The central idea. The "bottleneck" is the base's last layer: the 1280 numbers it boils an image
# down to. Frozen, the base gives an image the same numbers every time, so we run it once per image
# and train the head on the numbers: seconds per epoch instead of minutes.
def compute_features(extractor, datasets, splits):
    """{split: features}: each image through the frozen base once, one row of numbers per image."""
    features = {}
    for name, images in datasets.items():
        progress = show_progress(name, len(splits[name].y))  # prints how many images are done
        features[name] = extractor.predict(images, verbose=0, callbacks=[progress])
        print(f"{name:>10}: features of shape {features[name].shape}")
    print(f"Each image is now {features['train'].shape[1]} numbers, each telling how strongly a "
          "pattern MobileNetV2 learned to see (fur, an eye, a wheel...) shows in it.")
    return features

# 4. Training the head -------------------------------------------------------------------------
def train_head(head, features, splits, num_classes, s):
    """The head learns the classes from the features: s.epochs passes over them, shuffled."""
    training = tf.data.Dataset.from_tensor_slices((features["train"], splits["train"].y))
    training = training.shuffle(len(features["train"]), seed=s.seed).batch(s.batch_size)
    validation = (features["validation"], splits["validation"].y)
    compile_for_training(head, s.learning_rate)  # how the head learns, and its loss: below
    before = head.evaluate(*validation, verbose=0, return_dict=True)["accuracy"]
    print(f"Validation accuracy before training: {before:.3f} (chance: {1 / num_classes:.3f}).\n"
          "Each epoch: loss and accuracy on the training features, then on validation (val_).")
    history, best = fit_keeping_the_best_epoch(head, training, validation, s.epochs)
    return history, dict(accuracy_before_training=before, **best)

def compile_for_training(model, learning_rate):
    """Adam nudges the weights to lower the loss, in steps as large as the learning rate. The loss
    is the mean of -log(probability given to the true class): 0 when sure and right, large when
    sure and wrong. "Sparse" cross-entropy takes labels as numbers (0, 1), not as [1, 0] rows."""
    model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])

def fit_keeping_the_best_epoch(model, training, validation, epochs):
    """model.fit, then back to the epoch with the lowest validation loss. Loss, not accuracy: it
    also falls as the model grows surer of its right answers, so epochs rarely tie. Not the test
    loss: test images stay unseen. ModelCheckpoint saves each epoch better than all before it."""
    with tempfile.TemporaryDirectory() as folder:
        best_file = os.path.join(folder, "best.weights.h5")
        save_best = tf.keras.callbacks.ModelCheckpoint(best_file, monitor="val_loss",
                                                       save_best_only=True, save_weights_only=True)
        history = model.fit(training, validation_data=validation, epochs=epochs,
                            callbacks=[save_best], verbose=1 if sys.stdout.isatty() else 2).history
        model.load_weights(best_file)
    best = int(np.argmin(history["val_loss"]))  # argmin: where the lowest value is
    print(f"Kept epoch {best + 1}: training accuracy {history['accuracy'][best]:.3f}, validation "
          f"{history['val_accuracy'][best]:.3f}. Training far above validation would mean "
          "overfitting. A little below is normal: Keras measures it while dropout hides features.")
    return history, dict(kept_epoch=best + 1, train_accuracy=history["accuracy"][best],
                         val_accuracy=history["val_accuracy"][best])

# 5. Evaluation --------------------------------------------------------------------------------
def evaluate(classifier, inputs, test, classes):
    """The classifier's accuracy and loss on the test images, per class, and what it confuses."""
    probabilities = classifier.predict(inputs, verbose=0)
    labels, predicted = test.y, probabilities.argmax(axis=1)
    loss = float(np.mean(tf.keras.losses.sparse_categorical_crossentropy(labels, probabilities)))
    accuracy = np.mean(predicted == labels)
    print(f"Test accuracy {accuracy:.4f} on {len(labels)} images, loss {loss:.4f}.")
    confusion = tf.math.confusion_matrix(labels, predicted, num_classes=len(classes)).numpy()
    per_class = {}
    for label, name in enumerate(classes):
        per_class[name] = float(confusion[label, label] / max(1, confusion[label].sum()))
        print(f"{name:>10}: {per_class[name]:.3f} of {confusion[label].sum()} right")
    print(f"Confusion matrix (rows: true class, columns: predicted):\n{confusion}")
    measured = dict(test_accuracy=float(accuracy), test_loss=loss, per_class_accuracy=per_class,
                    confusion_matrix=confusion.tolist())
    return dict(probabilities=probabilities, confusion=confusion), measured

# 6. Plots -------------------------------------------------------------------------------------
def plot_results(histories, evaluated, test_split, classes, image_size, run_dir):
    """history.png: loss and accuracy per epoch (validation falling behind training: overfitting);
    confusion_matrix.png; predictions.png: 16 test images. The drawing is in appendix A."""
    plot_history(histories, os.path.join(run_dir, "history.png"))  # the head's (and lesson 8's)
    plot_confusion_matrix(evaluated["confusion"], classes,
                          os.path.join(run_dir, "confusion_matrix.png"))
    # 16 test images, right and wrong ones of every class, resized as the network gets them
    images, labels, probabilities = examples(test_split, evaluated["probabilities"], 16, image_size)
    plot_predictions(images, labels, probabilities, classes,
                     os.path.join(run_dir, "predictions.png"))

# 7. Export ------------------------------------------------------------------------------------
def export_model(model, classes, test_split, evaluated, image_size, run_dir):
    """Save model/, a SavedModel (TensorFlow's format for a model's weights and functions). Its
    serve() takes photos as they come, resizes them as training did, and returns a probability per
    class, in labels.txt's order. Reloaded, it must give 8 test images the same probabilities."""
    def serve(images):  # photos as they come: any number, any size, RGB 0-255
        return model(scale_and_resize(images, image_size))
    save_with_serve(model, serve, os.path.join(run_dir, "model"))  # Keras' ExportArchive, app. A
    with open(os.path.join(run_dir, "labels.txt"), "w", encoding="utf-8") as f:
        f.write("".join(name + "\n" for name in classes))
    return check_export(run_dir, test_split, evaluated["probabilities"], image_size)

# == The lesson, steps 1-7, ends here. After it: 8 and 10 when asked for; 9 and 11 every run. ==

# 8. Training on the images themselves: fine-tuning and augmentation ---------------------------
def train_on_images(model, history, evaluated, splits, datasets, classes, s, run_dir, results):
    """The other half of transfer learning: training on the images themselves, so the base runs on
    every image in every epoch: minutes, not seconds. --augment shows new variants of each photo
    every epoch (the base stays frozen); --fine-tune-epochs unfreezes the base too, so that the
    gradients (how the loss changes as each weight changes) move all its weights a little, at a
    rate far below the head's: a few thousand images must not overwrite what ImageNet taught. If
    the head alone did better on the validation images, its weights come back."""
    step("8. Fine-tuning" if s.fine_tune_epochs else "8. Training on augmented images")
    weights_before = [(weight, weight.numpy()) for weight in model.weights]  # to give back
    head_alone = {key: results[key] for key in ("kept_epoch", "train_accuracy", "val_accuracy",
                                                "test_accuracy", "test_loss")}
    # Gradients need every layer's output for each image in a batch: 6 GB for 64 images, 3 for 16.
    batch_size = min(16, s.batch_size) if s.fine_tune_epochs else s.batch_size
    images = make_dataset(splits["train"].x, splits["train"].y, s.image_size, batch_size,
                          shuffle_seed=s.seed)
    if s.augment:  # new variants of every photo in every epoch: flipped, turned, zoomed
        augment = tf.keras.Sequential([tf.keras.layers.RandomFlip("horizontal"),
                                       tf.keras.layers.RandomRotation(0.05),
                                       tf.keras.layers.RandomZoom(0.1)])
        images = images.map(lambda x, y: (augment(x, training=True), y))
    learning_rate, epochs = s.learning_rate, s.epochs  # --augment alone: the base stays frozen
    if s.fine_tune_epochs:
        epochs, learning_rate = s.fine_tune_epochs, fine_tuning_rate(s, batch_size, len(images))
        model = unfreeze(model)
    compile_for_training(model, learning_rate)
    image_history, best = fit_keeping_the_best_epoch(model, images, datasets["validation"], epochs)
    better = min(image_history["val_loss"]) < min(history["val_loss"])
    results["fine_tuning_kept" if s.fine_tune_epochs else "augmented_training_kept"] = better
    if not better:
        for weight, value in weights_before:  # the same variables: unfreeze() shares the layers
            weight.assign(value)
        print("The head alone did better on the validation images: its weights come back. The "
              "head-only model is saved.")
        return model, evaluated
    step("8. Evaluation, plots and export again")  # steps 5 to 7 for the model trained on images
    evaluated, measured = evaluate(model, datasets["test"], splits["test"], classes)
    print(f"Test accuracy: {head_alone['test_accuracy']:.4f} with the head alone, "
          f"{measured['test_accuracy']:.4f} after training on the images. The "
          f"{'fine-tuned' if s.fine_tune_epochs else 'newly trained'} model is saved.")
    results.update(measured, **best, head_alone=head_alone)
    plot_results([history, image_history], evaluated, splits["test"], classes, s.image_size,
                 run_dir)
    results["export_check"] = export_model(model, classes, splits["test"], evaluated,
                                           s.image_size, run_dir)
    return model, evaluated

def fine_tuning_rate(s, batch_size, batches_per_epoch):
    """Fine-tuning's rate, batch by batch. Smaller batches give noisier gradients, so smaller steps:
    the peak is --fine-tune-learning-rate times sqrt(16 / 64), that is, halved (an average of n
    gradients is 1 / sqrt(n) as noisy). The rate climbs from 0 to the peak over the first tenth of
    the batches, then falls back to 0 along a cosine curve; starting at the peak, the fine-tuned
    model fell below the frozen one (we tried)."""
    peak = s.fine_tune_learning_rate * (batch_size / s.batch_size) ** 0.5
    print(f"Fine-tuning in batches of {batch_size} images; the rate peaks at {peak:.2g}.")
    steps = s.fine_tune_epochs * batches_per_epoch
    return tf.keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0, warmup_target=peak, warmup_steps=steps // 10,
        decay_steps=steps - steps // 10)

def unfreeze(model):
    """The same layers, the base now trainable, in a model that runs it with training=False: the
    base's BatchNorm layers keep each layer's outputs in a steady range with averages learned on
    ImageNet, which training=True would swap for our few images' own, wrecking the features."""
    base = model.get_layer("mobilenet_v2")
    base.trainable = True  # compile(), next, takes note of what is trainable
    images = tf.keras.Input(shape=model.input_shape[1:], name="images")
    features = base(images, training=False)
    outputs = model.get_layer("classifier")(model.get_layer("dropout")(features))
    return tf.keras.Model(images, outputs, name="classifier_model")

# 9. Reading the results: how sure, which mistakes, where it looks -----------------------------
def read_the_results(model, evaluated, split, classes, image_size, run_dir):
    """How far off is the accuracy? Which images are wrong, how sure? Where is it looking?"""
    step("9. Reading the results")
    probabilities = evaluated["probabilities"]
    low, high = accuracy_interval(probabilities.argmax(axis=1), split.y)
    print(f"On other test images the accuracy would likely be between {low:.3f} and {high:.3f} "
          "(a 95% interval). To compare two models, test both on the same images and look at those "
          "only one of them gets right: the better should win clearly more than half of these.")
    write_predictions(split, probabilities, classes, os.path.join(run_dir, "predictions.csv"))
    images, labels, shown = examples(split, probabilities, 8, image_size)
    plot_where_it_looks(model, images, labels, shown, classes,
                        os.path.join(run_dir, "where_it_looks.png"))
    return dict(test_accuracy_95=[low, high])

def accuracy_interval(predicted, labels, z=1.96):
    """An accuracy p on n test images is a sample; others would give another. Wilson's 95% interval,
    where it likely lies: about p +- 1.96 sqrt(p (1 - p) / n), but right for small n too."""
    n, p = len(labels), np.mean(predicted == labels)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, float(centre - half)), min(1.0, float(centre + half))

def write_predictions(test, probabilities, classes, path):
    """predictions.csv: every test image, wrong ones first, the most confident mistakes on top."""
    _, labels, names = test
    predicted, confidence = probabilities.argmax(axis=1), probabilities.max(axis=1)
    order = sorted(range(len(labels)), key=lambda i: (predicted[i] == labels[i], -confidence[i]))
    with open(path, "w", newline="", encoding="utf-8") as f:
        rows = csv.writer(f)
        rows.writerow(["file", "true_class", "predicted_class", "confidence"])
        for i in order:
            row = [names[i], classes[labels[i]], classes[predicted[i]], f"{confidence[i]:.4f}"]
            rows.writerow(row)
    worst = [f"{names[i]} ({classes[labels[i]]}, taken for {classes[predicted[i]]} "
             f"{confidence[i]:.0%})" for i in order[:3] if predicted[i] != labels[i]]
    print("Most confident mistakes (all in predictions.csv): " + ("; ".join(worst) or "none"))

def plot_where_it_looks(model, images, labels, probabilities, classes, path):
    """Each image under its occlusion map (below), all on one colour scale, with a colour bar."""
    maps = occlusion_maps(model, images)
    fig, axes = plot_predictions(images, labels, probabilities, classes)
    # One scale for all, never finer than +-0.1: tiny, random changes stay pale, not alarming.
    limit = max(0.1, float(np.abs(maps).max()))
    for ax, image, change in zip(axes.flat, images, maps):
        edge = image.shape[0] - 0.5
        shown = ax.imshow(change, cmap="bwr", vmin=-limit, vmax=limit, alpha=0.5,
                          extent=(-0.5, edge, edge, -0.5), interpolation="bilinear")
        ax.set_title(f"{ax.get_title()}\nlargest drop {max(0.0, float(change.max())):.2f}",
                     color=ax.title.get_color(), fontsize=9)
    fig.colorbar(shown, ax=axes, shrink=0.7, label="drop in probability when that part is hidden")
    fig.suptitle("Where it looks: red where hiding a patch lowers the predicted class's "
                 "probability,\nblue where it raises it, white where it changes nothing")
    save_and_show(fig, path)

def occlusion_maps(model, images, grid=4):
    """[image, row, column]: the drop in each image's predicted-class probability when a grey patch,
    1/4 of the side, hides that part (Zeiler and Fergus, 2014): the animal, or the grass?"""
    patch, before = images.shape[1] // grid, model(images, training=False).numpy()
    maps = np.zeros((len(images), grid, grid), np.float32)
    for row in range(grid):
        for col in range(grid):
            hidden = images.copy()
            hidden[:, row * patch:(row + 1) * patch, col * patch:(col + 1) * patch] = 0.5
            after = model(hidden, training=False).numpy()
            for i, predicted in enumerate(before.argmax(axis=1)):
                maps[i, row, col] = before[i, predicted] - after[i, predicted]
    return maps

# 10. The model at work: a model for phones, and new photos ------------------------------------
def export_tflite(model, test_split, evaluated, image_size, run_dir):
    """model.tflite, for phones, checked with LiteRT, TensorFlow's runtime for phones."""
    step("10. A model for phones")
    tflite = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    with open(os.path.join(run_dir, "model.tflite"), "wb") as f:
        f.write(tflite)
    # A signature runner: the model as a function, named inputs in, a dict of named outputs out.
    run = litert_interpreter(tflite).get_signature_runner()  # LiteRT, quietly (appendix B)
    images, _, probabilities = examples(test_split, evaluated["probabilities"], 8, image_size)
    outputs = np.array([run(images=image[None])["classifier"][0] for image in images])
    same = outputs.argmax(axis=1) == probabilities.argmax(axis=1)
    largest = float(np.abs(outputs - probabilities).max())
    print(f"model.tflite: {len(tflite) / 1e6:.1f} MB, the same class as the trained model for "
          f"{sum(same)} of {len(same)} test images, probabilities within {largest:.1e}.")
    return dict(tflite_agreement=float(np.mean(same)), tflite_largest_difference=largest)

def predict_photos(paths, run_dir):
    """--predict: a line for each photo, or photo in a folder, from a saved run's model/."""
    model, classes, image_size = load_exported_run(run_dir)
    status = 0
    for path, pixels in photos_to_predict(paths, image_size):  # None: not a photo it can read
        if pixels is None:
            status = 2
            continue
        p = model.serve(pixels[None]).numpy()[0]  # [None]: a batch of one photo
        likeliest = np.argsort(-p)[:1 if len(classes) == 2 else 3]  # -p: the most probable first
        print(f"{path}: " + ", ".join(f"{classes[i]} {p[i]:.1%}" for i in likeliest))
    return status

# 11. What to try next -------------------------------------------------------------------------
def print_what_to_try_next(s, output_dir):
    """Commands on this run's data and base: with the flags that shaped its features."""
    run, shaped = "python transfer_learning.py", ["data_dir", "max_images", "validation_split",
                                                  "seed", "model_handle", "image_size"]
    for name in shaped:
        if getattr(s, name) != getattr(Settings(), name):  # a flag that shaped the features
            run += f" --{name.replace('_', '-')} {shlex.quote(str(getattr(s, name)))}"
    kept = "once a run without --no-cache has kept the features, " if s.no_cache else ""
    print(f"\nWhat to try next:\n  {run} --dropout 0.5 --epochs 20\n"
          f"      Only the head changes, so {kept}a run reads the features back: seconds.")
    if not s.data_dir:
        print("  python transfer_learning.py --data-dir DIR    (DIR/cat/*.jpg, DIR/dog/*.jpg)\n"
              "      Your own photos: a few hundred real ones per class often reach 0.95 or more.")
    print(f"""  {run} --fine-tune-epochs 2 --augment
      Adapts MobileNetV2 itself to your classes, running it on every image in every epoch:
      minutes where the head took seconds (CIFAR: 0.88, not 0.79; 5 minutes an epoch on a CPU).
  python transfer_learning.py --predict photo.jpg --model-dir {shlex.quote(output_dir)}
      Classifies new photos with this run's model.""")

# ==============================================================================================
# THE LESSONS END HERE. Below, the appendix: machinery that makes the script a robust tool, not
# needed to learn. A. The lesson's helpers. B. Speed-ups. C. Your own photos. D. main() and more.

# A. The lesson's helpers: the device, checks with clear errors, plots, progress ----------------
# Each helper here does what its name says, and stops bad input with one clear line (fail(), D).
def device():
    return "GPU" if tf.config.list_physical_devices("GPU") else "CPU"  # TensorFlow picks a GPU

def subset(split, indices):
    return Split(split.x[indices], split.y[indices], split.names[indices])

def stored_image(x, image_size):
    return read_photo(x, image_size) if isinstance(x, str) else x  # CIFAR's pixels, or a photo

STEPS = []  # (name, start time) of each step, for metrics.json

def step(name):
    print(f"\n== {name} ==")
    STEPS.append((name, time.perf_counter()))

def download_cifar10():
    try:
        return tf.keras.datasets.cifar10.load_data()
    except Exception as e:
        fail(f"could not download CIFAR-10 ({type(e).__name__}); offline, use --data-dir DIR")

def carve(split, fraction, seed, parts=1):
    """[rest, part 1, ...]: each part gets the fraction of each class (at least one image), at
    random: "stratified", every class keeps its share. The same seed carves the same images."""
    labels, rng = split.y, np.random.default_rng(seed)
    part = np.zeros(len(labels), dtype=int)  # 0: the rest; 1, 2, ...: carved into that part
    for label in np.unique(labels):
        of_class = rng.permutation(np.flatnonzero(labels == label))  # this class's, shuffled
        size = max(1, round(len(of_class) * fraction))
        for k in range(1, parts + 1):
            part[of_class[(k - 1) * size:k * size]] = k
    return [subset(split, part == k) for k in range(parts + 1)]

def sample(splits, max_images, seed):
    """--max-images N: about N images of each split, each class keeping its share."""
    classes = len(np.unique(splits["train"].y))
    if max_images is not None and max_images < classes:
        fail(f"--max-images {max_images} is fewer than the {classes} classes: give {classes}+")
    for name, split in splits.items():
        if max_images and len(split.y) > max_images:
            _, splits[name] = carve(split, max_images / len(split.y), seed)  # keep the carved
    return splits

def count_images(splits, classes):
    """Print each split's images per class: a class with few images is learned badly."""
    for name, (_, y, _) in splits.items():
        per_class = [f"{np.sum(y == label)} {c}" for label, c in enumerate(classes)]
        print(f"{name:>10}: {len(y):5d} images ({', '.join(per_class)})")
    return {f"num_{name}": len(split.y) for name, split in splits.items()}

def load_module(handle, image_size):
    """hub.load(handle), or one line saying why the module cannot be used."""
    try:
        module = hub.load(handle)
    except Exception as e:
        fail(why_the_module_cannot_load(handle, type(e).__name__))
    try:
        features = module(tf.zeros([1, image_size, image_size, 3])).numpy()
    except Exception:
        fail(f"the module {handle} does not take {image_size}-pixel images; set --image-size")
    if features.ndim != 2 or features.shape[1] in (1000, 1001) or np.allclose(features.sum(1), 1):
        fail(f"the module {handle} returns {features.shape}: a feature map or class scores, not a "
             f"feature vector; use a feature-vector module such as {DEFAULT_HANDLE}")
    return module

def why_the_module_cannot_load(handle, error):
    if "://" not in handle:
        return f"cannot load --model-handle {handle} ({error}); give a TF2 SavedModel's folder"
    cached = os.path.join(hub.resolver.tfhub_cache_dir(use_temp=True),
                          hashlib.sha1(handle.encode("utf8")).hexdigest())
    if os.path.isdir(cached):  # TF Hub never downloads a handle again while its folder exists
        return (f"TF Hub's copy of {handle} in {cached} cannot be loaded ({error}); a download was "
                "probably cut short: delete that folder and run again")
    return (f"cannot load --model-handle {handle} ({error}); offline, give a local SavedModel "
            "folder or place the module in $TFHUB_CACHE_DIR, and use --data-dir, not CIFAR-10")

FIGURES = {}  # this run's pictures, by file

def save_and_show(fig, path):
    """Save; show it now in a notebook, at the end in a window; a picture redrawn replaces."""
    fig.savefig(path)
    if "inline" in plt.get_backend():  # a notebook: shown under the cell, updated when redrawn
        from IPython.display import display, update_display
        (update_display if path in FIGURES else display)(fig, display_id=path)
        plt.close(fig)
    elif path in FIGURES:
        plt.close(FIGURES[path])  # the window shown at the end is the final picture's
    FIGURES[path] = fig

def plot_history(histories, path):
    """Loss and accuracy per epoch; a star marks the epoch kept, where lesson 8 starts."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    start = 0
    for phase, history in zip(["head", "images"], histories):
        epochs = start + np.arange(1, len(history["loss"]) + 1)
        kept = np.argmin(history["val_loss"])
        for ax, metric in zip(axes, ["loss", "accuracy"]):
            ax.plot(epochs, history[metric], "o-", label=f"{phase}: training")
            ax.plot(epochs, history["val_" + metric], "o-", label=f"{phase}: validation")
            ax.plot(epochs[kept], history["val_" + metric][kept], "k*", markersize=14)
            ax.set(title=metric.capitalize(), xlabel="epoch (star: the one kept)")
            ax.legend()
        start = epochs[kept]
    save_and_show(fig, path)

def plot_confusion_matrix(confusion, classes, path):
    size = 2 + 0.5 * len(classes) + 0.07 * max(map(len, classes))  # room for long class names
    fig, ax = plt.subplots(figsize=(size, size), layout="constrained")
    ax.imshow(confusion, cmap="Blues", vmin=0)
    for (row, col), count in np.ndenumerate(confusion):
        ax.text(col, row, count, ha="center", va="center",
                color="white" if count > confusion.max() / 2 else "black")
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xticklabels=classes,
           yticklabels=classes, xlabel="predicted", ylabel="true", title="Test confusion matrix")
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right", rotation_mode="anchor")
    save_and_show(fig, path)

def examples(split, probabilities, count, image_size):
    """Up to count test images, resized as the network gets them, their labels and probabilities."""
    picks = pick_examples(split.y, probabilities.argmax(axis=1), count)
    x, labels, _ = subset(split, picks)
    images = next(iter(make_dataset(x, labels, image_size, batch_size=count)))[0].numpy()
    return images, labels, probabilities[picks]

def pick_examples(labels, predicted, count):
    """Up to count test images to show: wrong and right ones of every class, taken in turn."""
    groups = []  # the wrong ones of each class, then the right ones
    for right in (False, True):
        for label in np.unique(labels):
            groups.append(np.flatnonzero((labels == label) & ((predicted == labels) == right)))
    turns = sorted((k, g, i) for g, group in enumerate(groups) for k, i in enumerate(group))
    return [i for _, _, i in turns[:count]]  # the first of each group, then the second, ...

def plot_predictions(images, labels, probabilities, classes, path=None):
    """Test images, each titled with the predicted class and its probability: green if right."""
    rows = int(np.ceil(len(images) / 4))
    fig, axes = plt.subplots(rows, 4, figsize=(11, 3 * rows), squeeze=False, layout="constrained",
                             subplot_kw=dict(xticks=[], yticks=[]))
    for ax, image, label, p in zip(axes.flat, images, labels, probabilities):
        ax.imshow(image)
        ax.set_title(f"{classes[p.argmax()]} {p.max():.0%} (true: {classes[label]})", fontsize=9,
                     color="green" if p.argmax() == label else "red")
    if path:
        save_and_show(fig, path)
    return fig, axes

def save_with_serve(model, serve, folder):
    """The model's weights and serve(), a function for photos, in a SavedModel in folder."""
    archive = tf.keras.export.ExportArchive()
    archive.track(model)  # the archive saves the weights of what it tracks
    # An endpoint is a function the saved model offers; a TensorSpec, the shape and type it takes.
    archive.add_endpoint("serve", serve, [tf.TensorSpec([None, None, None, 3], tf.uint8)])
    tf.keras.utils.disable_interactive_logging()  # without Keras' list of every weight
    try:
        archive.write_out(folder)
    finally:
        tf.keras.utils.enable_interactive_logging()

def check_export(run_dir, test, probabilities, image_size):
    """Reload model/ and classify the first test images with it, as stored, as --predict does."""
    reloaded, count = tf.saved_model.load(os.path.join(run_dir, "model")), min(8, len(test.y))
    again = np.array([reloaded.serve(stored_image(test.x[i], image_size)[None]).numpy()[0]
                      for i in range(count)])  # one by one: photos come in all sizes
    same = int(np.sum(again.argmax(axis=1) == probabilities[:count].argmax(axis=1)))
    largest = float(np.abs(again - probabilities[:count]).max())
    tolerance = 1e-2 if device() == "GPU" else 1e-3  # float rounding; TF32 on a GPU
    passed = same == count and largest <= tolerance
    print(f"Reloaded model/: the same class for {same} of {count} test images, probabilities "
          f"within {largest:.1e}.")
    if not passed:
        print(f"warning: the exported model differs from the trained one by more than {tolerance}"
              " (see export_check in metrics.json); the run is kept", file=sys.stderr)
    return dict(images=count, same_class=same / count, passed=passed, tolerance=tolerance,
                largest_difference=largest)

def show_progress(name, count):
    """A Keras callback printing images done: on a terminal twice a second, else each tenth."""
    start, terminal, last = time.perf_counter(), sys.stdout.isatty(), dict(time=0.0, tenth=0)
    def report(batch, logs):
        done, now = min((batch + 1) * PREDICT_BATCH, count), time.perf_counter()
        line = f"{name:>10}: {done}/{count} images, {done / (now - start):.0f} images/s"
        if terminal and (now - last["time"] >= 0.5 or done == count):  # "\r": to the line's start
            print("\r" + line, end="\n" if done == count else "", flush=True)
            last["time"] = now
        elif not terminal and done * 10 // count > last["tenth"]:  # a new tenth
            print(line, flush=True)
            last["tenth"] = done * 10 // count
    return tf.keras.callbacks.LambdaCallback(on_predict_batch_end=report)

# B. Speed-ups: features kept on disk, and LiteRT for the feature pass on a CPU -----------------
# The same numbers as step 3, sooner: kept in a file named by a hash of the module, the image size
# and the images (a photo's path, size and time), the 20 used last; LiteRT's equal Keras' to 2e-5.
def with_speed_ups(extractor, datasets, splits, s, results):
    """A stand-in for the extractor: its predict(), given a split's images, returns the features
    an earlier run kept of them, or computes them (LiteRT on a CPU), keeping all for next time."""
    path = feature_file(splits, s)
    kept = read_kept_features(path, extractor, splits["train"], s.image_size)
    runtime = None if kept is not None else choose_runtime(s, splits)
    results.update(features_file=path, features_from_cache=kept is not None, features_with=runtime)
    computer = litert_extractor(extractor) if runtime == "litert" else extractor
    computed = {}
    def predict(images, verbose=0, callbacks=()):
        name = next(name for name, dataset in datasets.items() if dataset is images)
        if kept is not None:
            return kept[name]
        computed[name] = computer.predict(images, verbose=verbose, callbacks=callbacks)
        if len(computed) == len(datasets):  # every split done: keep them for the next run
            keep_features(path, computed)
        return computed[name]
    return types.SimpleNamespace(predict=predict)

try:  # LiteRT, TensorFlow's runtime for phones, has no wheels for some platforms
    from ai_edge_litert.interpreter import Interpreter as LiteRT
except ImportError:
    LiteRT = None

def litert_interpreter(tflite):  # without its "INFO: Created ... delegate" line on stderr
    os.dup2(QUIET, 2)
    try:
        return (LiteRT or tf.lite.Interpreter)(model_content=tflite, num_threads=os.cpu_count())
    finally:
        os.dup2(REAL_STDERR, 2)

def choose_runtime(s, splits):
    """--features-with, where auto is litert on a CPU with enough images to repay converting."""
    runtime, count = s.features_with, sum(len(split.y) for split in splits.values())
    if runtime == "auto":
        runtime = "litert" if device() == "CPU" and count >= 1000 else "keras"
    if runtime == "litert" and LiteRT is None:
        print("warning: LiteRT is not installed (pip install ai-edge-litert); computing the "
              "features with Keras", file=sys.stderr)
        runtime = "keras"
    return runtime

def litert_extractor(extractor):  # a copy of the extractor whose predict() runs it in LiteRT
    spec = tf.TensorSpec(extractor.input_shape, tf.float32)
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [tf.function(extractor).get_concrete_function(spec)], extractor)
    converter.experimental_lower_to_saved_model = False  # weights as constants: 2 s, not 20 s
    interpreter = litert_interpreter(converter.convert())
    images_in = interpreter.get_input_details()[0]["index"]
    features_out = interpreter.get_output_details()[0]["index"]
    steady = tf.data.Options()
    steady.autotune.enabled = False  # with it, the end of a pass stalled 40 s, one run in two
    def predict(images, verbose=0, callbacks=()):
        features = []
        for k, (batch, _) in enumerate(images.with_options(steady)):
            interpreter.resize_tensor_input(images_in, batch.shape)
            interpreter.allocate_tensors()
            interpreter.set_tensor(images_in, batch.numpy())
            interpreter.invoke()
            features.append(interpreter.get_tensor(features_out))
            for callback in callbacks:
                callback.on_predict_batch_end(k, {})
        return np.concatenate(features)
    return types.SimpleNamespace(predict=predict)

def feature_file(splits, s):  # None with --no-cache
    if s.no_cache:
        return None
    key = hashlib.sha256(f"{s.model_handle} {s.image_size}".encode())
    files = []  # a local module's files: it may be rebuilt in place
    for folder, _, names in sorted(os.walk(s.model_handle)):
        files += [os.path.join(folder, name) for name in sorted(names)]
    for x in (split.x for split in splits.values()):
        key.update(np.ascontiguousarray(x).tobytes() if not isinstance(x[0], str) else b"")
        for path in files + (list(x) if isinstance(x[0], str) else []):
            key.update(f"{path} {os.path.getsize(path)} {os.stat(path).st_mtime_ns}".encode())
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "transfer_learning", key.hexdigest() + ".npz")

def read_kept_features(path, extractor, train, image_size):
    """An earlier run's features, if the code still computes the first 8 the same; or None."""
    if path is None or not os.path.exists(path):
        return None
    try:
        with np.load(path) as kept:
            features = {name: kept[name] for name in ("train", "validation", "test")}
    except Exception as e:  # cut short by a crash, or damaged
        print(f"warning: cannot read the features kept in {path} ({type(e).__name__}); "
              "computing them again", file=sys.stderr)
        return None
    first = subset(train, slice(0, 8))
    fresh = extractor.predict(make_dataset(first.x, first.y, image_size), verbose=0)
    if not np.allclose(fresh, features["train"][:8], rtol=1e-2, atol=1e-3):
        print(f"The features kept in {path} differ from what the code computes now (edited?): "
              "computing them afresh.")
        return None
    os.utime(path)  # used: kept longer
    print(f"Features read from {path}, computed by an earlier run on the same images.")
    return features

def keep_features(path, features):
    """Write, then rename: a run killed while writing leaves no half file under the real name."""
    if path is None:
        return
    try:
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        with open(f"{path}.{os.getpid()}.tmp", "wb") as f:
            np.savez(f, **features)
        os.replace(f"{path}.{os.getpid()}.tmp", path)
        kept = [os.path.join(folder, name) for name in os.listdir(folder) if name.endswith(".npz")]
        for old in sorted(kept, key=os.path.getmtime)[:-20]:
            os.remove(old)
    except OSError as e:
        print(f"warning: cannot keep the features in {path} ({e.strerror})", file=sys.stderr)

# C. Your own photos: class folders, a labels file, unreadable files, copies -------------------
# Photos as people have them: broken files skipped and named, phone photos upright, read small.
SPLIT_FOLDERS = {"train": ["train"], "validation": ["validation", "val", "valid"], "test": ["test"]}
MAX_PIXELS = 64_000_000  # more, decoded: skipped like a broken file (a "decompression bomb")
Image.MAX_IMAGE_PIXELS = None  # Pillow's own check counts a JPEG's pixels before draft()

def read_if_photos(x, image_size):
    """A tf.data step: CIFAR's pixels pass as they are; photos are read from their files."""
    return read_photo_op(x, image_size) if isinstance(x[0], str) else lambda *pair: pair

def read_photo(path, image_size):
    """A photo's RGB pixels, upright as its EXIF says (phones store portrait shots sideways); a
    JPEG decoded at its smallest scale (1/8, 1/4, 1/2, 1) keeping image_size: cheap for phones."""
    with Image.open(path) as photo:
        photo.draft("RGB", (image_size, image_size))
        if photo.width * photo.height > MAX_PIXELS:
            raise ValueError(f"{photo.width}x{photo.height} pixels: a decompression bomb?")
        photo = ImageOps.exif_transpose(photo)
        if photo.mode.startswith("I"):  # 16-bit greys, 0-65535: convert() would clip them at 255
            photo = Image.fromarray(np.uint8(np.clip(np.asarray(photo) // 256, 0, 255)))
        return np.asarray(photo.convert("RGB"))

def read_photo_op(paths, image_size):
    """read_photo for tf.data; TensorFlow decodes a plain JPEG itself, without Python's overhead."""
    plain = {path.encode() for path in paths if is_plain_jpeg(path, image_size)}
    def read(path, label):
        is_plain = tf.numpy_function(lambda p: np.asarray(p).item() in plain, [path], tf.bool)
        by_tensorflow = lambda: tf.io.decode_jpeg(tf.io.read_file(path), channels=3,
                                                  dct_method="INTEGER_ACCURATE")  # as Pillow
        by_pillow = lambda: tf.numpy_function(lambda p: read_photo(p.decode(), image_size),
                                              [path], tf.uint8)
        pixels = tf.cond(tf.reshape(is_plain, []), by_tensorflow, by_pillow)
        return tf.ensure_shape(pixels, [None, None, 3]), label
    return read

def is_plain_jpeg(path, image_size):
    """A JPEG that needs none of read_photo's care: RGB or grey, upright, too small for draft()."""
    photo = check_photo(path)
    return photo.plain_jpeg and photo.smaller_side < 2 * image_size

def load_photos(s):
    """Your photos' splits and classes, from class folders or labels.csv; unreadable files out."""
    if not os.path.isdir(s.data_dir):
        fail(f"--data-dir {s.data_dir} is not a folder; give a folder with a sub-folder per class")
    folders = {}  # {split: folder}, with split folders
    if os.path.isfile(os.path.join(s.data_dir, "labels.csv")):
        splits, classes = read_labels_csv(s.data_dir)
    else:
        folders = find_split_folders(s.data_dir)
        classes = visible(folders["train"])
        check_classes(folders["train"], classes)
        splits = {split: list_files(folder, classes) for split, folder in folders.items()}
    skipped = []
    check_photo.cache_clear()  # the photos may have changed since an earlier run in this Python
    for name, split in splits.items():
        readable = np.array([check_photo(path) is not None for path in split.x], dtype=bool)
        splits[name] = subset(split, readable)
        skipped += [os.fsencode(path).decode(errors="backslashreplace")
                    for path in split.x[~readable]]
    for split in ("validation", "test"):
        if split in folders and len(splits[split].y) == 0:
            fail(f"{folders[split]} has no readable images; add some or remove the folder")
    check_classes_can_be_split(splits, classes, s)
    if skipped:
        print(f"warning: skipped {len(skipped)} file(s) that are not images it can read (or over "
              f"{MAX_PIXELS // 10**6} megapixels): {', '.join(skipped[:5])}"
              f"{', ...' if len(skipped) > 5 else ''} (all in metrics.json)", file=sys.stderr)
    return splits, classes, skipped

def check_classes_can_be_split(splits, classes, s):
    """Each class must keep readable training images after each missing split takes its share."""
    carved = len([name for name in ("validation", "test") if name not in splits])
    for label, name in enumerate(classes):
        count = int(np.sum(splits["train"].y == label))
        if count - carved * max(1, round(count * s.validation_split)) < 1:
            fail(f"class {name} has {count} readable image(s) in {s.data_dir}, too few to keep any "
                 "for training; add images, or lower --validation-split")

def visible(folder, wanted=os.path.isdir):
    """The names in folder that are not hidden and pass wanted (by default: sub-folders)."""
    names = [name for name in os.listdir(folder) if not name.startswith(".")]
    return sorted(name for name in names if wanted(os.path.join(folder, name)))

def find_split_folders(data_dir):
    """{split: folder}: DIR/train/ and the other split folders, or DIR alone if it holds classes."""
    train = os.path.join(data_dir, "train")
    if not (os.path.isdir(train) and visible(train)):
        return {"train": data_dir}
    folders = {}
    for split, names in SPLIT_FOLDERS.items():
        found = [name for name in names if os.path.isdir(os.path.join(data_dir, name))]
        if found:
            folders[split] = os.path.join(data_dir, found[0])
    return folders

def check_classes(folder, classes):
    if classes and set(classes) <= {name for names in SPLIT_FOLDERS.values() for name in names}:
        fail(f"--data-dir {folder} holds only split folders ({', '.join(classes)}) and no "
             "labels.csv: put each class in a folder, DIR/train/<class>/*.jpg, or add labels.csv")
    if len(classes) < 2:
        fail(f"--data-dir {folder} has {len(classes)} class(es); a classifier needs at least 2, "
             "e.g. DIR/cat/*.jpg and DIR/dog/*.jpg")

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
    return Split(np.array(paths), np.array(labels, dtype=np.int64), np.array(paths))

def read_labels_csv(data_dir):
    """Kaggle's layout: photos in DIR/train/ (or DIR/); DIR/labels.csv, a header row or not, then a
    file name (the extension optional) and a class per row. A photo with two classes is left out."""
    folder = os.path.join(data_dir, "train")
    folder = folder if os.path.isdir(folder) else data_dir
    labels_csv = os.path.join(data_dir, "labels.csv")
    photos = {}  # by name, with and without the extension
    for name in visible(folder, os.path.isfile):
        if os.path.join(folder, name) != labels_csv:  # the photos may sit beside it
            photos[name] = photos[os.path.splitext(name)[0]] = os.path.join(folder, name)
    try:
        with open(labels_csv, newline="", encoding="utf-8-sig") as f:
            rows = [[cell.strip() for cell in row] for row in csv.reader(f) if len(row) >= 2]
    except (OSError, UnicodeError, csv.Error) as e:
        fail(f"cannot read {labels_csv} ({type(e).__name__}); save it as UTF-8 text: a header "
             "row, then a file name and a class per row")
    # The first row is a header ("id,breed") if it names no file, nor a class another row names
    if rows and rows[0][0] not in photos and rows[0][1] not in {row[1] for row in rows[1:]}:
        rows = rows[1:]
    listed = {}  # {photo: its classes}
    for name, label, *_ in rows:
        if name in photos:
            listed.setdefault(photos[name], set()).add(label)
    found = {path: labels.pop() for path, labels in listed.items() if len(labels) == 1}
    torn = [os.path.basename(path) for path in sorted(set(listed) - set(found))]
    no_file = sum(row[0] not in photos for row in rows)
    unlisted = len(set(photos.values()) - set(listed))
    left_out = [f"{count} {what}" for count, what in [
        (no_file, f"row(s) of labels.csv naming no file in {folder}"),
        (unlisted, "file(s) there without a row"),
        (len(torn), f"file(s) listed with two classes ({', '.join(torn[:3])})")] if count]
    if left_out:
        print(f"warning: left out: {'; '.join(left_out)}", file=sys.stderr)
    classes = sorted(set(found.values()))
    check_classes(labels_csv, classes)
    paths = np.array(list(found))
    labels = np.array([classes.index(name) for name in found.values()], dtype=np.int64)
    return {"train": Split(paths, labels, paths)}, classes

@functools.cache  # one read of each file, whoever asks
def check_photo(path):
    """None if not an image it can read; else its fingerprint (a hash of its bytes: copies share it)
    and what is_plain_jpeg needs. Of a JPEG, Pillow parses only the header: 60000 in seconds."""
    try:
        path.encode("utf-8")  # TensorFlow passes file names as UTF-8
        with open(path, "rb") as f:
            data = f.read()
        with Image.open(io.BytesIO(data)) as photo:
            if photo.width * photo.height > MAX_PIXELS * (64 if photo.format == "JPEG" else 1):
                return None
            if photo.format != "JPEG":
                photo.load()
            # A copy cut short lacks the end marker: look after the header (a thumbnail has one)
            elif data.find(b"\xff\xd9", photo.fp.tell()) < 0:
                return None
            plain = (photo.format == "JPEG" and photo.mode in ("RGB", "L")
                     and photo.getexif().get(ExifTags.Base.Orientation, 1) == 1)
            return types.SimpleNamespace(fingerprint=hashlib.sha256(data).digest(),
                                         plain_jpeg=plain, smaller_side=min(photo.size))
    except Exception:
        return None

def find_copies_across_splits(splits):
    """Copies of training photos among the validation or test photos flatter the accuracy."""
    training = {check_photo(path).fingerprint: path for path in splits["train"].x}
    others = np.concatenate([splits["validation"].x, splits["test"].x])
    copies = [f"{path} = {training[check_photo(path).fingerprint]}" for path in others
              if check_photo(path).fingerprint in training]
    if copies:
        print(f"warning: {len(copies)} validation or test photo(s) are copies of training photos, "
              f"which flatters the accuracy: {'; '.join(copies[:3])}"
              f"{'; ...' if len(copies) > 3 else ''} (all in metrics.json)", file=sys.stderr)
    return copies

def photos_to_predict(paths, image_size):
    """(path, pixels) for each photo named or in a folder named; None, and a line, if unreadable."""
    for path in paths:
        inside = [path]
        if os.path.isdir(path):  # its photos, and its broken files named like photos
            inside = [os.path.join(path, name) for name in visible(path, os.path.isfile)]
            inside = [file for file in inside if check_photo(file) or os.path.splitext(file)[1]
                      .lower() in Image.registered_extensions()]
            if not inside:
                fail(f"--predict {path} is a folder with no photos in it; put photos there")
        for photo in inside:
            try:
                yield photo, read_photo(photo, image_size)
            except Exception:
                why = "not a photo it can read" if os.path.exists(photo) else "no such file"
                print(f"error: {photo}: {why}; skipping it", file=sys.stderr)
                yield photo, None

# D. The command line, checks, the output folder, errors and main() -----------------------------
# Bad input ends in one line saying what to fix, exit status 2; a run appears whole, or not at all.
def parse_args(argv=None):
    """Settings from the command line: a flag for each field of Settings, with its help."""
    p = argparse.ArgumentParser(description="Train an image classifier on a frozen MobileNetV2.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for field in dataclasses.fields(Settings):
        flag = dict(field.metadata, default=field.default)
        if field.type is bool:
            flag["action"] = "store_true"
        else:
            flag["type"] = field.type
        p.add_argument("--" + field.name.replace("_", "-"), **flag)
    p.error = fail  # a mistyped flag gets the same one-line error as any other bad input
    return Settings(**vars(p.parse_args(argv)))

def fail(message):  # bad input ends here: one line saying what is wrong and how to fix it
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)

def check_args(s):
    for ok, message in [
            (min(s.epochs, s.batch_size) >= 1, "--epochs and --batch-size must be at least 1"),
            (0 < s.validation_split < 1, "--validation-split must be between 0 and 1, e.g. 0.1"),
            (0 <= s.dropout < 1, "--dropout must be in [0, 1), e.g. 0.2"),
            (s.image_size >= 32, "--image-size must be 32 or more (224 for the default module)"),
            (min(s.learning_rate, s.fine_tune_learning_rate) > 0, "--learning-rate and "
             "--fine-tune-learning-rate must be positive, e.g. 0.001 and 0.0001"),
            (s.fine_tune_epochs >= 0, "--fine-tune-epochs cannot be negative"),
            (s.max_images is None or s.max_images >= 1, "--max-images must be at least 1"),
            (not s.predict or s.model_dir, "--predict needs --model-dir, an earlier run"),
            (s.data_dir != "", "--data-dir is empty; give the folder of your photos"),
            (s.features_with in ("auto", "keras", "litert"), "--features-with must be auto, "
             "keras or litert")]:
        if not ok:
            fail(message)

def load_exported_run(run_dir):
    """The exported model, its class names and its image size, from a run folder."""
    try:
        with open(os.path.join(run_dir, "labels.txt"), encoding="utf-8") as f:
            classes = f.read().splitlines()
        with open(os.path.join(run_dir, "metrics.json"), encoding="utf-8") as f:
            image_size = json.load(f)["settings"]["image_size"]
        model = tf.saved_model.load(os.path.join(run_dir, "model"))
        if "serving_default" not in model.signatures or not hasattr(model, "serve"):
            raise ValueError("not an export of this script")
        return model, classes, image_size
    except Exception as e:
        fail(f"--model-dir {run_dir} holds no complete exported run ({type(e).__name__}); give "
             "the folder of an earlier training run, or train again to export one")

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
        fail(f"--output-dir {output_dir} already holds a run; choose a new folder to keep it")
    work_dir = output_dir.rstrip("/\\") + ".partial"
    try:
        os.makedirs(work_dir)
    except FileExistsError:
        fail(f"{work_dir} exists: a run is writing there, or was killed; delete it or pick another")
    except OSError as e:
        fail(f"cannot create --output-dir {output_dir} ({e.strerror}); choose another folder")
    return output_dir, work_dir

def save_metrics(work_dir, s, results):
    """metrics.json: the results, every setting and version that shaped them, seconds per step."""
    seconds = {}
    for (name, start), (_, end) in zip(STEPS, STEPS[1:] + [("end", time.perf_counter())]):
        seconds[name] = round(seconds.get(name, 0) + end - start, 2)
    versions = dict(python=platform.python_version(), tensorflow=tf.__version__,
                    tensorflow_hub=hub.__version__, litert=LiteRT is not None)
    results.update(settings=dataclasses.asdict(s), seconds=seconds, versions=versions)
    with open(os.path.join(work_dir, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)

def main(argv=None):
    s = parse_args(argv)
    check_args(s)
    if s.predict:
        return predict_photos(s.predict, s.model_dir)
    if not issubclass(hub.KerasLayer, tf.keras.layers.Layer):  # a notebook imported TF first
        fail("TensorFlow was imported with Keras 3 before this script could ask for Keras 2 (TF "
             "Hub needs it): restart the notebook's kernel, or set TF_USE_LEGACY_KERAS=1 first")
    tf.get_logger().setLevel("ERROR")  # no "INFO:tensorflow:Assets written to ..." in a notebook
    tf.keras.utils.set_random_seed(s.seed)
    output_dir, work_dir = prepare_output_dir(s.output_dir)
    results, status = {"output_dir": output_dir}, 0
    STEPS.clear()  # main() may run more than once in one Python
    FIGURES.clear()
    backend = plt.get_backend()  # with --no-show, Agg for this run only: a notebook keeps its own
    if s.no_show:
        plt.switch_backend("Agg")
    previous = signal.getsignal(signal.SIGINT)
    if "ipykernel" not in sys.modules:  # a notebook's interrupt must not end its kernel
        signal.signal(signal.SIGINT, lambda *_: leave_on_ctrl_c(work_dir, output_dir))
    try:
        try:
            run_lesson(s, work_dir, results)
        except Exception:  # once there are test results, a failing plot or export keeps them
            if "test_accuracy" not in results:
                raise
            status, results["last_step_error"] = 1, traceback.format_exc()
            print(f"{results['last_step_error']}error: a step failed (above; also in "
                  "metrics.json); the rest of the run is saved", file=sys.stderr)
        save_metrics(work_dir, s, results)
        os.replace(work_dir, output_dir)  # the run appears whole, or not at all
        print(f"Saved the run to {output_dir}/")
        if not s.no_show and backend.lower() != "agg" and "inline" not in backend:
            plt.show()  # a window for each picture, the final ones; a notebook showed them
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
        signal.signal(signal.SIGINT, previous)
        for fig in FIGURES.values():  # this run's; a notebook's own pictures stay
            plt.close(fig)
        if s.no_show:
            plt.switch_backend(backend)
    return status

NOTHING_WRITTEN = "\nInterrupted: no run folder was written; earlier runs are untouched."

def leave_on_ctrl_c(work_dir, output_dir):
    """Ctrl-C ends a run at once (TensorFlow can swallow a KeyboardInterrupt): a saved run stays."""
    sys.stdout.flush()
    if os.path.exists(os.path.join(output_dir, "metrics.json")):
        print(f"\nInterrupted; the run is saved in {output_dir}/", file=sys.stderr, flush=True)
    else:
        shutil.rmtree(work_dir, ignore_errors=True)
        print(NOTHING_WRITTEN, file=sys.stderr, flush=True)
    os._exit(130)

if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # before main() hands Ctrl-C to leave_on_ctrl_c
        print(NOTHING_WRITTEN, file=sys.stderr)
        sys.exit(130)
