"""Tasks: what is learned. The loss, the metrics (torchmetrics, by name) and the monitored metric.

`task.py` builds a Task from `conf/task/*.yaml`; `metrics.py` holds the metric tables and
`StageMetrics`, which the three loops share. Imports torch, torchmetrics, nets and errors;
nothing from the loops, the data or the entry points.
"""

from lightfit.tasks.metrics import (
    CLASSIFICATION,
    REGRESSION,
    NonFiniteLoss,
    StageMetrics,
    match_targets,
    scalars,
)
from lightfit.tasks.task import Task, build_task, check_task_config, mode_of

__all__ = [
    "CLASSIFICATION",
    "REGRESSION",
    "NonFiniteLoss",
    "StageMetrics",
    "Task",
    "build_task",
    "check_task_config",
    "match_targets",
    "mode_of",
    "scalars",
]
