"""benchmarks/ablation.py: a row's difference from the recipe, and the command that repeats it."""

import json
import shlex

import yaml
from conftest import TINY_CONFIG

from benchmarks.ablation import command, read_runs, recipe_difference
from training import load_config
from training.config import parse_settings


def test_a_row_is_what_differs_from_the_recipe_and_its_command_sets_exactly_that():
    base = load_config("densenet", TINY_CONFIG).to_dict()
    changed = {"ema": 0.99, "augmentation": {"rotation": 0.5, "zoom": 0.2}, "metadata": True}
    run = load_config(
        "densenet", TINY_CONFIG, {**changed, "seed": 3, "output_dir": "elsewhere", "tensorboard": False}
    ).to_dict()
    difference = recipe_difference(run, base)
    assert difference == changed  # neither the seed, the output folder nor the logging is part of the recipe

    words = shlex.split(command(difference, "densenet", 3, TINY_CONFIG))
    assert words[words.index("--seed") + 1] == "3"
    settings = [words[index + 1] for index, word in enumerate(words) if word == "--set"]
    assert parse_settings(settings) == changed


def test_weights_are_not_part_of_the_recipe_of_a_model_trained_from_scratch():
    base = load_config("densenet", TINY_CONFIG).to_dict()
    assert recipe_difference({**base, "weights": "imagenet"}, {**base, "weights": None}) == {}
    vgg = load_config("vgg16", TINY_CONFIG).to_dict()
    assert recipe_difference({**vgg, "weights": "imagenet"}, vgg) == {"weights": "imagenet"}


def test_a_setting_absent_from_an_older_run_counts_as_its_default(tmp_path):
    run_dir = tmp_path / "runs" / "old"
    run_dir.mkdir(parents=True)
    older = load_config("densenet", TINY_CONFIG).to_dict()
    del older["ema"]  # as if made before the setting existed
    (run_dir / "config.yaml").write_text(yaml.safe_dump(older))
    (run_dir / "training.json").write_text(json.dumps({"best_epoch": 1, "wall_time_s": 60}))
    (run_dir / "history.csv").write_text("epoch,val_balanced_accuracy\n1,0.5\n")
    base = tmp_path / "base.yaml"
    base.write_text(TINY_CONFIG.read_text() + "ema: 0.99\n")
    (row,) = read_runs([tmp_path / "runs"], base).to_dict("records")
    assert row["difference"] == {"ema": 0.0} and row["val"] == 0.5
