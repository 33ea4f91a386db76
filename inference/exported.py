"""Running an exported model (`main.py export`) without Keras or TensorFlow: ONNX Runtime, LiteRT or OpenVINO.

    from inference.exported import ExportedModel
    model = ExportedModel.load("results/runs/RUN/exports/onnx")      # the folder `main.py export` wrote
    probabilities = model.predict(images, metadata)                   # (n, 7), as `Predictor.predict`

An export folder holds the model file and `export.json`, which says how to feed it: the image input
(float32 RGB, values 0 to 255, resized by the caller to the run's size; the scaling and
normalisation are inside the graph) and, for a metadata model, the metadata input in the export's
own encoding (`encode_metadata`): age in years (0 where unknown) and an "age unknown" flag, then
sex and site one-hot over the categories that `export.json` lists. Each fold model's own encoding
(its age scaling, its categories) is inside the graph, so a fold ensemble takes one metadata vector.

`ExportedModel` answers as `evaluation.Predictor` does (`predict`, `describe`, `image_size`,
`takes_metadata`, `sexes`, `sites`), so `main.py predict` and `main.py serve` take an export folder
where they take a run. This module imports no Keras, TensorFlow or JAX: the serving container
holds only NumPy, Pillow, pandas, FastAPI and the runtime (`saved_model` exports need TensorFlow).
"""

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from common.errors import DataError, UserError
from dataset.augment import DIHEDRAL_TRANSFORMS
from dataset.metadata import CLASS_DESCRIPTIONS, CLASS_NAMES, UNKNOWN

EXPORT_FILENAME = "export.json"
# Each format's file (or folder) in an export folder, and the runtime that runs it.
MODEL_FILES = {"onnx": "model.onnx", "litert": "model.tflite", "saved_model": "saved_model", "openvino": "model.xml"}
RUNTIMES = {"onnx": "onnxruntime", "litert": "ai-edge-litert", "saved_model": "tensorflow", "openvino": "openvino"}
BATCH_SIZE = 32


def is_export_dir(path):
    return (Path(path) / EXPORT_FILENAME).is_file()


def load_predictor(path, engine=None, image_size=None):
    """What predicts for `main.py predict` and `serve`: an `ExportedModel` for an export folder, else
    the Keras models of a run or study configuration (`evaluation.Predictor`, imported only then),
    at `image_size` where given (test-time resolution).

    Raises:
        UserError: `engine` does not fit the folder (keras for an export, a runtime for a run), or
            an image size is asked of an export (its graph takes the size it was exported at).
        DataError: as `ExportedModel.load` and `Predictor.load`.
    """
    if is_export_dir(path):
        if image_size is not None:
            raise UserError(
                f"{path} is an export, whose graph takes images at the size it was exported at: leave out --image-size"
            )
        return ExportedModel.load(path, None if engine is None else engine)
    if engine not in (None, "keras"):
        raise UserError(
            f"--engine {engine} serves an export folder; export the run first: python main.py export {path} --format {engine}"
        )
    from evaluation.predictor import Predictor

    return Predictor.load(path, image_size=image_size)


def metadata_features(sexes, sites):
    """The names of the export's metadata input, in order."""
    return ["age", "age_missing"] + [f"sex={value}" for value in sexes] + [f"site={value}" for value in sites]


def encode_metadata(rows, sexes, sites):
    """The export's metadata input for a table of `age, sex, localization` (NaN / "unknown" where missing).

    Age in years with 0 where unknown, a 1/0 "age unknown" flag, then sex and site one-hot over
    `sexes` and `sites`; a value outside them counts as "unknown", as the runs' encoders count it.

    Returns:
        A (len(rows), 2 + len(sexes) + len(sites)) float32 array.
    """
    count = len(rows)
    age = rows["age"].to_numpy(dtype=np.float64) if "age" in rows.columns else np.full(count, np.nan)
    missing = np.isnan(age)
    columns = [np.where(missing, 0.0, age), missing]
    for column, categories in (("sex", sexes), ("localization", sites)):
        values = rows[column].to_numpy() if column in rows.columns else np.full(count, UNKNOWN)
        values = np.where(np.isin(values, categories), values, UNKNOWN)
        columns.append((values[:, None] == np.array(categories)[None, :]).astype(np.float64))
    return np.column_stack(columns).astype(np.float32)


class Runtime:
    """A loaded model file behind `run(images, metadata)`: float32 arrays in, (n, 7) probabilities out."""

    def run(self, images, metadata=None):
        raise NotImplementedError


class OnnxRuntime(Runtime):
    def __init__(self, path):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(self, images, metadata=None):
        feeds = {"image": images} if metadata is None else {"image": images, "metadata": metadata}
        return self.session.run(None, feeds)[0]


class LiteRtRuntime(Runtime):
    """LiteRT's interpreter, its input tensors resized to each batch's size when it changes."""

    def __init__(self, path):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=os.cpu_count())
        details = self.interpreter.get_input_details()
        # The converter names the inputs after the SavedModel signature's ("serve_image:0", ...).
        self.inputs = {("metadata" if "metadata" in entry["name"] else "image"): entry["index"] for entry in details}
        self.output = self.interpreter.get_output_details()[0]["index"]
        self.batch = None

    def run(self, images, metadata=None):
        if self.batch != len(images):
            for name, index in self.inputs.items():
                shape = (images if name == "image" else metadata).shape
                self.interpreter.resize_tensor_input(index, list(shape))
            self.interpreter.allocate_tensors()
            self.batch = len(images)
        self.interpreter.set_tensor(self.inputs["image"], images)
        if metadata is not None:
            self.interpreter.set_tensor(self.inputs["metadata"], metadata)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output).copy()


class SavedModelRuntime(Runtime):
    """TensorFlow's SavedModel loader and the export's `serve` endpoint (this one needs TensorFlow)."""

    def __init__(self, path):
        import tensorflow as tf

        # Held: the endpoint alone does not keep the loaded variables alive.
        self.loaded = tf.saved_model.load(str(path))

    def run(self, images, metadata=None):
        return np.asarray(self.loaded.serve(images if metadata is None else [images, metadata]))


class OpenVinoRuntime(Runtime):
    def __init__(self, path):
        import openvino

        # f32: on CPUs with bfloat16 instructions OpenVINO otherwise runs in bfloat16 by default,
        # which changed the class of 7% of a LiteRT-exact efficientnet_lite0's test images.
        self.compiled = openvino.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        self.names = [port.get_any_name() for port in self.compiled.inputs]

    def run(self, images, metadata=None):
        feeds = [images] if metadata is None else [images if "image" in name else metadata for name in self.names]
        return np.asarray(self.compiled(feeds)[self.compiled.outputs[0]])


RUNTIME_CLASSES = {
    "onnx": OnnxRuntime,
    "litert": LiteRtRuntime,
    "saved_model": SavedModelRuntime,
    "openvino": OpenVinoRuntime,
}


def load_runtime(format, path):
    """The runtime of `format` with the model file `path` loaded.

    Raises:
        UserError: the runtime is not installed.
        DataError: the file is missing, or the runtime cannot read it (damaged or truncated).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(
            f"{path}: the exported model is missing (export the run again: python main.py export RUN --format {format})"
        )
    try:
        return RUNTIME_CLASSES[format](path)
    except ModuleNotFoundError as error:
        raise UserError(f"a {format} export needs {RUNTIMES[format]} ({error}): pip install -e '.[export]'") from None
    except Exception as error:  # each runtime has its own errors for a file it cannot parse
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(
            f"{path}: damaged, {RUNTIMES[format]} cannot load it ({reason[:200]}); export the run again"
        ) from None


@dataclass
class ExportedModel:
    """An export folder loaded with its runtime, predicting as `evaluation.Predictor` does.

    Attributes:
        folder: the export folder.
        info: its `export.json`.
        runtime: the loaded `Runtime`.
    """

    folder: Path
    info: dict
    runtime: Runtime = field(repr=False)

    @classmethod
    def load(cls, folder, engine=None):
        """Loads an export folder; `engine` (a format name), where given, must be the folder's format.

        Raises:
            DataError: no or a damaged `export.json`, or a model file its runtime cannot load.
            UserError: `engine` is not the folder's format, or its runtime is not installed.
        """
        folder = Path(folder)
        path = folder / EXPORT_FILENAME
        if not path.is_file():
            raise DataError(
                f"{folder}: not an export folder (no {EXPORT_FILENAME}; make one with python main.py export RUN --format onnx)"
            )
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
            format, file = info["format"], info["file"]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
            raise DataError(f"{path}: damaged ({type(error).__name__}: {error}); export the run again") from None
        if format not in RUNTIME_CLASSES:
            raise DataError(f"{path}: unknown format {format!r} (expected one of {', '.join(RUNTIME_CLASSES)})")
        if engine == "keras":
            raise UserError(
                f"{folder} is an export ({format}); --engine keras serves the run it came from, {info.get('source', {}).get('path')}"
            )
        if engine is not None and engine != format:
            raise UserError(
                f"{folder} holds the {format} export, not {engine}: pass --engine {format}, or export the run with --format {engine}"
            )
        return cls(folder, info, load_runtime(format, folder / file))

    @property
    def name(self):
        return self.info["source"]["name"]

    @property
    def model_count(self):
        """How many models the graph averages (a fold ensemble's folds), as `Predictor.model_count`."""
        return len(self.info["source"]["runs"])

    @property
    def image_size(self):
        return self.info["image_size"]

    @property
    def takes_metadata(self):
        return self.info["metadata"] is not None

    @property
    def sexes(self):
        return tuple(self.info["metadata"]["sexes"]) if self.takes_metadata else ()

    @property
    def sites(self):
        return tuple(self.info["metadata"]["sites"]) if self.takes_metadata else ()

    def describe(self):
        """As `Predictor.describe`, with the export's format, quantisation and check."""
        source = self.info["source"]
        return {
            "run": self.name,
            "architecture": source["architecture"],
            "models": len(source["runs"]),
            "metadata": self.takes_metadata,
            "image_size": self.image_size,
            "classes": [{"code": name, "name": CLASS_DESCRIPTIONS[name]} for name in CLASS_NAMES],
            "sexes": list(self.sexes),
            "sites": list(self.sites),
            "test_metrics": source.get("test_metrics", {}),
            "export": {key: self.info.get(key) for key in ("format", "quantize", "check")},
        }

    def encode(self, metadata, count):
        """The metadata input for `count` images (all unknown where `metadata` is None); None for an image-only model."""
        if not self.takes_metadata:
            return None
        if metadata is None:
            metadata = pd.DataFrame({"age": np.full(count, np.nan), "sex": UNKNOWN, "localization": UNKNOWN})
        return encode_metadata(metadata, self.sexes, self.sites)

    def predict(self, images, metadata=None, *, rows=None, tta=False, batch_size=BATCH_SIZE, verbose=0):
        """Class probabilities of decoded (n, size, size, 3) images, as `Predictor.predict` gives them."""
        rows = np.arange(len(images)) if rows is None else np.asarray(rows)
        features = self.encode(metadata, len(rows))
        transforms = DIHEDRAL_TRANSFORMS if tta else DIHEDRAL_TRANSFORMS[:1]
        probabilities = []
        for start in range(0, len(rows), batch_size):
            batch = np.asarray(images[rows[start : start + batch_size]], dtype=np.float32)
            batch_features = None if features is None else features[start : start + batch_size]
            total = sum(
                self.runtime.run(np.ascontiguousarray(transform(batch)), batch_features) for transform in transforms
            )
            probabilities.append(np.asarray(total, dtype=np.float32) / len(transforms))
        probabilities = np.concatenate(probabilities) if probabilities else np.zeros((0, len(CLASS_NAMES)), np.float32)
        if probabilities.shape[1:] != (len(CLASS_NAMES),) or not np.isfinite(probabilities).all():
            raise DataError(
                f"{self.folder}: the export answers {probabilities.shape} values, not finite class probabilities; export the run again"
            )
        return probabilities
