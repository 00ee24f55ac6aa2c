"""`evaluate` module for the continual-learning metrics of basinlab.eval.continual.

Hub metrics cannot be downloaded on offline machines, so basinlab ships its metrics as
local scripts for ``evaluate.load(basinlab.eval.metric_path("continual_learning"))``.
The math lives in basinlab.eval.continual; this file only adapts it to evaluate's API.
"""

import datasets
import evaluate

from basinlab.eval.continual import continual_metrics

_DESCRIPTION = """\
Continual-learning summary of an accuracy matrix R (T x T), where R[i][j] is the accuracy
on task j after training task i (0-indexed), and b[j] the accuracy on task j at
initialization:

- acc: mean_j R[T-1][j], the average accuracy after the last task;
- bwt: mean_{j<T-1} (R[T-1][j] - R[j][j]), backward transfer (negative = forgetting);
- fwt: mean_{j>=1} (R[j-1][j] - b[j]), forward transfer;
- forgetting: mean_{j<T-1} (max_{l<T-1} R[l][j] - R[T-1][j]).

bwt, fwt and forgetting are NaN when T == 1. Each example is one row of R, added in task
order; evaluate the metric in a single process (rows from several processes would be
concatenated in process order, which is not task order).
"""

_CITATION = """\
@inproceedings{lopezpaz2017gem,
  title={Gradient Episodic Memory for Continual Learning},
  author={Lopez-Paz, David and Ranzato, Marc'Aurelio},
  booktitle={Advances in Neural Information Processing Systems},
  year={2017}
}
@inproceedings{chaudhry2018riemannian,
  title={Riemannian Walk for Incremental Learning: Understanding Forgetting and Intransigence},
  author={Chaudhry, Arslan and Dokania, Puneet K. and Ajanthan, Thalaiyasingam and Torr, Philip H. S.},
  booktitle={European Conference on Computer Vision},
  year={2018}
}
"""

_KWARGS_DESCRIPTION = """
Args:
    accuracy_matrix (`list` of `list` of `float`): rows of R in task order; one row
        R[i] (accuracies on all T tasks after training task i) per example, so
        `add(accuracy_matrix=row)` after each task or `add_batch(accuracy_matrix=R)`.
    initial_accuracies (`list` of `float`): b, accuracy on each task at initialization,
        length T. Required.
Returns:
    acc (`float`), bwt (`float`), fwt (`float`), forgetting (`float`).
Examples:
    >>> metric = evaluate.load(basinlab.eval.metric_path("continual_learning"))
    >>> metric.compute(accuracy_matrix=[[1.0, 0.25], [0.5, 0.75]], initial_accuracies=[0.25, 0.25])
    {'acc': 0.625, 'bwt': -0.5, 'fwt': 0.0, 'forgetting': 0.5}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ContinualLearning(evaluate.Metric):
    """ACC, BWT, FWT and forgetting of an accuracy matrix."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"accuracy_matrix": datasets.Sequence(datasets.Value("float64"))}),
        )

    def _compute(self, accuracy_matrix, initial_accuracies=None):
        if initial_accuracies is None:
            raise ValueError("continual_learning needs initial_accuracies=b (accuracy on each task at initialization)")
        return continual_metrics(accuracy_matrix, initial_accuracies)
