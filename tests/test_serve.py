"""`main.py serve`: the API through FastAPI's TestClient, a real server on loopback, and the page in Chromium."""

import base64
import concurrent.futures
import io
import json
import shutil
import socket
import struct
import urllib.error
import urllib.request
import uuid
import zlib

import numpy as np
import pandas as pd
import pytest
from conftest import run_main, study_run
from PIL import Image

from evaluation.predictions import PROBABILITY_COLUMNS

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[serve]'")
from fastapi.testclient import TestClient  # noqa: E402

from inference.app import create_app  # noqa: E402
from inference.server import served  # noqa: E402

CLASSES = [column.removeprefix("prob_") for column in PROBABILITY_COLUMNS]


def jpeg_bytes(seed, size=(60, 45)):
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def client(study):
    return TestClient(create_app(study_run(study, "cnn")))


@pytest.fixture(scope="module")
def metadata_client(study):
    return TestClient(create_app(study_run(study, "vgg16-meta"), max_upload_bytes=100_000))


# === The API, in process ===


def test_a_partial_fold_ensemble_says_how_many_models_answer(study, tmp_path):
    from test_predict import PARTIAL_NOTE, partial_fold_study

    study_dir = partial_fold_study(study, tmp_path / "partial")
    with pytest.warns(UserWarning, match="partial/cnn: predicting with 1 of 2 fold models"):
        partial = TestClient(create_app(study_dir / "cnn"))
    model = partial.get("/model").json()
    assert (model["models"], model["planned_models"]) == (1, 2)
    answer = partial.post("/predict", files={"image": ("a.jpg", jpeg_bytes(0), "image/jpeg")}).json()
    assert answer["models"] == 1 and answer["warnings"] == [PARTIAL_NOTE]


def test_health_model_and_docs(client, study):
    assert client.get("/health").json() == {"status": "ok"}
    model = client.get("/model").json()
    run = study_run(study, "cnn")
    metrics = json.loads((run / "metrics.json").read_text())
    assert model["run"] == run.name and model["architecture"] == "cnn" and model["image_size"] == 32
    assert [entry["code"] for entry in model["classes"]] == CLASSES and model["metadata"] is False
    assert model["test_metrics"]["balanced_accuracy"] == metrics["balanced_accuracy"]
    assert client.get("/docs").status_code == 200
    assert "/predict" in client.get("/openapi.json").json()["paths"]
    assert "<form" in client.get("/").text


def test_predict_answers_as_the_evaluation_did(client, study, real_toy_dir):
    run = study_run(study, "cnn")
    expected = pd.read_csv(run / "predictions.csv").iloc[0]
    image = (real_toy_dir / "images" / f"{expected['image_id']}.jpg").read_bytes()
    answer = client.post("/predict", files={"image": ("lesion.jpg", image, "image/jpeg")}).json()
    np.testing.assert_allclose(
        [answer["probabilities"][name] for name in CLASSES],
        expected[list(PROBABILITY_COLUMNS)].astype(float),
        atol=2e-4,
    )
    assert answer["predicted"]["code"] == expected["pred"] and answer["warnings"] == []
    assert "gradcam_png" not in answer


def test_explain_returns_an_overlay_png(client):
    answer = client.post(
        "/predict", files={"image": ("a.jpg", jpeg_bytes(0), "image/jpeg")}, data={"explain": "true"}
    ).json()
    prefix = "data:image/png;base64,"
    assert answer["gradcam_png"].startswith(prefix)
    overlay = Image.open(io.BytesIO(base64.b64decode(answer["gradcam_png"][len(prefix) :])))
    assert overlay.format == "PNG" and overlay.size == (256, 256)


def test_metadata_model_takes_age_sex_and_site(metadata_client, client):
    image = {"image": ("a.jpg", jpeg_bytes(1), "image/jpeg")}
    model = metadata_client.get("/model").json()
    assert model["metadata"] and "male" in model["sexes"] and "unknown" in model["sites"]
    full = metadata_client.post(
        "/predict", files=image, data={"age": "65", "sex": "male", "site": model["sites"][0]}
    ).json()
    assert full["warnings"] == []
    bare = metadata_client.post("/predict", files=image).json()
    assert bare["warnings"] == ["no age, sex, site given: encoded as unknown"]
    assert bare["probabilities"] != full["probabilities"]
    ignored = client.post("/predict", files=image, data={"age": "65"}).json()
    assert ignored["warnings"] == ["this model uses only the image: age ignored"]


def png_of_size(width, height):
    """A valid black 1-bit PNG, written by hand: a few kilobytes at any size, hundreds of MB decoded to RGB."""
    compressor = zlib.compressobj(9)
    row = b"\x00" + bytes((width + 7) // 8)  # filter byte, then the row's bits
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def test_an_image_over_the_pixel_limit_is_refused_from_its_header_without_decoding(client, monkeypatch):
    def decode(*args):
        raise AssertionError("the image was decoded")

    monkeypatch.setattr("inference.app.read_image", decode)
    response = client.post("/predict", files={"image": ("big.png", png_of_size(8000, 8000), "image/png")})
    assert response.status_code == 413
    assert (
        response.json()["detail"]
        == "the image has more than the 50 megapixels this server decodes (8000 x 8000); send a smaller image"
    )


@pytest.mark.parametrize(
    ("files", "data", "status", "detail"),
    [
        ({"image": ("big.jpg", b"\xff" * 100_001, "image/jpeg")}, {}, 413, "larger than"),  # read, then refused
        (
            {"image": ("big.jpg", b"\xff" * 300_000, "image/jpeg")},
            {},
            413,
            "larger than",
        ),  # refused by its declared size
        ({"image": ("notes.txt", b"hello", "text/plain")}, {}, 415, "not a readable JPEG or PNG"),
        ({"picture": ("a.jpg", jpeg_bytes(2), "image/jpeg")}, {}, 422, None),  # no `image` field
        (None, {"image": "a.jpg"}, 422, None),  # a text field, not a file
        ({"image": ("a.jpg", jpeg_bytes(2), "image/jpeg")}, {"age": "old"}, 422, None),
        ({"image": ("a.jpg", jpeg_bytes(2), "image/jpeg")}, {"age": "-3"}, 422, None),
        ({"image": ("a.jpg", jpeg_bytes(2), "image/jpeg")}, {"sex": "robot"}, 422, "unknown sex 'robot'"),
        ({"image": ("a.jpg", jpeg_bytes(2), "image/jpeg")}, {"site": "moon"}, 422, "unknown site 'moon'"),
    ],
)
def test_bad_requests_get_a_json_4xx(metadata_client, files, data, status, detail):
    response = metadata_client.post("/predict", files=files, data=data)
    assert response.status_code == status
    body = response.json()
    assert "detail" in body
    if detail is not None:
        assert detail in body["detail"]


def test_calibrated_probabilities_and_conformal_set_are_the_evaluations(client, study, real_toy_dir, tmp_path):
    run = study_run(study, "cnn")
    calibration = json.loads((run / "calibration.json").read_text())
    expected = pd.read_csv(run / "calibrated_predictions.csv").iloc[0]
    image = (real_toy_dir / "images" / f"{expected['image_id']}.jpg").read_bytes()
    files = {"image": ("lesion.jpg", image, "image/jpeg")}
    plain = client.post("/predict", files=files).json()
    assert "calibrated" not in plain and "conformal" not in plain
    answer = client.post("/predict", files=files, data={"calibrated": "true", "conformal": "0.9"}).json()
    assert answer["probabilities"] == plain["probabilities"] and answer["predicted"] == plain["predicted"]
    assert answer["calibrated"]["temperature"] == calibration["temperature"]
    calibrated = [answer["calibrated"]["probabilities"][name] for name in CLASSES]
    np.testing.assert_allclose(calibrated, expected[list(PROBABILITY_COLUMNS)].astype(float), atol=2e-4)
    q = calibration["conformal"]["0.90"]["marginal"]
    assert answer["conformal"] == {
        "level": 0.9,
        "kind": "marginal",
        "threshold": q,
        "set": [name for name, p in zip(CLASSES, calibrated) if 1 - p <= q],
    }
    per_class = calibration["conformal"]["0.95"]["class_conditional"]
    answer = client.post(
        "/predict", files=files, data={"conformal": "0.95", "conformal_kind": "class_conditional"}
    ).json()
    assert "calibrated" not in answer
    assert answer["conformal"]["set"] == [name for name, p in zip(CLASSES, calibrated) if 1 - p <= per_class[name]]

    response = client.post("/predict", files=files, data={"conformal": "0.8"})
    assert response.status_code == 422 and "conformal level 0.8" in response.json()["detail"]
    response = client.post("/predict", files=files, data={"conformal": "0.9", "conformal_kind": "joint"})
    assert response.status_code == 422 and "conformal kind 'joint'" in response.json()["detail"]
    # A run evaluated before calibration.json existed still serves, and says why it cannot calibrate.
    old = shutil.copytree(run, tmp_path / run.name, ignore=shutil.ignore_patterns("calibration.json"))
    old_client = TestClient(create_app(old))
    assert old_client.post("/predict", files=files).status_code == 200
    response = old_client.post("/predict", files=files, data={"calibrated": "true"})
    assert response.status_code == 422 and "calibration.json: not found" in response.json()["detail"]


@pytest.mark.parametrize("port", ["99999", "in use"])
def test_a_port_that_cannot_be_listened_on_is_one_line_before_the_model_loads(port, study, capsys):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1]) if port == "in use" else port
        assert run_main("serve", study_run(study, "cnn"), "--port", port) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("error: ")
    assert (
        "a port is 0 to 65535" if port == "99999" else f"127.0.0.1:{port}: cannot listen there (Address already in use)"
    ) in error


# === A real server on loopback ===


@pytest.fixture(scope="module")
def server(study):
    """`main.py serve` in a subprocess on a free loopback port (port 0: the system picks one)."""
    with served(study_run(study, "vgg16-meta"), timeout=120) as url:
        yield url


def post_image(url, image, fields=()):
    """POST /predict with a multipart form built by hand: what a client without our stack sends."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n".encode()
        + image
        + b"\r\n"
    )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    request = urllib.request.Request(
        f"{url}/predict", data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def test_real_server_answers_50_concurrent_requests_as_it_answers_them_one_by_one(server):
    with urllib.request.urlopen(f"{server}/health", timeout=10) as response:
        assert json.loads(response.read()) == {"status": "ok"}
    requests = [
        (jpeg_bytes(seed), [("age", 20 + 5 * seed), ("sex", ("male", "female")[seed % 2])]) for seed in range(10)
    ]
    sequential = [post_image(server, image, fields)["probabilities"] for image, fields in requests]
    assert len({json.dumps(answer) for answer in sequential}) == len(requests)  # the requests differ
    with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
        futures = [pool.submit(post_image, server, *requests[index % len(requests)]) for index in range(50)]
        concurrent_answers = [future.result()["probabilities"] for future in futures]
    for index, answer in enumerate(concurrent_answers):
        assert answer == pytest.approx(sequential[index % len(requests)], abs=1e-6)


def test_real_server_refuses_concurrent_oversized_images_and_goes_on_answering(server):
    oversized = png_of_size(8000, 8000)  # 8 KB; 64 megapixels, 192 MB decoded to RGB

    def status(image):
        try:
            post_image(server, image)
            return 200
        except urllib.error.HTTPError as error:
            return error.code

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(status, [oversized] * 4)) == [413] * 4
    assert status(jpeg_bytes(0)) == 200


# === The page in headless Chromium ===


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="no headless browser: install Debian's chromium and chromium-driver packages (CI's .ci/run does)",
)
def test_page_uploads_an_image_and_shows_its_probabilities_and_overlay(server, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the test extra has it)")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(flag)
    image_path = tmp_path / "lesion.jpg"
    image_path.write_bytes(jpeg_bytes(7))
    expected = post_image(server, image_path.read_bytes(), [("explain", "true"), ("age", "50"), ("sex", "female")])

    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    try:
        browser.get(server + "/")
        wait = WebDriverWait(browser, 60)
        # The metadata fields fill from GET /model once the page has loaded.
        wait.until(lambda driver: driver.find_elements(By.CSS_SELECTOR, "#sex option"))
        browser.find_element(By.ID, "image").send_keys(str(image_path))
        browser.find_element(By.ID, "age").send_keys("50")
        browser.find_element(By.CSS_SELECTOR, "#sex option[value=female]").click()
        browser.find_element(By.ID, "submit").click()
        wait.until(lambda driver: driver.find_elements(By.CSS_SELECTOR, "#results .bar.top"))
        assert browser.find_element(By.ID, "output").is_displayed()
        bars = browser.find_elements(By.CSS_SELECTOR, "#results .bar")
        shown = {bar.get_attribute("data-class"): float(bar.find_element(By.CLASS_NAME, "value").text) for bar in bars}
        top = browser.find_element(By.CSS_SELECTOR, "#results .bar.top").get_attribute("data-class")
        overlay = browser.find_element(By.ID, "overlay")
        overlay_width = browser.execute_script("return arguments[0].naturalWidth", overlay)
        error = browser.find_element(By.ID, "error").text
    finally:
        browser.quit()
    assert error == ""
    assert list(shown) == CLASSES
    assert shown == pytest.approx(expected["probabilities"], abs=6e-4)  # shown with three decimals
    assert top == expected["predicted"]["code"] and overlay_width == 256
