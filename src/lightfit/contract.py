"""What lightfit asks of a project's code: `TrainingModule`, `FitLoop`, `DataModule` and `check`.

The protocols live with the run's machinery (run/contract.py); this is their public name.
"""

from lightfit.run.contract import DataModule, FitLoop, TrainingModule, check

__all__ = ["DataModule", "FitLoop", "TrainingModule", "check"]
