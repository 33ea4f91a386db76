"""The stage above training, evaluation and inference: a run or a study, trained and evaluated.

    from pipeline import run_experiment, train_and_evaluate
    run_experiment("densenet", "configs/tiny.yaml", {"limit": 200})           # what `python main.py` does
    run_experiment("densenet", "configs/tiny.yaml", {"limit": 200}, folds=2)  # a study, then its summary
    run = train_and_evaluate(config)                                          # one validated TrainConfig

`main.py` parses the command line and calls this; a notebook or a test calls it directly.
"""

from pipeline.experiment import resume_experiment, run_experiment
from pipeline.run import evaluate_trained_run, resume_and_evaluate, train_and_evaluate
from pipeline.study import continue_study, open_study, run_study, study_name

__all__ = [
    "continue_study",
    "evaluate_trained_run",
    "open_study",
    "resume_and_evaluate",
    "resume_experiment",
    "run_experiment",
    "run_study",
    "study_name",
    "train_and_evaluate",
]
