"""Three ways to train the same network: automatic, manual (Lightning) and explicit (plain PyTorch).

automatic.py, manual.py and explicit.py are the loops; module.py what the two Lightning
loops share; run_lightning.py and run_explicit.py run them for a config. May import
tasks, data, nets, run and errors; nothing from cli or api.
"""

from lightfit.loops.automatic import AutomaticLoop
from lightfit.loops.manual import ManualLoop
from lightfit.loops.module import TaskModule
from lightfit.run.hooks import FitHooks, StopTraining

__all__ = ["AutomaticLoop", "FitHooks", "ManualLoop", "StopTraining", "TaskModule"]
