"""`evaluate` module for the representation metrics of basinlab.eval.representation.

Hub metrics cannot be downloaded on offline machines, so basinlab ships its metrics as
local scripts for ``evaluate.load(basinlab.eval.metric_path("representation"))``.
The math lives in basinlab.eval.representation; this file only adapts it to evaluate's API.
"""

import datasets
import evaluate
import torch

from basinlab.eval.representation import class_mean_cosine, effective_rank, mean_off_diagonal

_DESCRIPTION = """\
Geometry of hidden representations on a probe set, from one hidden vector and one class
label per example:

- effective_rank: Roy & Vetterli effective rank of the covariance spectrum s of the
  representations, exp(-sum_k p_k log p_k) with p = s / sum(s); NaN if all are equal;
- mean_cross_class_cosine: mean off-diagonal cosine similarity between class-mean
  representations, over the classes present (absent classes are ignored).
"""

_CITATION = """\
@inproceedings{roy2007effective,
  title={The effective rank: A measure of effective dimensionality},
  author={Roy, Olivier and Vetterli, Martin},
  booktitle={15th European Signal Processing Conference},
  year={2007}
}
"""

_KWARGS_DESCRIPTION = """
Args:
    representations (`list` of `list` of `float`): one hidden vector of length D per example.
    labels (`list` of `int`): class of each example, in [0, num_classes).
    num_classes (`int`, optional): number of classes C; defaults to max(labels) + 1.
        Classes with no example do not change the result.
Returns:
    effective_rank (`float`), mean_cross_class_cosine (`float`).
Examples:
    >>> metric = evaluate.load(basinlab.eval.metric_path("representation"))
    >>> metric.compute(representations=[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]],
    ...                labels=[0, 1, 0, 1])
    {'effective_rank': 1.0, 'mean_cross_class_cosine': 0.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Representation(evaluate.Metric):
    """Effective rank and mean cross-class cosine of hidden representations."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "representations": datasets.Sequence(datasets.Value("float64")),
                    "labels": datasets.Value("int64"),
                }
            ),
        )

    def _compute(self, representations, labels, num_classes=None):
        h = torch.tensor(representations, dtype=torch.float64)
        y = torch.tensor(labels, dtype=torch.long)
        if num_classes is None:
            num_classes = int(y.max()) + 1
        return {
            "effective_rank": effective_rank(h),
            "mean_cross_class_cosine": mean_off_diagonal(class_mean_cosine(h, y, num_classes)),
        }
