"""Transfer learning: MobileNetV2, trained on ImageNet, learns your classes in minutes.

MobileNetV2, from TensorFlow Hub, learned to see from 1.3 million photos. Kept "frozen", that is
unchanged, it turns each image into 1280 numbers, its "features"; a small new "head" (Dropout,
then Dense) learns your classes from them: CIFAR-10's cats and dogs, or your own photos.
Then we test it honestly, see where it looks and what it gets wrong, and export it. Run it:
    python transfer_learning.py  [--max-images 300: a quick look]  [--help: every option]
    python transfer_learning.py --data-dir DIR    your photos: DIR/cat/*.jpg, DIR/dog/*.jpg, ...
    python transfer_learning.py --predict photo.jpg --model-dir runs/<date-time>    new photos
Set up once: pip install -r requirements.txt. On a laptop CPU a first run takes a minute or two;
the head is right about 79 times in 100 on new images, against 50 (chance) before training.
It writes runs/<date-time>/: data.png, history.png, confusion_matrix.png, predictions.png,
where_it_looks.png, predictions.csv, metrics.json, model/ and labels.txt. The data flow:
images (N, 224, 224, 3) -> frozen base -> features (N, 1280) -> head -> probabilities (N, 2).

How to read it: the lesson, steps 1 to 7, is lines 1-300; extra lessons 8 to 11, lines 300-500;
after a banner, the appendix, lines 500-1100: machinery nobody needs to read to learn.
"""
import argparse, functools, hashlib, io, json, platform, shutil, signal, time, types  # appendix
import csv, os, sys, tempfile  # for the lesson

# TF Hub's layers need Keras 2 (the tf-keras package), not TensorFlow's newer default, Keras 3;
# TensorFlow picks one as it loads. The rest of this block is set-up to skip.
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
try:
    import matplotlib.pyplot as plt
    import numpy as np
    import tensorflow as tf
    import tensorflow_hub as hub
    from PIL import ExifTags, Image, ImageOps
except KeyboardInterrupt:  # Ctrl-C in the seconds TensorFlow takes to load: stop, quietly
    print("Interrupted.", file=sys.stderr)
    sys.exit(130)

# The TF Hub "handle" (address) of the "module" (a saved network) we start from: MobileNetV2
# trained on ImageNet, as a feature vector: 224x224 images in [0, 1] in, 1280 numbers out.
DEFAULT_HANDLE = "https://tfhub.dev/google/tf2-preview/mobilenet_v2/feature_vector/4"
CIFAR10_CAT, CIFAR10_DOG = 3, 5  # CIFAR-10's numbers for its cat and dog classes
BATCH = 32  # images per batch when the network predicts (training batches: --batch-size)

def run_lesson(args, run_dir, results):
    """The lesson's table of contents. args holds the options (--help lists them and defaults: 10
    epochs, batches of 64, ...); run_dir is this run's folder; results goes to metrics.json."""
    print(f"Running on the {device()}.")  # device() (appendix A): GPU if TensorFlow finds one
    step("1. Data")  # prints the title (appendix A; each call of a helper there says so)
    splits, classes = load_data(args, results)
    datasets = {}  # tf.data pipelines that read and resize each split's images as needed
    for name, (x, y, _) in splits.items():
        datasets[name] = make_dataset(x, y, args.image_size)
    show_data(splits["train"], classes, args.image_size, os.path.join(run_dir, "data.png"))
    step("2. Model")
    module = load_module(args.model_handle, args.image_size)  # hub.load, and checks (appendix)
    # The base (a layer, frozen), and three models that share it and the head: step 2 shows how.
    model, base, extractor, head = build_model(module, args.image_size, len(classes), args.dropout)
    step("3. Bottleneck features")  # the 1280 numbers the frozen base boils each image down to
    features = read_kept_features(splits, args, results)  # an earlier run's, on disk (appendix B)
    if features is None:
        # The same numbers, 2x faster on a CPU: LiteRT, TensorFlow's phone runtime (appendix B)
        extractor = faster_on_a_cpu(extractor, splits, args, results)
        features = compute_features(extractor, datasets, splits)
        keep_features(features, results)  # on disk, for the next run (appendix B)
    step("4. Training the head")
    history = train_head(head, features, splits, classes, args, results)
    step("5. Evaluation")
    test = evaluate(head, features["test"], splits["test"], classes, results)
    step("6. Plots")
    plot_results([history], test, splits["test"], classes, args.image_size, run_dir)
    step("7. Export")
    export_model(model, classes, splits["test"], test, args.image_size, run_dir, results)
    run_extra_lessons(model, base, splits, datasets, history, test, classes, args, run_dir, results)

# 1. Data --------------------------------------------------------------------------------------
# Three splits: training images teach the head; validation images pick the best epoch (one pass
# over all training images); test images, unseen until step 5, say how it does on new photos. A
# split is (x, y, names): the images (pixels or file paths), class numbers (0 = cat) and names.
def load_data(args, results):
    """Training, validation and test splits, and the class names."""
    if args.data_dir is not None:  # your own photos, read by load_photos in appendix C
        splits, classes = load_photos(args.data_dir, results)
    else:
        splits, classes = load_cifar10_cats_and_dogs()
    check_classes_can_be_split(splits, classes, args)  # enough in every class? (appendix)
    for name in ("validation", "test"):  # CIFAR has no validation split; photos may have neither
        if name not in splits:
            splits["train"], splits[name] = carve(splits["train"], args.validation_split, args.seed)
    for name in ("train", "validation", "test"):
        if args.max_images and len(splits[name][1]) > args.max_images:  # a quick run: a sample
            fraction = args.max_images / len(splits[name][1])
            unused, splits[name] = carve(splits[name], fraction, args.seed)  # keep the carved
        y = splits[name][1]
        counts = [f"{np.sum(y == label)} {c}" for label, c in enumerate(classes)]
        print(f"{name:>10}: {len(y):5d} images ({', '.join(counts)})")
        results[f"num_{name}"] = len(y)
    if args.data_dir is not None:  # copies across splits flatter the accuracy (appendix C)
        warn_about_copies_across_splits(splits, results)
    results.update(classes=classes, data=args.data_dir or "CIFAR-10")
    return {name: splits[name] for name in ("train", "validation", "test")}, classes

def load_cifar10_cats_and_dogs():
    """CIFAR-10's 32x32 photos of cats and dogs: 10000 for training, 2000 for testing."""
    splits = {}
    for name, (x, y) in zip(["train", "test"], download_cifar10()):  # 160 MB once (appendix A)
        y = y.flatten()  # Keras gives the labels as a column: [[3], [5], ...]
        keep = np.flatnonzero((y == CIFAR10_CAT) | (y == CIFAR10_DOG))
        names = np.array([f"CIFAR-10 {name} image {i}" for i in keep])
        splits[name] = (x[keep], (y[keep] == CIFAR10_DOG).astype(np.int64), names)  # dog: 1
    return splits, ["cat", "dog"]

def carve(split, fraction, seed):
    """(rest, carved): the same fraction of each class (at least one image) carved out at random:
    "stratified", every class keeps its share. The same seed always carves the same images."""
    labels, rng = split[1], np.random.default_rng(seed)
    carved = np.zeros(len(labels), dtype=bool)  # True: carved out
    for label in np.unique(labels):
        of_class = rng.permutation(np.flatnonzero(labels == label))  # this class's, shuffled
        carved[of_class[:max(1, round(len(of_class) * fraction))]] = True
    return subset(split, ~carved), subset(split, carved)  # ~: not; subset: in appendix A

def make_dataset(x, y, image_size, batch_size=BATCH, shuffle_seed=None):
    """Batches of (images, labels) from tf.data, which reads and resizes each image only when it is
    needed (12000 upscaled images would take 7 GB); prefetch readies the next batch meanwhile."""
    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle_seed is not None:  # a new order every epoch, to train on the images (lesson 8)
        dataset = dataset.shuffle(len(y), seed=shuffle_seed)
    if isinstance(x[0], str):  # file paths: read_photo_op, in appendix C, reads the photos
        dataset = dataset.map(read_photo_op(x, image_size), num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.map(lambda image, label: (scale_and_resize(image, image_size), label),
                          num_parallel_calls=tf.data.AUTOTUNE)  # AUTOTUNE: on as many cores
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)

def scale_and_resize(images, image_size):
    """Pixels from 0-255 integers to floats in [0, 1], as TF Hub's image modules take them, and
    image_size pixels square: MobileNetV2 learned on 224x224 photos. Upscaled, CIFAR's 32x32 images
    show it objects at a size it knows."""
    images = tf.image.convert_image_dtype(images, tf.float32)  # divides by 255
    size = (image_size, image_size)
    shrinking = tf.reduce_max(tf.shape(images)[-3:-1]) > image_size  # [..., height, width, 3]
    # tf.cond(condition, then, else): TensorFlow's "if", per image. Shrinking needs antialias,
    # which averages pixels instead of skipping most; enlarging CIFAR's is 4x faster without.
    images = tf.cond(shrinking, lambda: tf.image.resize(images, size, antialias=True),
                     lambda: tf.image.resize(images, size))
    return tf.clip_by_value(images, 0.0, 1.0)  # resizing can overshoot, to 1.0000002 say

def show_data(train, classes, size, path):
    """Look before training: data.png with two training images of each class (8 classes at most),
    as stored and as the network gets them; and the shape of what it gets."""
    rows = min(8, len(classes))
    fig, axes = plt.subplots(rows, 4, figsize=(11, 2.8 * rows), squeeze=False, layout="constrained",
                             subplot_kw=dict(xticks=[], yticks=[]))
    for label in range(rows):
        for k, i in enumerate(np.flatnonzero(train[1] == label)[:2]):
            stored = stored_image(train[0][i], size)  # CIFAR's pixels, or a photo (appendix A)
            received = scale_and_resize(stored, size).numpy()
            axes[label, 2 * k].imshow(stored, interpolation="nearest")  # every stored pixel shows
            axes[label, 2 * k].set_title(f"{classes[label]}: {stored.shape[1]}x{stored.shape[0]}")
            axes[label, 2 * k + 1].imshow(received)
            axes[label, 2 * k + 1].set_title(f"as the network gets it: {size}x{size}")
    fig.savefig(path)
    print(f"The network gets batches of shape {(BATCH, *received.shape)}: images, height, width, "
          f"colours; each value from 0 (black) to 1 (white), here {received.max():.2f} at most.")

# 2. Model -------------------------------------------------------------------------------------
def build_model(module, image_size, num_classes, dropout):
    """The frozen base under a new head, as three Keras models. A layer turns its input into an
    output with weights, numbers it can learn; calling a layer on an input, as in drop(features),
    wires it in, and a Keras model runs the wired layers from its Input to its output. The three
    models call the same layer objects, so they share weights: when head learns, model does too.
    model      images -> MobileNetV2 -> Dropout -> Dense: what we export;
    extractor  images -> MobileNetV2 features: what runs once per image (step 3);
    head       features -> Dropout -> Dense: what we train and test, on features computed once."""
    images = tf.keras.Input(shape=(image_size, image_size, 3), name="images")
    # trainable=False: the base keeps what ImageNet taught it, whatever we train.
    base = hub.KerasLayer(module, trainable=False, name="mobilenet_v2")
    # training=False: the base always runs as when predicting. Its BatchNorm layers (they rescale
    # each layer's outputs by averages learned on ImageNet) then keep ImageNet's averages instead
    # of measuring our batches: that matters once lesson 8 unfreezes the base.
    features = base(images, training=False)
    # Dropout hides random features at each training step, so that the head cannot lean on a few
    # of them: a guard against overfitting, memorising the training images instead of learning.
    drop = tf.keras.layers.Dropout(dropout, name="dropout")
    # Dense gives each class a score, a weighted sum of the 1280 features; softmax turns the
    # scores into probabilities that add up to 1.
    classify = tf.keras.layers.Dense(num_classes, activation="softmax", name="classifier")
    model = tf.keras.Model(images, classify(drop(features)), name="classifier_model")
    extractor = tf.keras.Model(images, features, name="feature_extractor")
    feature_input = tf.keras.Input(shape=features.shape[1:], name="features")
    head = tf.keras.Model(feature_input, classify(drop(feature_input)), name="head")
    model.summary()  # millions of frozen weights, a few thousand trainable ones on top
    return model, base, extractor, head

# 3. Bottleneck features -----------------------------------------------------------------------
# The central idea. The "bottleneck" is the base's last layer: the 1280 numbers it boils an image
# down to. Frozen, the base gives an image the same numbers every time, so we run it once per image
# and train the head on the numbers: seconds per epoch instead of minutes.
def compute_features(extractor, datasets, splits):
    """{split: features}: each image through the frozen base once, one row of numbers per image."""
    features = {}
    for name, images in datasets.items():
        progress = show_progress(name, len(splits[name][1]))  # prints images done (appendix A)
        features[name] = extractor.predict(images, verbose=0, callbacks=[progress])
        print(f"{name:>10}: features of shape {features[name].shape}")
    print(f"Each image is now {features['train'].shape[1]} numbers, each telling how strongly a "
          "pattern MobileNetV2 learned to see (fur, an eye, a wheel...) shows in it.")
    return features

# 4. Training the head -------------------------------------------------------------------------
def train_head(head, features, splits, classes, args, results):
    """The head learns the classes from the features: --epochs passes over them, shuffled."""
    training = tf.data.Dataset.from_tensor_slices((features["train"], splits["train"][1]))
    training = training.shuffle(len(features["train"]), seed=args.seed).batch(args.batch_size)
    validation = (features["validation"], splits["validation"][1])
    compile_for_training(head, args.learning_rate)  # how the head learns, and its loss: below
    before = head.evaluate(*validation, verbose=0, return_dict=True)["accuracy"]
    print(f"Validation accuracy before training: {before:.3f} (chance: {1 / len(classes):.3f}).\n"
          "Each epoch: loss and accuracy on the training features, then the same on validation.")
    # Keras prints one line per epoch, e.g. "141/141 - 1s - loss: 0.47 - accuracy: 0.78 - val_loss:
    # 0.45 - val_accuracy: 0.80" (batches, seconds, then the four numbers).
    history = fit_keeping_the_best_epoch(head, training, validation, args.epochs)
    kept = int(np.argmin(history["val_loss"]))
    train_accuracy, val_accuracy = history["accuracy"][kept], history["val_accuracy"][kept]
    print(f"Kept epoch {kept + 1}: training accuracy {train_accuracy:.3f}, validation "
          f"{val_accuracy:.3f}. Training far above validation would be overfitting. Training can "
          "also be below: Keras measures it while dropout is hiding features.")
    results.update(accuracy_before_training=before, kept_epoch=kept + 1,
                   train_accuracy=train_accuracy, val_accuracy=val_accuracy)
    return history

def compile_for_training(model, learning_rate):
    """Adam nudges the weights to lower the loss, in steps as large as the learning rate. The loss
    is the mean of -log(probability given to the true class): 0 when sure and right, large when
    sure and wrong. "Sparse" cross-entropy: labels are class numbers, not one-hot rows ([1, 0])."""
    model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])

def fit_keeping_the_best_epoch(model, training, validation, epochs):
    """model.fit for all the epochs, then back to the weights of the epoch with the lowest
    validation loss (lower the surer the right answers; unlike accuracy, it rarely ties), never
    the test loss: test images stay unseen. The ModelCheckpoint callback saves the weights after
    each epoch whose validation loss is the lowest so far; we load the last saved after training.
    Keras draws a progress bar on a terminal, and writes a line per epoch in a log (verbose=2)."""
    with tempfile.TemporaryDirectory() as folder:
        best = os.path.join(folder, "best.weights.h5")
        save_best = tf.keras.callbacks.ModelCheckpoint(best, monitor="val_loss",
                                                       save_best_only=True, save_weights_only=True)
        history = model.fit(training, validation_data=validation, epochs=epochs,
                            callbacks=[save_best], verbose=1 if sys.stdout.isatty() else 2)
        model.load_weights(best)
    return history.history

# 5. Evaluation --------------------------------------------------------------------------------
def evaluate(model, inputs, test, classes, results):
    """Accuracy and loss on the test images, per class, and which classes are taken for which."""
    probabilities = model.predict(inputs, verbose=0)
    labels, predicted = test[1], probabilities.argmax(axis=1)
    loss = float(np.mean(tf.keras.losses.sparse_categorical_crossentropy(labels, probabilities)))
    accuracy = np.mean(predicted == labels)
    print(f"Test accuracy {accuracy:.4f} on {len(labels)} images, loss {loss:.4f}.")
    confusion = tf.math.confusion_matrix(labels, predicted, num_classes=len(classes)).numpy()
    per_class = {}
    for label, name in enumerate(classes):
        per_class[name] = float(confusion[label, label] / max(1, confusion[label].sum()))
        print(f"{name:>10}: {per_class[name]:.3f} of {confusion[label].sum()} right")
    print(f"Confusion matrix (rows: true class, columns: predicted):\n{confusion}")
    results.update(test_accuracy=float(accuracy), test_loss=loss, per_class_accuracy=per_class,
                   confusion_matrix=confusion.tolist())
    return dict(probabilities=probabilities, confusion=confusion)

# 6. Plots -------------------------------------------------------------------------------------
def plot_results(histories, test, split, classes, image_size, run_dir):
    """history.png: loss and accuracy per epoch (validation falling behind training: overfitting);
    confusion_matrix.png; predictions.png: 16 test images. The drawing is in appendix A."""
    plot_history(histories, os.path.join(run_dir, "history.png"))  # the head's; lesson 8's too
    plot_confusion_matrix(test["confusion"], classes, os.path.join(run_dir, "confusion_matrix.png"))
    # examples (appendix A): 16 test images, right and wrong ones of every class, resized
    images, labels, probabilities = examples(split, test["probabilities"], 16, image_size)
    plot_predictions(images, labels, probabilities, classes, f"{run_dir}/predictions.png")

# 7. Export ------------------------------------------------------------------------------------
def export_model(model, classes, test, evaluated, image_size, run_dir, results):
    """model/: a SavedModel (TensorFlow's format for a model's functions and weights) with one
    function, serve(): it takes photos as they come, scales and resizes them as training did, and
    returns a probability per class in labels.txt's order. Any Python program can use it:
        tf.saved_model.load("RUN/model").serve(pixels[None])  # pixels: uint8, [H, W, 3]
    ([None] adds a first axis: a batch of one image.)"""
    archive = tf.keras.export.ExportArchive()
    archive.track(model)  # the archive saves the weights of what it tracks
    # An endpoint is a function the saved model offers; a TensorSpec, the shape and type of what
    # it takes: here any number of photos of any height and width, RGB values from 0 to 255.
    photos = tf.TensorSpec([None, None, None, 3], tf.uint8)
    archive.add_endpoint("serve", lambda images: model(scale_and_resize(images, image_size)),
                         [photos])
    tf.keras.utils.disable_interactive_logging()  # else it lists every weight
    archive.write_out(os.path.join(run_dir, "model"))
    tf.keras.utils.enable_interactive_logging()
    with open(os.path.join(run_dir, "labels.txt"), "w", encoding="utf-8") as f:
        f.write("".join(name + "\n" for name in classes))
    # check_export (appendix A): model/, reloaded, must give 8 test images the same probabilities
    check_export(run_dir, test, evaluated["probabilities"], image_size, results)

# ==============================================================================================
# The lesson, steps 1 to 7, ends here. Extra lessons 8 to 11 follow; then the tutorial ends.
# ==============================================================================================
def run_extra_lessons(model, base, splits, datasets, history, test, classes, args, run_dir,
                      results):
    """Lesson 8 if asked for (--fine-tune-epochs, --augment), 9 and 11 always, 10 with --tflite;
    the other half of lesson 10, --predict, is run by main() on a saved run, with no training."""
    if args.fine_tune_epochs or args.augment:
        model, test = train_on_images(model, base, splits, datasets, history, classes, args,
                                      run_dir, results)
    read_the_results(model, test, splits["test"], classes, args.image_size, run_dir, results)
    if args.tflite:
        export_tflite(model, splits["test"], test, args.image_size, run_dir, results)
    print_what_to_try_next(results)

# 8. Training on the images themselves: fine-tuning and augmentation ---------------------------
FINE_TUNE_BATCH = 16  # images per batch when fine-tuning the base: below, why

def train_on_images(model, base, splits, datasets, history, classes, args, run_dir, results):
    """The other half of transfer learning: the model trains on the images themselves, not on
    features computed once. Augmentation shows new variants of each photo every epoch, and
    fine-tuning changes the base, so the base must run on every image, every epoch.

    Fine-tuning unfreezes the base and nudges all its weights towards our classes. At each batch
    Keras computes the gradients (how much the loss would change as each weight changes), and
    the optimizer moves every weight a little against its gradient.
    - The learning rate is far below the head's, so that noisy gradients from a few thousand
      images cannot overwrite what ImageNet taught the base.
    - It warms up from zero, then decays to zero: at full rate from the first step, Adam moves
      every weight at once, and the model falls below the frozen one (we tried).
    - BatchNorm keeps ImageNet's averages even now (training=False, in step 2): updated from a
      few thousand images, they would wreck the features.
    - If the head alone did better on the validation images, its weights come back."""
    step("8. Fine-tuning" if args.fine_tune_epochs else "8. Training on augmented images")
    weights_before, head_test_accuracy = model.get_weights(), results["test_accuracy"]
    # To compute gradients for the base, training keeps every layer's outputs for each image of a
    # batch: 64 images of 224x224 (--batch-size's default) took 6 GB. Fine-tuning takes batches of
    # 16 (3 GB), noisier, so smaller steps: the rate times sqrt(16 / 64), that is 0.5.
    batch_size = min(FINE_TUNE_BATCH, args.batch_size) if args.fine_tune_epochs else args.batch_size
    x, y, _ = splits["train"]
    images = make_dataset(x, y, args.image_size, batch_size, shuffle_seed=args.seed)
    if args.augment:  # new variants of every photo in every epoch: flipped, turned, zoomed
        augment = tf.keras.Sequential([tf.keras.layers.RandomFlip("horizontal"),
                                       tf.keras.layers.RandomRotation(0.05),
                                       tf.keras.layers.RandomZoom(0.1)])
        images = images.map(lambda x, y: (augment(x, training=True), y))
    learning_rate, epochs = args.learning_rate, args.epochs  # --augment alone: base frozen
    if args.fine_tune_epochs:
        base.trainable = True  # compile(), below, takes note of what is trainable
        epochs = args.fine_tune_epochs
        peak = args.fine_tune_learning_rate * (batch_size / args.batch_size) ** 0.5  # x0.5: above
        steps = epochs * len(images)  # len(images): batches per epoch; a step: one batch
        # From 0 up to the peak over the first tenth of the steps, then down to 0 along a cosine
        learning_rate = tf.keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0, warmup_target=peak, warmup_steps=steps // 10,
            decay_steps=steps - steps // 10)
    compile_for_training(model, learning_rate)
    more = fit_keeping_the_best_epoch(model, images, datasets["validation"], epochs)
    if min(more["val_loss"]) >= min(history["val_loss"]):
        print("The head alone did better on the validation images: its weights come back.")
        model.set_weights(weights_before)
    step("8. Evaluation, plots and export again")
    test = evaluate(model, datasets["test"], splits["test"], classes, results)
    print(f"Test accuracy: {head_test_accuracy:.4f} with the head alone, "
          f"{results['test_accuracy']:.4f} after training on the images.")
    results["test_accuracy_head_alone"] = head_test_accuracy
    plot_results([history, more], test, splits["test"], classes, args.image_size, run_dir)
    export_model(model, classes, splits["test"], test, args.image_size, run_dir, results)
    return model, test

# 9. Reading the results: how sure, which mistakes, where it looks -----------------------------
def read_the_results(model, test, split, classes, image_size, run_dir, results):
    """A test accuracy is a measurement on a few images: how far might it be off? Which images
    does the model get wrong, and how sure was it? And where in an image does it look?"""
    step("9. Reading the results")
    labels, predicted = split[1], test["probabilities"].argmax(axis=1)
    low, high = accuracy_interval(predicted, labels)
    print(f"On other test images the accuracy would likely be between {low:.3f} and {high:.3f} "
          f"(a 95% interval), so two runs less than about {(high - low) / 2:.3f} apart are a tie: "
          "the same model, tested on other images, could score either.")
    results["test_accuracy_95"] = [low, high]
    write_predictions(split, test["probabilities"], classes, f"{run_dir}/predictions.csv")
    images, labels, probabilities = examples(split, test["probabilities"], 8, image_size)
    path = f"{run_dir}/where_it_looks.png"
    plot_where_it_looks(model, images, labels, probabilities, classes, path)

def accuracy_interval(predicted, labels, z=1.96):
    """Wilson's 95% interval for an accuracy p measured on n images: where the accuracy on all such
    images likely lies. Roughly p +- 1.96 * sqrt(p * (1 - p) / n), as p varies from one set of n
    images to another; Wilson's form also holds for small n and stays within 0 and 1."""
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
            rows.writerow([names[i], classes[labels[i]], classes[predicted[i]],
                           f"{confidence[i]:.4f}"])
    worst = [f"{names[i]} ({classes[labels[i]]}, taken for {classes[predicted[i]]} "
             f"{confidence[i]:.0%})" for i in order[:3] if predicted[i] != labels[i]]
    print("Most confident mistakes (all in predictions.csv): " + ("; ".join(worst) or "none"))

def plot_where_it_looks(model, images, labels, probabilities, classes, path):
    """Each image's occlusion map over it, all on one colour scale, with a colour bar."""
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
    fig.savefig(path)

def occlusion_maps(model, images, grid=4):
    """[image, row, column]: how much each image's predicted-class probability drops when a grey
    patch hides that part of it (Zeiler and Fergus, 2014). Where it drops most is what the model
    looks at: the animal, or the background? A coarse map: a patch is 1/4 of the side."""
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

# 10. The model at work: new photos, and a model for phones ------------------------------------
def predict_photos(paths, run_dir):
    """Classify photos, or the photos in folders, with a run's model/: one line each. Reading a
    run, a folder or a photo is machinery from the appendix (load_exported_run, visible, ...)."""
    model, classes, image_size = load_exported_run(run_dir)
    status, photos = 0, []
    for path in paths:
        if os.path.isdir(path):  # the photos in a folder; its other files are left alone
            inside = [os.path.join(path, name) for name in visible(path, os.path.isfile)]
            photos += [photo for photo in inside if check_photo(photo)]
        else:
            photos.append(path)
    for path in photos:
        try:
            p = model.serve(read_photo(path, image_size)[None]).numpy()[0]  # [None]: a batch of 1
        except Exception as e:
            why = "no such file" if isinstance(e, FileNotFoundError) else "not a photo it can read"
            print(f"error: {path}: {why}; skipping it", file=sys.stderr)
            status = 2
            continue
        best = np.argsort(p)[::-1][:1 if len(classes) == 2 else 3]  # the likeliest 1 or 3
        print(f"{path}: " + ", ".join(f"{classes[i]} {p[i]:.1%}" for i in best))
    return status

def export_tflite(model, test, evaluated, image_size, run_dir, results):
    """model.tflite, for phones: float32 images [1, image_size, image_size, 3] in [0, 1] in,
    probabilities out. Checked with LiteRT against the trained model on a few test images."""
    step("10. A model for phones")
    tflite = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    with open(os.path.join(run_dir, "model.tflite"), "wb") as f:
        f.write(tflite)
    interpreter = LiteRT or tf.lite.Interpreter  # LiteRT: imported in appendix B, if installed
    run = interpreter(model_content=tflite).get_signature_runner()  # the model as a function
    same, largest = [], 0.0  # examples (appendix A): 8 test images, as the network gets them
    images, _, probabilities = examples(test, evaluated["probabilities"], 8, image_size)
    for image, p in zip(images, probabilities):
        output = run(images=image[None])["classifier"][0]  # named after the model's last layer
        same.append(output.argmax() == p.argmax())
        largest = max(largest, float(np.abs(output - p).max()))
    print(f"model.tflite: {len(tflite) / 1e6:.1f} MB, the same class as the trained model for "
          f"{sum(same)} of {len(same)} test images, probabilities within {largest:.1e}.")
    results.update(tflite_agreement=float(np.mean(same)), tflite_largest_difference=largest)

# 11. What to try next -------------------------------------------------------------------------
def print_what_to_try_next(results):
    print(f"""
What to try next:
  python transfer_learning.py --dropout 0.5 --epochs 20
      Only the head changes, so the features come from disk: a run takes seconds.
  python transfer_learning.py --data-dir DIR    (DIR/cat/*.jpg, DIR/dog/*.jpg: any classes)
      Your own photos: a few hundred real photos per class often reach 0.95 or more.
  python transfer_learning.py --fine-tune-epochs 2 --augment
      Adapts MobileNetV2 itself to your classes: for CIFAR 0.88 instead of 0.79, but the network
      runs on every training image in every epoch (about 5 minutes an epoch on a laptop CPU).
  python transfer_learning.py --predict photo.jpg --model-dir {results["output_dir"]}
      Classifies new photos with this run's model.""")


# ==============================================================================================
# THE TUTORIAL ENDS HERE. Below is the appendix: machinery that makes the script a robust tool,
# which nobody needs to read to learn transfer learning; the lesson names each piece it calls.
# A. The lesson's helpers. B. Speed-ups. C. Your own photos. D. The command line and main().
# ==============================================================================================

# A. The lesson's helpers: the device, checks with clear errors, plots, progress ----------------
def device():
    return "GPU" if tf.config.list_physical_devices("GPU") else "CPU"  # TensorFlow picks a GPU

def subset(split, indices):
    return split[0][indices], split[1][indices], split[2][indices]  # x, y and names

def stored_image(x, image_size):
    return read_photo(x, image_size) if isinstance(x, str) else x  # CIFAR's pixels, or a photo

STEPS = []  # (name, start time) of each step of the lesson, for metrics.json

def step(name):
    print(f"\n== {name} ==")
    STEPS.append((name, time.perf_counter()))

def download_cifar10():
    try:
        return tf.keras.datasets.cifar10.load_data()
    except Exception as e:
        fail(f"could not download CIFAR-10 ({type(e).__name__}); offline, use --data-dir DIR")

def check_classes_can_be_split(splits, classes, args):
    """Each class needs a training image, and one for each split carved out of the training ones."""
    carved = [name for name in ("validation", "test") if name not in splits]
    for label, name in enumerate(classes):
        count = int(np.sum(splits["train"][1] == label))
        if count <= len(carved):
            fail(f"class {name} has {count} image(s) in {args.data_dir}; it needs at least "
                 f"{len(carved) + 1}, one for training and one for each split carved out of it")
    if args.max_images is not None and args.max_images < len(classes):
        fail(f"--max-images {args.max_images} is fewer than the {len(classes)} classes; give at "
             f"least {len(classes)}, so that every class keeps an image")

def load_module(handle, image_size):
    """hub.load(handle), or one line saying why the module cannot be used."""
    try:
        module = hub.load(handle)
    except Exception as e:
        fail(why_the_module_cannot_load(handle, type(e).__name__))
    try:
        features = module(tf.zeros([1, image_size, image_size, 3])).numpy()
    except Exception:
        fail(f"the module {handle} does not take {image_size}x{image_size} images; set "
             "--image-size to its own")
    if features.ndim != 2 or features.shape[1] in (1000, 1001) or np.allclose(features.sum(1), 1):
        fail(f"the module {handle} returns {features.shape}: a feature map or class scores, not a "
             f"feature vector; use a feature-vector module such as {DEFAULT_HANDLE}")
    return module

def why_the_module_cannot_load(handle, error):
    if "://" not in handle:
        return (f"cannot load --model-handle {handle} ({error}); give a folder holding a TF2 "
                "SavedModel (saved_model.pb)")
    cached = os.path.join(hub.resolver.tfhub_cache_dir(use_temp=True),
                          hashlib.sha1(handle.encode("utf8")).hexdigest())
    if os.path.isdir(cached):  # TF Hub never downloads a handle again while its folder exists
        return (f"TF Hub's copy of {handle} in {cached} cannot be loaded ({error}); a download was "
                "probably cut short: delete that folder and run again")
    return (f"cannot load --model-handle {handle} ({error}); to run offline use a local path as "
            "--model-handle, or the module placed in $TFHUB_CACHE_DIR, and --data-dir instead of "
            "the CIFAR-10 download")

def plot_history(histories, path):
    """Loss and accuracy per epoch: validation falling behind training as the epochs go on is
    overfitting. A star marks the epoch kept; training on images (lesson 8) starts from there."""
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
    fig.savefig(path)

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
    fig.savefig(path)

def examples(split, probabilities, count, image_size):
    """Up to count test images, resized as the network gets them, their labels and probabilities."""
    picks = pick_examples(split[1], probabilities.argmax(axis=1), count)
    x, labels, _ = subset(split, picks)
    images = next(iter(make_dataset(x, labels, image_size, batch_size=count)))[0].numpy()
    return images, labels, probabilities[picks]

def pick_examples(labels, predicted, count):
    """Up to count test images to show: wrong and right ones of every class, taken in turn."""
    groups = []
    for right in (False, True):
        for label in np.unique(labels):
            of_class = (labels == label) & ((predicted == labels) == right)
            groups.append(list(np.flatnonzero(of_class)))
    picks = []
    while len(picks) < count and any(groups):
        for group in groups:
            if group and len(picks) < count:
                picks.append(group.pop(0))
    return picks

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
        fig.savefig(path)
    return fig, axes

def check_export(run_dir, test, probabilities, image_size, results):
    """Reload model/ and classify the first test images with it, as stored, as --predict does."""
    reloaded, largest, same = tf.saved_model.load(os.path.join(run_dir, "model")), 0.0, 0
    count = min(8, len(test[1]))
    for i in range(count):  # one by one: photos come in all sizes
        again = reloaded.serve(stored_image(test[0][i], image_size)[None]).numpy()[0]
        largest = max(largest, float(np.abs(again - probabilities[i]).max()))
        same += int(again.argmax() == probabilities[i].argmax())
    tolerance = 1e-2 if device() == "GPU" else 1e-3  # float rounding; TF32 on a GPU
    passed = same == count and largest <= tolerance
    results["export_check"] = dict(images=count, same_class=same / count, passed=passed,
                                   largest_difference=largest, tolerance=tolerance)
    print(f"Reloaded model/: the same class for {same} of {count} test images, probabilities "
          f"within {largest:.1e}.")
    if not passed:
        print(f"warning: the exported model differs from the trained one by more than {tolerance}"
              " (see export_check in metrics.json); the run is kept", file=sys.stderr)

def show_progress(name, count):
    """A Keras callback that prints how many images are done and how fast: on a terminal, one
    line redrawn at most twice a second; in a file or a pipe, a line per tenth of the images."""
    start, terminal, last = time.perf_counter(), sys.stdout.isatty(), dict(time=0.0, done=0)
    def report(batch, logs):
        done, now = min((batch + 1) * BATCH, count), time.perf_counter()
        if terminal:
            due = now - last["time"] >= 0.5
        else:
            due = done * 10 // count > last["done"] * 10 // count  # a new tenth
        if due or done == count:
            line = f"{name:>10}: {done}/{count} images, {done / (now - start):.0f} images/s"
            ending = "" if terminal and done < count else "\n"  # "\r": back to the line's start
            print("\r" + line if terminal else line, end=ending, flush=True)
            last.update(time=now, done=done)
    return tf.keras.callbacks.LambdaCallback(on_predict_batch_end=report)

# B. Speed-ups: LiteRT for the feature pass on a CPU --------------------------------------------
# LiteRT's features equal Keras' to float rounding (2e-5). Converting takes seconds, so auto uses
# it from LITERT_MIN_IMAGES on. TF_CPU_ALLOCATOR_USE_BFC (at the top) makes it 20% faster here.
try:  # LiteRT has no wheels for some platforms
    from ai_edge_litert.interpreter import Interpreter as LiteRT
except ImportError:
    LiteRT = None
LITERT_MIN_IMAGES = 1000

def faster_on_a_cpu(extractor, splits, args, results):
    """The extractor, or LiteRT's stand-in for it: an object whose predict() runs LiteRT."""
    return litert_extractor(extractor) if use_litert(args, splits, results) else extractor

def use_litert(args, splits, results):
    """--features-with, where auto is litert on a CPU with enough images to repay converting."""
    runtime, count = args.features_with, sum(len(y) for _, y, _ in splits.values())
    if runtime == "auto":
        runtime = "litert" if device() == "CPU" and count >= LITERT_MIN_IMAGES else "keras"
    if runtime == "litert" and LiteRT is None:
        print("warning: LiteRT is not installed (pip install ai-edge-litert); computing the "
              "features with Keras", file=sys.stderr)
        runtime = "keras"
    results["features_with"] = runtime
    return runtime == "litert"

def litert_extractor(extractor):  # a stand-in whose predict() runs the extractor in LiteRT
    spec = tf.TensorSpec(extractor.input_shape, tf.float32)
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [tf.function(extractor).get_concrete_function(spec)], extractor)
    converter.experimental_lower_to_saved_model = False  # a frozen graph: 2 s, not 20 s
    interpreter = LiteRT(model_content=converter.convert(), num_threads=os.cpu_count())
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

# B. Speed-ups: features kept on disk ----------------------------------------------------------
# The features are saved in a file named by a hash of all that shapes them: the module, the image
# size and the images (CIFAR's pixels; each photo's path, size and time of last change). Change
# any of those and they are computed afresh. The folder keeps the 20 files used last.
def feature_file(splits, args):  # None with --no-cache
    if args.no_cache:
        return None
    key = hashlib.sha256(f"{args.model_handle} {args.image_size}".encode())
    files = []  # a local module's files: it may be rebuilt in place
    for folder, _, names in sorted(os.walk(args.model_handle)):
        files += [os.path.join(folder, name) for name in sorted(names)]
    for x, _, _ in splits.values():
        key.update(np.ascontiguousarray(x).tobytes() if not isinstance(x[0], str) else b"")
        for path in files + (list(x) if isinstance(x[0], str) else []):
            key.update(f"{path} {os.path.getsize(path)} {os.stat(path).st_mtime_ns}".encode())
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "transfer_learning", key.hexdigest() + ".npz")

def read_kept_features(splits, args, results):  # those an earlier run kept, or None
    path = results["features_file"] = feature_file(splits, args)
    results.update(features_from_cache=False, features_with=None)
    if path is None:
        return None
    try:
        with np.load(path) as kept:
            features = {name: kept[name] for name in ("train", "validation", "test")}
        os.utime(path)  # used: kept longer
        print(f"Features read from {path}, computed by an earlier run on the same images.")
        for name, numbers in features.items():
            print(f"{name:>10}: features of shape {numbers.shape}")
        results["features_from_cache"] = True
        return features
    except FileNotFoundError:
        return None
    except Exception as e:  # cut short by a crash, or damaged
        print(f"warning: cannot read the features kept in {path} ({type(e).__name__}); "
              "computing them again", file=sys.stderr)

def keep_features(features, results):
    """Write, then rename: a run killed while writing leaves no half file under the real name."""
    path = results["features_file"]
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
# Not tf.keras.utils.image_dataset_from_directory: it stops at the first broken file, shows phone
# photos sideways, decodes a 12-megapixel JPEG in full, and splits only two ways, unstratified.
SPLIT_FOLDERS = {"train": ["train"], "validation": ["validation", "val", "valid"], "test": ["test"]}
Image.MAX_IMAGE_PIXELS = None  # your own photos: no check against "decompression bombs"

def read_photo(path, image_size):
    """A photo's RGB pixels (uint8), upright as its EXIF orientation says (phones store portrait
    shots sideways and tell viewers to turn them). A JPEG is decoded at the smallest of its scales
    (1/8, 1/4, 1/2, 1) that keeps image_size pixels: a fraction of the work for 12 megapixels."""
    with Image.open(path) as photo:
        photo.draft("RGB", (image_size, image_size))
        photo = ImageOps.exif_transpose(photo)
        if photo.mode.startswith("I"):  # 16-bit greys, 0-65535: convert() would clip them at 255
            photo = Image.fromarray(np.uint8(np.clip(np.asarray(photo) // 256, 0, 255)))
        return np.asarray(photo.convert("RGB"))

def read_photo_op(paths, image_size):
    """read_photo for tf.data: (path, label) -> (pixels, label), on as many cores as there are.
    TensorFlow decodes a plain JPEG itself, to the same pixels, without Python's overhead."""
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

def load_photos(data_dir, results):
    """Your photos' paths and labels, from class folders or labels.csv; unreadable files out."""
    if not os.path.isdir(data_dir):
        fail(f"--data-dir {data_dir} is not a folder; give a folder with one sub-folder per class")
    folders = {}  # {split: folder}, with split folders
    if os.path.isfile(os.path.join(data_dir, "labels.csv")):
        splits, classes = read_labels_csv(data_dir)
    else:
        folders = find_split_folders(data_dir)
        classes = visible(folders["train"])
        check_classes(folders["train"], classes)
        splits = {split: list_files(folder, classes) for split, folder in folders.items()}
    skipped = []
    check_photo.cache_clear()  # the photos may have changed since an earlier run in this Python
    for split, (x, _, _) in splits.items():
        readable = np.array([check_photo(path) is not None for path in x], dtype=bool)
        splits[split] = subset(splits[split], readable)
        skipped += [os.fsencode(path).decode(errors="backslashreplace") for path in x[~readable]]
    for label in set(range(len(classes))) - set(splits["train"][1]):
        fail(f"class {classes[label]} has no readable images in {data_dir}; add good images or "
             "remove the class")
    for split in ("validation", "test"):
        if split in folders and len(splits[split][1]) == 0:
            fail(f"{folders[split]} has no readable images; add some or remove the folder")
    if skipped:
        print(f"warning: skipped {len(skipped)} file(s) that are not images it can read: "
              f"{', '.join(skipped[:5])}{', ...' if len(skipped) > 5 else ''} "
              "(all in metrics.json)", file=sys.stderr)
    results["skipped_files"] = skipped
    return splits, classes

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
        fail(f"--data-dir {folder} holds only split folders ({', '.join(classes)}) of images and "
             "no labels.csv: put each class in a folder of its own, DIR/train/<class>/*.jpg, or "
             "add DIR/labels.csv with a file name and a class per row")
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
    return np.array(paths), np.array(labels, dtype=np.int64), np.array(paths)

def read_labels_csv(data_dir):
    """Kaggle's layout: photos in DIR/train/ (or DIR/), and DIR/labels.csv with a header row,
    then a file name (often without its extension) and a class per row."""
    folder = os.path.join(data_dir, "train")
    folder = folder if os.path.isdir(folder) else data_dir
    labels_csv = os.path.join(data_dir, "labels.csv")
    photos = {}  # by name, with and without the extension
    for name in visible(folder, os.path.isfile):
        if os.path.join(folder, name) != labels_csv:  # the photos may sit beside it
            photos[name] = photos[os.path.splitext(name)[0]] = os.path.join(folder, name)
    try:
        with open(labels_csv, newline="", encoding="utf-8-sig") as f:
            rows = [row for row in csv.reader(f) if len(row) >= 2][1:]  # [1:]: not the header
    except (OSError, UnicodeError, csv.Error) as e:
        fail(f"cannot read {labels_csv} ({type(e).__name__}); save it as UTF-8 text: a header "
             "row, then a file name and a class per row")
    found = {photos[row[0].strip()]: row[1].strip() for row in rows if row[0].strip() in photos}
    unlisted = len(set(photos.values()) - set(found))
    if len(found) < len(rows) or unlisted:
        print(f"warning: {len(rows) - len(found)} row(s) of labels.csv name no file in {folder}, "
              f"and {unlisted} file(s) there have no row; both are left out", file=sys.stderr)
    classes = sorted(set(found.values()))
    check_classes(labels_csv, classes)
    paths = np.array(list(found))
    labels = np.array([classes.index(name) for name in found.values()], dtype=np.int64)
    return {"train": (paths, labels, paths)}, classes

@functools.cache  # one read of each file, whoever asks
def check_photo(path):
    """None if not an image it can read; else its fingerprint (a hash of its bytes: copies share it)
    and what is_plain_jpeg needs. Of a JPEG, Pillow reads only the header: 60000 in two seconds."""
    try:
        path.encode("utf-8")  # TensorFlow passes file names as UTF-8
        with open(path, "rb") as f:
            data = f.read()
        with Image.open(io.BytesIO(data)) as photo:
            if photo.format != "JPEG":
                photo.load()
            # A copy cut short lacks the end marker. Look after the header, where Pillow stopped:
            # a phone's thumbnail, inside the header, has a marker of its own.
            elif data.find(b"\xff\xd9", photo.fp.tell()) < 0:
                return None
            plain = (photo.format == "JPEG" and photo.mode in ("RGB", "L")
                     and photo.getexif().get(ExifTags.Base.Orientation, 1) == 1)
            return types.SimpleNamespace(fingerprint=hashlib.sha256(data).digest(),
                                         plain_jpeg=plain, smaller_side=min(photo.size))
    except Exception:
        return None

def warn_about_copies_across_splits(splits, results):
    """Copies of training photos among the validation or test photos flatter the accuracy."""
    training = {check_photo(path).fingerprint: path for path in splits["train"][0]}
    others = np.concatenate([splits["validation"][0], splits["test"][0]])
    copies = [f"{path} = {training[check_photo(path).fingerprint]}" for path in others
              if check_photo(path).fingerprint in training]
    if copies:
        print(f"warning: {len(copies)} validation or test photo(s) are copies of training photos, "
              f"which flatters the accuracy: {'; '.join(copies[:3])}"
              f"{'; ...' if len(copies) > 3 else ''} (all in metrics.json)", file=sys.stderr)
    results["copies_across_splits"] = copies

# D. The command line, checks, the output folder, errors and main() -----------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Train an image classifier on a frozen MobileNetV2.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", help="your photos: DIR/<class>/*.jpg; or DIR/train/<class>/, "
                   "with DIR/validation/ (or val/, valid/) and DIR/test/; or DIR/labels.csv (file, "
                   "class) with the photos in DIR/train/ or DIR; splits missing are carved out of "
                   "the training photos; none: CIFAR-10's cats and dogs")
    p.add_argument("--model-handle", default=DEFAULT_HANDLE,
                   help="TF Hub URL or SavedModel folder of an image feature vector")
    p.add_argument("--image-size", type=int, default=224, help="pixels per side the module takes")
    p.add_argument("--epochs", type=int, default=10, help="epochs to train the head")
    p.add_argument("--batch-size", type=int, default=64, help="images per training batch")
    p.add_argument("--learning-rate", type=float, default=1e-3, help="the head's learning rate")
    p.add_argument("--dropout", type=float, default=0.2, help="dropout rate before the head")
    p.add_argument("--validation-split", type=float, default=0.1, help="fraction of each class "
                   "held out for validation, and for testing when there is no test/")
    p.add_argument("--max-images", type=int, help="about this many images per split, each class "
                   "keeping its share, for a quick run; none: all")
    p.add_argument("--no-cache", action="store_true", help="compute the features even if an "
                   "earlier run kept them, and keep none (kept in ~/.cache/transfer_learning)")
    p.add_argument("--features-with", choices=["auto", "keras", "litert"], default="auto",
                   help="what computes the features: litert is twice as fast on a CPU, after a "
                   f"conversion; auto: litert on a CPU from {LITERT_MIN_IMAGES} images on")
    p.add_argument("--output-dir", help="folder for this run; none: a new runs/<date-time>")
    p.add_argument("--no-show", action="store_true", help="save the plots without showing them")
    p.add_argument("--seed", type=int, default=42, help="random seed for splits and training")
    p.add_argument("--fine-tune-epochs", type=int, default=0, help="then unfreeze the base and "
                   f"train it all for this many epochs, in batches of {FINE_TUNE_BATCH} (peak "
                   "memory about 3 GB, against 1.7 GB without)")
    p.add_argument("--fine-tune-learning-rate", type=float, default=1e-4, help="its peak, for "
                   "batches of --batch-size: scaled to fine-tuning's smaller ones")
    p.add_argument("--augment", action="store_true", help="train on randomly flipped, turned and "
                   "zoomed training images, after the head (slow: their features change)")
    p.add_argument("--tflite", action="store_true", help="also export model.tflite, for phones")
    p.add_argument("--predict", nargs="+", metavar="PHOTO",
                   help="classify these photos, or those in these folders, with --model-dir's run")
    p.add_argument("--model-dir", help="the folder of an earlier run, for --predict")
    p.error = fail  # a mistyped flag gets the same one-line error as any other bad input
    return p.parse_args(argv)

def fail(message):  # bad input ends here: one line saying what is wrong and how to fix it
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)

def check_args(args):
    for ok, message in [
            (args.epochs >= 1, "--epochs must be at least 1"),
            (args.batch_size >= 1, "--batch-size must be at least 1"),
            (0 < args.validation_split < 1, "--validation-split must be between 0 and 1, e.g. 0.1"),
            (0 <= args.dropout < 1, "--dropout must be in [0, 1), e.g. 0.2"),
            (args.image_size >= 32, "--image-size must be 32 or more (224 for the default module)"),
            (args.learning_rate > 0, "--learning-rate must be positive, e.g. 0.001"),
            (args.fine_tune_learning_rate > 0, "--fine-tune-learning-rate must be positive"),
            (args.fine_tune_epochs >= 0, "--fine-tune-epochs cannot be negative"),
            (args.max_images is None or args.max_images >= 1, "--max-images must be at least 1"),
            (not args.predict or args.model_dir, "--predict needs --model-dir, an earlier run")]:
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
        fail(f"{work_dir} exists: another run is writing there, or one was killed; delete it or "
             "pick another --output-dir")
    except OSError as e:
        fail(f"cannot create --output-dir {output_dir} ({e.strerror}); choose another folder")
    return output_dir, work_dir

def save_metrics(work_dir, args, results):
    """metrics.json: the results, every setting and version that shaped them, seconds per step."""
    seconds = {}
    for (name, start), (_, end) in zip(STEPS, STEPS[1:] + [("end", time.perf_counter())]):
        seconds[name] = round(seconds.get(name, 0) + end - start, 2)
    versions = dict(python=platform.python_version(), tensorflow=tf.__version__,
                    tensorflow_hub=hub.__version__, litert=LiteRT is not None)
    results.update(settings=vars(args), seconds=seconds, versions=versions)
    with open(os.path.join(work_dir, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)

def main(argv=None):
    args = parse_args(argv)
    check_args(args)
    if args.predict:
        return predict_photos(args.predict, args.model_dir)
    if not issubclass(hub.KerasLayer, tf.keras.layers.Layer):  # a notebook imported TF first
        fail("TensorFlow was imported with Keras 3 before this script could ask for Keras 2 (TF "
             "Hub needs it): restart the notebook's kernel, or set TF_USE_LEGACY_KERAS=1 first")
    if args.no_show:
        plt.switch_backend("Agg")
    tf.keras.utils.set_random_seed(args.seed)
    output_dir, work_dir = prepare_output_dir(args.output_dir)
    results, status = {"output_dir": output_dir}, 0
    STEPS.clear()  # main() may run more than once in one Python
    previous = signal.signal(signal.SIGINT, lambda *_: leave_on_ctrl_c(work_dir, output_dir))
    try:
        try:
            run_lesson(args, work_dir, results)
        except Exception as e:  # once there are test results, a failing plot or export keeps them
            if "test_accuracy" not in results:
                raise
            results["last_step_error"], status = f"{type(e).__name__}: {e}", 1
            print(f"error: {results['last_step_error']}; the rest of the run is saved",
                  file=sys.stderr)
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
    """Ctrl-C ends a run at once (TensorFlow can swallow a KeyboardInterrupt): a saved run stays."""
    sys.stdout.flush()
    if os.path.exists(os.path.join(output_dir, "metrics.json")):
        print(f"\nInterrupted; the run is saved in {output_dir}/", file=sys.stderr, flush=True)
    else:
        shutil.rmtree(work_dir, ignore_errors=True)
        print("\nInterrupted: no run folder was written; earlier runs are untouched.",
              file=sys.stderr, flush=True)
    os._exit(130)

if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\nInterrupted: no run folder was written; earlier runs are untouched.",
              file=sys.stderr)
        sys.exit(130)
