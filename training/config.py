"""Every setting of a training run, in one dataclass.

Defaults come from one place, in this order of precedence:

    TrainConfig defaults  <  --config FILE.yaml  <  --set and the setting flags

A YAML file sets any field by name, and may hold a `models:` section whose entries apply to one
model only, so that one file configures every run of `--model all`:

    epochs: 30
    image_size: 64
    models:
      vgg16: {lr: 0.0001}

The resolved config is saved as `config.yaml` in the run folder, and a saved `config.yaml` can
be passed back with --config to repeat a run.
"""

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from common.errors import ConfigError
from common.files import write_text
from dataset import CLASS_NAMES, Balance
from dataset.corruptions import CorruptionAugmentation
from dataset.split import DEFAULT_FRACTIONS, check_fractions
from networks import AugmentationOptions, check_input, get_model_entry, list_models, model_options
from networks.heads import HeadOptions
from training.devices import compute_device

LOSSES = ("crossentropy", "focal", "cost")
OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("plateau", "cosine")
TRACKERS = ("mlflow",)
TUNERS = ("bayesian", "hyperband")  # KerasTuner's oracles that `python main.py tune` offers
AUTO = "auto"
# The four configurations of the study, in the order `--model all` trains them, unless the config
# file's `study:` names others (the CPU preset: VGG16-BN for VGG16, which needs ImageNet weights).
STUDY = (("cnn", False), ("densenet", False), ("vgg16", False), ("vgg16", True))
METADATA_SUFFIX = "-meta"
# HAM10000's images are 600 x 450: a larger side only upsamples them, and the cache of 10,015
# images at this size already takes 31 GB.
MAX_IMAGE_SIZE = 1024
# numpy's and scikit-learn's seeds are 32-bit unsigned integers.
MAX_SEED = 2**32 - 1
# What a setting's integer must fit in: the backends hold counts and seeds as 64-bit integers.
MAX_INTEGER = 2**63 - 1


@dataclass
class TrainConfig:
    # === Model ===
    model: str = "densenet"
    metadata: bool = False  # the hybrid head: age, sex and site beside the image
    image_size: int = 128
    weights: typing.Optional[str] = (
        "imagenet"  # pretrained models (vgg16, efficientnet_lite0, ...): "imagenet", "none" or a file
    )
    model_options: dict = field(default_factory=dict)  # architecture options, e.g. {growth_rate: 24}
    head: dict = field(default_factory=dict)  # HeadOptions fields, e.g. {pooling: avg, dropout: 0.3}

    # === Data ===
    data_dir: typing.Optional[str] = None
    cache_dir: typing.Optional[str] = None
    split: typing.Optional[str] = None  # a split.csv to reuse
    fold: typing.Optional[int] = (
        None  # with a split that has folds (--folds K): validate on this fold, train on the others
    )
    split_fractions: tuple = DEFAULT_FRACTIONS
    limit: typing.Optional[int] = None  # a stratified subset of this many images (smoke runs)
    drop_missing_images: bool = False

    # === Class balance ===
    balance: str = "combined"  # none | down | up | combined (see dataset.sampling.Balance)
    balance_target: int = Balance.target  # "combined": images per class per epoch
    max_oversampling: float = Balance.max_oversampling  # "combined": a class is repeated at most this often
    class_weights: bool = True  # "balanced" weights on the resampled epoch
    class_weight_boost: dict = field(default_factory=lambda: {"mel": 1.5})
    augment: bool = True  # the eight square symmetries (quarter turns and flips), in the data pipeline
    augmentation: dict = field(default_factory=dict)  # AugmentationOptions fields, e.g. {rotation: 0.5, zoom: 0.2}
    colour_constancy: int = (
        0  # shades of grey with this Minkowski power (6 is usual; 1: grey world), in the model; 0: off
    )
    corruption_augmentation: dict = field(
        default_factory=dict
    )  # CorruptionAugmentation fields, e.g. {p: 0.5, severity: 2}: training images only
    mixup: float = 0.0  # MixUp of training batches, alpha of its Beta distribution (0.2 is usual); 0: off
    cutmix: float = 0.0  # CutMix of training batches, alpha of its Beta distribution (1.0 is usual); 0: off; with mixup: either, at even odds

    # === Optimisation ===
    epochs: int = 60
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = "adam"  # adam | adamw (decoupled weight decay)
    weight_decay: float = 0.0  # adamw only
    ema: float = 0.0  # momentum of an exponential moving average of the weights, validated and kept; 0: off
    schedule: str = "plateau"  # plateau: cut lr when validation stalls | cosine: warm-up, then cosine decay to 0
    warmup_epochs: int = 0  # cosine: linear warm-up from 0 to lr over this many epochs
    loss: str = "crossentropy"  # crossentropy | focal | cost
    label_smoothing: float = 0.0  # crossentropy and focal
    focal_gamma: float = 2.0
    melanoma_cost: float = 5.0  # "cost": cost of a melanoma called benign (other mistakes cost 1)
    lr_patience: int = 4  # epochs without a better validation balanced accuracy before lr is cut
    lr_factor: float = 0.5
    min_lr: float = 1e-6
    early_stopping_patience: int = 10
    selection_window: int = 1  # the kept epoch has the best mean validation score over this many epochs ending at it

    # === Two-stage fine-tuning (pretrained backbones only) ===
    head_epochs: int = 5  # stage one: backbone frozen, only the head trains
    fine_tune_from_block: int = 1  # stage two: this backbone block and those above train (1: all blocks)
    fine_tune_lr_factor: float = 0.1  # stage two: the backbone learns at lr times this, the head at lr
    fine_tune_batch_norm: bool = (
        False  # stage two: the unfrozen blocks' batch norm trains too (else it keeps its ImageNet statistics)
    )

    # === Hardware ===
    mixed_precision: typing.Union[bool, str] = AUTO  # auto: on where there is a GPU
    jit_compile: typing.Union[bool, str] = (
        AUTO  # auto: Keras's choice: always under JAX, on a GPU under TensorFlow, never under PyTorch
    )
    workers: int = 2  # threads preparing batches
    devices: typing.Union[int, str] = (
        AUTO  # auto: every GPU (or TPU) JAX sees, one CPU; N: the first N (training.distribution)
    )
    # JAX's persistent compilation cache: auto: <cache_dir>/jax-compilation; a folder; or none (training.compilation)
    compilation_cache: typing.Optional[str] = AUTO

    # === Reproducibility and output ===
    seed: int = 0  # fixes the split, the sampling, the augmentation and the initialisation
    output_dir: str = "results"

    # === Tracking ===
    tracking: typing.Optional[str] = None  # "mlflow": log the run to MLflow (training.tracking; needs .[track])
    track_model: bool = False  # also log model.keras to MLflow (the weights are large)
    tensorboard: bool = True  # TensorBoard logs in the run folder's tensorboard/

    # === Evaluation ===
    robustness: bool = False  # also score the kept model under the 33 corruptions (evaluation.robustness) on val and test: ~34 passes over each

    def __post_init__(self):
        if isinstance(self.weights, str) and self.weights.lower() == "none":
            self.weights = None
        if isinstance(self.compilation_cache, str) and self.compilation_cache.lower() == "none":
            self.compilation_cache = None

    @classmethod
    def defaults(cls):
        """{field name: default value} of every setting."""
        return {
            item.name: item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default
            for item in dataclasses.fields(cls)
        }

    @property
    def configuration(self):
        """What is trained, without the fold: "densenet", "vgg16-meta", ..."""
        return f"{self.model}-meta" if self.metadata else self.model

    @property
    def run_name(self):
        return self.configuration if self.fold is None else f"{self.configuration}-fold{self.fold}"

    @property
    def pretrained(self):
        """Whether the backbone starts from pretrained weights (and so trains in two stages)."""
        return get_model_entry(self.model).pretrained and self.weights is not None

    @property
    def augmentation_options(self):
        return _options(AugmentationOptions, self.augmentation, "augmentation")

    @property
    def corruption_options(self):
        return _options(CorruptionAugmentation, self.corruption_augmentation, "corruption_augmentation")

    @property
    def balance_options(self):
        return Balance(self.balance, self.balance_target, self.max_oversampling)

    @property
    def head_options(self):
        return _options(HeadOptions, self.head, "head")

    def validate(self):
        """Checks every value; raises ConfigError naming the first bad one."""
        if self.model not in list_models():
            raise ConfigError(f"unknown model {self.model!r} (available: {', '.join(list_models())})")
        for name in ("epochs", "batch_size", "image_size", "workers"):
            _require(getattr(self, name) >= 1, f"{name} must be a positive integer; got {getattr(self, name)}")
        _require(
            self.image_size <= MAX_IMAGE_SIZE,
            f"image_size {self.image_size} is too large: at most {MAX_IMAGE_SIZE} (HAM10000's images are 600 x 450 px)",
        )
        _require(0 <= self.seed <= MAX_SEED, f"seed must be in [0, {MAX_SEED}]; got {self.seed}")
        _require(
            self.fold is None or (self.fold >= 0 and self.split is not None),
            f"fold must be 0 or more, with a split file that has folds (split); got fold {self.fold}",
        )
        _require(self.limit is None or self.limit >= 10, f"limit must be at least 10 images; got {self.limit}")
        _require(self.lr > 0, f"lr must be positive; got {self.lr}")
        _require(0 < self.lr_factor < 1, f"lr_factor must be between 0 and 1; got {self.lr_factor}")
        _require(
            0 < self.fine_tune_lr_factor <= 1, f"fine_tune_lr_factor must be in (0, 1]; got {self.fine_tune_lr_factor}"
        )
        _require(self.head_epochs >= 0, f"head_epochs must be 0 or more; got {self.head_epochs}")
        _require(
            self.fine_tune_from_block >= 1,
            f"fine_tune_from_block must be 1 (every block) or more; got {self.fine_tune_from_block}",
        )
        _require(
            self.lr_patience >= 1 and self.early_stopping_patience >= 1,
            "lr_patience and early_stopping_patience must be at least 1",
        )
        _require(self.loss in LOSSES, f"unknown loss {self.loss!r} (expected one of {', '.join(LOSSES)})")
        _require(
            self.optimizer in OPTIMIZERS,
            f"unknown optimizer {self.optimizer!r} (expected one of {', '.join(OPTIMIZERS)})",
        )
        _require(
            self.schedule in SCHEDULES, f"unknown schedule {self.schedule!r} (expected one of {', '.join(SCHEDULES)})"
        )
        _require(self.weight_decay >= 0, f"weight_decay must be 0 or more; got {self.weight_decay}")
        _require(self.weight_decay == 0 or self.optimizer == "adamw", "weight_decay needs optimizer: adamw")
        _require(
            self.colour_constancy == 0 or self.colour_constancy >= 1,
            f"colour_constancy is the shades-of-grey power, at least 1 (6 is usual; 0: off); got {self.colour_constancy}",
        )
        _require(
            0 <= self.ema < 1, f"ema is the moving average's momentum, in [0, 1) (0: off, e.g. 0.999); got {self.ema}"
        )
        _require(
            0 <= self.warmup_epochs < self.epochs, f"warmup_epochs must be in [0, epochs); got {self.warmup_epochs}"
        )
        _require(
            self.mixup >= 0 and self.cutmix >= 0,
            f"mixup and cutmix must be 0 (off) or positive; got mixup {self.mixup}, cutmix {self.cutmix}",
        )
        _require(0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1); got {self.label_smoothing}")
        _require(
            self.label_smoothing == 0 or self.loss != "cost",
            "label_smoothing works with the crossentropy and focal losses only",
        )
        _require(
            self.tracking in (None, *TRACKERS),
            f"unknown tracking {self.tracking!r} (expected {', '.join(TRACKERS)}, or null for none)",
        )
        _require(self.selection_window >= 1, f"selection_window must be at least 1; got {self.selection_window}")
        _require(self.melanoma_cost >= 1, f"melanoma_cost must be at least 1; got {self.melanoma_cost}")
        unknown = sorted(set(self.class_weight_boost) - set(CLASS_NAMES), key=str)
        _require(
            not unknown,
            f"unknown class {', '.join(map(str, unknown))} in class_weight_boost (expected {', '.join(CLASS_NAMES)})",
        )
        for name, factor in self.class_weight_boost.items():
            # A factor multiplies the class's loss weight: 0 or less would reward its mistakes.
            _require(
                isinstance(factor, (int, float))
                and not isinstance(factor, bool)
                and math.isfinite(factor)
                and factor > 0,
                f"class_weight_boost's factor for {name} must be a positive number (e.g. {{mel: 1.5}}); got {factor!r}",
            )
        _require(
            self.focal_gamma >= 0,
            f"focal_gamma is the focal loss's focusing exponent, 0 or more (2 is usual); got {self.focal_gamma}",
        )
        _require(self.min_lr >= 0, f"min_lr is the floor of the plateau schedule's cuts, 0 or more; got {self.min_lr}")
        _require(
            self.devices == AUTO or (isinstance(self.devices, int) and self.devices >= 1),
            f"devices must be auto or a number of devices, at least 1; got {self.devices!r}",
        )
        _require(
            self.compilation_cache is None or self.compilation_cache.strip() != "",
            f"compilation_cache must be auto, none or a folder; got {self.compilation_cache!r}",
        )
        for name in ("mixed_precision", "jit_compile"):
            _require(
                getattr(self, name) in (True, False, AUTO),
                f"{name} must be true, false or auto; got {getattr(self, name)!r}",
            )
        try:
            # Each group of options is checked by the one that owns it.
            check_input(self.model, self.image_size)
            check_fractions(self.split_fractions)
            model_options(self.model, self.model_options)
            self.head_options
            self.augmentation_options
            self.corruption_options
            self.balance_options
        except (ValueError, TypeError) as error:
            raise ConfigError(str(error)) from None
        if self.weights not in (None, "imagenet"):
            _require(
                Path(self.weights).is_file(),
                f"weights file not found: {self.weights} (pass imagenet, none or an existing file)",
            )
        return self

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values, source="saved config"):
        """The config `to_dict` gave `values`, None values included; ConfigError if they are not one."""
        return _build(dict(values), source).validate()

    def save(self, path):
        values = self.to_dict()
        values["split_fractions"] = list(values["split_fractions"])
        write_text(path, yaml.safe_dump(values, sort_keys=False))


PRESETS_DIR = Path(__file__).resolve().parent.parent / "configs"


def hardware_preset():
    """The preset that fits this machine, and why: `configs/gpu.yaml` where the backend finds a
    GPU, else `configs/cpu.yaml` (the defaults alone are the GPU recipe: a day on 2 CPU cores).

    Returns:
        (path of the preset, a phrase saying why it was chosen).
    """
    device = compute_device()
    if device["kind"] == "gpu":
        return PRESETS_DIR / "gpu.yaml", f"found a GPU ({device['name']})"
    return PRESETS_DIR / "cpu.yaml", f"no GPU found, running on {device['kind']} ({device['name']})"


def load_config(model=None, config_file=None, overrides=None):
    """Resolves a run's config: defaults, then the YAML file, then `overrides` (e.g. flags).

    Args:
        model: the model to configure; it selects the YAML file's `models:` entry. None keeps
            the file's (or the default) model.
        config_file: a YAML file, or None.
        overrides: a dict of field values that win over the file; None is null, as in the file
            (`weights: null`: no pretrained weights; refused for a setting that needs a value).

    Raises:
        ConfigError: unreadable file, unknown setting, or a value of the wrong type or range.
    """
    unknown = sorted(set(overrides or {}) - set(TrainConfig.defaults()))
    if unknown:
        raise ConfigError(
            f"command line: unknown setting {', '.join(map(repr, unknown))} (see training/config.py for the settings)"
        )
    values = {}
    if config_file is not None:
        values = read_yaml(config_file)
    values.pop("study", None)  # `study_configurations`'s
    per_model = values.pop("models", None) or {}
    if not isinstance(per_model, dict):
        raise ConfigError(f"{config_file}: 'models' must map model names to settings")
    unknown_models = sorted(set(per_model) - set(list_models()))
    if unknown_models:
        raise ConfigError(
            f"{config_file}: unknown model {', '.join(unknown_models)} under 'models' (available: {', '.join(list_models())})"
        )
    given = dict(overrides or {})
    if "model" in given and given["model"] is None:
        _coerce("model", str, None)  # refused, as any null of a setting that needs a value
    # The first one given: an empty name (`--model ""`) is refused as unknown, not taken for the default.
    model = next(
        name for name in (model, given.get("model"), values.get("model"), TrainConfig.model) if name is not None
    )
    values.update(per_model.get(model) or {})
    values.update(given)
    values["model"] = model
    config = _build(values, source=config_file or "command line")
    if "epochs" in given and "warmup_epochs" not in given and config.warmup_epochs >= config.epochs >= 1:
        # A preset's warm-up under a shorter run (`--epochs 1`, the quickest check): shortened, not refused.
        print(
            f"Note: warmup_epochs {config.warmup_epochs} of {config_file} shortened to {config.epochs - 1} to fit epochs {config.epochs}"
        )
        config.warmup_epochs = config.epochs - 1
    return config.validate()


def study_configurations(config_file=None):
    """The (model, metadata) pairs that `--model all` trains: the config file's `study:` list of
    run names (`[cnn, densenet, vgg16_bn, vgg16_bn-meta]`), else `STUDY`.

    Raises:
        ConfigError: `study:` is not a list of known models, each optionally ending in "-meta".
    """
    names = read_yaml(config_file).get("study") if config_file is not None else None
    if names is None:
        return STUDY
    if not isinstance(names, list) or not names or not all(isinstance(name, str) for name in names):
        raise ConfigError(f"{config_file}: 'study' must list run names, e.g. [cnn, densenet, vgg16_bn, vgg16_bn-meta]")
    pairs = [(name.removesuffix(METADATA_SUFFIX), name.endswith(METADATA_SUFFIX)) for name in names]
    unknown = [name for name, (model, _) in zip(names, pairs) if model not in list_models()]
    if unknown:
        raise ConfigError(
            f"{config_file}: unknown model {', '.join(unknown)} under 'study' (available: {', '.join(list_models())}, each optionally with {METADATA_SUFFIX})"
        )
    return tuple(pairs)


def parse_settings(assignments, flag="--set", example="ema=0.99"):
    """`KEY=VALUE` strings (`--set`, or another `flag`'s) as overrides for `load_config`, each value read as YAML.

        parse_settings(["ema=0.99", "augmentation={rotation: 0.5}"])  # {"ema": 0.99, "augmentation": {"rotation": 0.5}}

    Raises:
        ConfigError: an assignment without "=" or without a value, or a value that is not YAML. Unknown keys and
            bad values are refused later, by `load_config`, like a config file's.
    """
    settings = {}
    for assignment in assignments:
        key, equals, text = assignment.partition("=")
        if not equals or not key.strip():
            raise ConfigError(f"{flag} {assignment!r}: expected KEY=VALUE, e.g. {flag} {example}")
        if not text.strip():
            # An empty value is most often an unset shell variable, not a wish for null.
            raise ConfigError(
                f"{flag} {assignment!r}: no value after '=' (write {key.strip()}=null where the setting may be null)"
            )
        try:
            settings[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ConfigError(
                f"{flag} {assignment!r}: the value is not valid YAML ({str(error).splitlines()[0]})"
            ) from None
    return settings


def read_yaml(path):
    """The mapping of settings in a YAML file; ConfigError naming the file if there is none."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file in UTF-8 (is it the config file?)") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(values).__name__}")
    return values


def _build(values, source):
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"{source}: unknown setting {', '.join(map(repr, unknown))} (see training/config.py for the settings)"
        )
    typed = {name: _coerce(name, fields[name].type, value) for name, value in values.items()}
    return TrainConfig(**typed)


def _coerce(name, kind, value):
    """Converts a YAML or flag value to the field's type, or raises ConfigError."""
    allowed = typing.get_args(kind) if typing.get_origin(kind) in (typing.Union, types.UnionType) else (kind,)
    if value is None and type(None) in allowed:
        return None
    for target in allowed:
        if target is bool and isinstance(value, bool):
            return value
        if target is bool and isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if target in (int, float) and not isinstance(value, bool):
            try:
                number = target(value)
                # A whole number, not a fraction rounded down (an int as it is: float() would round a large one).
                if target is int and not isinstance(value, int) and number != float(value):
                    continue
            except (TypeError, ValueError, OverflowError):
                continue
            if target is float and not math.isfinite(number):
                raise ConfigError(f"setting {name!r} must be a finite number; got {value!r}")
            if target is int and abs(number) > MAX_INTEGER:
                raise ConfigError(f"setting {name!r} is too large: at most {MAX_INTEGER}; got {value!r}")
            return number
        if target is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        if target is tuple and isinstance(value, (list, tuple)):
            return tuple(value)
        if target is dict and isinstance(value, dict):
            return dict(value)
    expected = " or ".join("null" if t is type(None) else (t if isinstance(t, str) else t.__name__) for t in allowed)
    if value is None:
        raise ConfigError(
            f"setting {name!r} must be {expected}, not null (leave it out to keep the config file's or the default value)"
        )
    raise ConfigError(f"setting {name!r} must be {expected}; got {value!r}")


def _options(kind, values, what):
    """`kind(**values)` for an options dataclass, YAML's lists as tuples; ConfigError naming unknown keys."""
    known = [item.name for item in dataclasses.fields(kind)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown {what} option {', '.join(map(repr, unknown))} (expected {', '.join(known)})")
    return kind(**{key: tuple(value) if isinstance(value, list) else value for key, value in values.items()})


def _require(condition, message):
    if not condition:
        raise ConfigError(message)
