"""`task.average=binary`: with two classes, f1, precision, recall and auroc of the positive class.

scikit-learn's f1_score, precision_score and recall_score default to `average="binary"`:
the score of label 1 alone. A class average (macro) of the same predictions can differ a
lot (0.537 against 0.353 in tests/test_tasks.py, label 1 rare), so with two classes
`task.average=binary` gives scikit-learn's numbers, through torchmetrics' Binary* classes.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from lightfit.errors import LightfitError

BINARY = {
    "f1": "BinaryF1Score",
    "precision": "BinaryPrecision",
    "recall": "BinaryRecall",
    "auroc": "BinaryAUROC",
}
POSITIVE = 1  # the label whose scores these are, as scikit-learn's pos_label=1


def binary_metric(name: str, num_outputs: int) -> nn.Module:
    """The torchmetrics Binary* metric for `name`, fed the positive class's probability.

    The loops hand every metric the network's (N, 2) class scores; softmax(.)[:, 1] > 0.5
    is the same decision as argmax, so acc and confusion agree with f1, precision, recall.
    """
    import torchmetrics.classification

    if num_outputs != 2:
        raise LightfitError(
            f"task.average=binary needs two classes, and this data has {num_outputs}; "
            "use macro, micro or weighted"
        )
    binary = getattr(torchmetrics.classification, BINARY[name])

    def update(self: Any, preds: Tensor, target: Tensor) -> None:
        binary.update(self, preds.softmax(dim=-1)[:, POSITIVE], target)

    positive = type(f"Positive{binary.__name__}", (binary,), {"update": update})
    return positive(validate_args=False)  # labels were checked once, when the data loaded
