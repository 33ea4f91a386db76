"""The clinical evaluation of a set of test predictions: calibration, operating points, selective
prediction and conformal sets, subgroups. `metrics.json` holds it under "clinical", `report.md` a
section of each, with its plot.

    from evaluation.clinical import ClinicalInputs, write_clinical
    inputs = ClinicalInputs.for_run(run_dir, image_ids, metadata=test_metadata)
    clinical, plots = write_clinical(output_dir, y_true, probabilities, inputs)

Everything that is fitted (the temperature, the conformal thresholds, the operating points'
thresholds) is fitted on the validation predictions, never on the test images. A run's temperature
and conformal thresholds are written once into its `calibration.json`, and read from there after:
a run evaluated before that file existed gets it from its `val_predictions.csv` when evaluated again.
A run without validation predictions gets the sections that need none (the calibration before any
temperature, selective prediction, subgroups) and a note of what is missing.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from common.errors import DataError
from common.files import read_json, write_json
from common.run_folder import CALIBRATED_PREDICTIONS_FILENAME, CALIBRATION_FILENAME, VAL_PREDICTIONS_FILENAME
from dataset.images import find_data_dir
from dataset.metadata import METADATA_FILENAME, load_metadata
from evaluation.calibration import apply_temperature, calibration_scores, fit_temperature
from evaluation.catalogue import CLINICAL, metrics_shown
from evaluation.clinical_plots import plot_reliability, plot_risk_coverage, plot_screens, plot_subgroups
from evaluation.markdown import MISSING, format_interval, format_value, markdown_table
from evaluation.metrics import BOOTSTRAP_DRAWS
from evaluation.operating_points import operating_points
from evaluation.predictions import predictions_frame, read_predictions, write_predictions
from evaluation.selective import conformal_evaluation, conformal_thresholds, risk_coverage
from evaluation.subgroups import MIN_GROUP_IMAGES, subgroup_metrics

# What a fold ensemble's calibration is fitted on (the study summary's, an external evaluation's).
POOLED_SOURCE = "the members' pooled out-of-fold validation predictions"


@dataclass(frozen=True)
class ClinicalInputs:
    """What the clinical evaluation needs beside the test predictions.

    Attributes:
        image_ids: the test images' ids, in the order of the predictions (for the calibrated predictions file).
        validation: (y_true, probabilities) of the validation images, or None.
        validation_source: what the validation images are, for the report.
        calibration_dir: the folder whose `calibration.json` holds the temperature (a run's, an ensemble's).
        metadata: `age, sex, localization` of each test image, in order; None where unknown.
    """

    image_ids: tuple
    validation: tuple | None
    validation_source: str
    calibration_dir: Path
    metadata: pd.DataFrame | None = None

    @classmethod
    def for_run(cls, run_dir, image_ids, metadata=None):
        """A run's inputs: its `val_predictions.csv` (if any), its `calibration.json`."""
        return cls(
            tuple(image_ids),
            read_validation(run_dir),
            f"the run's validation predictions ({VAL_PREDICTIONS_FILENAME})",
            Path(run_dir),
            metadata,
        )


def read_validation(run_dir):
    """(y_true, probabilities) of a run's `val_predictions.csv`; None where the run has none."""
    path = Path(run_dir) / VAL_PREDICTIONS_FILENAME
    if not path.is_file():
        return None
    _, y_true, probabilities = read_predictions(path)
    return y_true, probabilities


def fit_calibration(y_true, probabilities, source):
    """The temperature fitted on labelled validation images, and the conformal thresholds of the
    calibrated probabilities on the same images: the content of `calibration.json`."""
    temperature = fit_temperature(y_true, probabilities)
    return {
        "temperature": temperature,
        "fitted_on": source,
        "n_images": len(y_true),
        "conformal": conformal_thresholds(y_true, apply_temperature(probabilities, temperature)),
    }


def load_calibration(folder, validation=None, source=""):
    """A folder's `calibration.json`; where it has none, fitted on `validation` and written there.

    Returns:
        The calibration, or None with neither a file nor validation predictions.
    """
    path = Path(folder) / CALIBRATION_FILENAME
    if path.is_file():
        return read_json(path, f"{path}: not found")
    if validation is None:
        return None
    calibration = fit_calibration(*validation, source)
    write_json(path, calibration)
    return calibration


def test_metadata(image_ids, data_dir=None):
    """`age, sex, localization` of HAM10000 test images, from the data folder's metadata; None where
    the folder cannot be found (the subgroups are then left out)."""
    try:
        metadata = load_metadata(find_data_dir(data_dir) / METADATA_FILENAME)
    except DataError:
        return None
    rows = metadata.set_index("image_id").reindex(list(image_ids))
    return None if rows["dx"].isna().any() else rows.reset_index()


def clinical_evaluation(y_true, probabilities, inputs, *, bootstrap_draws=BOOTSTRAP_DRAWS, seed=0):
    """The clinical metrics (JSON-ready), and the arrays their plots need."""
    y_true = np.asarray(y_true, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    calibration = load_calibration(inputs.calibration_dir, inputs.validation, inputs.validation_source)
    coverage, risk, aurc = risk_coverage(y_true, probabilities)
    clinical = {
        "validation": None
        if inputs.validation is None
        else {"source": inputs.validation_source, "n_images": len(inputs.validation[0])},
        "calibration": {"before": calibration_scores(y_true, probabilities)},
        "selective": {"aurc": aurc, "risk_at_full_coverage": float(risk[-1])},
    }
    curves = {"risk_coverage": (coverage, risk), "calibrated": None}
    if calibration is not None:
        calibrated = apply_temperature(probabilities, calibration["temperature"])
        curves["calibrated"] = calibrated
        clinical["calibration"].update(
            temperature=calibration["temperature"], after=calibration_scores(y_true, calibrated)
        )
        clinical["conformal"] = conformal_evaluation(calibration["conformal"], y_true, calibrated)
    if inputs.validation is not None:
        clinical["operating_points"] = operating_points(
            *inputs.validation, y_true, probabilities, bootstrap_draws=bootstrap_draws, seed=seed
        )
    if inputs.metadata is not None:
        clinical["subgroups"] = subgroup_metrics(
            y_true, probabilities, inputs.metadata, bootstrap_draws=bootstrap_draws, seed=seed
        )
    return clinical, curves


def write_clinical(output_dir, y_true, probabilities, inputs, *, bootstrap_draws=BOOTSTRAP_DRAWS, seed=0):
    """Computes the clinical evaluation, writes its plots (and the calibrated predictions) into `output_dir`.

    Returns:
        (the clinical metrics, {caption: plot path}).
    """
    output_dir = Path(output_dir)
    clinical, curves = clinical_evaluation(y_true, probabilities, inputs, bootstrap_draws=bootstrap_draws, seed=seed)
    plots = {}
    if curves["calibrated"] is not None:
        write_predictions(
            output_dir / CALIBRATED_PREDICTIONS_FILENAME,
            predictions_frame(list(inputs.image_ids), y_true, curves["calibrated"]),
        )
    plots["Reliability diagram"] = plot_reliability(
        y_true, probabilities, curves["calibrated"], output_dir / "reliability.png"
    )
    if "operating_points" in clinical:
        plots["Operating points"] = plot_screens(
            y_true, probabilities, clinical["operating_points"], output_dir / "operating_points.png"
        )
    plots["Risk-coverage curve"] = plot_risk_coverage(
        *curves["risk_coverage"], clinical["selective"]["aurc"], output_dir / "risk_coverage.png"
    )
    if "subgroups" in clinical:
        plots["Subgroups"] = plot_subgroups(clinical["subgroups"], output_dir / "subgroups.png")
    return clinical, plots


def ensemble_clinical(
    folder, validation, image_ids, y_true, probabilities, metadata, *, bootstrap_draws=BOOTSTRAP_DRAWS, seed=0
):
    """A study configuration's fold ensemble's clinical evaluation, its plots and `calibration.json` in its folder.

    The ensemble has no validation images of its own: its members' pooled out-of-fold predictions
    (each image scored by the model that did not train on it) stand in for them, as the nearest
    thing to the ensemble's predictions on images no member trained on.
    """
    inputs = ClinicalInputs(tuple(image_ids), validation, POOLED_SOURCE, Path(folder), metadata)
    clinical, _ = write_clinical(folder, y_true, probabilities, inputs, bootstrap_draws=bootstrap_draws, seed=seed)
    return clinical


# === report.md ===


def clinical_sections(clinical, plots):
    """The report's sections of the clinical evaluation, each with its plot."""

    def figure(caption):
        return f"![{caption}]({plots[caption].name})" if caption in plots else ""

    missing = (
        ""
        if clinical["validation"]
        else (
            f" This run has no validation predictions ({VAL_PREDICTIONS_FILENAME}): no temperature, operating points "
            "or conformal sets (`python main.py evaluate RUN` predicts them where the run's model is there)."
        )
    )
    sections = [
        "## Calibration",
        calibration_text(clinical) + missing,
        calibration_table(clinical["calibration"]),
        figure("Reliability diagram"),
    ]
    if "operating_points" in clinical:
        sections += [
            "## Operating points",
            operating_points_text(clinical),
            operating_points_table(clinical["operating_points"]),
            figure("Operating points"),
        ]
    sections += ["## Selective prediction and conformal sets", selective_text(clinical), figure("Risk-coverage curve")]
    if "conformal" in clinical:
        sections += [conformal_table(clinical["conformal"])]
    if "subgroups" in clinical:
        sections += [
            "## Subgroups",
            subgroups_text(),
            subgroups_table(clinical["subgroups"]),
            gaps_table(clinical["subgroups"]),
            figure("Subgroups"),
        ]
    return sections


def calibration_text(clinical):
    calibration = clinical["calibration"]
    if "temperature" not in calibration:
        return "Calibration of the test probabilities as the model gives them."
    return (
        f"Temperature scaling (Guo et al., 2017): the logits divided by T = {calibration['temperature']:.3f}, fitted on "
        f"{clinical['validation']['source'] if clinical['validation'] else 'the validation images'}, never on test; "
        f"the arg-max and every accuracy figure are unchanged. Calibrated probabilities: [{CALIBRATED_PREDICTIONS_FILENAME}]({CALIBRATED_PREDICTIONS_FILENAME})."
    )


def calibration_table(calibration):
    names = (
        ("ece_fixed", "ECE, 15 equal-width bins"),
        ("ece_adaptive", "ECE, 15 equal-mass bins"),
        ("brier", "Brier score"),
        ("nll", "negative log-likelihood"),
    )
    after = calibration.get("after")
    rows = [
        (name, format_value(calibration["before"][key]), format_value(after[key]) if after else MISSING)
        for key, name in names
    ]
    return markdown_table(("score (lower is better)", "raw", "calibrated"), rows, align="lrr")


def operating_points_text(clinical):
    return (
        "A threshold on P(melanoma), and on P(malignant) = P(mel) + P(bcc) + P(akiec), chosen on the validation "
        "images as the highest that finds the target share of their positives; the test sensitivity and specificity "
        "at it, with 95% bootstrap intervals over the test images. Thresholds are on the raw probabilities."
    )


def operating_points_table(points):
    rows = [
        (
            screen,
            f"{point['target']:.2f}",
            f"{point['threshold']:.4f}",
            f"{format_value(point['sensitivity'])} {format_interval(point.get('intervals', {}).get('sensitivity'))}",
            f"{format_value(point['specificity'])} {format_interval(point.get('intervals', {}).get('specificity'))}",
        )
        for screen, entry in points.items()
        for point in entry["points"]
    ]
    return markdown_table(
        ("screen", "target sensitivity", "threshold", "test sensitivity", "test specificity"), rows, align="lrrrr"
    )


def selective_text(clinical):
    selective = clinical["selective"]
    text = (
        f"Answering only for the images with the highest top probability: the error among those answered against the share "
        f"answered. AURC (area under the risk-coverage curve; lower is better) {selective['aurc']:.3f}; "
        f"the error at full coverage is {selective['risk_at_full_coverage']:.3f}."
    )
    if "conformal" in clinical:
        text += (
            " Split-conformal prediction sets (Angelopoulos & Bates) on the calibrated probabilities, their thresholds "
            "calibrated on the validation images: a class is in an image's set where 1 − P(class) ≤ q; marginal (one q) "
            "and class-conditional (one q per class, so each diagnosis is covered at the level). Test coverage and "
            "mean set size, overall and for melanoma:"
        )
    return text


def conformal_table(conformal):
    rows = []
    for level, kinds in conformal.items():
        for kind, entry in kinds.items():
            melanoma = entry["per_class"]["mel"]
            rows.append(
                (
                    level,
                    kind.replace("_", "-"),
                    format_value(entry["coverage"]),
                    format_value(entry["mean_size"]),
                    format_value(entry["empty_share"]),
                    format_value(melanoma["coverage"]),
                    format_value(melanoma["mean_size"]),
                )
            )
    header = ("level", "kind", "coverage", "mean set size", "empty sets", "melanoma coverage", "melanoma set size")
    return markdown_table(header, rows, align="llrrrrr")


def subgroups_text():
    return (
        "By sex, age band and anatomical site group: the test images, balanced accuracy and melanoma sensitivity with "
        "95% bootstrap intervals over each group's images. The gap of an attribute is between its best and worst group "
        f"by balanced accuracy among groups of known value with at least {MIN_GROUP_IMAGES} images, with a bootstrap "
        "interval and a permutation test (the attribute shuffled over those images)."
    )


def subgroups_table(subgroups):
    rows = [
        (
            attribute,
            group,
            f"{entry['n_images']:,}",
            *(
                f"{format_value(entry[key])} {format_interval(entry.get('intervals', {}).get(key))}"
                for key in ("balanced_accuracy", "melanoma_sensitivity")
            ),
        )
        for attribute, result in subgroups.items()
        for group, entry in result["groups"].items()
    ]
    return markdown_table(
        ("attribute", "group", "images", "balanced accuracy", "melanoma sensitivity"), rows, align="llrrr"
    )


def gaps_table(subgroups):
    rows = []
    for attribute, result in subgroups.items():
        gap = result["gap"]
        if gap is None:
            rows.append((attribute, MISSING, MISSING, MISSING))
            continue
        rows.append(
            (
                attribute,
                f"{gap['best']} − {gap['worst']}",
                f"{gap['balanced_accuracy_gap']:.3f} {format_interval(gap.get('interval'))}",
                MISSING if gap["p_value"] is None else f"{gap['p_value']:.3f}",
            )
        )
    return markdown_table(("attribute", "best − worst", "balanced accuracy gap", "permutation p"), rows, align="llrr")


# === summary.md ===


def clinical_summary_sections(configurations, ensembles_dir):
    """The study summary's comparison of the configurations' ensembles at the clinical questions (the
    catalogue's `CLINICAL` metrics)."""
    rows, gap_rows = [], []
    for label, configuration in configurations.items():
        clinical = configuration.get("clinical")
        if clinical is None:
            continue
        rows.append((label, *clinical_cells({"clinical": clinical})))
        for attribute, result in clinical.get("subgroups", {}).items():
            gap = result["gap"]
            gap_rows.append(
                (
                    label,
                    attribute,
                    MISSING if gap is None else f"{gap['best']} − {gap['worst']}",
                    MISSING
                    if gap is None
                    else f"{gap['balanced_accuracy_gap']:.3f} {format_interval(gap.get('interval'))}",
                    MISSING if gap is None or gap["p_value"] is None else f"{gap['p_value']:.3f}",
                )
            )
    if not rows:
        return []
    sections = [
        "## Clinical evaluation of the ensembles",
        "Temperature, operating points and conformal thresholds fitted on the members' pooled out-of-fold validation "
        "predictions, never on test. " + clinical_metrics_text() + " Each ensemble's "
        f"plots are in its folder under [{ensembles_dir}/]({ensembles_dir}/), every number under its `clinical` in summary.json.",
        clinical_table("configuration", rows),
    ]
    if gap_rows:
        sections += [
            "Largest balanced-accuracy gap between subgroups of the test images (groups of known value with at least "
            f"{MIN_GROUP_IMAGES} images), with its bootstrap interval and permutation p-value: a configuration that "
            "narrows a gap has a smaller one here.",
            markdown_table(
                ("configuration", "attribute", "best − worst", "gap", "permutation p"), gap_rows, align="lllrr"
            ),
        ]
    return sections


def clinical_cells(metrics):
    """A `metrics.json`'s (or anything with its "clinical") catalogue `CLINICAL` metrics, with their intervals."""
    return [
        f"{format_value(metric.value_in(metrics))} {format_interval(metric.interval_in(metrics))}"
        if metric.interval
        else format_value(metric.value_in(metrics))
        for metric in metrics_shown(CLINICAL)
    ]


def clinical_table(first, rows):
    """The table of `clinical_cells` rows, each led by its label (a configuration, a run)."""
    return markdown_table(
        (first, *(metric.name for metric in metrics_shown(CLINICAL))),
        rows,
        align="l" + "r" * len(metrics_shown(CLINICAL)),
    )


def clinical_metrics_text():
    """What the columns of `clinical_table` are, from the catalogue."""
    return "; ".join(f"{metric.name}: {metric.detail}" for metric in metrics_shown(CLINICAL) if metric.detail) + "."
