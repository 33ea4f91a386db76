"""Config resolution, losses, the balanced-accuracy metric, stages and run folders."""

import datetime
import json
import re
import sys

import keras
import numpy as np
import pytest
from conftest import REPO_ROOT, TINY_CONFIG
from sklearn.metrics import balanced_accuracy_score

from common.run_folder import create_run_dir
from training import ConfigError, load_config, plan_stages
from training.environment import environment
from training.losses import CostSensitiveCrossentropy, make_loss, melanoma_cost_matrix, weighs_samples
from training.metrics import BalancedAccuracy
from training.trainer import make_optimizer, steady_seconds


def write_yaml(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_precedence_defaults_then_file_then_model_section_then_flags(tmp_path):
    path = write_yaml(tmp_path, "epochs: 7\nlr: 0.01\nmodels:\n  vgg16: {lr: 0.0001, batch_size: 16}\n")
    assert load_config("cnn").epochs == 60  # the dataclass default
    cnn = load_config("cnn", path)
    assert (cnn.epochs, cnn.lr, cnn.batch_size) == (7, 0.01, 32)
    vgg = load_config("vgg16", path)
    assert (vgg.epochs, vgg.lr, vgg.batch_size) == (7, 0.0001, 16)
    flagged = load_config("vgg16", path, {"lr": 0.5})
    assert (flagged.lr, flagged.epochs) == (0.5, 7)


def test_saved_config_reproduces_the_run_config(tmp_path):
    config = load_config("densenet", TINY_CONFIG, {"metadata": True, "seed": 3})
    config.save(tmp_path / "config.yaml")
    assert load_config(None, tmp_path / "config.yaml") == config


def test_shipped_presets_are_valid():
    for preset in sorted((REPO_ROOT / "configs").glob("*.yaml")):
        for model in ("cnn", "densenet", "vgg16"):
            load_config(model, preset)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"epochs": -1}, "epochs must be a positive integer; got -1"),
        ({"image_size": 16}, "image_size 16 is too small for model 'cnn' (it needs at least 32)"),
        ({"balance": "smote"}, "unknown balance 'smote'"),
        ({"loss": "hinge"}, "unknown loss 'hinge'"),
        ({"lr": "fast"}, "setting 'lr' must be float; got 'fast'"),
        ({"class_weight_boost": {"melanoma": 2}}, "unknown class melanoma in class_weight_boost"),
        ({"model_options": {"depth": 3}}, "unknown option 'depth' for model 'cnn'"),
        ({"split_fractions": [0.5, 0.5, 0.5]}, "split fractions must be three positive numbers"),
    ],
)
def test_bad_values_raise_one_line_config_errors(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config("cnn", None, overrides)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_unknown_model_and_unknown_setting(tmp_path):
    with pytest.raises(
        ConfigError, match=r"unknown model 'resnet' \(available: cnn, convnext_tiny, densenet, densenet121, "
    ):
        load_config("resnet")
    with pytest.raises(ConfigError, match="unknown setting 'epoch'"):
        load_config("cnn", write_yaml(tmp_path, "epoch: 3\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config("cnn", write_yaml(tmp_path, "epochs: [3\n"))


def test_stages_of_a_pretrained_and_a_scratch_model():
    pretrained = plan_stages(load_config("vgg16", None, {"head_epochs": 3, "epochs": 10, "lr": 1e-3}))
    assert [(s.number, s.epochs, s.backbone) for s in pretrained] == [(1, 3, "frozen"), (2, 10, "top blocks")]
    # The head keeps the rate; the backbone learns at a tenth of it.
    assert pretrained[1].lr == pytest.approx(1e-3) and pretrained[1].backbone_lr_factor == pytest.approx(0.1)
    scratch = plan_stages(load_config("vgg16", None, {"weights": "none", "epochs": 10}))
    assert [(s.number, s.epochs, s.backbone) for s in scratch] == [(1, 10, "all")]


def test_cost_sensitive_loss_by_hand():
    costs = melanoma_cost_matrix(5.0)
    assert costs[4, 5] == 5.0 and costs[4, 1] == 1.0 and costs[5, 4] == 1.0 and costs[4, 4] == 0.0
    probabilities = np.array([[0.1, 0.0, 0.0, 0.0, 0.5, 0.4, 0.0]], dtype="float32")
    melanoma = keras.utils.to_categorical([4], 7)
    # -log(0.5) + (1 * 0.1 [akiec] + 5 * 0.4 [nv])
    expected = -np.log(0.5) + 0.1 + 2.0
    loss = CostSensitiveCrossentropy(costs)(melanoma, probabilities)
    assert float(keras.ops.convert_to_numpy(loss)) == pytest.approx(expected, rel=1e-5)


def test_focal_loss_takes_class_weights_as_alpha_and_fit_skips_them():
    weights = {i: float(i + 1) for i in range(7)}
    loss = make_loss("focal", weights, focal_gamma=2.0)
    assert isinstance(loss, keras.losses.CategoricalFocalCrossentropy) and not weighs_samples("focal")
    assert list(loss.alpha) == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    assert weighs_samples("crossentropy") and weighs_samples("cost")


# Class 6 is predicted but never true: scikit-learn warns, and the metric must still agree with it.
@pytest.mark.backend
@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_balanced_accuracy_metric_equals_scikit_learn_over_batches():
    rng = np.random.default_rng(0)
    true = rng.integers(0, 6, 50)  # class 6 absent: it must not count
    predicted = np.where(rng.random(50) < 0.6, true, rng.integers(0, 7, 50))
    metric = BalancedAccuracy(7)
    for batch in np.array_split(np.arange(50), 4):
        metric.update_state(keras.utils.to_categorical(true[batch], 7), keras.utils.to_categorical(predicted[batch], 7))
    assert float(metric.result()) == pytest.approx(balanced_accuracy_score(true, predicted), rel=1e-6)


@pytest.mark.backend
def test_balanced_accuracy_metric_in_compiled_evaluation_starts_afresh_each_time():
    # Compiled (jitted under JAX, a graph under TensorFlow), as fit and evaluate run it, and reset between calls.
    model = keras.Sequential([keras.Input((7,)), keras.layers.Activation("softmax")])
    model.compile(loss="categorical_crossentropy", metrics=[BalancedAccuracy(7)])
    rng = np.random.default_rng(1)
    for _ in range(2):
        true, predicted = rng.integers(0, 7, 40), rng.integers(0, 7, 40)
        logits = 10.0 * keras.utils.to_categorical(predicted, 7)
        result = model.evaluate(logits, keras.utils.to_categorical(true, 7), batch_size=8, verbose=0, return_dict=True)
        assert result["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(true, predicted), rel=1e-5)


def test_run_folders_never_overwrite(tmp_path):
    now = datetime.datetime(2026, 11, 23, 10, 15, 0)
    first = create_run_dir(tmp_path, "cnn", now=now)
    second = create_run_dir(tmp_path, "cnn", now=now)
    assert first.name == "20261123-101500-cnn" and second.name == "20261123-101500-cnn-2"


@pytest.mark.backend
def test_environment_records_versions_backend_device_and_commit():
    info = environment()
    assert info["backend"] == keras.backend.backend()
    assert info["device"]["kind"] in ("cpu", "gpu", "tpu", "mps") and info["device"]["name"]
    assert info["packages"]["keras"] == keras.__version__
    assert len(info["git"]["commit"] or "") == 40
    if sys.platform == "linux":
        assert info["cpu"]  # the model name, e.g. "AMD EPYC"
    json.dumps(info)


def test_first_epoch_estimate_counts_the_tracing_step_as_an_average_one():
    # 10 steps in 30 s, the first (tracing) 12 s: the other 9 average 2 s, so a steady epoch is 20 s.
    assert steady_seconds(30.0, 12.0, 10) == pytest.approx(20.0)
    assert steady_seconds(30.0, 12.0, 1) == 30.0 and steady_seconds(30.0, None, 10) == 30.0


def test_cosine_schedule_warms_up_then_decays_to_zero():
    config = load_config(
        "cnn",
        None,
        {"optimizer": "adamw", "weight_decay": 0.05, "schedule": "cosine", "warmup_epochs": 2, "epochs": 10},
    )
    optimizer = make_optimizer(config, 1e-3, stage_steps=100, warmup_steps=20)
    assert isinstance(optimizer, keras.optimizers.AdamW) and optimizer.weight_decay == pytest.approx(0.05)
    schedule = optimizer._learning_rate

    def rate(step):
        return float(keras.ops.convert_to_numpy(schedule(step)))

    assert rate(0) == pytest.approx(0.0) and rate(10) == pytest.approx(5e-4) and rate(20) == pytest.approx(1e-3)
    assert rate(60) == pytest.approx(5e-4, rel=1e-4) and rate(100) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"weight_decay": 0.1}, "weight_decay needs optimizer: adamw"),
        ({"schedule": "step"}, "unknown schedule 'step'"),
        ({"warmup_epochs": 5, "epochs": 5}, "warmup_epochs must be in [0, epochs); got 5"),
        ({"label_smoothing": 1.0}, "label_smoothing must be in [0, 1); got 1.0"),
        ({"cutmix": -1.0}, "mixup and cutmix must be 0 (off) or positive; got mixup 0.0, cutmix -1.0"),
        ({"augmentation": {"rotate": 0.5}}, "unknown augmentation option 'rotate' (expected rotation, zoom,"),
    ],
)
def test_recipe_settings_are_validated(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config("cnn", None, overrides)


def test_a_preset_s_warm_up_is_shortened_to_fit_a_shorter_epochs_flag(capsys):
    preset = REPO_ROOT / "configs" / "cpu.yaml"  # warmup_epochs: 2, the preset a newcomer gets without --config
    assert load_config("cnn", preset, {"epochs": 1}).warmup_epochs == 0
    assert capsys.readouterr().out == f"Note: warmup_epochs 2 of {preset} shortened to 0 to fit epochs 1\n"
    assert load_config("cnn", preset, {"epochs": 2}).warmup_epochs == 1
    assert load_config("cnn", preset, {"epochs": 3}).warmup_epochs == 2  # it fits: unchanged, and nothing said
    assert capsys.readouterr().out.count("\n") == 1
    # A warm-up asked for on the command line is the user's own: refused, not changed.
    with pytest.raises(ConfigError, match=re.escape("warmup_epochs must be in [0, epochs); got 2")):
        load_config("cnn", preset, {"epochs": 1, "warmup_epochs": 2})
