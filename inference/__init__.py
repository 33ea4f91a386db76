"""The inference stage: a trained run -> predictions on new images, Grad-CAM explanations, an HTTP service.

    from inference import GradCAM, Predictor, predict_files
    predictor = Predictor.load("results/runs/20261123-101500-densenet")
    table = predict_files(predictor, ["photo.jpg", "clinic_images/"], explain_dir="gradcam")

It reads run folders through `evaluation` and decodes images through `dataset`; nothing imports
it but `main.py`. The HTTP service (`inference.app`) needs the `serve` extra (FastAPI, uvicorn).
"""

from inference.gallery import write_gallery
from inference.gradcam import GradCAM, overlay_heatmap
from inference.predict import Predictor, check_output_path, predict_files, write_predictions_table

__all__ = [
    "GradCAM",
    "Predictor",
    "check_output_path",
    "overlay_heatmap",
    "predict_files",
    "write_gallery",
    "write_predictions_table",
]
