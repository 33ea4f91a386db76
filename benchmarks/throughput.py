"""Does the model ever wait for data? Images per second of the input pipeline and of training.

For each model and image size (batch 32 by default) it measures:
    (a) the training sequence alone: balancing, shuffling, augmentation, float conversion;
    (b) training steps on batches already in memory: the compute ceiling of that model here;
    (c) `fit` on the real training sequence;
and prints (c)/(b), which is 1.0 when the pipeline costs nothing. A pretrained model is measured in
the stages asked for (`--stages`): "scratch" (every layer trains, batch norm included), "head" (the
backbone frozen: stage one) and "fine-tune" (stage two: blocks `fine_tune_from_block` and above
train at their lower rate, batch norm frozen unless `fine_tune_batch_norm`). `--set` changes any
setting, as main.py's does: `jit_compile`, the fine-tuning ones. Warm-up steps are excluded;
each number is the median of several repetitions. It also times the image-cache build and
measures a training run's peak private memory at two dataset sizes, which shows that memory
does not grow with the dataset: the images stay in the memory-mapped cache.

    python benchmarks/throughput.py                         # the study's models at 64 and 128 px
    python benchmarks/throughput.py --models cnn --sizes 64 --repeats 5
    python benchmarks/throughput.py --models efficientnet_lite0 --sizes 96 128 160 --stages head fine-tune
    python benchmarks/throughput.py --models efficientnet_lite0 --sizes 128 --stages fine-tune --set jit_compile=true
    python benchmarks/throughput.py --models densenet --sizes 64 --config configs/cpu.yaml   # the main job's network
    TF_ENABLE_ONEDNN_OPTS=0 python benchmarks/throughput.py     # without oneDNN's kernels
    KERAS_BACKEND=jax python benchmarks/throughput.py       # the same on another backend

Targets: (c)/(b) >= 0.9 for every model and size; (a) >= 10x the fastest model's (b).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as main.py
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import keras  # noqa: E402

from common.files import write_json  # noqa: E402
from dataset import CLASS_NAMES, Balance, class_weights, prepare_data  # noqa: E402
from networks import freeze_backbone, get_model_entry, list_models, unfreeze_top_blocks  # noqa: E402
from training import load_config  # noqa: E402
from training.config import parse_settings  # noqa: E402
from training.devices import compute_device, cpu_name  # noqa: E402
from training.trainer import build_model, compile_model  # noqa: E402

STAGES = ("scratch", "head", "fine-tune")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", nargs="+", default=["cnn", "densenet", "vgg16_bn", "efficientnet_lite0"], choices=list_models()
    )
    parser.add_argument(
        "--stages", nargs="+", default=["scratch"], choices=STAGES, help="for pretrained models (default: scratch)"
    )
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 128])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per repetition")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", help="HAM10000 folder (default: as main.py finds it)")
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="a preset (configs/cpu.yaml): its models as it sets them (default: training/config.py's, full width)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="settings",
        help="any setting of training/config.py, as main.py's --set (repeatable)",
    )
    parser.add_argument("--output", type=Path, help="also write the results as JSON here")
    parser.add_argument("--skip-memory", action="store_true", help="leave out the peak-memory runs")
    parser.add_argument("--skip-cache-build", action="store_true", help="leave out timing the image cache's build")
    parser.add_argument("--memory-probe", nargs=2, type=int, metavar=("SIZE", "IMAGES"), help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.memory_probe:
        print(
            json.dumps(memory_probe(*arguments.memory_probe, arguments.batch_size, arguments.steps, arguments.data_dir))
        )
        return

    settings = parse_settings(arguments.settings)
    results = {
        "machine": machine(),
        "batch_size": arguments.batch_size,
        "config": arguments.config and str(arguments.config),
        "settings": settings,
        "cache": [],
        "throughput": [],
        "memory": [],
    }
    for size in arguments.sizes:
        if not arguments.skip_cache_build:
            results["cache"].append(time_cache_build(size, arguments.data_dir))
            print_row("cache", results["cache"][-1])
        data = prepare_data(arguments.data_dir, image_size=size, verbose=False)
        for name in arguments.models:
            for stage in arguments.stages if get_model_entry(name).pretrained else ["scratch"]:
                row = measure(
                    name,
                    size,
                    data,
                    arguments.batch_size,
                    arguments.steps,
                    arguments.repeats,
                    stage,
                    arguments.config,
                    settings,
                )
                results["throughput"].append(row)
                print_row("throughput", row)
        for images in () if arguments.skip_memory else (2000, None):
            row = run_memory_probe(size, images, arguments)
            results["memory"].append(row)
            print_row("memory", row)
    print_summary(results)
    if arguments.output:
        write_json(arguments.output, results)


def measure(name, size, data, batch_size, steps, repeats, stage="scratch", config_file=None, settings=None):
    """(a), (b) and (c) for one model at one size (and training stage), in images per second; the
    model as the config file and `settings` set it (default: training/config.py's defaults, the
    full-width networks)."""
    # Random weights train as fast as ImageNet's: the stage, not the values, sets the cost.
    config = load_config(
        name, config_file, {**(settings or {}), "image_size": size, "batch_size": batch_size, "weights": "none"}
    )
    train = data.sequence("train", batch_size=batch_size, balance=Balance("combined", 1000), augment=True, seed=0)
    weights = class_weights(train.epoch_labels)
    train.class_weights = [weights[index] for index in range(len(CLASS_NAMES))]  # as training weighs the images
    model = build_model(config, 0)
    if stage == "head":
        freeze_backbone(model)
    elif stage == "fine-tune":
        unfreeze_top_blocks(
            model, config.fine_tune_from_block, get_model_entry(name).blocks, config.fine_tune_batch_norm
        )
    # A preset's cosine schedule needs a length; any will do, the step costs the same.
    compile_model(
        model,
        config,
        config.lr,
        weights,
        stage_steps=10_000,
        backbone_lr_factor=config.fine_tune_lr_factor if stage == "fine-tune" else 1.0,
    )

    def sequence_alone():
        start = time.perf_counter()
        for index in range(steps * 4):
            train[index % len(train)]
        return steps * 4 * batch_size / (time.perf_counter() - start)

    # The compute ceiling: the same batches, already in memory, straight into the train step.
    batches = [train[index] for index in range(steps)]

    def compute_ceiling(steps=steps):
        start = time.perf_counter()
        for images, labels, sample_weights in batches[:steps]:
            model.train_on_batch(images, labels, sample_weight=sample_weights)
        return steps * batch_size / (time.perf_counter() - start)

    def fit_on_sequence(steps=steps):
        start = time.perf_counter()
        model.fit(train, epochs=1, steps_per_epoch=steps, verbose=0)
        return steps * batch_size / (time.perf_counter() - start)

    for warm_up in (compute_ceiling, fit_on_sequence):
        warm_up(steps=1)  # graph tracing and thread start-up are not timed
    # Interleaved repetitions, so that a slow spell of the machine hits (b) and (c) alike.
    samples = {"sequence": [], "ceiling": [], "fit": []}
    for _ in range(repeats):
        samples["sequence"].append(sequence_alone())
        samples["ceiling"].append(compute_ceiling())
        samples["fit"].append(fit_on_sequence())
    medians = {key: statistics.median(values) for key, values in samples.items()}
    return {
        "model": name,
        "stage": stage,
        "image_size": size,
        "parameters": int(model.count_params()),
        "sequence_images_per_s": round(medians["sequence"], 1),
        "compute_images_per_s": round(medians["ceiling"], 1),
        "fit_images_per_s": round(medians["fit"], 1),
        "fit_over_compute": round(medians["fit"] / medians["ceiling"], 3),
        "jit_compile": bool(model.jit_compile),
        "onednn": os.environ["TF_ENABLE_ONEDNN_OPTS"] != "0",
    }


def time_cache_build(size, data_dir):
    """Builds the cache of every image at `size` into an empty folder; returns the seconds."""
    with tempfile.TemporaryDirectory() as cache_dir:
        start = time.perf_counter()
        data = prepare_data(data_dir, image_size=size, cache_dir=cache_dir, verbose=False)
        seconds = time.perf_counter() - start
        megabytes = data.cache.path.stat().st_size / 2**20
    return {"image_size": size, "images": len(data.split), "seconds": round(seconds, 1), "cache_mb": round(megabytes)}


def run_memory_probe(size, images, arguments):
    """A training run in a fresh process, so that its peak memory is its own."""
    command = [
        sys.executable,
        __file__,
        "--memory-probe",
        str(size),
        str(images or 0),
        "--batch-size",
        str(arguments.batch_size),
        "--steps",
        "2",
    ]
    if arguments.data_dir:
        command += ["--data-dir", arguments.data_dir]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def memory_probe(size, images, batch_size, steps, data_dir):
    """Peak memory of a few cnn training steps on `images` images (0: all), then every
    training image read once through the sequence.

    Private (anonymous) memory is what the process itself holds; the cache's pages are file
    pages the kernel can drop and re-read, counted apart.
    """
    sampler = MemorySampler()
    data = prepare_data(data_dir, image_size=size, limit=images or None, verbose=False)
    config = load_config("cnn", None, {"image_size": size, "batch_size": batch_size})
    model = build_model(config, 0)
    compile_model(model, config, config.lr, {index: 1.0 for index in range(len(CLASS_NAMES))})
    # Every training image read once: the point where an in-memory copy would show.
    train = data.sequence("train", batch_size=batch_size, balance=Balance("none"), augment=True)
    model.fit(train, epochs=1, steps_per_epoch=steps, verbose=0)
    for index in range(len(train)):
        train[index]
    peak_private, peak_file = sampler.stop()
    return {
        "image_size": size,
        "images": len(data.split),
        "cache_mb": round(data.cache.path.stat().st_size / 2**20),
        "peak_private_mb": round(peak_private / 1024),
        "peak_file_backed_mb": round(peak_file / 1024),
    }


class MemorySampler:
    """Samples the process's private and file-backed resident memory (kB) every 50 ms."""

    def __init__(self):
        self.peaks = [0, 0]
        self._running = True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self):
        while self._running:
            status = Path("/proc/self/status").read_text().splitlines()
            fields = dict(line.split(":", 1) for line in status if line.startswith(("RssAnon", "RssFile")))
            for index, key in enumerate(("RssAnon", "RssFile")):
                self.peaks[index] = max(self.peaks[index], int(fields[key].split()[0]))
            time.sleep(0.05)

    def stop(self):
        self._running = False
        self._thread.join()
        return tuple(self.peaks)


def machine():
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "backend": keras.backend.backend(),
        "device": compute_device(),
        "keras": keras.__version__,
    }


def print_row(kind, row):
    print(f"{kind}: " + ", ".join(f"{key}={value}" for key, value in row.items()), flush=True)


def print_summary(results):
    machine_ = results["machine"]
    device = machine_["device"]
    print(
        f"\nKeras {machine_['keras']} on {machine_['backend']}, computing on {device['kind']} ({device['name']}); "
        f"{machine_['cpu']}, {machine_['cores']} cores; batch {results['batch_size']}\n"
    )
    print(
        "| backend | jit | oneDNN | model | stage | size | (a) sequence img/s | (b) compute img/s | (c) fit img/s | (c)/(b) |"
    )
    print("|---|---|---|---|---|---:|---:|---:|---:|---:|")
    for row in results["throughput"]:
        print(
            f"| {machine_['backend']} | {row['jit_compile']} | {row['onednn']} | {row['model']} | {row.get('stage', 'scratch')} | {row['image_size']} | {row['sequence_images_per_s']:,.0f} | {row['compute_images_per_s']:,.1f} "
            f"| {row['fit_images_per_s']:,.1f} | {row['fit_over_compute']:.2f} |"
        )
    for size in sorted({row["image_size"] for row in results["throughput"]}):
        rows = [row for row in results["throughput"] if row["image_size"] == size]
        fastest = max(row["compute_images_per_s"] for row in rows)
        slowest_sequence = min(row["sequence_images_per_s"] for row in rows)
        print(f"{size} px: (a) is {slowest_sequence / fastest:.0f}x the fastest model's (b)")
    print("\n| size | cache build s | images | cache MB | peak private MB (2,000 images) | peak private MB (all) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for cache in results["cache"]:
        memory = [row for row in results["memory"] if row["image_size"] == cache["image_size"]] or [
            {"peak_private_mb": "–"}
        ]
        print(
            f"| {cache['image_size']} | {cache['seconds']} | {cache['images']:,} | {cache['cache_mb']} "
            f"| {memory[0]['peak_private_mb']} | {memory[-1]['peak_private_mb']} |"
        )


if __name__ == "__main__":
    main()
