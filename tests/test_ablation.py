"""benchmarks/ablation.py: a row's difference from the recipe, and the command that repeats it."""

import shlex

from benchmarks.ablation import command, recipe_difference
from conftest import TINY_CONFIG
from main import parse_settings
from training import load_config


def test_a_row_is_what_differs_from_the_recipe_and_its_command_sets_exactly_that():
    base = load_config("densenet", TINY_CONFIG).to_dict()
    changed = {"ema": 0.99, "augmentation": {"rotation": 0.5, "zoom": 0.2}, "metadata": True}
    run = load_config("densenet", TINY_CONFIG, {**changed, "seed": 3, "output_dir": "elsewhere"}).to_dict()
    difference = recipe_difference(run, base)
    assert difference == changed  # neither the seed nor the output folder is part of the recipe

    words = shlex.split(command(difference, "densenet", 3, TINY_CONFIG))
    assert words[words.index("--seed") + 1] == "3"
    settings = [words[index + 1] for index, word in enumerate(words) if word == "--set"]
    assert parse_settings(settings) == changed


def test_weights_are_not_part_of_the_recipe_of_a_model_trained_from_scratch():
    base = load_config("densenet", TINY_CONFIG).to_dict()
    assert recipe_difference({**base, "weights": "imagenet"}, {**base, "weights": None}) == {}
    vgg = load_config("vgg16", TINY_CONFIG).to_dict()
    assert recipe_difference({**vgg, "weights": "imagenet"}, vgg) == {"weights": "imagenet"}
