"""What `python main.py robustness` does: the corruption benchmark of a run, or of a study's
configuration (its fold ensemble) or ensemble of configurations.

    score_run_robustness("results/runs/RUN", subsets=("val", "test"))
    score_study_robustness("results/studies/STUDY/efficientnet_lite0", subsets=("val",))

A run's subsets are predicted with its kept model under every corruption x severity (33 passes
over each subset beside the clean one) into the run's `robustness.json` / `.npz`, and its
metrics.json and report.md are written again with a "Robustness" section. A study's configuration
is scored from its runs' files (each run scored first where it has not been): its test images
with the mean of its fold models, its validation images out of fold, each by the fold model that
did not train on it. A subset already scored (same image size and seed) is kept, not predicted again.
"""

import dataclasses
import time
from pathlib import Path

import evaluation
from common.errors import DataError
from common.files import write_json, write_text
from common.run_folder import MODEL_FILENAME, PREDICTIONS_FILENAME
from common.study_folder import is_study_dir
from evaluation.configuration_ensemble import resolve_configurations
from evaluation.predictor import study_configuration
from evaluation.robustness import (
    STUDY_ROBUSTNESS_DIR,
    SUBSET_NAMES,
    pool_predictions,
    predict_corrupted,
    read_robustness,
    read_robustness_predictions,
    read_study_robustness,
    robustness_section,
    robustness_stem,
    score_robustness,
    study_robustness_section,
    write_robustness,
)
from training.run import prepare_run_data, run_config


def score_robustness_of(path, subsets=("val", "test"), *, image_size=None, seed=0, cache_dir=None, verbose=True):
    """The benchmark of a run folder, or of `STUDY_DIR/<configuration>` (or `a+b`, or `ensemble`).

    Returns:
        {subset: scores} (`evaluation.robustness.score_robustness`).
    """
    path = Path(path)
    if is_study_dir(path) or (is_study_dir(path.parent) and not (path / MODEL_FILENAME).exists()):
        return score_study_robustness(
            path, subsets, image_size=image_size, seed=seed, cache_dir=cache_dir, verbose=verbose
        )
    return score_run_robustness(path, subsets, image_size=image_size, seed=seed, cache_dir=cache_dir, verbose=verbose)


def score_run_robustness(
    run_dir,
    subsets=("val", "test"),
    *,
    image_size=None,
    seed=0,
    cache_dir=None,
    predictor=None,
    data=None,
    reevaluate=True,
    verbose=True,
):
    """Scores a run's subsets under every corruption (those not scored yet) and writes its evaluation again.

    Args:
        run_dir: a trained run's folder.
        subsets: of "val", "test".
        image_size: predict at this size instead of the training size (test-time resolution).
        seed: fixes the corruptions.
        cache_dir: the image cache (default as in training).
        predictor, data: the run's `Predictor` and `PreparedData` where the caller has them (the end of a run).
        reevaluate: write the run's metrics.json and report.md again, with the benchmark.

    Returns:
        {subset: scores}.
    """
    run_dir = Path(run_dir)
    config = run_config(run_dir, {"cache_dir": cache_dir and str(cache_dir)})
    trained_size = config.image_size
    size = image_size if image_size not in (None, trained_size) else None
    stem = robustness_stem(size, seed)
    done = (read_robustness(run_dir, stem) or {}).get("subsets", {})
    results = {subset: done[subset] for subset in subsets if subset in done}
    missing = [subset for subset in subsets if subset not in done]
    for subset in results if verbose else ():
        print(f"{run_dir.name}: the {SUBSET_NAMES[subset]} benchmark is in {run_dir / stem}.json already; kept")
    if missing:
        if size is not None or data is None:
            data = prepare_run_data(dataclasses.replace(config, image_size=size or trained_size), verbose=verbose)
        if size is not None or predictor is None:
            predictor = evaluation.Predictor.load(run_dir, image_size=size)
        settings = {"seed": seed, "image_size": size or trained_size, "trained_image_size": trained_size}
        for subset in missing:
            rows, cache_rows, labels = data.subset(subset)
            started = time.monotonic()
            if verbose:
                print(
                    f"{run_dir.name}: the {SUBSET_NAMES[subset]} benchmark, {len(rows):,} images x (1 + 33 corruptions)"
                )
            clean, corrupted = predict_corrupted(
                predictor,
                data.cache.images[cache_rows],
                rows["image_id"].tolist(),
                rows,
                seed=seed,
                batch_size=config.batch_size,
                image_labels=labels,
                verbose=verbose,
            )
            results[subset] = write_robustness(
                run_dir, subset, rows["image_id"].tolist(), labels, clean, corrupted, settings=settings, stem=stem
            )
            report_line(run_dir.name, subset, results[subset], time.monotonic() - started)
        if reevaluate and stem == robustness_stem() and (run_dir / PREDICTIONS_FILENAME).is_file():
            evaluation.evaluate_run(run_dir)  # metrics.json and report.md with the Robustness section
    return results


def score_study_robustness(path, subsets=("val", "test"), *, image_size=None, seed=0, cache_dir=None, verbose=True):
    """Scores a study configuration's fold ensemble (or an ensemble of configurations) from its
    runs' benchmark files, scoring each run first where it lacks them; writes
    `STUDY_DIR/robustness/<configuration>.<stem>.json` and the study's `robustness/robustness.md`.

    Returns:
        {subset: scores}.
    """
    path = Path(path)
    study_dir, configuration = (path, None) if is_study_dir(path) else (path.parent, path.name)
    configurations = [study_configuration(study_dir, name) for name in resolve_configurations(study_dir, configuration)]
    label = "+".join(name for name, _, _ in configurations)
    stem = robustness_stem(image_size, seed)
    per_configuration = []
    for name, run_dirs, _ in configurations:
        parts = {subset: [] for subset in subsets}
        for run_dir in run_dirs:
            score_run_robustness(run_dir, subsets, image_size=image_size, seed=seed, cache_dir=cache_dir, verbose=False)
            trained = run_config(run_dir).image_size
            run_stem = robustness_stem(image_size if image_size not in (None, trained) else None, seed)
            predictions = read_robustness_predictions(run_dir, run_stem)
            for subset in subsets:
                parts[subset].append(predictions[subset])
        per_configuration.append({subset: pool_predictions(parts[subset]) for subset in subsets})
    results = {}
    for subset in subsets:
        # Each configuration's fold ensemble counts alike, as in `Predictor`.
        pooled = pool_predictions([configuration[subset] for configuration in per_configuration])
        results[subset] = score_robustness(pooled[1], pooled[2], pooled[3])
        report_line(f"{study_dir.name}/{label}", subset, results[subset])
    folder = study_dir / STUDY_ROBUSTNESS_DIR
    existing = read_robustness(folder, f"{label}.{stem}") or {}
    write_json(
        folder / f"{label}.{stem}.json",
        {
            "seed": seed,
            "image_size": image_size,
            "configurations": [name for name, _, _ in configurations],
            "subsets": {**existing.get("subsets", {}), **results},
        },
    )
    write_study_report(study_dir)
    return results


def write_study_report(study_dir):
    """`STUDY_DIR/robustness/robustness.md`: the summary's Robustness table and each configuration's per corruption."""
    folder = Path(study_dir) / STUDY_ROBUSTNESS_DIR
    robustness = read_study_robustness(study_dir)
    sections = [
        f"# Robustness of study {Path(study_dir).name}",
        study_robustness_section(robustness).replace(f"../{STUDY_ROBUSTNESS_DIR}/", ""),
    ]
    for label in robustness:
        sections.append(
            robustness_section(folder, f"{label.replace('/', '--')}.robustness").replace("## Robustness", f"## {label}")
        )
    write_text(folder / "robustness.md", "\n\n".join(section for section in sections if section) + "\n")


def report_line(name, subset, scores, seconds=None):
    took = "" if seconds is None else f" ({seconds:.0f} s)"
    print(
        f"{name}: {SUBSET_NAMES[subset]} balanced accuracy {scores['clean_balanced_accuracy']:.3f} clean, "
        f"{scores['mean_corrupted_balanced_accuracy']:.3f} corrupted (mean of 33), "
        f"relative {format_ratio(scores['relative_balanced_accuracy'])}{took}"
    )


def format_ratio(value):
    return "n/a" if value is None else f"{value:.3f}"


def check_subsets(names):
    """The subsets the command names ("validation", "val", "test", "both") as the data's names."""
    chosen = {"validation": ("val",), "val": ("val",), "test": ("test",), "both": ("val", "test")}
    if names not in chosen:
        raise DataError(f"unknown subset {names!r} (expected validation, test or both)")
    return chosen[names]
