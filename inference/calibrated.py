"""Calibrated probabilities and conformal prediction sets for new images, from the `calibration.json`
that the evaluation fitted on validation predictions (`evaluation.clinical`).

    from inference.calibrated import Calibration
    calibration = Calibration.load(predictor)                   # the run's, or its fold ensemble's
    calibrated = calibration.probabilities(probabilities)       # softmax(log p / T)
    sets = calibration.sets(probabilities, 0.90, "marginal")    # per image, the class codes in its set

A run's calibration is its own (`RUN/calibration.json`, fitted on its `val_predictions.csv`). A
study configuration of several fold runs is calibrated as the study summary evaluated its ensemble:
with `summary/ensembles/<configuration>/calibration.json`, fitted on the members' pooled out-of-fold
validation predictions, so that the sets' coverage is the one the summary reports. The sets are
taken on the calibrated probabilities, as they were calibrated; the arg-max is unchanged.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from common.errors import DataError, UserError
from common.files import read_json
from common.run_folder import CALIBRATION_FILENAME
from dataset.metadata import CLASS_NAMES
from evaluation.calibration import apply_temperature
from evaluation.selective import prediction_sets

CONFORMAL_KINDS = ("marginal", "class_conditional")
# How a set is written in a predictions table (CSV or JSON records): its class codes joined.
SET_SEPARATOR = "|"
CALIBRATED_COLUMNS = tuple(f"calibrated_prob_{name}" for name in CLASS_NAMES)


@dataclass(frozen=True)
class Calibration:
    """A `calibration.json`: the temperature, and the conformal thresholds by level and kind."""

    path: Path
    temperature: float
    conformal: dict

    @classmethod
    def load(cls, predictor):
        """The calibration of a `Predictor`'s probabilities (see the module's description).

        Raises:
            DataError: the file is missing (saying what writes it) or malformed.
        """
        if not hasattr(predictor, "calibration_dir"):
            # An export's graph gives the raw probabilities; its run holds the calibration.
            raise DataError(
                f"{predictor.name}: an export carries no calibration; predict or serve its run folder for calibrated probabilities or conformal sets"
            )
        path = Path(predictor.calibration_dir) / CALIBRATION_FILENAME
        if len(predictor.members) == 1:
            remedy = (
                f"`python main.py evaluate {predictor.members[0].run_dir}` fits it on the run's validation predictions"
            )
        else:
            remedy = "the study summary fits it on the fold runs' pooled validation predictions (a summary made before calibration has none: make it again)"
        content = read_json(
            path, f"{path}: not found, so there are no calibrated probabilities or conformal sets; {remedy}"
        )
        try:
            return cls(path, float(content["temperature"]), dict(content["conformal"]))
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{path}: malformed, expected a temperature and conformal thresholds; {remedy}") from None

    @property
    def levels(self):
        return tuple(float(level) for level in self.conformal)

    def probabilities(self, probabilities):
        return apply_temperature(probabilities, self.temperature)

    def threshold(self, level, kind="marginal"):
        """The conformal q of a level (0.90) and kind ("class-conditional" is "class_conditional");
        UserError naming the levels and kinds there are."""
        kind = kind.replace("-", "_")
        if kind not in CONFORMAL_KINDS:
            raise UserError(f"conformal kind {kind!r}: expected one of {', '.join(CONFORMAL_KINDS)}")
        key = f"{level:.2f}"
        if key not in self.conformal or not np.isclose(float(key), level):
            raise UserError(f"conformal level {level:g}: {self.path} has sets at {', '.join(self.conformal)} only")
        return self.conformal[key][kind]

    def sets(self, probabilities, level, kind="marginal"):
        """Per image, the class codes of its conformal set (possibly none), in `CLASS_NAMES` order."""
        included = prediction_sets(self.probabilities(probabilities), self.threshold(level, kind))
        return [[name for name, inside in zip(CLASS_NAMES, row) if inside] for row in included]


def calibrated_columns(calibration, probabilities, *, calibrated=False, conformal=None, kind="marginal"):
    """The predictions table's extra columns: `calibrated_prob_<class>` with `calibrated`; with a
    `conformal` level, `conformal_set` (the codes joined by "|", empty for an empty set) and
    `conformal_set_size`."""
    columns = pd.DataFrame(index=range(len(probabilities)))
    if calibrated:
        columns[list(CALIBRATED_COLUMNS)] = calibration.probabilities(probabilities)
    if conformal is not None:
        sets = calibration.sets(probabilities, conformal, kind)
        columns["conformal_set"] = [SET_SEPARATOR.join(codes) for codes in sets]
        columns["conformal_set_size"] = [len(codes) for codes in sets]
    return columns
