"""Explanation figures: each image beside its Grad-CAM heat map, the overlay and the top-3 classes."""

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from common.files import atomic_path, new_folder  # noqa: E402
from dataset.images import read_image  # noqa: E402
from dataset.metadata import CLASS_DESCRIPTIONS, CLASS_NAMES  # noqa: E402
from inference.gradcam import PredictorGradCAM, overlay_heatmap  # noqa: E402

# Figures show the image larger than small models see it; the heat map is upsampled to match.
DISPLAY_SIZE = 256


def explain_images(predictor, images, files, probabilities, metadata, output_dir):
    """Writes `<output_dir>/<image name>.png` for every image and returns the folder written.

    Args:
        predictor: the `Predictor` that made the predictions.
        images: the decoded images the model saw, (n, size, size, 3) uint8.
        files: their files, for the figure names and a larger view of each image.
        probabilities: (n, 7) predicted probabilities; the most probable class is explained.
        metadata: the metadata table given to the model, or None.
        output_dir: where to write; an existing folder is never written into ("-2" is appended).
    """
    heatmaps = PredictorGradCAM(predictor).heatmaps(images, probabilities.argmax(axis=1), metadata)
    folder = new_folder(output_dir)
    if folder != Path(output_dir):
        warnings.warn(
            f"{output_dir} exists: the Grad-CAM figures go to {folder} (an existing folder is never written into)",
            stacklevel=2,
        )
    names = unique_names([Path(path).stem for path in files])
    for path, name, heatmap, probability in zip(files, names, heatmaps, probabilities):
        write_figure(folder / f"{name}.png", read_image(path, DISPLAY_SIZE), heatmap, probability, Path(path).name)
    return folder


def write_figure(path, image, heatmap, probabilities, title):
    figure, axes = plt.subplots(
        1, 4, figsize=(12, 3.2), layout="constrained", gridspec_kw={"width_ratios": [1, 1, 1, 1.5]}
    )
    axes[0].imshow(image)
    axes[0].set_title(title, fontsize=9)
    axes[1].imshow(heatmap, cmap="jet", vmin=0, vmax=1, interpolation="bilinear")
    axes[1].set_title("Grad-CAM", fontsize=9)
    axes[2].imshow(overlay_heatmap(image, heatmap))
    axes[2].set_title("overlay", fontsize=9)
    for axis in axes[:3]:
        axis.axis("off")
    top = np.argsort(probabilities)[::-1][:3]
    labels = [f"{CLASS_NAMES[index]}\n{CLASS_DESCRIPTIONS[CLASS_NAMES[index]][:28]}" for index in top]
    axes[3].barh(range(3)[::-1], probabilities[top], color=["tab:red", "tab:gray", "tab:gray"])
    axes[3].set_yticks(range(3)[::-1], labels, fontsize=8)
    axes[3].set_xlim(0, 1)
    axes[3].set_title("top-3 probabilities", fontsize=9)
    for rank, index in enumerate(top):
        axes[3].text(
            min(probabilities[index] + 0.02, 0.8), 2 - rank, f"{probabilities[index]:.2f}", va="center", fontsize=8
        )
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=100)
    plt.close(figure)


def unique_names(stems):
    """File stems made unique ("a", "a-2", ...): two folders given may hold the same name."""
    seen, names = {}, []
    for stem in stems:
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return names
