"""The ablation table: what each ingredient of a recipe does to validation balanced accuracy.

    python benchmarks/ablation.py RUNS_FOLDER... [--base configs/cpu.yaml] [--output ablation.md]

Reads every finished run folder under the given folders and groups the runs by how their
config.yaml differs from the base preset's config for the same model (the seed and where things
are do not count). Each group is a row: the difference, the validation balanced accuracy of the
kept epoch per seed with its mean and spread, the change against the base recipe's row, the wall
time, and the command that trains one of its runs. The rows are compared on validation only,
as the recipe was chosen; the test subset plays no part here.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.files import write_text  # noqa: E402
from networks import get_model_entry  # noqa: E402
from training import TrainConfig, load_config  # noqa: E402
from training.config import read_yaml  # noqa: E402

# Settings that say where things are, how fast they run or what is logged, not what is learnt.
NOT_THE_RECIPE = (
    "seed",
    "split",
    "output_dir",
    "data_dir",
    "cache_dir",
    "workers",
    "mixed_precision",
    "jit_compile",
    "tracking",
    "track_model",
    "tensorboard",
)
SPLIT = "results/reference/split.csv"
# What only a pretrained run's two stages read: a run from scratch ignores them.
TWO_STAGE_SETTINGS = ("head_epochs", "fine_tune_from_block", "fine_tune_lr_factor", "fine_tune_batch_norm")


def recipe_difference(config, base):
    """The settings of `config` (a run's config.yaml) that differ from `base`, as {name: value}."""
    takes_weights = get_model_entry(config["model"]).pretrained
    two_stages = takes_weights and config.get("weights") not in (None, "none")
    ignored = NOT_THE_RECIPE + (() if takes_weights else ("weights",)) + (() if two_stages else TWO_STAGE_SETTINGS)
    return {
        name: value
        for name, value in config.items()
        if name not in ignored and _comparable(value) != _comparable(base.get(name))
    }


def _comparable(value):
    # YAML gives lists where the config holds tuples.
    return json.dumps(value, sort_keys=True, default=list)


def read_runs(folders, base_file):
    """One row per finished run: its model, seed, difference from the base, kept-epoch score and wall time."""
    rows = []
    for run_dir in sorted(path.parent for folder in folders for path in Path(folder).rglob("training.json")):
        # A setting added after the run was made is absent from its config.yaml; the run had its
        # default (new settings default to what the code did before them).
        config = {**TrainConfig.defaults(), **read_yaml(run_dir / "config.yaml")}
        base = load_config(config["model"], base_file).to_dict()
        summary = json.loads((run_dir / "training.json").read_text(encoding="utf-8"))
        history = pd.read_csv(run_dir / "history.csv")
        kept = summary["best_epoch"]
        difference = recipe_difference(config, base)
        rows.append(
            {
                "run": run_dir,
                "model": config["model"],
                "seed": config["seed"],
                "difference": difference,
                "label": describe(difference),
                "val": float(history.loc[history["epoch"] == kept, "val_balanced_accuracy"].iloc[0]),
                "wall_min": summary["wall_time_s"] / 60,
            }
        )
    return pd.DataFrame(rows)


def describe(difference):
    if not difference:
        return "the recipe (base)"
    return "; ".join(f"{name}={_flow(value)}" for name, value in sorted(difference.items()))


def command(difference, model, seed, base_file):
    settings = [f"--set '{key}={_flow(value)}'" for key, value in sorted(difference.items())]
    return " ".join([f"python main.py --model {model} --config {base_file} --split {SPLIT} --seed {seed}", *settings])


def _flow(value):
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("...").strip()


def ablation_table(runs, base_file):
    """The rows of the table, the base recipe's first, then by mean validation score."""
    lines = []
    for (model, label), group in runs.groupby(["model", "label"], sort=False):
        values = group.sort_values("seed")
        base = runs[(runs["model"] == model) & (runs["label"] == describe({}))]["val"]
        mean = values["val"].mean()
        lines.append(
            {
                "model": model,
                "change": label,
                "seeds": len(values),
                "val_balanced_accuracy": " / ".join(f"{value:.3f}" for value in values["val"]),
                "mean": mean,
                "sd": values["val"].std(ddof=1) if len(values) > 1 else np.nan,
                "vs_base": mean - base.mean() if len(base) else np.nan,
                "wall_min": values["wall_min"].mean(),
                "command": command(values["difference"].iloc[0], model, int(values["seed"].iloc[0]), base_file),
            }
        )
    table = pd.DataFrame(lines)
    table["is_base"] = table["change"] == describe({})
    return table.sort_values(["model", "is_base", "mean"], ascending=[True, False, False]).drop(columns="is_base")


def to_markdown(table):
    header = (
        "| model | change from the recipe | seeds | val balanced accuracy per seed | mean ± sd | vs recipe | minutes per run |\n"
        "| --- | --- | --- | --- | --- | --- | --- |\n"
    )
    rows = []
    for row in table.itertuples():
        spread = "" if np.isnan(row.sd) else f" ± {row.sd:.3f}"
        change = "" if np.isnan(row.vs_base) or row.change == describe({}) else f"{row.vs_base:+.3f}"
        rows.append(
            f"| {row.model} | {row.change} | {row.seeds} | {row.val_balanced_accuracy} | {row.mean:.3f}{spread} | {change} | {row.wall_min:.0f} |"
        )
    commands = "\n".join(f"- {row.model}, {row.change}: `{row.command}`" for row in table.itertuples())
    return header + "\n".join(rows) + "\n\nOne run of each row (other seeds: change `--seed`):\n\n" + commands + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "folders",
        type=Path,
        nargs="+",
        metavar="RUNS_FOLDER",
        help="folders holding run folders (searched recursively)",
    )
    parser.add_argument("--base", type=Path, default=Path("configs/cpu.yaml"), help="the recipe the rows differ from")
    parser.add_argument("--output", type=Path, help="write the markdown table here (default: print it)")
    arguments = parser.parse_args()
    runs = read_runs(arguments.folders, arguments.base)
    if runs.empty:
        sys.exit(f"error: no finished run folder (with training.json) under {', '.join(map(str, arguments.folders))}")
    markdown = to_markdown(ablation_table(runs, arguments.base))
    if arguments.output:
        write_text(arguments.output, markdown)
    print(markdown, end="")


if __name__ == "__main__":
    main()
