"""The HTTP service: a trained run (or a study configuration's fold ensemble) behind a JSON API, with a page to try it in a browser.

    python main.py serve results/runs/20261123-101500-densenet --port 8000
    python main.py serve results/studies/20261125-010000-all-3folds/densenet   # its three fold models, averaged
    curl -F image=@photo.jpg -F age=55 -F sex=male -F site=back http://127.0.0.1:8000/predict

Endpoints: `POST /predict` (an image upload, optional age, sex, site, explain, calibrated, conformal
and conformal_kind), `GET /health`, `GET /model`, OpenAPI docs at `/docs`, and the page at `/`. The
model, and its calibration.json where it has one, are loaded once, when the application is created. Predictions are serialized by a lock: a Keras model is not guaranteed to
be thread-safe, and FastAPI runs these handlers on a pool of threads.

Needs the `serve` extra: `pip install -e ".[serve]"` (FastAPI, uvicorn, python-multipart).
"""

import base64
import io
import math
import socket
import threading
import warnings
from pathlib import Path
from typing import Annotated

import pandas as pd
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image

from common.errors import DataError, UserError
from dataset.images import read_image
from dataset.metadata import CLASS_DESCRIPTIONS, CLASS_NAMES, UNKNOWN
from inference.exported import ExportedModel, load_predictor

MAX_UPLOAD_BYTES = 10 * 1024 * 1024
# Decoding happens outside the prediction lock, so concurrent uploads decode side by side: a
# single-colour 12,000 x 12,000 PNG is 450 KB on disk and 430 MB decoded. Bounded by the pixels
# the header declares, before decoding; 50 megapixels is a large camera's photo.
MAX_IMAGE_PIXELS = 50_000_000
# The multipart framing and the form fields around the image, on top of the image itself.
FORM_OVERHEAD_BYTES = 64 * 1024
PAGE = Path(__file__).with_name("static") / "index.html"
# The page shows the overlay larger than small models see the image.
OVERLAY_SIZE = 256


def create_app(
    run_dir, *, max_upload_bytes=MAX_UPLOAD_BYTES, max_pixels=MAX_IMAGE_PIXELS, image_size=None, engine=None
):
    """The FastAPI application serving a run's model, or a study configuration's fold ensemble
    (`STUDY_DIR/<configuration>`), or an ensemble of configurations (`STUDY_DIR/<a>+<b>`,
    `STUDY_DIR/ensemble`); see `evaluation.Predictor.load`. With `image_size`, at that size
    rather than the training size (test-time resolution). Or an export folder with its runtime
    (`inference.exported`; no Keras or TensorFlow is imported for ONNX, LiteRT or OpenVINO).

    Raises:
        DataError: the folder, a model or its metadata encoder is missing or malformed.
        UserError: `engine` does not fit the folder.
    """
    predictor = load_predictor(run_dir, engine, image_size=image_size)
    exported = isinstance(predictor, ExportedModel)
    if not exported:
        from inference.gradcam import PredictorGradCAM

        cam = PredictorGradCAM(predictor)
    description = predictor.describe()
    calibration = load_calibration(predictor)
    lock = threading.Lock()
    app = FastAPI(
        title=f"HAM10000 classifier: {description['run']}",
        description=f"{description['architecture']} at {predictor.image_size} px"
        + (
            f", the mean of {predictor.model_count} {getattr(predictor, 'unit', 'models')}"
            if predictor.model_count > 1
            else ""
        )
        + (f" ({predictor.incomplete})" if getattr(predictor, "incomplete", None) else "")
        + (", with age, sex and site" if predictor.takes_metadata else "")
        + (f", served by {predictor.info['runtime']} from its {predictor.info['format']} export" if exported else "")
        + ". A research model, not a medical device.",
    )
    app.middleware("http")(body_limit(max_upload_bytes))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page():
        return PAGE.read_text(encoding="utf-8")

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.get("/model")
    def model():
        """The run: name, architecture, models (those answering, of those planned), image size, classes, metadata categories and test metrics."""
        return description

    @app.post("/predict")
    def predict(
        image: Annotated[UploadFile, File(description="a JPEG or PNG image of the lesion, any size")],
        age: Annotated[float | None, Form(ge=0, le=120, description="years")] = None,
        sex: Annotated[str | None, Form(description="male, female or unknown")] = None,
        site: Annotated[str | None, Form(description="anatomical site, one of GET /model's sites")] = None,
        explain: Annotated[bool, Form(description="also return a Grad-CAM overlay (PNG data URL)")] = False,
        calibrated: Annotated[
            bool, Form(description="also return the probabilities with the temperature fitted on validation")
        ] = False,
        conformal: Annotated[
            float | None,
            Form(gt=0, lt=1, description="also return the conformal prediction set at this level (0.9 or 0.95)"),
        ] = None,
        conformal_kind: Annotated[
            str, Form(description="marginal, or class_conditional (one threshold per class)")
        ] = "marginal",
    ):
        """The class probabilities of one image; age, sex and site are used by metadata models."""
        if calibrated or conformal is not None:
            check_calibration(calibration, conformal, conformal_kind)
        data = read_upload(image, max_upload_bytes, max_pixels)
        decoded = decode_upload(data, image.filename, predictor.image_size)[None]
        metadata, notes = request_metadata(predictor, age, sex, site)
        if explain and exported:
            notes.append("no Grad-CAM from an export: serve the run with --engine keras for explanations")
            explain = False
        with lock:
            probabilities = predictor.predict(decoded, metadata)[0]
            heatmap = cam.heatmaps(decoded, [int(probabilities.argmax())], metadata)[0] if explain else None
        notes += [predictor.incomplete] if getattr(predictor, "incomplete", None) else []
        answer = prediction_answer(description["run"], probabilities, notes, predictor.model_count)
        if calibrated:
            answer["calibrated"] = calibrated_answer(calibration, probabilities)
        if conformal is not None:
            answer["conformal"] = conformal_answer(calibration, probabilities, conformal, conformal_kind)
        if explain:
            from inference.gradcam import overlay_heatmap, png_bytes

            overlay = overlay_heatmap(read_image(io.BytesIO(data), OVERLAY_SIZE), heatmap)
            answer["gradcam_png"] = "data:image/png;base64," + base64.b64encode(png_bytes(overlay)).decode("ascii")
        return answer

    return app


def body_limit(max_upload_bytes):
    """HTTP middleware refusing a body over the upload limit before it is read, where the client
    declares its size; a body without a declared size is checked after reading (`read_upload`)."""

    async def refuse_large_bodies(request: Request, call_next):
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > max_upload_bytes + FORM_OVERHEAD_BYTES:
            return JSONResponse({"detail": too_large(max_upload_bytes)}, status_code=413)
        return await call_next(request)

    return refuse_large_bodies


def read_upload(image, max_upload_bytes, max_pixels):
    """The uploaded file's bytes, unless it is over the size limit or its header declares too many pixels (HTTPException 413)."""
    data = image.file.read(max_upload_bytes + 1)
    if len(data) > max_upload_bytes:
        raise HTTPException(413, too_large(max_upload_bytes))
    check_pixels(data, max_pixels)
    return data


def decode_upload(data, filename, size):
    """The uploaded image as the model takes it; HTTPException 415 if it is not a readable JPEG or PNG."""
    try:
        return read_image(io.BytesIO(data), size)
    except DataError:
        raise HTTPException(415, f"{filename or 'the upload'} is not a readable JPEG or PNG image") from None


def prediction_answer(run, probabilities, notes, models):
    """The JSON answer to a prediction: the most probable class, every class's probability, how
    many models answered, the notes."""
    predicted = int(probabilities.argmax())
    return {
        "run": run,
        "predicted": {
            "code": CLASS_NAMES[predicted],
            "name": CLASS_DESCRIPTIONS[CLASS_NAMES[predicted]],
            "probability": float(probabilities[predicted]),
        },
        "probabilities": {name: float(value) for name, value in zip(CLASS_NAMES, probabilities)},
        "models": models,
        "warnings": notes,
    }


def load_calibration(predictor):
    """The predictor's `Calibration`, or the one-line reason there is none (a run evaluated before
    calibration.json, an export)."""
    if isinstance(predictor, ExportedModel):
        return f"{predictor.name}: an export carries no calibration; serve its run folder for calibrated probabilities or conformal sets"
    # Imported here: its evaluation helpers bring Keras, which an export's server goes without.
    from inference.calibrated import Calibration

    try:
        return Calibration.load(predictor)
    except DataError as error:
        return str(error)


def check_calibration(calibration, level, kind):
    """HTTPException 422 where a request asks for calibration the model has not, or a level or kind it has not."""
    if isinstance(calibration, str):
        raise HTTPException(422, calibration)
    if level is not None:
        try:
            calibration.threshold(level, kind)
        except UserError as error:
            raise HTTPException(422, str(error)) from None


def calibrated_answer(calibration, probabilities):
    """The calibrated probabilities of one image, with the temperature that made them."""
    calibrated = calibration.probabilities(probabilities[None])[0]
    return {
        "temperature": calibration.temperature,
        "probabilities": {name: float(value) for name, value in zip(CLASS_NAMES, calibrated)},
    }


def conformal_answer(calibration, probabilities, level, kind):
    """One image's conformal prediction set: its class codes (possibly none), the level, kind and threshold."""
    kind = kind.replace("-", "_")
    return {
        "level": level,
        "kind": kind,
        "threshold": calibration.threshold(level, kind),
        "set": calibration.sets(probabilities[None], level, kind)[0],
    }


def request_metadata(predictor, age, sex, site):
    """The metadata row of a request (None for an image-only model) and notes for the answer.

    Raises:
        HTTPException: 422 for a sex or site the model's encoder does not know.
    """
    given = [name for name, value in (("age", age), ("sex", sex), ("site", site)) if value not in (None, "")]
    if not predictor.takes_metadata:
        notes = [f"this model uses only the image: {', '.join(given)} ignored"] if given else []
        return None, notes
    sex = (sex or UNKNOWN).strip().lower()
    site = (site or UNKNOWN).strip().lower()
    for field, value, known in (("sex", sex, predictor.sexes), ("site", site, predictor.sites)):
        if value not in known:
            raise HTTPException(422, f"unknown {field} {value!r}: expected one of {', '.join(known)}")
    missing = [name for name in ("age", "sex", "site") if name not in given]
    notes = [f"no {', '.join(missing)} given: encoded as unknown"] if missing else []
    row = pd.DataFrame({"age": [math.nan if age is None else age], "sex": [sex], "localization": [site]})
    return row, notes


def check_pixels(data, limit):
    """Raises HTTPException 413 if the image's header declares more than `limit` pixels; read without decoding.

    Data that is not an image passes: decoding it says so (415).
    """
    try:
        with warnings.catch_warnings():
            # Pillow's own warning for images over its limit: the server applies its own.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
        if width * height <= limit:
            return
        size = f" ({width} x {height})"
    except Image.DecompressionBombError:  # over twice Pillow's limit: refused as it opens
        size = ""
    except (OSError, SyntaxError, ValueError):
        return
    raise HTTPException(
        413, f"the image has more than the {limit / 1e6:g} megapixels this server decodes{size}; send a smaller image"
    )


def too_large(limit):
    return f"the upload is larger than {limit / 2**20:g} MB; send a smaller JPEG or PNG"


def serve(run_dir, *, host="127.0.0.1", port=8000, image_size=None, engine=None):
    """Checks the address and loads the run or export (failing fast on either), then serves it with uvicorn until interrupted."""
    import uvicorn

    check_address(host, port)
    app = create_app(run_dir, image_size=image_size, engine=engine)
    uvicorn.run(app, host=host, port=port)


def check_address(host, port):
    """Raises UserError unless a server can listen on host:port: checked before the model loads,
    and in one line, where uvicorn would exit with its own log line (or Python with OverflowError)."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port {port}: a port is 0 to 65535 (0 picks a free one)")
    # As uvicorn binds: IPv6 for an address with colons, and a port in TIME_WAIT is free.
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise UserError(
                f"{host}:{port}: cannot listen there ({error.strerror}); pass another --port (0 picks a free one) or --host"
            ) from None
