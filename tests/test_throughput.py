"""benchmarks/throughput.py measures the model the settings describe: fine-tuning's frozen blocks and
batch norm, and XLA, are what its speed analysis compares."""

import importlib.util
from pathlib import Path

import pytest

from dataset import prepare_data


@pytest.fixture(scope="module")
def throughput():
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "throughput.py"
    spec = importlib.util.spec_from_file_location("throughput", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_row_records_the_settings_it_was_measured_with(throughput, toy_dir):
    data = prepare_data(toy_dir, image_size=32, verbose=False)
    row = throughput.measure(
        "cnn",
        32,
        data,
        batch_size=4,
        steps=1,
        repeats=1,
        settings={"jit_compile": False, "model_options": {"filters": [4, 8]}},
    )
    assert (row["model"], row["stage"], row["image_size"], row["jit_compile"]) == ("cnn", "scratch", 32, False)
    assert row["fit_images_per_s"] > 0 and row["compute_images_per_s"] > 0
    assert row["parameters"] < 10_000  # the two-block cnn asked for, not the default 1.2 M
