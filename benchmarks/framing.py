"""Is a trained model robust to how the image is framed? Its test subset seen three ways.

HAM10000's images are 4:3 frames, which every run squashes to a square (`read_image`). Other
sources crop square, or come at other resolutions. This scores a run's kept model on its own
test subset, each image:
- as trained: the whole 4:3 frame squashed to a square;
- centre crop: the central square of the frame (what a square-cropping source delivers);
- low resolution: the frame shrunk to a quarter of its side and back (a coarser camera);
each with and without test-time augmentation (the eight rotations and reflections).

    python benchmarks/framing.py results/runs/RUN [--data-dir DIR] [--output framing.json]
    python benchmarks/framing.py results/runs/RUN --subset val   # to choose a setting by it

On the test subset it is a report, not a choice; a setting is chosen on `--subset val`.
"""

import argparse
import io
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as main.py
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.metrics import balanced_accuracy_score  # noqa: E402

from dataset import CLASS_NAMES, find_data_dir, load_metadata, locate_images, read_image  # noqa: E402
from dataset.metadata import METADATA_FILENAME  # noqa: E402
from inference import Predictor  # noqa: E402


def centre_crop(image):
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side))


def low_resolution(image):
    return image.resize((max(1, image.width // 4), max(1, image.height // 4)), Image.Resampling.BILINEAR)


FRAMINGS = {"as trained": None, "centre crop": centre_crop, "low resolution": low_resolution}


def decode(path, size, reframe):
    """The image as the model takes it, after `reframe`, through the same resize as training."""
    if reframe is None:
        return read_image(path, size)
    with Image.open(path) as image:
        buffer = io.BytesIO()
        reframe(image.convert("RGB")).save(buffer, format="PNG")
    return read_image(buffer, size)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--data-dir", type=Path, help="HAM10000 folder (default: as main.py finds it)")
    parser.add_argument("--subset", choices=("test", "val"), default="test", help="the run's subset to score (default: test)")
    parser.add_argument("--output", type=Path, help="write the table as JSON")
    arguments = parser.parse_args()

    predictor = Predictor.load(arguments.run_dir)
    split = pd.read_csv(arguments.run_dir / "split.csv")  # the run's own subsets: a fold run's val is its fold
    chosen = split[split["subset"] == arguments.subset]
    data_dir = find_data_dir(arguments.data_dir)
    metadata = load_metadata(data_dir / METADATA_FILENAME).set_index("image_id").loc[chosen["image_id"]].reset_index()
    paths = locate_images(chosen["image_id"].tolist(), data_dir)
    labels = np.array([CLASS_NAMES.index(dx) for dx in chosen["dx"]])

    results = {}
    for framing, reframe in FRAMINGS.items():
        images = np.stack([decode(paths[image_id], predictor.image_size, reframe) for image_id in chosen["image_id"]])
        for tta in (False, True):
            probabilities = predictor.predict(images, metadata, tta=tta)
            score = balanced_accuracy_score(labels, probabilities.argmax(axis=1))
            results[f"{framing}{' + TTA' if tta else ''}"] = round(float(score), 4)
            print(f"{framing:15s} {'TTA' if tta else '   '} balanced accuracy {score:.3f}", flush=True)
    if arguments.output:
        summary = {"run": arguments.run_dir.name, "subset": arguments.subset, "images": len(chosen), "balanced_accuracy": results}
        arguments.output.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
