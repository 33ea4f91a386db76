"""The report's gallery: for each class, the most confident correct and wrong test images, with Grad-CAM.

Written into the run folder as `gallery/<class>-<correct|wrong>.png` thumbnails and
`gallery/gallery.json` (`common.run_folder.GALLERY_DIR`, `GALLERY_FILENAME`), which the report
shows as its "Gallery" section.
"""

from pathlib import Path

import numpy as np

from common import files
from common.run_folder import GALLERY_DIR, GALLERY_FILENAME, PREDICTIONS_FILENAME
from dataset.images import locate_images, read_image
from dataset.metadata import CLASS_NAMES
from evaluation.predictions import read_predictions
from evaluation.predictor import Predictor
from inference.gradcam import PredictorGradCAM, overlay_heatmap, png_bytes

THUMBNAIL_SIZE = 128


def write_gallery(run_dir, data, predictor=None):
    """Writes the gallery of a run whose test subset has been predicted (`predictions.csv`).

    Args:
        run_dir: the run folder.
        data: the `dataset.PreparedData` the run trained on: its decoded images and metadata.
        predictor: the run's `Predictor`, where the caller has loaded it already; else it is loaded.

    Returns:
        The gallery entries: one dict per thumbnail with `class, kind ("correct" or "wrong"),
        image_id, pred, probability` (of the predicted class) and `file` (relative to the run).
    """
    run_dir = Path(run_dir)
    frame, _, probabilities = read_predictions(run_dir / PREDICTIONS_FILENAME)
    chosen = gallery_rows(frame, probabilities)
    if not chosen:
        return []
    predictor = predictor or Predictor.load(run_dir)
    image_ids = [frame["image_id"][row] for _, _, row in chosen]
    rows = data.metadata.set_index("image_id").loc[image_ids].reset_index()
    images = data.cache.images[data.cache.rows(image_ids)]
    predicted = probabilities[[row for _, _, row in chosen]].argmax(axis=1)
    heatmaps = PredictorGradCAM(predictor).heatmaps(images, predicted, rows)
    paths = locate_images(image_ids, data.data_dir, drop_missing=True)

    entries = []
    for (name, kind, row), image_id, heatmap, pred in zip(chosen, image_ids, heatmaps, predicted):
        thumbnail = (
            read_image(paths[image_id], THUMBNAIL_SIZE) if image_id in paths else images[image_ids.index(image_id)]
        )
        file = f"{GALLERY_DIR}/{name}-{kind}.png"
        files.write_bytes(run_dir / file, png_bytes(overlay_heatmap(thumbnail, heatmap)))
        entries.append(
            {
                "class": name,
                "kind": kind,
                "image_id": image_id,
                "pred": CLASS_NAMES[pred],
                "probability": round(float(probabilities[row, pred]), 4),
                "file": file,
            }
        )
    files.write_json(run_dir / GALLERY_DIR / GALLERY_FILENAME, entries)
    return entries


def gallery_rows(frame, probabilities):
    """(class, "correct" or "wrong", row) for each class's most confident correct and wrong prediction.

    Correct: an image of the class predicted as it, with the highest probability for it. Wrong:
    an image of the class predicted as another, with the highest probability for that other.
    """
    confidence = probabilities.max(axis=1)
    chosen = []
    for name in CLASS_NAMES:
        of_class = (frame["dx"] == name).to_numpy()
        correct = of_class & (frame["pred"] == name).to_numpy()
        for kind, mask in (("correct", correct), ("wrong", of_class & ~correct)):
            if mask.any():
                chosen.append((name, kind, int(np.flatnonzero(mask)[confidence[mask].argmax()])))
    return chosen
