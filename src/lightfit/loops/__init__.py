"""Three ways to train the same network: automatic, manual (Lightning) and explicit (plain PyTorch)."""

from lightfit.loops.automatic import AutomaticLoop
from lightfit.loops.manual import ManualLoop
from lightfit.loops.module import TaskModule

LIGHTNING_LOOPS = {"automatic": AutomaticLoop, "manual": ManualLoop}

__all__ = ["LIGHTNING_LOOPS", "AutomaticLoop", "ManualLoop", "TaskModule"]
