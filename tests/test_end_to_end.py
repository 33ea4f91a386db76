"""The CPU preset on the full dataset: each study configuration must learn, not just run.

Slow (up to about 25 minutes per configuration on 2 cores), so not in the default run:

    pytest -m slow                     # all four configurations
    pytest -m slow -k densenet         # one
"""

import json

import pytest

from conftest import REPO_ROOT, run_main
from training.config import STUDY

CPU_CONFIG = REPO_ROOT / "configs" / "cpu.yaml"
# What a logistic regression on colour histograms plus metadata reaches on a lesion-grouped split
# of HAM10000 (0.557 on this project's seed-0 test subset, 32 bins per channel at 64 px, C chosen
# on validation): a deep model that cannot beat it is not worth its compute.
BASELINE_BALANCED_ACCURACY = 0.55


# Measured in the reference study (results/reference/, seed 0); these miss the baseline today.
KNOWN_SHORTFALLS = {
    "cnn": "0.541 [0.492, 0.589] in the reference study: within noise of the baseline, not above it",
    "vgg16": "0.244 in the reference study: VGG16 from scratch (no ImageNet weights offline) at 32 px barely learns in 25 min",
    "vgg16-meta": "0.428 in the reference study: the metadata head adds 0.18 to vgg16, but its image branch is as starved",
}


def configuration(model, metadata):
    name = f"{model}-meta" if metadata else model
    marks = [pytest.mark.xfail(reason=KNOWN_SHORTFALLS[name], strict=False)] if name in KNOWN_SHORTFALLS else []
    return pytest.param(model, metadata, id=name, marks=marks)


@pytest.mark.slow
@pytest.mark.parametrize(("model", "metadata"), [configuration(*study_run) for study_run in STUDY])
def test_cpu_preset_beats_the_colour_histogram_baseline(model, metadata, ham_dir, tmp_path):
    arguments = ["--model", model, "--config", CPU_CONFIG, "--data-dir", ham_dir, "--output-dir", tmp_path]
    assert run_main(*arguments, *(["--metadata"] if metadata else [])) == 0

    (run_dir,) = (tmp_path / "runs").iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert sum(metrics["per_class"][name]["support"] for name in metrics["class_names"]) > 1400
    assert metrics["balanced_accuracy"] > BASELINE_BALANCED_ACCURACY
