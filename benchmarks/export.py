"""Each export runtime against the Keras model: latency, throughput, file size and accuracy change.

    python benchmarks/export.py results/runs/LITE0_RUN results/runs/DENSENET_RUN --output export-benchmark.json

Each run is exported (`main.py export`'s `inference.export.export_model`, into a temporary folder)
as ONNX, LiteRT, LiteRT int8, SavedModel and OpenVINO (where its package is installed); each export
is checked on the run's whole test subset, which gives the largest probability difference, the
class agreement and the balanced accuracy against Keras's, and timed on this CPU: one image at a
time (p50 and p95 of 50 calls) and batches of 32 (images per second). The Keras rows are the
inference graph's `predict_on_batch` (its fastest single-image call) and `predict` on the same
32 images (what a script calling `model.predict` pays: its per-call data pipeline). Prints a
Markdown table (docs/serving.md's).
"""

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as main.py
REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402

from common.errors import DataError  # noqa: E402
from evaluation.predictor import Predictor  # noqa: E402
from inference.export import LATENCY_BATCH, cpu_name, export_model, inference_graph  # noqa: E402
from inference.exported import EXPORT_FILENAME  # noqa: E402

EXPORTS = (
    ("onnx", None, "onnx"),
    ("litert", None, "ai_edge_litert"),
    ("litert", "int8", "ai_edge_litert"),
    ("saved_model", None, "tensorflow"),
    ("openvino", None, "openvino"),
)
PREDICT_CALLS = 10


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="trained run folders (or STUDY_DIR/<configuration>)")
    parser.add_argument("--output", type=Path, help="also write the rows as JSON")
    arguments = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for run in arguments.runs:
            rows += measure(run, Path(scratch))
    print(f"CPU: {cpu_name()}\n")
    print(table(rows))
    if arguments.output:
        arguments.output.write_text(json.dumps({"cpu": cpu_name(), "rows": rows}, indent=2) + "\n")


def measure(run, scratch):
    """The rows of one run: Keras's two calls, then each export's."""
    rows = []
    keras_row = None
    for format, quantize, module in EXPORTS:
        if importlib.util.find_spec(module) is None:
            print(f"{run.name}: {format} skipped ({module} is not installed)", file=sys.stderr)
            continue
        try:
            folder = export_model(
                run, format, quantize=quantize, output=scratch / f"{run.name}-{format}-{quantize}", verbose=False
            )
        except DataError as error:  # a refused export is a result too
            print(f"{run.name}: {error}", file=sys.stderr)
            continue
        info = json.loads((folder / EXPORT_FILENAME).read_text())
        check = info["check"]
        model = {
            "run": info["source"]["name"],
            "architecture": info["source"]["architecture"],
            "size": info["image_size"],
        }
        if keras_row is None:
            keras_row = {
                **model,
                "engine": "keras predict_on_batch",
                "file_mb": None,
                **latency_columns(check["latency_ms"]["keras"]),
                "max_abs_difference": 0.0,
                "class_agreement": 1.0,
                "balanced_accuracy_change": 0.0,
            }
            rows += [keras_row, {**keras_row, "engine": "keras predict", **keras_predict_columns(run)}]
        rows.append(
            {
                **model,
                "engine": format + (f" {quantize}" if quantize else ""),
                "file_mb": check["file_bytes"] / 1e6,
                **latency_columns(check["latency_ms"]["export"]),
                "max_abs_difference": check["max_abs_difference"],
                "class_agreement": check["class_agreement"],
                "balanced_accuracy_change": check["balanced_accuracy"]["export"] - check["balanced_accuracy"]["keras"],
            }
        )
    return rows


def latency_columns(latency):
    return {
        "p50_ms": latency["single_image_p50"],
        "p95_ms": latency["single_image_p95"],
        "batch_images_per_s": latency["batch_images_per_s"],
    }


def keras_predict_columns(run):
    """`model.predict` on one image (p50, p95) and on 32 images (images per second), random pixels."""
    graph = inference_graph(Predictor.load(run))
    inputs = [
        np.random.default_rng(0).uniform(0, 255, (LATENCY_BATCH, *tensor.shape[1:])).astype(np.float32)
        for tensor in graph.inputs
    ]
    single = [array[:1] for array in inputs]
    graph.predict(single, verbose=0)
    singles = timed(lambda: graph.predict(single, verbose=0), PREDICT_CALLS * 5)
    batches = timed(lambda: graph.predict(inputs, batch_size=LATENCY_BATCH, verbose=0), PREDICT_CALLS)
    return {
        "p50_ms": float(np.percentile(singles, 50)),
        "p95_ms": float(np.percentile(singles, 95)),
        "batch_images_per_s": float(LATENCY_BATCH / np.percentile(batches, 50) * 1000),
    }


def timed(call, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return times


def table(rows):
    lines = [
        "| model | size | engine | file MB | one image p50 ms | p95 ms | batch-32 images/s | max abs Δp | class agreement | Δ balanced accuracy |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        file_mb = "" if row["file_mb"] is None else f"{row['file_mb']:.2f}"
        lines.append(
            f"| {row['architecture']} | {row['size']} | {row['engine']} | {file_mb} | {row['p50_ms']:.2f} | {row['p95_ms']:.2f} | "
            f"{row['batch_images_per_s']:.0f} | {row['max_abs_difference']:.1e} | {row['class_agreement']:.2%} | "
            f"{row['balanced_accuracy_change']:+.3f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
