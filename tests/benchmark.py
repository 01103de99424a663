"""Benchmark: what does transfer_learning.py cost, and what does each way of computing features give?

Contestants, each a fresh process on the same images and the same module, run
round-robin (--contestants, in that order) --repeats times:

  script           python transfer_learning.py, start to finish, as a user runs it
                   (on a CPU with all 12000 images, --features-with auto picks LiteRT);
  script_keras     the same with --features-with keras;
  script_litert    the same with --features-with litert;
  features_keras   the script's extractor over every image with Keras predict (tf.data
                   decoding and resizing as it goes), nothing else;
  features_litert  the same converted for LiteRT (the conversion is timed apart);
  keras_predict    plain Keras MobileNetV2.predict on the same images, preloaded and
                   resized in memory: Keras' own model speed;
  floor            start TensorFlow, load the module with hub.KerasLayer, push every
                   image through it once with tf.data, nothing else;
  naive            the script's own model trained as most tutorials do: model.fit on
                   image datasets for --epochs epochs, recomputing the frozen features
                   every epoch, then one evaluation on the test images (slow: ~25 min).

Wall time is the whole process; peak memory is its ru_maxrss from os.wait4.

The module is a MobileNetV2 1.0 with random weights (same compute as the real one,
[0, 1] images in, 1280 features out) unless --module gives a SavedModel, e.g. the
genuine one from ../shared/tools/imagenet_mobilenet_v2.py.

    python tests/benchmark.py --data-dir DIR --output /tmp/benchmark.json   # DIR/{train,test}/<class>/
    python tests/benchmark.py --data-dir DIR --limit 32 --epochs 1 --repeats 1 --image-size 96

The table is printed and written as JSON to --output (default: benchmark.json in the
current folder; keep it out of the repo).
"""
import argparse
import json
import operator
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "transfer_learning.py")
# Every contestant runs TensorFlow as the script configures it (Keras 2, the BFC
# CPU allocator), so the comparison is between recipes, not settings.
ENV = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3", MPLBACKEND="Agg",
           TF_CPU_ALLOCATOR_USE_BFC="true")
INFERENCE_BATCH = 32  # the script's batch for running the network, and Keras predict's default
TARGETS = {"script / script_keras": ("<=", 0.6), "LiteRT features / Keras predict": (">=", 2.0),
           "|accuracy litert - keras|": ("<=", 0.005), "naive/script": (">=", 5.0), "script peak GB": ("<=", 2.5)}
COMPARE = {"<=": operator.le, ">=": operator.ge}

# Each child program ends by printing one line: "REPORT {json}".
PREAMBLE = f"""import json, os, sys, time
sys.path.insert(0, {REPO!r})
import numpy as np, tensorflow as tf, tensorflow_hub as hub
def report(**values): print("REPORT " + json.dumps(values))
"""

# Not timed: the module (unless given) and the list of images the script will use.
PREPARE = PREAMBLE + """import transfer_learning as tl
action, module, paths_file, size, script_args = *sys.argv[1:4], int(sys.argv[4]), sys.argv[5:]
if action == "build":  # [0, 1] images in, as TF Hub modules take them; MobileNetV2 wants [-1, 1]
    images = tf.keras.Input((size, size, 3))
    base = tf.keras.applications.MobileNetV2(weights=None, include_top=False, pooling="avg",
                                             input_shape=(size, size, 3))
    features = base(tf.keras.layers.Rescaling(2.0, offset=-1.0)(images))
    tf.saved_model.save(tf.keras.Model(images, features), module)
splits, _ = tl.load_data(tl.parse_args(script_args), {})
paths = [p for name in ("train", "validation", "test") for p in splits[name][0]]
open(paths_file, "w").write("\\n".join(paths))
report(tf_version=tf.__version__, gpus=[g.name for g in tf.config.list_physical_devices("GPU")])
"""

FLOOR = PREAMBLE + """paths_file, module, size, batch = *sys.argv[1:3], int(sys.argv[3]), int(sys.argv[4])
paths = open(paths_file).read().split("\\n")
base = hub.KerasLayer(module, trainable=False)
start = time.perf_counter()
decode = lambda p: tf.io.decode_image(tf.io.read_file(p), channels=3, expand_animations=False)
images = (tf.data.Dataset.from_tensor_slices(paths)
          .map(lambda p: tf.image.resize(tf.image.convert_image_dtype(decode(p), tf.float32), (size, size)),
               num_parallel_calls=tf.data.AUTOTUNE)
          .batch(batch).prefetch(tf.data.AUTOTUNE))
count = sum(int(base(x).shape[0]) for x in images)
report(images=count, images_per_s=count / (time.perf_counter() - start))
"""

NAIVE = PREAMBLE + """import transfer_learning as tl
args = tl.parse_args(sys.argv[1:])
tf.keras.utils.set_random_seed(args.seed)
splits, classes = tl.load_data(args, {})
data = {name: tl.make_dataset(x, y, args.image_size, args.batch_size, shuffle=name == "train", seed=args.seed)
        for name, (x, y) in splits.items()}
model = tl.build_model(args.model_handle, args.image_size, len(classes), args.dropout)[0]
tl.compile_for_training(model, args.learning_rate)
model.fit(data["train"], validation_data=data["validation"], epochs=args.epochs, verbose=2)
report(test_accuracy=model.evaluate(data["test"], verbose=2)[1])
"""

FEATURES = PREAMBLE + """import transfer_learning as tl
runtime, paths_file, module, size, batch = sys.argv[1:4] + [int(sys.argv[4]), int(sys.argv[5])]
paths = np.array(open(paths_file).read().split("\\n"))
images = tl.make_dataset(paths, np.zeros(len(paths), np.int64), size, batch)
extractor = tl.build_model(module, size, 2, 0.0)[2]
start = time.perf_counter()
features_of = tl.feature_function(extractor, runtime)
converted = time.perf_counter()
count = len(features_of(images))
report(images=count, conversion_s=converted - start, images_per_s=count / (time.perf_counter() - converted))
"""

KERAS_PREDICT = PREAMBLE + """paths_file, size, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
paths = open(paths_file).read().split("\\n")
decode = lambda p: tf.io.decode_image(tf.io.read_file(p), channels=3, expand_animations=False)
resized = tf.data.Dataset.from_tensor_slices(paths).map(  # uint8: 12000 float images would be 7 GB
    lambda p: tf.cast(tf.round(tf.image.resize(decode(p), (size, size))), tf.uint8)).batch(batch)
images = np.concatenate(list(resized.as_numpy_iterator()))
model = tf.keras.applications.MobileNetV2(weights=None, include_top=False, pooling="avg",
                                          input_shape=(size, size, 3))
start = time.perf_counter()
model.predict(images, batch_size=batch, verbose=0)
report(images=len(images), images_per_s=len(images) / (time.perf_counter() - start))
"""


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", default=os.path.join(REPO, "..", "shared", "data", "cifar10-catdog"),
                   help="class folders of images, as the script's --data-dir takes them")
    p.add_argument("--contestants", default="script,script_keras,features_keras,features_litert,keras_predict",
                   help="comma-separated, of: " + ", ".join(CONTESTANTS))
    p.add_argument("--module", help="a feature-vector SavedModel (default: MobileNetV2 with random weights)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--epochs", type=int, default=10, help="epochs of the script and of naive")
    p.add_argument("--batch-size", type=int, default=64, help="the script's default batch size")
    p.add_argument("--repeats", type=int, default=2, help="runs of each contestant; the best counts")
    p.add_argument("--limit", type=int, help="cap on images per split (the script's --max-images)")
    p.add_argument("--output", default="benchmark.json", help="where the results are written as JSON")
    args = p.parse_args()
    unknown = set(args.contestants.split(",")) - set(CONTESTANTS)
    if unknown:
        p.error(f"unknown contestants {sorted(unknown)}; choose from {', '.join(CONTESTANTS)}")
    if args.module and not os.path.isfile(os.path.join(args.module, "saved_model.pb")):
        p.error(f"--module {args.module} is not a SavedModel folder (no saved_model.pb)")
    return args


CONTESTANTS = ["script", "script_keras", "script_litert", "features_keras", "features_litert", "keras_predict",
               "floor", "naive"]


def run_child(argv, log_path):
    """Run one process to its end: wall seconds, its own peak RSS in MB, and its REPORT line."""
    with open(log_path, "w") as log:
        start = time.perf_counter()
        child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=ENV, cwd=REPO)
        _, status, usage = os.wait4(child.pid, 0)  # rusage of exactly this child
        seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    output = open(log_path).read()
    if child.returncode != 0:
        sys.exit(f"{os.path.basename(log_path)} failed (exit {child.returncode}):\n{output[-3000:]}")
    reports = [json.loads(line[7:]) for line in output.splitlines() if line.startswith("REPORT ")]
    return dict(seconds=seconds, peak_mb=usage.ru_maxrss / 1024, **(reports[-1] if reports else {}))


def describe_machine(prepared):
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    return dict(cores=os.cpu_count(), cpu=cpu, gpus=prepared["gpus"] or "none",
                tensorflow=prepared["tf_version"])


def benchmark(args, tmp):
    py = sys.executable
    module = os.path.abspath(args.module) if args.module else os.path.join(tmp, "module")
    data_dir, paths = os.path.abspath(args.data_dir), os.path.join(tmp, "images.txt")
    common = ["--data-dir", data_dir, "--model-handle", module, "--image-size", str(args.image_size),
              "--epochs", str(args.epochs), "--batch-size", str(args.batch_size)]
    common += ["--max-images", str(args.limit)] if args.limit else []
    print("Preparing the module and the image list...", flush=True)
    action = "use" if args.module else "build"
    prepared = run_child([py, "-c", PREPARE, action, module, paths, str(args.image_size), *common],
                         os.path.join(tmp, "prepare.log"))
    size_batch = [str(args.image_size), str(INFERENCE_BATCH)]
    names = args.contestants.split(",")
    runs = {name: [] for name in names}
    for r in range(args.repeats):
        commands = {"floor": [py, "-c", FLOOR, paths, module, *size_batch],
                    "naive": [py, "-c", NAIVE, *common],
                    "keras_predict": [py, "-c", KERAS_PREDICT, paths, *size_batch]}
        for runtime in ("keras", "litert"):
            commands[f"features_{runtime}"] = [py, "-c", FEATURES, runtime, paths, module, *size_batch]
        for name, forced in (("script", []), ("script_keras", ["--features-with", "keras"]),
                             ("script_litert", ["--features-with", "litert"])):
            commands[name] = [py, SCRIPT, *common, *forced, "--no-show", "--output-dir", os.path.join(tmp, f"{name}{r}")]
        for name in names:
            runs[name].append(run_child(commands[name], os.path.join(tmp, f"{name}{r}.log")))
            if name.startswith("script"):  # where its time went, by its own account
                with open(os.path.join(tmp, f"{name}{r}", "metrics.json")) as f:
                    metrics = json.load(f)
                runs[name][-1].update(phases_s=metrics["seconds"], test_accuracy=metrics["test_accuracy"],
                                      accuracy_before_training=metrics["accuracy_before_training"],
                                      features_with=metrics["features_with"],
                                      images=metrics["num_train"] + metrics["num_val"] + metrics["num_test"])
            print(f"round {r + 1}/{args.repeats} {name:>15}: {runs[name][-1]['seconds']:7.1f} s", flush=True)
    return describe_machine(prepared), runs


def summarize(args, machine, runs):
    best = {name: min(run["seconds"] for run in rounds) for name, rounds in runs.items()}
    table = {name: dict(best_s=best[name], runs_s=[run["seconds"] for run in rounds],
                        peak_rss_mb=max(run["peak_mb"] for run in rounds),
                        images_per_s=max((run.get("images_per_s", 0) for run in rounds)),
                        conversion_s=min((run.get("conversion_s", 0) for run in rounds)),
                        test_accuracy=rounds[0].get("test_accuracy"), features_with=rounds[0].get("features_with"),
                        accuracy_before_training=rounds[0].get("accuracy_before_training"))
             for name, rounds in runs.items()}
    measured = {}
    if {"script", "script_keras"} <= set(runs):
        measured["script / script_keras"] = best["script"] / best["script_keras"]
        measured["|accuracy litert - keras|"] = abs(table["script"]["test_accuracy"]
                                                    - table["script_keras"]["test_accuracy"])
    if {"features_litert", "keras_predict"} <= set(runs):
        measured["LiteRT features / Keras predict"] = (table["features_litert"]["images_per_s"]
                                                       / table["keras_predict"]["images_per_s"])
    if {"naive", "script"} <= set(runs):
        measured["naive/script"] = best["naive"] / best["script"]
    if "script" in runs:
        measured["script peak GB"] = table["script"]["peak_rss_mb"] / 1024
    checks = {key: dict(value=value, target=f"{TARGETS[key][0]} {TARGETS[key][1]}",
                        passed=COMPARE[TARGETS[key][0]](value, TARGETS[key][1]))
              for key, value in measured.items()}
    phases = {name: min(rounds, key=lambda run: run["seconds"])["phases_s"]
              for name, rounds in runs.items() if name.startswith("script")}
    return dict(machine=machine, settings=vars(args), table=table, script_phases_s=phases, checks=checks)


def print_results(results):
    print(f"\nMachine: {json.dumps(results['machine'])}")
    print(f"{'':16}{'best s':>9}  {'all runs s':<24}{'peak MB':>9}{'images/s':>10}{'test acc':>10}")
    for name, row in results["table"].items():
        runs = ", ".join(f"{s:.1f}" for s in row["runs_s"])
        rate = f"{row['images_per_s']:.1f}" if row["images_per_s"] else "-"
        accuracy = f"{row['test_accuracy']:.4f}" if row["test_accuracy"] is not None else "-"
        print(f"{name:16}{row['best_s']:9.1f}  {runs:<24}{row['peak_rss_mb']:9.0f}{rate:>10}{accuracy:>10}"
              + (f"  (conversion {row['conversion_s']:.1f} s)" if row["conversion_s"] else ""))
    for name, phases in results["script_phases_s"].items():
        print(f"{name} phases of its best run, s:", ", ".join(f"{phase} {s}" for phase, s in phases.items()))
    for key, check in results["checks"].items():
        print(f"{key:>33}: {check['value']:7.3f}  (target {check['target']:>7})  "
              f"{'PASS' if check['passed'] else 'FAIL'}")


def main():
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="benchmark-") as tmp:
        machine, runs = benchmark(args, tmp)
    results = summarize(args, machine, runs)
    print_results(results)
    with open(args.output, "w") as f:
        json.dump(results, f, indent=2)
    print(f"Wrote {os.path.abspath(args.output)}")


if __name__ == "__main__":
    main()
