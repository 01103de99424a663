"""Benchmark: what transfer_learning.py costs, measured as a user meets it. Not a test.

Three benchmarks, each running the script as fresh processes on the same images, round-robin,
--repeats times; wall time is the whole process, and the script's own metrics.json says where
the time went. Nothing is written into the repository.

  cache   the default run twice over, in a fresh feature cache: `first` computes the features
          and keeps them; `again` changes only --dropout and reads them back; `keras` is the
          first run with --features-with keras (no cache), to compare with LiteRT.
          python tests/benchmark.py cache --data-dir DIR [--module M] [--repeats 2]

  photos  phone photos against small ones: --per-class test images of DIR/test/<class>/ are
          upscaled with noise to 4032x3024 (JPEG quality 90; half of them stored sideways with
          EXIF orientation 6, as phones store portrait shots) and to 500x375. The script runs
          on each folder (--no-cache, 1 epoch); per image, its data step plus feature pass is
          compared. With --model-dir RUN, RUN's model also classifies the same phone photos
          stored upright and stored sideways, and serve() is fed fully decoded photos.
          python tests/benchmark.py photos --data-dir DIR --model-dir RUN [--per-class 100]

  recipes the recipe the lesson teaches against the naive one and the floor, on the same images
          (the script's --max-images of each split; its --epochs): `floor` starts TensorFlow,
          loads the module and runs one Keras predict over the images (tf.data decoding the
          JPEGs, batches of 32); `taught-first` is the script's run in a fresh feature cache,
          which computes the features once and trains the head on them; `taught-rerun` changes
          only --dropout and reads them back; `naive` trains the whole model (frozen base, the
          same head, optimizer, batches and epochs) on the images, running the base on every
          image in every epoch, as the script's own functions build it, then tests it.
          python tests/benchmark.py recipes --data-dir DIR [--module M] [--max-images 1000]
                                            [--epochs 10] [--repeats 2]

DIR holds class folders as the script's --data-dir takes them; the figures in BENCHMARK.md use
the 12000 CIFAR-10 cat and dog images as JPEG files (DIR/{train,test}/{cat,dog}/*.jpg) and the
genuine ImageNet MobileNetV2 (--module, or the default handle seeded in $TFHUB_CACHE_DIR).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "transfer_learning.py")
HERE = os.path.abspath(__file__)


def run_process(command, env, log):
    """One fresh Python process, its output in log: its wall seconds."""
    start = time.perf_counter()
    with open(log, "w") as f:
        done = subprocess.run([sys.executable, *map(str, command)], stdout=f,
                              stderr=subprocess.STDOUT, env=env, cwd=REPO)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{log} failed (exit {done.returncode}):\n{open(log).read()[-3000:]}")
    return seconds


def run_script(argv, env, log):
    """One run of the script: its wall seconds and its metrics.json (None for --predict)."""
    seconds = run_process([SCRIPT, *argv], env, log)
    out = argv[argv.index("--output-dir") + 1] if "--output-dir" in argv else None
    return seconds, json.load(open(os.path.join(out, "metrics.json"))) if out else None


def cache_benchmark(args, tmp):
    common = ["--data-dir", args.data_dir, "--no-show"]
    common += ["--model-handle", args.module] if args.module else []
    rows = {"first": [], "again": [], "keras": []}
    for r in range(args.repeats):
        env = dict(os.environ, XDG_CACHE_HOME=os.path.join(tmp, f"cache{r}"))  # fresh, empty
        for name, extra in (("first", []), ("again", ["--dropout", "0.3"]),
                            ("keras", ["--features-with", "keras", "--no-cache"])):
            out = os.path.join(tmp, f"{name}{r}")
            seconds, m = run_script([*common, *extra, "--output-dir", out], env, out + ".log")
            rows[name].append(dict(seconds=seconds, test_accuracy=m["test_accuracy"],
                                   from_cache=m["features_from_cache"], phases=m["seconds"]))
            print(f"round {r + 1} {name:>6}: {seconds:6.1f} s, test accuracy "
                  f"{m['test_accuracy']:.4f}, features from the cache: {m['features_from_cache']}",
                  flush=True)
    best = {name: min(runs, key=lambda run: run["seconds"]) for name, runs in rows.items()}
    ratios = [again["seconds"] / first["seconds"] for first, again in zip(rows["first"], rows["again"])]
    return dict(runs=rows, best=best, again_over_first=ratios,
                litert_over_keras=best["first"]["seconds"] / best["keras"]["seconds"])


def make_photo(source, size, noise, rng):
    """A CIFAR-10 image upscaled to size (width, height) with Gaussian noise."""
    big = np.asarray(Image.open(source).convert("RGB").resize(size, Image.BICUBIC), np.float32)
    big = big + rng.normal(0, noise, big.shape).astype(np.float32)
    return Image.fromarray(np.clip(big, 0, 255).astype(np.uint8))


def write_photos(args, tmp):
    """phone/{cat,dog}: half stored upright, half sideways; small/: 500x375; and for the
    orientation check, upright/ and sideways/: every phone photo stored both ways. With
    --photos-dir, they are written there once and used again."""
    tmp = args.photos_dir or tmp
    names = ("upright", "sideways", "small", "phone")
    if all(os.path.isdir(os.path.join(tmp, name)) for name in names):
        return {name: os.path.join(tmp, name) for name in names}
    rng, folders = np.random.default_rng(0), {}
    for label in sorted(os.listdir(os.path.join(args.data_dir, "test"))):
        sources = sorted(os.listdir(os.path.join(args.data_dir, "test", label)))[:args.per_class]
        for i, name in enumerate(sources):
            source = os.path.join(args.data_dir, "test", label, name)
            phone = make_photo(source, (4032, 3024), args.noise, rng)
            small = make_photo(source, (500, 375), args.noise, rng)
            sideways = phone.transpose(Image.Transpose.ROTATE_90)  # as the sensor saw it
            exif = Image.Exif()
            exif[274] = 6  # "turn me a quarter clockwise"
            for folder, image, extra in (("upright", phone, {}), ("sideways", sideways, {"exif": exif}),
                                         ("small", small, {})):
                path = os.path.join(tmp, folder, label, name)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                image.save(path, quality=90, **extra)
                folders[folder] = os.path.join(tmp, folder)
            mixed = os.path.join(tmp, "phone", label, name)
            os.makedirs(os.path.dirname(mixed), exist_ok=True)
            os.link(os.path.join(tmp, "sideways" if i % 2 else "upright", label, name), mixed)
        print(f"wrote {len(sources)} photos of {label} in each size", flush=True)
    return dict(folders, phone=os.path.join(tmp, "phone"))


def photos_benchmark(args, tmp):
    folders = write_photos(args, tmp)
    sizes = {name: sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(folders[name])
                       for f in fs) / 1e6 for name in ("phone", "small")}
    common = ["--no-show", "--no-cache", "--epochs", "1"]
    common += ["--model-handle", args.module] if args.module else []
    rows = {"phone": [], "small": []}
    for r in range(args.repeats):
        for name in rows:
            out = os.path.join(tmp, f"run_{name}{r}")
            seconds, m = run_script(["--data-dir", folders[name], *common, "--output-dir", out],
                                    os.environ, out + ".log")
            images = m["num_train"] + m["num_validation"] + m["num_test"]
            work = m["seconds"]["1. Data"] + m["seconds"]["3. Bottleneck features"]
            rows[name].append(dict(seconds=seconds, images=images, data_and_features_s=work,
                                   ms_per_image=1000 * work / images, features_with=m["features_with"],
                                   phases=m["seconds"]))
            print(f"round {r + 1} {name:>5}: data + features {work:6.1f} s for {images} images, "
                  f"{1000 * work / images:.1f} ms each ({m['features_with']})", flush=True)
    best = {name: min(run["ms_per_image"] for run in runs) for name, runs in rows.items()}
    results = dict(runs=rows, file_megabytes=sizes, best_ms_per_image=best,
                   phone_over_small=best["phone"] / best["small"])
    if args.model_dir:
        results.update(orientation(args, folders, tmp))
    return results


def orientation(args, folders, tmp):
    """The same model on the same photos stored upright and stored sideways; and serve() on the
    fully decoded phone photos against --predict's (JPEG-scaled) decoding."""
    right = {}
    for way in ("upright", "sideways"):
        log = os.path.join(tmp, f"predict_{way}.log")
        class_folders = [os.path.join(folders[way], label) for label in sorted(os.listdir(folders[way]))]
        run_script(["--predict", *class_folders, "--model-dir", args.model_dir], os.environ, log)
        lines = [line for line in open(log) if line.startswith(folders[way])]
        right[way] = sum(line.split(": ")[1].split()[0] == line.split(os.sep)[-2] for line in lines)
        right[f"{way}_photos"] = len(lines)
    code = f"""import sys, numpy as np
sys.path.insert(0, {REPO!r})
import transfer_learning as tl
from PIL import Image
model, _, size = tl.load_exported_run({args.model_dir!r})
largest, changed = 0.0, 0
for folder, _, names in sorted(tl.os.walk({folders['upright']!r})):
    for name in sorted(names)[:10]:
        path = tl.os.path.join(folder, name)
        full = model.serve(np.asarray(Image.open(path).convert("RGB"))[None]).numpy()[0]
        scaled = model.serve(tl.read_photo(path, size)[None]).numpy()[0]
        largest, changed = max(largest, float(np.abs(full - scaled).max())), changed + int(full.argmax() != scaled.argmax())
print("REPORT", largest, changed)"""
    report = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    largest, changed = report.stdout.split("REPORT")[-1].split()
    return dict(right=right, full_decode_vs_scaled=dict(largest_difference=float(largest),
                                                        classes_changed=int(changed)))


RECIPES = ("floor", "taught-first", "taught-rerun", "naive")


def recipes_benchmark(args, tmp):
    script = ["--data-dir", args.data_dir, "--epochs", args.epochs]
    script += ["--max-images", args.max_images] if args.max_images else []
    script += ["--model-handle", args.module] if args.module else []
    listing = os.path.join(tmp, "images.json")  # the images every contestant gets, untimed
    run_process([HERE, "_images", listing, *script], os.environ, listing + ".log")
    counts = {name: len(paths) for name, paths in json.load(open(listing))["paths"].items()}
    print(f"images: {counts}, {args.epochs} epochs", flush=True)
    rows = {name: [] for name in RECIPES}
    for r in range(args.repeats):
        env = dict(os.environ, XDG_CACHE_HOME=os.path.join(tmp, f"cache{r}"))  # fresh, empty
        for name in RECIPES:  # the floor first: each ratio is to this round's floor
            row = run_contestant(name, script, listing, os.path.join(tmp, f"{name}{r}"), env)
            if row["counts"] != counts:
                sys.exit(f"{name} got other images than the floor: {row['counts']}, {counts}")
            row["over_floor"] = row["seconds"] / (rows["floor"] + [row])[r]["seconds"]
            rows[name].append(row)
            accuracy = row["test_accuracy"]
            print(f"round {r + 1} {name:>12}: {row['seconds']:6.1f} s, {row['over_floor']:5.2f}x "
                  f"the floor{'' if accuracy is None else f', test accuracy {accuracy:.4f}'}",
                  flush=True)
    each = lambda key: {name: [run[key] for run in runs] for name, runs in rows.items()}
    return dict(runs=rows, images=counts, epochs=args.epochs, seconds=each("seconds"),
                over_floor=each("over_floor"), test_accuracy=each("test_accuracy"),
                naive_over_taught_first=[naive["seconds"] / first["seconds"] for first, naive
                                         in zip(rows["taught-first"], rows["naive"])])


def run_contestant(name, script, listing, out, env):
    """One contestant as a fresh process: wall seconds, test accuracy, images per split."""
    if name == "floor":
        seconds = run_process([HERE, "_floor", listing, out + ".json"], env, out + ".log")
        return dict(seconds=seconds, test_accuracy=None, **json.load(open(out + ".json")))
    if name == "naive":
        seconds = run_process([HERE, "_naive", out, *script], env, out + ".log")
        return dict(seconds=seconds, **json.load(open(os.path.join(out, "naive.json"))))
    extra = ["--dropout", "0.3"] if name == "taught-rerun" else []
    seconds, m = run_script([*script, *extra, "--no-show", "--output-dir", out], env, out + ".log")
    if m["features_from_cache"] != (name == "taught-rerun"):
        sys.exit(f"{name}: features from the cache: {m['features_from_cache']} ({out}.log)")
    counts = {split: m[f"num_{split}"] for split in ("train", "validation", "test")}
    return dict(seconds=seconds, test_accuracy=m["test_accuracy"], counts=counts,
                features_with=m["features_with"], from_cache=m["features_from_cache"],
                phases=m["seconds"])


def import_lesson():
    sys.path.insert(0, REPO)
    import transfer_learning
    return transfer_learning


def load_data(tl, s, results=None):
    """Step 1 of the script's run_lesson, as it runs there: (splits, classes); results, if given,
    gets what it records. The tests use it too (conftest.py), so it cannot drift from the script."""
    results = {} if results is None else results
    if s.data_dir:
        splits, classes, results["skipped_files"] = tl.load_photos(s)
    else:
        splits, classes = tl.load_cifar10_cats_and_dogs()
    splits = tl.carve_missing_splits(splits, s.validation_split, s.seed)
    splits = tl.sample(splits, s.max_images, s.seed)
    results.update(classes=classes, **tl.count_images(splits, classes))
    if s.data_dir:
        results["copies_across_splits"] = tl.find_copies_across_splits(splits)
    return splits, classes


def list_images(listing, *script):
    """_images: the splits the script's own step 1 picks for these options, as paths."""
    tl = import_lesson()
    args = tl.parse_args(list(script))
    splits, _ = load_data(tl, args)
    paths = {name: [str(path) for path in x] for name, (x, _, _) in splits.items()}
    with open(listing, "w") as f:
        json.dump(dict(paths=paths, module=args.model_handle, image_size=args.image_size), f)


def floor(listing, out):
    """_floor: start TensorFlow, load the module, one Keras predict over every listed JPEG."""
    os.environ.update(TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2",
                      TF_CPU_ALLOCATOR_USE_BFC="true")  # as the script sets them
    import tensorflow as tf
    import tensorflow_hub as hub
    spec = json.load(open(listing))
    size, paths = spec["image_size"], [p for split in spec["paths"].values() for p in split]
    def read(path):
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        return tf.image.resize(tf.cast(image, tf.float32) / 255, (size, size))
    images = tf.data.Dataset.from_tensor_slices(paths)
    images = images.map(read, num_parallel_calls=tf.data.AUTOTUNE).batch(32)
    inputs = tf.keras.Input((size, size, 3))
    model = tf.keras.Model(inputs, hub.KerasLayer(hub.load(spec["module"]))(inputs))
    features = model.predict(images.prefetch(tf.data.AUTOTUNE), verbose=0)
    assert features.shape[0] == len(paths)
    with open(out, "w") as f:
        json.dump(dict(counts={name: len(split) for name, split in spec["paths"].items()}), f)


def naive(out, *script):
    """_naive: the whole model (frozen base, the script's head) fit on the images, as
    train_on_images does without augmentation or fine-tuning, then tested."""
    tl = import_lesson()
    args = tl.parse_args(list(script))
    tl.tf.keras.utils.set_random_seed(args.seed)
    os.makedirs(out)
    splits, classes = load_data(tl, args)
    datasets = {name: tl.make_dataset(x, y, args.image_size) for name, (x, y, _) in splits.items()}
    module = tl.load_module(args.model_handle, args.image_size)
    model = tl.build_model(module, args.image_size, len(classes), args.dropout)[0]
    images = tl.make_dataset(*splits["train"][:2], args.image_size, args.batch_size, args.seed)
    tl.compile_for_training(model, args.learning_rate)
    tl.fit_keeping_the_best_epoch(model, images, datasets["validation"], args.epochs)
    predicted = model.predict(datasets["test"], verbose=0).argmax(axis=1)
    counts = {name: len(y) for name, (_, y, _) in splits.items()}
    with open(os.path.join(out, "naive.json"), "w") as f:
        json.dump(dict(test_accuracy=float(np.mean(predicted == splits["test"][1])),
                       counts=counts), f)


HELPERS = {"_images": list_images, "_floor": floor, "_naive": naive}  # run as fresh processes


def main():
    if len(sys.argv) > 1 and sys.argv[1] in HELPERS:
        return HELPERS[sys.argv[1]](*sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("benchmark", choices=["cache", "photos", "recipes"])
    p.add_argument("--data-dir", required=True, help="class folders; photos uses DIR/test/<class>/")
    p.add_argument("--module", help="a feature-vector SavedModel (default: the script's default)")
    p.add_argument("--model-dir", help="photos: a finished run whose model classifies the photos")
    p.add_argument("--per-class", type=int, default=100, help="photos: images of each class")
    p.add_argument("--noise", type=float, default=3.0, help="photos: noise added, in 0-255 levels")
    p.add_argument("--photos-dir", help="photos: write the photos here (outside the repository) "
                   "and keep them, or use those already there; default: a temporary folder")
    p.add_argument("--max-images", type=int, default=1000, help="recipes: the script's "
                   "--max-images, about this many images of each split (0: all)")
    p.add_argument("--epochs", type=int, default=10, help="recipes: epochs of each recipe")
    p.add_argument("--repeats", type=int, default=2, help="rounds; compare the best of each")
    p.add_argument("--output", default="benchmark.json", help="the results as JSON")
    args = p.parse_args()
    args.data_dir = os.path.abspath(args.data_dir)
    with tempfile.TemporaryDirectory(prefix="benchmark-") as tmp:
        benchmark = dict(cache=cache_benchmark, photos=photos_benchmark, recipes=recipes_benchmark)
        results = benchmark[args.benchmark](args, tmp)
    results.update(settings=vars(args), cpu_cores=os.cpu_count())
    with open(args.output, "w") as f:
        json.dump(results, f, indent=2)
    summary = {k: v for k, v in results.items() if k not in ("runs", "best", "settings")}
    print(json.dumps(summary, indent=2))
    print(f"Wrote {os.path.abspath(args.output)}")


if __name__ == "__main__":
    main()
