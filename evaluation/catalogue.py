"""The catalogue of metrics: each headline metric of `metrics.json` defined once.

    from evaluation.catalogue import REPORT, metrics_shown
    for metric in metrics_shown(REPORT):
        print(metric.label, metrics[metric.key])

A metric's entry says what the reports, summaries, comparisons, the model card (`Predictor.describe`,
the API) and the console call it, how its interval is computed and which way is better; where it is
shown is part of its entry, so a new metric is one entry here, not an edit to every table that
prints one (as big_vision's evaluators yield (name, value) pairs that every writer takes).
"""

from dataclasses import dataclass

from evaluation.metrics import CALIBRATION_BINS

# === Where a metric is shown ===
REPORT = "report"  # the headline table of a run's report.md (and the notebook's)
STUDY = "study"  # the spread over runs, the ensembles and out-of-fold tables of a study's summary
COMPARISON = "comparison"  # the runs table of comparison.md
CARD = "card"  # a model's description: `Predictor.describe`, the API's model card
CONSOLE = "console"  # what main.py prints after evaluating a run, and beside test-time augmentation
GPU_CHECK = "gpu_check"  # the test scores benchmarks/gpu_check.py records
# The clinical evaluation's headline (metrics.json's "clinical"): the study summary's table of the
# ensembles, and comparison.md's where the runs have one.
CLINICAL = "clinical"

# === How an interval is computed ===
BOOTSTRAP = "percentile bootstrap over the test images"


@dataclass(frozen=True)
class Metric:
    """One metric of `metrics.json`.

    Attributes:
        key: its key in `metrics.json`.
        name: what tables and the console call it, lower case ("macro AUC").
        detail: what the report's headline table adds in brackets, if anything.
        interval: how its interval is computed (`BOOTSTRAP`), or None for a metric given without one.
        better: "higher" or "lower", or None for a count.
        shown: where it is shown (`REPORT`, `STUDY`, ...).
        path: where it is in `metrics.json` where it is not at the top (`key`): its keys from the
            top, a number among them picking the operating point of that target sensitivity.
    """

    key: str
    name: str
    detail: str = ""
    interval: str | None = None
    better: str | None = "higher"
    shown: frozenset = frozenset()
    path: tuple = ()

    def value_in(self, metrics):
        """Its value in a `metrics.json`; None where that has none (a run without validation
        predictions has no temperature, so no calibrated ECE)."""
        parent, last = self._parent(metrics)
        return None if parent is None else parent.get(last)

    def interval_in(self, metrics):
        """Its interval in a `metrics.json` ([low, high]), or None."""
        if not self.path:
            return metrics.get("intervals", {}).get(self.key)
        parent, last = self._parent(metrics)
        return None if parent is None else parent.get("intervals", {}).get(last)

    def _parent(self, metrics):
        """(the dict that holds it, its key there); (None, key) where a step on its path is missing."""
        *steps, last = self.path or (self.key,)
        node = metrics
        for step in steps:
            if isinstance(step, float):  # an operating point, by its target sensitivity
                node = next((point for point in node if point["target"] == step), None)
            else:
                node = node.get(step) if isinstance(node, dict) else None
            if node is None:
                return None, last
        return node, last

    @property
    def label(self):
        """The report's name for it: capitalised, with its detail and, where lower is better, that."""
        notes = "; ".join(note for note in (self.detail, "lower is better" if self.better == "lower" else "") if note)
        return self.name[0].upper() + self.name[1:] + (f" ({notes})" if notes else "")


def _shown(*places):
    return frozenset(places)


# In the order every table shows them.
METRICS = (
    Metric(
        "balanced_accuracy",
        "balanced accuracy",
        "mean recall over classes",
        BOOTSTRAP,
        shown=_shown(REPORT, STUDY, COMPARISON, CARD, CONSOLE, GPU_CHECK),
    ),
    Metric("accuracy", "accuracy", shown=_shown(REPORT, COMPARISON, CARD, CONSOLE)),
    Metric("macro_f1", "macro F1", shown=_shown(REPORT, COMPARISON)),
    Metric(
        "macro_auc", "macro AUC", "one-vs-rest", BOOTSTRAP, shown=_shown(REPORT, STUDY, COMPARISON, CARD, GPU_CHECK)
    ),
    Metric(
        "melanoma_sensitivity",
        "melanoma sensitivity",
        interval=BOOTSTRAP,
        shown=_shown(REPORT, STUDY, COMPARISON, CARD, CONSOLE, GPU_CHECK),
    ),
    Metric("melanoma_specificity", "melanoma specificity", shown=_shown(REPORT)),
    Metric(
        "expected_calibration_error",
        "expected calibration error",
        f"{CALIBRATION_BINS} bins",
        better="lower",
        shown=_shown(REPORT),
    ),
    Metric("n_images", "test images", better=None, shown=_shown(CARD, GPU_CHECK)),
)

# The clinical evaluation's headline, in metrics.json's "clinical" (`evaluation.clinical`). The
# temperature, conformal thresholds and operating points are fitted on validation predictions.
CLINICAL_METRICS = (
    Metric(
        "temperature",
        "temperature",
        "fitted on validation",
        better=None,
        shown=_shown(CLINICAL),
        path=("clinical", "calibration", "temperature"),
    ),
    Metric(
        "ece_raw",
        "ECE raw",
        f"{CALIBRATION_BINS} equal-width bins",
        better="lower",
        shown=_shown(CLINICAL),
        path=("clinical", "calibration", "before", "ece_fixed"),
    ),
    Metric(
        "ece_calibrated",
        "ECE calibrated",
        f"{CALIBRATION_BINS} equal-width bins, after temperature scaling",
        better="lower",
        shown=_shown(CLINICAL),
        path=("clinical", "calibration", "after", "ece_fixed"),
    ),
    *(
        Metric(
            f"melanoma_specificity_at_{target:.2f}",
            f"melanoma specificity at sensitivity {target:.2f}",
            "the threshold on P(mel) that finds that share of the validation melanomas",
            BOOTSTRAP,
            shown=_shown(CLINICAL),
            path=("clinical", "operating_points", "melanoma", "points", target, "specificity"),
        )
        for target in (0.90, 0.95)
    ),
    Metric(
        "aurc",
        "AURC",
        "area under the risk-coverage curve of the top probability",
        better="lower",
        shown=_shown(CLINICAL),
        path=("clinical", "selective", "aurc"),
    ),
    Metric(
        "conformal_coverage_0.90",
        "90% set coverage",
        "marginal split-conformal sets; at least 0.90 is the guarantee",
        better=None,
        shown=_shown(CLINICAL),
        path=("clinical", "conformal", "0.90", "marginal", "coverage"),
    ),
    Metric(
        "conformal_size_0.90",
        "90% set size",
        "the mean number of classes in a marginal set",
        better="lower",
        shown=_shown(CLINICAL),
        path=("clinical", "conformal", "0.90", "marginal", "mean_size"),
    ),
)
BY_KEY = {metric.key: metric for metric in METRICS + CLINICAL_METRICS}
# The metrics `compute_metrics` gives an interval for, in `metrics.json`'s "intervals".
INTERVAL_METRICS = tuple(metric.key for metric in METRICS if metric.interval is not None)


def metrics_shown(place):
    """The metrics shown in `place` (`REPORT`, `STUDY`, ..., `CLINICAL`), in the catalogue's order."""
    return tuple(metric for metric in METRICS + CLINICAL_METRICS if place in metric.shown)


def keys_shown(place):
    """The `metrics.json` keys of `metrics_shown(place)`."""
    return tuple(metric.key for metric in metrics_shown(place))
