"""Old name of `python -m bench` (the bench/ package at the repository root): runs it with these arguments."""

import os
import sys
from pathlib import Path

# The repository root on the child's path: from here, `import bench` would find this file instead.
path = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")]))
os.execve(sys.executable, [sys.executable, "-m", "bench", *sys.argv[1:]], {**os.environ, "PYTHONPATH": path})
