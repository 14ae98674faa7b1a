"""Entry points: the `lightfit` command and its subcommands, and the Hydra config schemas.

`lightfit train|evaluate|predict|new|plot|compare ...` (or `python -m lightfit ...`) hands
the rest of the command line to the subcommand's module, so Hydra's own flags (`-m`,
`--cfg job`, `--help`) work after it. May import everything below: loops, api, tasks,
data, nets, run, errors. Nothing imports from here except the aliases.
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module with main(), one line for `lightfit --help`)
COMMANDS = {
    "train": ("lightfit.cli.train", "train with Hydra overrides: lightfit train loop=manual task=regression"),
    "evaluate": ("lightfit.cli.evaluate", "test metrics of a checkpoint: lightfit evaluate ckpt_path=..."),
    "predict": (
        "lightfit.cli.predict",
        "predictions for a .npy: lightfit predict ckpt_path=... input=... output=...",
    ),
    "new": ("lightfit.cli.new", "copy this template as a new project: lightfit new NAME DEST"),
    "plot": ("lightfit.cli.plot", "curves (and confusion matrix) of a run as PNG: lightfit plot [RUN]"),
    "compare": (
        "lightfit.cli.compare",
        "rank runs or a sweep by the monitored metric: lightfit compare DIR...",
    ),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {help_line}" for name, (_, help_line) in COMMANDS.items()]
    return "\n".join(
        [
            "usage: lightfit <command> [arguments]",
            "",
            "commands:",
            *lines,
            "",
            "`lightfit <command> --help` for the command's own options (Hydra's, for train,",
            "evaluate and predict).",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        raise SystemExit(0 if args else 2)
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(
            f"lightfit: error: unknown command '{name}'; choose from {', '.join(COMMANDS)}", file=sys.stderr
        )
        raise SystemExit(2)
    module = importlib.import_module(COMMANDS[name][0])
    sys.argv = [f"lightfit {name}", *rest]  # Hydra and argparse read the command line from here
    module.main()
