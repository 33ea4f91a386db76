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
    """

    key: str
    name: str
    detail: str = ""
    interval: str | None = None
    better: str | None = "higher"
    shown: frozenset = frozenset()

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
        "balanced_accuracy", "balanced accuracy", "mean recall over classes", BOOTSTRAP,
        shown=_shown(REPORT, STUDY, COMPARISON, CARD, CONSOLE, GPU_CHECK),
    ),
    Metric("accuracy", "accuracy", shown=_shown(REPORT, COMPARISON, CARD, CONSOLE)),
    Metric("macro_f1", "macro F1", shown=_shown(REPORT, COMPARISON)),
    Metric("macro_auc", "macro AUC", "one-vs-rest", BOOTSTRAP, shown=_shown(REPORT, STUDY, COMPARISON, CARD, GPU_CHECK)),
    Metric(
        "melanoma_sensitivity", "melanoma sensitivity", interval=BOOTSTRAP,
        shown=_shown(REPORT, STUDY, COMPARISON, CARD, CONSOLE, GPU_CHECK),
    ),
    Metric("melanoma_specificity", "melanoma specificity", shown=_shown(REPORT)),
    Metric(
        "expected_calibration_error", "expected calibration error", f"{CALIBRATION_BINS} bins", better="lower",
        shown=_shown(REPORT),
    ),
    Metric("n_images", "test images", better=None, shown=_shown(CARD, GPU_CHECK)),
)
BY_KEY = {metric.key: metric for metric in METRICS}
# The metrics `compute_metrics` gives an interval for, in `metrics.json`'s "intervals".
INTERVAL_METRICS = tuple(metric.key for metric in METRICS if metric.interval is not None)


def metrics_shown(place):
    """The metrics shown in `place` (`REPORT`, `STUDY`, ...), in the catalogue's order."""
    return tuple(metric for metric in METRICS if place in metric.shown)


def keys_shown(place):
    """The `metrics.json` keys of `metrics_shown(place)`."""
    return tuple(metric.key for metric in metrics_shown(place))
