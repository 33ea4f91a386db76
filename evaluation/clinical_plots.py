"""The clinical evaluation's figures: reliability diagram, ROC curves with the operating points,
risk-coverage curve, subgroups. Built as `evaluation.plots` builds its figures (no pyplot)."""

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from dataset.metadata import CLASS_NAMES
from evaluation.calibration import reliability_bins
from evaluation.operating_points import screen_scores
from evaluation.plots import DPI, PALETTE, _save


def plot_reliability(y_true, probabilities, calibrated, path):
    """Accuracy against mean confidence per confidence bin, raw and (where given) calibrated."""
    figure = Figure(figsize=(6, 5.5), dpi=DPI, layout="constrained")
    axes = figure.subplots()
    axes.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    for number, (name, values) in enumerate((("raw", probabilities), ("calibrated", calibrated))):
        if values is None:
            continue
        bins = reliability_bins(np.asarray(y_true), np.asarray(values))
        confidence, accuracy = np.array(bins["confidence"]), np.array(bins["accuracy"])
        filled = np.array(bins["count"]) > 0
        axes.plot(confidence[filled], accuracy[filled], "o-", color=PALETTE[number], label=name)
    axes.set(
        xlim=(0, 1),
        ylim=(0, 1.01),
        aspect="equal",
        title="Reliability diagram (15 equal-width bins)",
        xlabel="mean confidence (top probability)",
        ylabel="accuracy",
    )
    axes.legend(loc="upper left")
    return _save(figure, path)


def plot_screens(y_true, probabilities, points, path):
    """The ROC curve of each screen (melanoma, malignant) with its operating points on the test images."""
    figure = Figure(figsize=(11, 5), dpi=DPI, layout="constrained")
    for panel, (screen, entry) in enumerate(points.items(), start=1):
        axes = figure.add_subplot(1, len(points), panel)
        positive = np.isin(np.asarray(y_true), [CLASS_NAMES.index(name) for name in entry["classes"]])
        if 0 < positive.sum() < len(positive):
            false_positive_rate, true_positive_rate, _ = roc_curve(
                positive, screen_scores(probabilities, entry["classes"])
            )
            axes.plot(false_positive_rate, true_positive_rate, color=PALETTE[0], label="test ROC")
        for number, point in enumerate(entry["points"], start=1):
            if point["sensitivity"] is not None and point["specificity"] is not None:
                axes.plot(
                    1 - point["specificity"],
                    point["sensitivity"],
                    "o",
                    color=PALETTE[number],
                    markersize=8,
                    label=f"threshold for sensitivity {point['target']:.2f} on validation",
                )
        axes.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
        axes.set(
            xlim=(0, 1),
            ylim=(0, 1.01),
            aspect="equal",
            title=f"{screen} ({' + '.join(entry['classes'])})",
            xlabel="1 - specificity",
            ylabel="sensitivity",
        )
        axes.legend(loc="lower right", fontsize=8)
    return _save(figure, path)


def plot_risk_coverage(coverage, risk, aurc, path):
    figure = Figure(figsize=(6, 4.5), dpi=DPI, layout="constrained")
    axes = figure.subplots()
    axes.plot(coverage, risk, color=PALETTE[0])
    axes.set(
        xlim=(0, 1),
        ylim=(0, max(0.05, float(np.max(risk)) * 1.05)),
        title=f"Risk-coverage curve (AURC {aurc:.3f})",
        xlabel="coverage (share of images answered, most confident first)",
        ylabel="error among the answered",
    )
    axes.grid(alpha=0.3)
    return _save(figure, path)


def plot_subgroups(subgroups, path):
    """Balanced accuracy per group with its interval, one panel per attribute."""
    figure = Figure(figsize=(4.5 * len(subgroups), 4.5), dpi=DPI, layout="constrained")
    for panel, (attribute, result) in enumerate(subgroups.items(), start=1):
        axes = figure.add_subplot(1, len(subgroups), panel)
        names = list(result["groups"])
        for position, name in enumerate(names):
            entry = result["groups"][name]
            if entry["balanced_accuracy"] is None:
                continue
            axes.bar(position, entry["balanced_accuracy"], color=PALETTE[panel - 1], alpha=0.8)
            interval = entry.get("intervals", {}).get("balanced_accuracy")
            if interval:
                axes.plot([position, position], [interval["low"], interval["high"]], color="black", linewidth=1)
        axes.set_xticks(
            range(len(names)),
            [f"{name}\n({result['groups'][name]['n_images']})" for name in names],
            rotation=30,
            ha="right",
            fontsize=8,
        )
        axes.set(ylim=(0, 1), title=attribute, ylabel="balanced accuracy")
        axes.grid(axis="y", alpha=0.3)
    return _save(figure, path)
