"""The inference stage: a trained run -> predictions on new images, Grad-CAM explanations, an HTTP service.

    from inference import GradCAM, Predictor, predict_files
    predictor = Predictor.load("results/runs/20261123-101500-densenet")   # or STUDY_DIR/<configuration>
    table = predict_files(predictor, ["photo.jpg", "clinic_images/"], explain_dir="gradcam")

It predicts through `evaluation.Predictor` (a run's model, or a study configuration's fold
ensemble), which evaluation uses too, and decodes images through `dataset`; nothing imports it
but `main.py`. The HTTP service (`inference.app`) needs the `serve` extra (FastAPI, uvicorn).
"""

from evaluation.predictor import Predictor
from inference.gallery import write_gallery
from inference.gradcam import GradCAM, PredictorGradCAM, overlay_heatmap
from inference.predict import check_output_path, predict_files, write_predictions_table

__all__ = [
    "GradCAM",
    "Predictor",
    "PredictorGradCAM",
    "check_output_path",
    "overlay_heatmap",
    "predict_files",
    "write_gallery",
    "write_predictions_table",
]
