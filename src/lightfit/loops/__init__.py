"""Three ways to train the same network: automatic, manual (Lightning) and explicit (plain PyTorch)."""

from lightfit.loops.automatic import AutomaticLoop
from lightfit.loops.classifier import Classifier
from lightfit.loops.manual import ManualLoop

LIGHTNING_LOOPS = {"automatic": AutomaticLoop, "manual": ManualLoop}

__all__ = ["LIGHTNING_LOOPS", "AutomaticLoop", "Classifier", "ManualLoop"]
