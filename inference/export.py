"""Exporting a trained run, or a study configuration's fold ensemble, for runtimes outside this codebase.

    from inference.export import export_model
    folder = export_model("results/runs/RUN", "onnx")                      # RUN/exports/onnx/
    folder = export_model("results/studies/STUDY/densenet", "litert", quantize="int8")

The exported graph is the inference graph: the run's model without its training-only layers (the
augmentation block and dropout, whose random ops ONNX converters cannot translate), with the
preprocessing the model holds (pixel scaling, normalisation, colour constancy) and, for a metadata
model, each fold model's own metadata encoding (`inference.exported.encode_metadata` says what
the graph takes). A fold ensemble is one graph averaging its models' probabilities. Keras's own
exporter writes the file (`keras.Model.export`); the file is then run with its own runtime on the
run's whole test subset and compared with the Keras model before it is kept. A float export whose
predicted class disagrees with Keras's on more than 0.1% of the test images is refused, and nothing
is left behind: the export is written into a hidden temporary folder beside the destination and
renamed into place only once checked.
"""

import os
import shutil
import tempfile
import time
import warnings
from importlib import metadata as package_metadata
from pathlib import Path

import keras
import numpy as np

from common.errors import ConfigError, DataError
from common.files import write_json
from dataset.metadata import CLASS_DESCRIPTIONS, CLASS_NAMES, UNKNOWN
from evaluation.predictor import Predictor
from inference.exported import EXPORT_FILENAME, MODEL_FILES, RUNTIMES, encode_metadata, load_runtime, metadata_features
from networks.augmentation import AUGMENTATION_NAME
from training import prepare_run_data
from training.run import run_config

FORMATS = tuple(MODEL_FILES)
# What each format's post-training quantisation does; LiteRT's converter does both.
QUANTIZATIONS = {"litert": ("float16", "int8")}
KERAS_FORMATS = {"onnx": "onnx", "litert": "litert", "saved_model": "tf_saved_model", "openvino": "openvino"}
MIN_AGREEMENT = 0.999
CALIBRATION_IMAGES = 300
SINGLE_IMAGE_CALLS = 50
BATCH_CALLS = 10
LATENCY_BATCH = 32
PACKAGES = ("keras", "tensorflow", "jax", "numpy", "tf2onnx", "onnx", "onnxruntime", "ai-edge-litert", "openvino")


def export_model(path, format, *, quantize=None, output=None, calibration_images=CALIBRATION_IMAGES, verbose=True):
    """Exports a run (or `STUDY_DIR/<configuration>`, its fold ensemble), checks it, and keeps it.

    Args:
        path: a run folder, or a study's configuration (see `evaluation.Predictor.load`).
        format: one of `FORMATS`.
        quantize: None, or one of `QUANTIZATIONS[format]`: "float16" (weights) or "int8" (weights
            and activations, calibrated on `calibration_images` images of the training subset).
        output: the export folder to make; default `<run or study>/exports/<format>[-<quantize>]`
            (-2, -3, ... where it exists). An existing `output` is refused.
        verbose: print a line per step and the check's numbers.

    Returns:
        The export folder: the model file and `export.json`.

    Raises:
        ConfigError: an unknown format, or a quantisation the format has not.
        DataError: the run cannot be loaded, `output` exists, or a float export disagrees with
            the Keras model on more than 0.1% of the test images.
    """
    check_format(format, quantize)
    say = print if verbose else (lambda *_: None)
    predictor = Predictor.load(path)
    destination = export_destination(predictor, format, quantize, output)
    graph = inference_graph(predictor)
    data = prepare_run_data(run_config(predictor.members[0].run_dir), verbose=False)
    rows, cache_rows, labels = data.subset("test")
    images = np.asarray(data.cache.images[cache_rows], dtype=np.float32)
    features = encode_metadata(rows, predictor.sexes, predictor.sites) if predictor.takes_metadata else None
    options, calibration = {}, None
    if quantize is not None:
        calibration = calibration_rows(predictor, data, calibration_images)
        options = litert_quantization(quantize, data, calibration, predictor)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".{destination.name}-"))
    try:
        say(f"Exporting {predictor.name} as {format}{f' ({quantize})' if quantize else ''} ...")
        model_path = staging / MODEL_FILES[format]
        with warnings.catch_warnings():
            # tf2onnx's and the converter's notes about NumPy and TensorFlow versions, not about this model.
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            graph.export(str(model_path), format=KERAS_FORMATS[format], verbose=False, **options)
        runtime = load_runtime(format, model_path)
        say(f"Checking it with {RUNTIMES[format]} on {len(labels)} test images ...")
        check = compare_with_keras(predictor, graph, runtime, images, rows, cache_rows, data, features, labels)
        check["file_bytes"] = file_bytes(model_path)
        if quantize is None and check["class_agreement"] < MIN_AGREEMENT:
            raise DataError(
                f"{predictor.name}: the {format} export agrees with the Keras model on {check['class_agreement']:.2%} of the test "
                f"images, under the {MIN_AGREEMENT:.1%} required; nothing was kept"
            )
        info = export_info(predictor, graph, runtime, format, quantize, check, calibration)
        write_json(staging / EXPORT_FILENAME, info)
        staging.rename(destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    say(check_summary(destination, check))
    return destination


def check_format(format, quantize):
    if format not in FORMATS:
        raise ConfigError(f"--format {format}: expected one of {', '.join(FORMATS)}")
    if keras.backend.backend() != "tensorflow":
        # Under JAX, Keras converts to LiteRT not at all and to ONNX through jax2onnx (with Flax and
        # Orbax); a model.keras file loads under either backend, so TensorFlow exports any run.
        raise ConfigError(
            f"export runs under the TensorFlow backend, not {keras.backend.backend()}: run it with KERAS_BACKEND=tensorflow "
            "(a run trained under JAX exports alike)"
        )
    if quantize is not None and quantize not in QUANTIZATIONS.get(format, ()):
        formats = ", ".join(f"{name} ({' or '.join(kinds)})" for name, kinds in QUANTIZATIONS.items())
        raise ConfigError(
            f"--quantize {quantize}: {format} exports are not quantised here; quantisation is for {formats}"
        )


def export_destination(predictor, format, quantize, output):
    """The folder to make: `output`, refused where it exists, or a new `exports/` subfolder of the run or study."""
    if output is not None:
        output = Path(output)
        if output.exists():
            raise DataError(f"{output}: already exists; choose another --output (an export is never overwritten)")
        return output
    name = format + (f"-{quantize}" if quantize else "")
    if predictor.configuration is not None:
        name = f"{predictor.configuration.replace('/', '--')}-{name}"
    base = predictor.folder / "exports" / name
    candidate, attempt = base, 1
    while candidate.exists():
        attempt += 1
        candidate = base.with_name(f"{base.name}-{attempt}")
    return candidate


def inference_graph(predictor):
    """One Keras model of the predictor's inference: its models without training-only layers,
    each behind its own metadata encoding, their probabilities averaged.

    Inputs: "image" (float32, (n, size, size, 3), values 0 to 255) and, for a metadata model,
    "metadata" (`inference.exported.encode_metadata`); output: (n, 7) class probabilities.
    """
    size = predictor.image_size
    image = keras.Input((size, size, 3), name="image", dtype="float32")
    inputs = [image]
    if predictor.takes_metadata:
        metadata = keras.Input(
            (len(metadata_features(predictor.sexes, predictor.sites)),), name="metadata", dtype="float32"
        )
        inputs.append(metadata)
    outputs = []
    for index, member in enumerate(predictor.members):
        core = without_training_layers(member.model, f"model_{index}")
        if predictor.takes_metadata:
            encoding = metadata_encoding(member.encoder, predictor.sexes, predictor.sites, f"metadata_encoding_{index}")
            outputs.append(core({"image": image, "metadata": encoding(metadata)}))
        else:
            outputs.append(core(image))
    probabilities = outputs[0] if len(outputs) == 1 else keras.layers.Average(name="fold_mean")(outputs)
    graph = keras.Model(inputs if len(inputs) > 1 else image, probabilities, name="inference")
    # Keras exports only a model that has been called.
    zeros = [np.zeros((1, *tensor.shape[1:]), np.float32) for tensor in inputs]
    graph(zeros if len(zeros) > 1 else zeros[0])
    return graph


def without_training_layers(model, name):
    """The model with its augmentation block and dropout layers left out (they are the identity
    at inference), sharing its other layers and their weights."""

    def call(layer, *args, **kwargs):
        if layer.name == AUGMENTATION_NAME or isinstance(layer, keras.layers.Dropout):
            return args[0]
        return layer(*args, **kwargs)

    clone = keras.models.clone_model(model, clone_function=lambda layer: layer, call_function=call, recursive=True)
    # Renamed: the fold models of an ensemble share their architecture's name.
    return keras.Model(clone.inputs, clone.output, name=name)


def metadata_encoding(encoder, sexes, sites, name):
    """A fixed dense layer turning the export's metadata input into `encoder`'s features.

    The encoder's features are linear in the export's: its scaled age is (age - mean) / std where
    known and 0 where not, which with the export's age (0 where unknown) and flag is
    age / std + flag * mean / std - mean / std; its one-hot columns gather the export's columns of
    the same category, a category it does not know going to its "unknown".
    """
    source = metadata_features(sexes, sites)
    matrix = np.zeros((len(source), encoder.size), np.float32)
    bias = np.zeros(encoder.size, np.float32)
    matrix[0, 0] = 1 / encoder.age_std
    matrix[1, 0] = encoder.age_mean / encoder.age_std
    bias[0] = -encoder.age_mean / encoder.age_std
    matrix[1, 1] = 1
    columns = ((2, sexes, 2, encoder.sexes), (2 + len(sexes), sites, 2 + len(encoder.sexes), encoder.sites))
    for offset, values, target, known in columns:
        for index, value in enumerate(values):
            matrix[offset + index, target + known.index(value if value in known else UNKNOWN)] = 1
    layer = keras.layers.Dense(encoder.size, name=name, trainable=False)
    layer.build((None, len(source)))
    layer.set_weights([matrix, bias])
    return layer


def calibration_rows(predictor, data, count):
    """The image ids for int8 calibration: `count` drawn (seed 0) from the training subset only.

    For a fold ensemble, from the first fold model's training subset (each image of it is also
    in another fold model's validation subset; calibration fits only the ranges of values).
    """
    rows, _, _ = data.subset("train")
    ids = rows["image_id"].to_numpy()
    if len(ids) == 0:
        raise DataError(f"{predictor.name}: no training images to calibrate the int8 export on")
    chosen = np.random.default_rng(0).choice(len(ids), size=min(count, len(ids)), replace=False)
    return sorted(ids[chosen].tolist())


def litert_quantization(quantize, data, calibration, predictor):
    """The LiteRT converter's settings for `quantize` (Keras passes them to `tf.lite.TFLiteConverter`)."""
    import tensorflow as tf

    if quantize == "float16":
        return {"optimizations": [tf.lite.Optimize.DEFAULT], "target_spec": {"supported_types": [tf.float16]}}
    rows = data.metadata.set_index("image_id").loc[calibration].reset_index()
    images = data.cache.images[data.cache.rows(rows["image_id"])]
    features = encode_metadata(rows, predictor.sexes, predictor.sites) if predictor.takes_metadata else None

    def representative_dataset():
        for index in range(len(images)):
            image = np.asarray(images[index : index + 1], dtype=np.float32)
            yield [image] if features is None else [image, features[index : index + 1]]

    return {"optimizations": [tf.lite.Optimize.DEFAULT], "representative_dataset": representative_dataset}


def compare_with_keras(predictor, graph, runtime, images, rows, cache_rows, data, features, labels):
    """The export against the Keras model on the test images: probabilities, classes, balanced accuracy, latency."""
    keras_probabilities = predictor.predict(data.cache.images, rows, rows=cache_rows)
    exported = np.concatenate(
        [
            runtime.run(
                images[start : start + LATENCY_BATCH],
                None if features is None else features[start : start + LATENCY_BATCH],
            )
            for start in range(0, len(images), LATENCY_BATCH)
        ]
    )
    single = (images[:1], None if features is None else features[:1])
    batch = (images[:LATENCY_BATCH], None if features is None else features[:LATENCY_BATCH])
    keras_inputs = (lambda x, m: x) if features is None else (lambda x, m: [x, m])
    return {
        "images": len(labels),
        "max_abs_difference": float(np.abs(exported - keras_probabilities).max()),
        "class_agreement": float(np.mean(exported.argmax(axis=1) == keras_probabilities.argmax(axis=1))),
        "balanced_accuracy": {
            "export": balanced_accuracy(labels, exported),
            "keras": balanced_accuracy(labels, keras_probabilities),
        },
        "latency_ms": {
            "export": latency(lambda x, m: runtime.run(x, m), single, batch),
            "keras": latency(lambda x, m: graph.predict_on_batch(keras_inputs(x, m)), single, batch),
        },
    }


def balanced_accuracy(labels, probabilities):
    """Mean recall over the classes present (as `evaluation.metrics`)."""
    predicted = probabilities.argmax(axis=1)
    return float(np.mean([np.mean(predicted[labels == label] == label) for label in np.unique(labels)]))


def latency(call, single, batch):
    """Milliseconds per call: one image (median and 95th percentile), and a batch of up to 32 images."""
    for _ in range(3):  # warm-up: the first calls allocate and compile
        call(*single)
    call(*batch)
    singles = timed(call, single, SINGLE_IMAGE_CALLS)
    batches = timed(call, batch, BATCH_CALLS)
    return {
        "single_image_p50": float(np.percentile(singles, 50)),
        "single_image_p95": float(np.percentile(singles, 95)),
        "batch_size": len(batch[0]),
        "batch_p50": float(np.percentile(batches, 50)),
        "batch_images_per_s": float(len(batch[0]) / np.percentile(batches, 50) * 1000),
    }


def timed(call, inputs, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call(*inputs)
        times.append((time.perf_counter() - start) * 1000)
    return times


def file_bytes(path):
    path = Path(path)
    if path.is_dir():
        return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file())
    # OpenVINO's weights sit beside its .xml.
    return sum(entry.stat().st_size for entry in path.parent.glob(f"{path.stem}.*"))


def export_info(predictor, graph, runtime, format, quantize, check, calibration):
    """`export.json`: what the graph takes and gives, where it came from, and its check."""
    size = predictor.image_size
    inputs = [
        {
            "name": "image",
            "shape": [None, size, size, 3],
            "dtype": "float32",
            "description": f"RGB, values 0 to 255, resized by the caller to {size} x {size} (HAM10000's 4:3 frames were squashed "
            "to a square); the pixel scaling and normalisation are inside the graph",
        }
    ]
    metadata, description = None, predictor.describe()
    if predictor.takes_metadata:
        features = metadata_features(predictor.sexes, predictor.sites)
        metadata = {"features": features, "sexes": list(predictor.sexes), "sites": list(predictor.sites)}
        inputs.append(
            {
                "name": "metadata",
                "shape": [None, len(features)],
                "dtype": "float32",
                "features": features,
                "description": "age in years (0 where unknown), age_missing 1 where the age is unknown, then sex and site one-hot "
                "over the listed categories (a value not listed is 'unknown'); each fold model's own scaling is inside the graph",
            }
        )
    return {
        "format": format,
        "quantize": quantize,
        "file": MODEL_FILES[format],
        "runtime": RUNTIMES[format],
        "image_size": size,
        "inputs": inputs,
        "outputs": [
            {
                "name": output_name(runtime),
                "shape": [None, len(CLASS_NAMES)],
                "dtype": "float32",
                "description": "class probabilities, in the order of classes",
            }
        ],
        "classes": [{"code": name, "name": CLASS_DESCRIPTIONS[name]} for name in CLASS_NAMES],
        "metadata": metadata,
        "source": {
            "name": predictor.name,
            "path": str(
                predictor.folder if predictor.configuration is None else predictor.folder / predictor.configuration
            ),
            "configuration": predictor.configuration,
            "runs": [str(member.run_dir) for member in predictor.members],
            "architecture": description["architecture"],
            "test_metrics": description["test_metrics"],
        },
        "calibration": None
        if calibration is None
        else {"subset": "train", "images": len(calibration), "image_ids": calibration},
        "versions": package_versions(),
        "check": check,
        "cpu": cpu_name(),
    }


def output_name(runtime):
    """The output's name as the runtime reports it."""
    if hasattr(runtime, "session"):
        return runtime.session.get_outputs()[0].name
    if hasattr(runtime, "interpreter"):
        return runtime.interpreter.get_output_details()[0]["name"]
    if hasattr(runtime, "compiled"):
        return runtime.compiled.outputs[0].get_any_name()
    return "output_0"  # the SavedModel endpoint `serve` returns one tensor


def package_versions():
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = package_metadata.version(name)
        except package_metadata.PackageNotFoundError:
            continue
    versions["keras_backend"] = keras.backend.backend()
    return versions


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return None


def check_summary(folder, check):
    latency_ms = check["latency_ms"]
    return (
        f"Wrote {folder}: {check['file_bytes'] / 1e6:.1f} MB; on {check['images']} test images the largest probability difference "
        f"from Keras is {check['max_abs_difference']:.2g}, the class agrees on {check['class_agreement']:.2%}, balanced accuracy "
        f"{check['balanced_accuracy']['export']:.3f} (Keras {check['balanced_accuracy']['keras']:.3f}); one image "
        f"{latency_ms['export']['single_image_p50']:.2f} ms (Keras {latency_ms['keras']['single_image_p50']:.2f} ms), "
        f"{latency_ms['export']['batch_images_per_s']:.0f} images/s in batches of {latency_ms['export']['batch_size']} "
        f"(Keras {latency_ms['keras']['batch_images_per_s']:.0f})"
    )
