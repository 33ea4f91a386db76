"""The inference stage: a trained run -> predictions on new images, Grad-CAM explanations, exports, an HTTP service.

    from inference import GradCAM, Predictor, predict_files
    predictor = Predictor.load("results/runs/20261123-101500-densenet")   # or STUDY_DIR/<configuration>
    table = predict_files(predictor, ["photo.jpg", "clinic_images/"], explain_dir="gradcam")

It predicts through `evaluation.Predictor` (a run's model, or a study configuration's fold
ensemble), which evaluation uses too, and decodes images through `dataset`; nothing imports it
but `main.py`. `inference.export` writes a run as ONNX, LiteRT, SavedModel or OpenVINO (the
`export` extra), and `inference.exported` runs such an export without Keras. The HTTP service
(`inference.app`) needs the `serve` extra (FastAPI, uvicorn).

The names whose modules need Keras are imported on first use, so that serving an export
(`inference.app` with `inference.exported`) never starts TensorFlow.
"""

import importlib

_NEEDS_KERAS = {
    "GradCAM": "inference.gradcam",
    "Predictor": "evaluation.predictor",
    "PredictorGradCAM": "inference.gradcam",
    "check_output_path": "inference.predict",
    "overlay_heatmap": "inference.gradcam",
    "predict_files": "inference.predict",
    "write_gallery": "inference.gallery",
    "write_predictions_table": "inference.predict",
}


def __getattr__(name):
    if name in _NEEDS_KERAS:
        return getattr(importlib.import_module(_NEEDS_KERAS[name]), name)
    raise AttributeError(f"module 'inference' has no attribute {name!r}")


__all__ = sorted(_NEEDS_KERAS)
