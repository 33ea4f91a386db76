"""The bar a deep model has to clear: logistic regression on colour histograms plus metadata.

Same split, same test images and same metric as the study's runs: 32-bin histograms of each RGB
channel of the 64x64 cached images, plus the project's metadata encoding (age, sex, site), with
scikit-learn's "balanced" class weights. The regularisation strength is chosen on the validation
subset; the test subset is scored once.

    python benchmarks/colour_histogram_baseline.py                # seed 0, as the reference study
    python benchmarks/colour_histogram_baseline.py --split results/reference/split.csv
"""

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import balanced_accuracy_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from dataset import prepare_data  # noqa: E402

IMAGE_SIZE = 64
BINS = 32
REGULARISATION = (0.01, 0.1, 1.0)  # inverse strengths C tried on the validation subset


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="HAM10000 folder (default: as main.py finds it)")
    parser.add_argument("--split", help="a split.csv to use (default: a new split with --seed)")
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()
    data = prepare_data(
        arguments.data_dir, image_size=IMAGE_SIZE, seed=arguments.seed, split_file=arguments.split, verbose=False
    )
    subsets = {name: features(data, name) for name in ("train", "val", "test")}

    def fitted(c):
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=3000)).fit(
            *subsets["train"]
        )

    def score(model, name):
        x, y = subsets[name]
        return balanced_accuracy_score(y, model.predict(x))

    scores = {c: score(fitted(c), "val") for c in REGULARISATION}
    for c, value in scores.items():
        print(f"C={c:g}: validation balanced accuracy {value:.3f}")
    best = max(scores, key=scores.get)
    print(f"test balanced accuracy (C={best:g}): {score(fitted(best), 'test'):.3f}")


def features(data, subset):
    """(histograms + metadata, class indices) of one subset."""
    rows, cache_rows, labels = data.subset(subset)
    images = np.asarray(data.cache.images[cache_rows])
    pixels = IMAGE_SIZE * IMAGE_SIZE
    histograms = [
        np.stack([np.bincount(image[..., channel].ravel() // (256 // BINS), minlength=BINS) for image in images])
        / pixels
        for channel in range(3)
    ]
    return np.hstack([*histograms, data.encoder.transform(rows)]), labels


if __name__ == "__main__":
    main()
