"""Do balanced batches give batch norm the wrong statistics? A trained run's validation score three ways.

Training resamples every epoch towards balanced classes (`balance: combined`), so the moving
means and variances that batch norm uses at inference come from batches with far fewer nevi than
the validation and test subsets have (two-thirds nevi). This scores a run's kept model on its own
validation subset with its batch-norm statistics:
- as saved: the moving averages training left (at momentum 0.9, mostly its last ten or twenty batches);
- re-estimated on training batches of the training mix: every batch-norm layer's mean and variance
  averaged over `--batches` freshly drawn training batches at the kept weights ("precise BN"),
  a control that removes only the averages' lag behind the weights;
- re-estimated on training batches of the natural mix: the same, on the training subset as it
  comes (no resampling), whose class shares are those of validation and test.
The weights are the kept model's throughout; only the statistics change. The batches are augmented
and mixed as in training (the sequence's square symmetries, MixUp/CutMix if the run used them, and
the model's own augmentation layers, which are active while the statistics are gathered).

    python benchmarks/batch_norm_statistics.py RUN_DIR... [--batches 50] [--output bn.json]

Only the validation subset is scored: this is a choice about the recipe.
"""

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as main.py
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import keras  # noqa: E402
from sklearn.metrics import balanced_accuracy_score  # noqa: E402

from dataset.sampling import Balance  # noqa: E402
from evaluation import Predictor  # noqa: E402
from training.run import prepare_run_data, run_config  # noqa: E402


def batch_norm_layers(model):
    """Every BatchNormalization layer of `model`, nested models included."""
    return [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]


def reestimate_batch_norm(model, sequence, batches):
    """Replaces every batch-norm layer's moving mean and variance by their average over `batches`
    batches of `sequence` (inputs only; its labels are not used), leaving every weight as it was.

    A forward pass in training mode normalises each batch by its own statistics and folds them
    into the moving averages with weight 1 - momentum; a momentum of k / (k + 1) on the k-th
    batch (from 0) makes the average an equal-weight mean of all the batches.
    """
    layers = batch_norm_layers(model)
    momenta = [layer.momentum for layer in layers]
    try:
        for index in range(batches):
            for layer in layers:
                layer.momentum = index / (index + 1)
            model(sequence[index % len(sequence)][0], training=True)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    return len(layers)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", type=Path, nargs="+")
    parser.add_argument(
        "--batches", type=int, default=50, help="training batches to average the statistics over (default: 50)"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch (default: 64)")
    parser.add_argument("--output", type=Path, help="write the results as JSON")
    arguments = parser.parse_args()

    results = []
    for run_dir in arguments.run_dirs:
        config = run_config(run_dir)
        data = prepare_run_data(config, verbose=False)
        rows, cache_rows, labels = data.subset("val")
        predictor = Predictor.load(run_dir)
        model = predictor.members[0].model  # changed in place below; the predictor predicts with what it holds
        kept_weights = model.get_weights()

        def score():
            probabilities = predictor.predict(data.cache.images, rows, rows=cache_rows, batch_size=128)
            return round(float(balanced_accuracy_score(labels, probabilities.argmax(axis=1))), 4)

        row = {"run": str(run_dir), "model": config.model, "seed": config.seed, "as saved": score()}
        for mix, balance in (
            ("training mix", Balance(config.balance, config.balance_target, config.max_oversampling)),
            ("natural mix", Balance("none")),
        ):
            model.set_weights(kept_weights)
            train = data.sequence(
                "train",
                batch_size=arguments.batch_size,
                with_metadata=config.metadata,
                balance=balance,
                augment=config.augment,
                mixup=config.mixup,
                cutmix=config.cutmix,
                seed=config.seed,
            )
            reestimate_batch_norm(model, train, arguments.batches)
            row[mix] = score()
        results.append(row)
        print(
            f"{config.model} seed {config.seed}: as saved {row['as saved']:.3f}, training mix {row['training mix']:.3f}, "
            f"natural mix {row['natural mix']:.3f}  ({run_dir})",
            flush=True,
        )
    if arguments.output:
        arguments.output.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
