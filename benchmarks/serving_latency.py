"""Requests per second and latency of `main.py serve`, under a bounded load on loopback.

    python benchmarks/serving_latency.py                                   # CPU-preset DenseNet, 64 and 224 px, untrained
    python benchmarks/serving_latency.py --run-dir results/runs/RUN        # a trained run instead
    python benchmarks/serving_latency.py --requests 400 --concurrency 8 --explain

Each model is served by `main.py serve` in its own process on 127.0.0.1 (port picked by the
system); a fixed number of client threads send a real HAM10000 JPEG (600x450) to POST /predict
until the request count is reached. Reported: requests per second over the whole load, and the
50th and 95th percentile of the per-request latency as the client sees it (upload, decoding,
the model, the answer). Latency does not depend on the weights, so untrained models of the
preset's width stand in for trained ones unless --run-dir is given.
"""

import argparse
import concurrent.futures
import json
import os
import platform
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as main.py
REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

from dataset import find_data_dir  # noqa: E402
from inference.server import served  # noqa: E402
from networks.heads import HeadOptions  # noqa: E402
from networks.registry import create_model, model_options  # noqa: E402


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--run-dir", type=Path, nargs="+", help="trained runs to serve (default: untrained models, see --model)"
    )
    parser.add_argument(
        "--model", default="densenet", help="architecture of the untrained models, at configs/cpu.yaml's width"
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 224], help="image sizes of the untrained models")
    parser.add_argument("--requests", type=int, default=200, help="requests per model, after 10 warm-up requests")
    parser.add_argument("--concurrency", type=int, default=4, help="client threads sending at once")
    parser.add_argument("--explain", action="store_true", help="ask for the Grad-CAM overlay too")
    parser.add_argument("--output", type=Path, help="also write the results as JSON")
    arguments = parser.parse_args()

    image = next((find_data_dir() / "images").glob("*.jpg")).read_bytes()
    with tempfile.TemporaryDirectory() as scratch:
        run_dirs = arguments.run_dir or [
            untrained_run(Path(scratch), arguments.model, size) for size in arguments.sizes
        ]
        results = [measure(run_dir, image, arguments) for run_dir in run_dirs]
    report = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "backend": keras.backend.backend(),
        },
        "requests": arguments.requests,
        "concurrency": arguments.concurrency,
        "explain": arguments.explain,
        "results": results,
    }
    print(json.dumps(report, indent=2))
    if arguments.output:
        arguments.output.write_text(json.dumps(report, indent=2) + "\n")


def untrained_run(scratch, name, size):
    """A run folder holding only an untrained model of configs/cpu.yaml's width for `name`."""
    preset = yaml.safe_load((REPO_ROOT / "configs" / "cpu.yaml").read_text())
    options = model_options(name, preset.get("models", {}).get(name, {}).get("model_options", {}))
    weights = {"weights": None} if name == "vgg16" else {}
    model = create_model(name, size, head=HeadOptions(**{**preset.get("head", {})}), options=options, **weights)
    run_dir = scratch / f"{name}-{size}px"
    run_dir.mkdir()
    model.save(run_dir / "model.keras")
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"model": name, "image_size": size}))
    return run_dir


def measure(run_dir, image, arguments):
    with served(run_dir, timeout=300) as url:
        with urllib.request.urlopen(f"{url}/model", timeout=60) as response:
            model = json.loads(response.read())
        fields = [("explain", "true")] if arguments.explain else []
        for _ in range(10):
            post(url, image, fields)
        with concurrent.futures.ThreadPoolExecutor(arguments.concurrency) as pool:
            start = time.perf_counter()
            latencies = list(pool.map(lambda _: post(url, image, fields), range(arguments.requests)))
            wall = time.perf_counter() - start
    milliseconds = np.array(latencies) * 1000
    result = {
        "run": model["run"],
        "architecture": model["architecture"],
        "image_size": model["image_size"],
        "requests_per_s": round(arguments.requests / wall, 1),
        "p50_ms": round(float(np.percentile(milliseconds, 50)), 1),
        "p95_ms": round(float(np.percentile(milliseconds, 95)), 1),
    }
    print(result, file=sys.stderr)
    return result


def post(url, image, fields):
    """One POST /predict; returns its latency in seconds."""
    boundary = uuid.uuid4().hex
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields
    ) + (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="lesion.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n".encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        f"{url}/predict", data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as response:
        response.read()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
