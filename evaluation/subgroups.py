"""Does it work equally well for everyone? Balanced accuracy and melanoma sensitivity by sex, age band
and anatomical site group, with the largest gap per attribute and a permutation test of it.

    from evaluation.subgroups import subgroup_metrics
    subgroup_metrics(test_y, test_probabilities, metadata)    # metadata: age, sex, localization per image

Each group's metrics have percentile-bootstrap intervals over its own images. The gap of an
attribute is between its best and worst group by balanced accuracy, among the groups of known value
with at least `MIN_GROUP_IMAGES` images (an "unknown" group is not a population, and a handful of
images gives any gap). Its p-value is from a permutation test: the attribute's values shuffled over
the images, so that any gap is chance, and the observed gap's rank among the shuffled ones.
"""

import numpy as np
import pandas as pd

from dataset.metadata import UNKNOWN
from evaluation.metrics import (
    BOOTSTRAP_DRAWS,
    MELANOMA,
    bootstrap_interval,
    bootstrap_weights,
    mean_of_ratios,
    weighted_hits,
)

AGE_BANDS = ((0, 30, "< 30"), (30, 50, "30–49"), (50, 70, "50–69"), (70, np.inf, "≥ 70"))
# HAM10000's localizations in the site groups; acral is the distal limbs (hands, feet, and HAM10000's own "acral").
SITE_GROUPS = {
    "head/neck": ("face", "scalp", "ear", "neck"),
    "trunk": ("trunk", "back", "chest", "abdomen"),
    "upper extremity": ("upper extremity",),
    "lower extremity": ("lower extremity",),
    "acral": ("acral", "hand", "foot"),
}
OTHER_SITE = "other/unknown"
MIN_GROUP_IMAGES = 20
PERMUTATIONS = 1000


def age_band(age):
    if pd.isna(age):
        return UNKNOWN
    return next(label for low, high, label in AGE_BANDS if low <= float(age) < high)


def site_group(localization):
    return next((group for group, sites in SITE_GROUPS.items() if localization in sites), OTHER_SITE)


def subgroup_table(metadata):
    """Each image's sex, age band and site group, from its `age, sex, localization`."""
    metadata = metadata.reset_index(drop=True)
    return pd.DataFrame(
        {
            "sex": metadata["sex"].fillna(UNKNOWN).astype(str),
            "age": metadata["age"].map(age_band),
            "site": metadata["localization"].fillna(UNKNOWN).map(site_group),
        }
    )


def group_order(attribute, values):
    """An attribute's groups in reading order: the bands and site groups as defined, unknown last."""
    defined = {"age": [label for *_, label in AGE_BANDS] + [UNKNOWN], "site": list(SITE_GROUPS) + [OTHER_SITE]}.get(
        attribute
    ) or sorted(set(values) - {UNKNOWN}) + [UNKNOWN]
    return [group for group in defined if group in set(values)]


def group_scores(y_true, y_pred, weights):
    """Balanced accuracy and melanoma sensitivity per row of `weights` (a draw, or an image mask)."""
    hits, totals = weighted_hits(y_true, y_pred, weights)
    return mean_of_ratios(hits, totals), mean_of_ratios(hits[:, [MELANOMA]], totals[:, [MELANOMA]])


def subgroup_metrics(
    y_true, probabilities, metadata, *, bootstrap_draws=BOOTSTRAP_DRAWS, permutations=PERMUTATIONS, seed=0
):
    """Per attribute and group: image count, balanced accuracy and melanoma sensitivity with intervals;
    per attribute: the largest balanced-accuracy gap among the comparable groups, with its bootstrap
    interval (the same two groups in every draw) and permutation p-value.

    Args:
        y_true, probabilities: the test images' classes and probabilities.
        metadata: one row per test image, in the same order, with `age, sex, localization`.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(probabilities).argmax(axis=1)
    table = subgroup_table(metadata)
    weights = bootstrap_weights(len(y_true), bootstrap_draws, seed) if bootstrap_draws else None
    rng = np.random.default_rng(seed)
    result = {}
    for attribute in table.columns:
        values = table[attribute].to_numpy()
        groups = {}
        for group in group_order(attribute, values):
            mask = (values == group).astype(np.float64)[None, :]
            (balanced,), (melanoma,) = group_scores(y_true, y_pred, mask)
            entry = {
                "n_images": int(mask.sum()),
                "balanced_accuracy": finite(balanced),
                "melanoma_sensitivity": finite(melanoma),
            }
            if weights is not None:
                draws = group_scores(y_true, y_pred, weights * mask)
                entry["intervals"] = {
                    key: bootstrap_interval(draw, seed=seed)
                    for key, draw in zip(("balanced_accuracy", "melanoma_sensitivity"), draws)
                }
            groups[group] = entry
        result[attribute] = {
            "groups": groups,
            "gap": largest_gap(y_true, y_pred, values, groups, weights, rng, permutations, seed),
        }
    return result


def largest_gap(y_true, y_pred, values, groups, weights, rng, permutations, seed):
    """The best minus the worst comparable group's balanced accuracy; None with fewer than two such groups."""
    comparable = [
        group
        for group, entry in groups.items()
        if group not in (UNKNOWN, OTHER_SITE)
        and entry["n_images"] >= MIN_GROUP_IMAGES
        and entry["balanced_accuracy"] is not None
    ]
    if len(comparable) < 2:
        return None
    best = max(comparable, key=lambda group: groups[group]["balanced_accuracy"])
    worst = min(comparable, key=lambda group: groups[group]["balanced_accuracy"])
    gap = groups[best]["balanced_accuracy"] - groups[worst]["balanced_accuracy"]
    masks = np.stack([values == group for group in comparable]).astype(np.float64)
    # Only the comparable groups' images are shuffled among them, so the null keeps their sizes.
    pooled = masks.any(axis=0)
    shuffled_gaps = []
    for _ in range(permutations):
        permuted = masks.copy()
        permuted[:, pooled] = masks[:, pooled][:, rng.permutation(int(pooled.sum()))]
        scores, _ = group_scores(y_true, y_pred, permuted)
        shuffled_gaps.append(np.nanmax(scores) - np.nanmin(scores))
    result = {
        "best": best,
        "worst": worst,
        "balanced_accuracy_gap": gap,
        "p_value": (1 + int(np.sum(np.array(shuffled_gaps) >= gap - 1e-12))) / (1 + permutations)
        if permutations
        else None,
        "permutations": permutations,
    }
    if weights is not None:
        (best_draws, _), (worst_draws, _) = (
            group_scores(y_true, y_pred, weights * (values == group)) for group in (best, worst)
        )
        result["interval"] = bootstrap_interval(best_draws - worst_draws, seed=seed)
    return result


def finite(value):
    return None if np.isnan(value) else float(value)
