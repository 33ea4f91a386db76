"""The figures of a report: confusion matrix, training curves, per-class bars, ROC curves, comparison.

Each function takes the data and an output path, writes one PNG (atomically) and returns the
path. Figures are built as `matplotlib.figure.Figure` objects rather than through `pyplot`, so
they render with the Agg backend whatever backend is configured, never open a window, and are
freed when the function returns, with no global figure list to close.
"""

from pathlib import Path

import numpy as np
import seaborn as sns
from matplotlib.figure import Figure
from sklearn.metrics import auc, roc_curve

from common.files import atomic_path
from dataset.metadata import CLASS_NAMES

DPI = 100
# seaborn's colorblind palette: train and validation, precision and recall, and one colour per run.
PALETTE = sns.color_palette("colorblind")


def plot_confusion_matrix(matrix, path):
    """Counts and row-normalised shares side by side, rows true class, columns predicted class.

    Both panels are coloured by the share of the true class, so that the rare classes are as
    visible as nevi; the left one is annotated with counts, the right one with the shares, whose
    diagonal is each class's recall.

    Args:
        matrix: 7x7 confusion counts, classes in `CLASS_NAMES` order.
        path: the PNG to write.
    """
    matrix = np.asarray(matrix)
    shares = row_normalised(matrix)
    figure = Figure(figsize=(13, 5.5), dpi=DPI, layout="constrained")
    counts_axes, shares_axes = figure.subplots(1, 2)
    _confusion_heatmap(counts_axes, shares, annotations=matrix, fmt="d", colorbar=False)
    counts_axes.set_title("Counts (colour: share of the true class)")
    _confusion_heatmap(shares_axes, shares, annotations=shares, fmt=".2f", colorbar=True)
    shares_axes.set_title("Share of the true class (diagonal: recall)")
    return _save(figure, path)


def plot_training_curves(history, path, *, best_epoch=None, stage_boundaries=()):
    """Loss, accuracy and balanced accuracy per epoch, training against validation.

    Training scores are measured on the resampled, augmented epochs the model was trained on,
    validation scores on the untouched validation subset.

    Args:
        history: a DataFrame with the columns of `history.csv` (`epoch`, `loss`, `val_loss`, ...).
        path: the PNG to write.
        best_epoch: the epoch whose model was kept, marked with a dotted line.
        stage_boundaries: epochs after which a new training stage began, marked with dashed lines.
    """
    panels = (("loss", "Loss"), ("accuracy", "Accuracy"), ("balanced_accuracy", "Balanced accuracy"))
    figure = Figure(figsize=(15, 4.5), dpi=DPI, layout="constrained")
    for axes, (column, title) in zip(figure.subplots(1, len(panels)), panels):
        axes.plot(history["epoch"], history[column], marker=".", color=PALETTE[0], label="training")
        axes.plot(history["epoch"], history[f"val_{column}"], marker=".", color=PALETTE[1], label="validation")
        for number, boundary in enumerate(stage_boundaries):
            # Labels starting with "_" stay out of the legend: one entry for all boundaries.
            label = "new training stage" if number == 0 else "_stage"
            axes.axvline(boundary + 0.5, color="grey", linestyle="--", linewidth=1, label=label)
        if best_epoch is not None:
            axes.axvline(best_epoch, color=PALETTE[2], linestyle=":", linewidth=2, label=f"kept epoch ({best_epoch})")
        axes.set(title=title, xlabel="epoch")
        axes.grid(alpha=0.3)
    figure.axes[0].legend()
    return _save(figure, path)


def plot_per_class(per_class, path):
    """Precision and recall of each class as paired bars, with each class's test images below it.

    Args:
        per_class: `metrics["per_class"]`: {class: {precision, recall, support, ...}}.
        path: the PNG to write.
    """
    names = list(per_class)
    positions = np.arange(len(names))
    width = 0.38
    figure = Figure(figsize=(9, 4.5), dpi=DPI, layout="constrained")
    axes = figure.subplots()
    for offset, (measure, colour) in zip((-width / 2, width / 2), (("precision", PALETTE[0]), ("recall", PALETTE[1]))):
        scores = [per_class[name][measure] for name in names]
        bars = axes.bar(positions + offset, scores, width, color=colour, label=measure)
        axes.bar_label(bars, fmt="%.2f", fontsize=8, padding=2)
    axes.set_xticks(positions, [f"{name}\nn={per_class[name]['support']}" for name in names])
    axes.set(ylim=(0, 1.1), ylabel="score", title="Precision and recall per class")
    axes.legend(loc="upper left", ncols=2)
    return _save(figure, path)


def plot_roc_curves(y_true, probabilities, path):
    """One-vs-rest ROC curve of every class present in `y_true`, with its AUC in the legend.

    Args:
        y_true: (n,) true class indices.
        probabilities: (n, 7) predicted probabilities.
        path: the PNG to write.
    """
    y_true = np.asarray(y_true)
    figure = Figure(figsize=(6.5, 6), dpi=DPI, layout="constrained")
    axes = figure.subplots()
    for index, name in enumerate(CLASS_NAMES):
        positive = y_true == index
        if not 0 < positive.sum() < len(y_true):
            continue  # no curve without both positives and negatives
        false_positive_rate, true_positive_rate, _ = roc_curve(positive, probabilities[:, index])
        axes.plot(
            false_positive_rate,
            true_positive_rate,
            color=PALETTE[index],
            label=f"{name} (AUC {auc(false_positive_rate, true_positive_rate):.3f})",
        )
    axes.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="chance")
    axes.set(
        xlim=(0, 1),
        ylim=(0, 1.01),
        aspect="equal",
        title="One-vs-rest ROC curves",
        xlabel="false positive rate (1 - specificity)",
        ylabel="true positive rate (sensitivity)",
    )
    axes.legend(loc="lower right")
    return _save(figure, path)


def plot_comparison(confusion_matrices, path):
    """Several runs' row-normalised confusion matrices in a row, their per-class recall below.

    Args:
        confusion_matrices: {run label: 7x7 confusion counts}, in the order to show them.
        path: the PNG to write.
    """
    labels = list(confusion_matrices)
    shares = {label: row_normalised(confusion_matrices[label]) for label in labels}
    figure = Figure(figsize=(max(4.5 * len(labels), 10), 9.5), dpi=DPI, layout="constrained")
    grid = figure.add_gridspec(2, len(labels), height_ratios=(1.1, 0.9))
    for column, label in enumerate(labels):
        axes = figure.add_subplot(grid[0, column])
        _confusion_heatmap(axes, shares[label], annotations=shares[label], fmt=".2f", colorbar=False, fontsize=8)
        axes.set_title(label, fontsize=10)

    recall_axes = figure.add_subplot(grid[1, :])
    positions = np.arange(len(CLASS_NAMES))
    width = 0.8 / len(labels)
    for number, label in enumerate(labels):
        offset = (number - (len(labels) - 1) / 2) * width
        colour = PALETTE[number % len(PALETTE)]
        recall_axes.bar(positions + offset, np.diag(shares[label]), width, color=colour, label=label)
    recall_axes.set_xticks(positions, CLASS_NAMES)
    recall_axes.set(ylim=(0, 1.05), ylabel="recall", title="Recall per class")
    recall_axes.grid(axis="y", alpha=0.3)
    recall_axes.legend(fontsize=8)
    return _save(figure, path)


def plot_study_spread(runs, metrics, path):
    """Every run's test score as a dot, and the mean per configuration as a bar: one panel per metric.

    Args:
        runs: {configuration: [{metric: value or None, ...} for each run]}, in the order to show them.
        metrics: the `catalogue.Metric`s to plot, one panel each.
        path: the PNG to write.
    """
    labels = list(runs)
    figure = Figure(figsize=(max(3 + 1.2 * len(labels), 6) * len(metrics) / 2, 4.5), dpi=DPI, layout="constrained")
    rng = np.random.default_rng(0)  # the dots' sideways jitter, the same in every figure
    for panel, metric in enumerate(metrics, start=1):
        axes = figure.add_subplot(1, len(metrics), panel)
        for position, label in enumerate(labels):
            values = np.array([run[metric.key] for run in runs[label] if run[metric.key] is not None], dtype=np.float64)
            colour = PALETTE[position % len(PALETTE)]
            if len(values):
                axes.hlines(values.mean(), position - 0.3, position + 0.3, color=colour, linewidth=2.5)
                axes.plot(position + rng.uniform(-0.12, 0.12, len(values)), values, "o", color=colour, alpha=0.7)
        axes.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        axes.set(xlim=(-0.6, len(labels) - 0.4), ylim=(0, 1.02), title=metric.name)
        axes.grid(axis="y", alpha=0.3)
    figure.suptitle("Test scores of every run (dots) and their mean (line)")
    return _save(figure, path)


def row_normalised(matrix):
    """Each row divided by its sum; a row with no images (a class absent from the test set) stays 0."""
    matrix = np.asarray(matrix, dtype=np.float64)
    totals = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)


def _confusion_heatmap(axes, shares, *, annotations, fmt, colorbar, fontsize=9):
    sns.heatmap(
        shares,
        ax=axes,
        vmin=0,
        vmax=1,
        cmap="Blues",
        square=True,
        cbar=colorbar,
        annot=annotations,
        fmt=fmt,
        annot_kws={"fontsize": fontsize},
        xticklabels=CLASS_NAMES,
        yticklabels=CLASS_NAMES,
    )
    axes.set(xlabel="predicted class", ylabel="true class")
    axes.tick_params(axis="y", labelrotation=0)


def _save(figure, path):
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=DPI)
    return Path(path)
