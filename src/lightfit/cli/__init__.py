"""Entry points: the `lightfit` command and its subcommands, and the Hydra config schemas.

`lightfit train|evaluate|predict|export|serve|new|plot|compare ...` (or `python -m lightfit ...`) hands
the rest of the command line to the subcommand's module, so Hydra's own flags (`-m`,
`--cfg job`, `--help`) work after it. A project's own command is the same `main` with its
name and its configs: `main(prog="affair_risk", config_module="affair_risk.conf")`.
May import everything below: loops, api, tasks, data, nets, run, errors. Nothing imports
from here except the aliases.
"""

from __future__ import annotations

import importlib
import sys

PROG = "lightfit"
CONFIG_MODULE = "lightfit.conf"
# subcommand -> (module with main(), one line for `<prog> --help`); `new` is lightfit's own only
COMMANDS = {
    "train": ("lightfit.cli.train", "train with Hydra overrides: {prog} train loop=manual task=regression"),
    "evaluate": ("lightfit.cli.evaluate", "test metrics of a checkpoint: {prog} evaluate ckpt_path=..."),
    "predict": (
        "lightfit.cli.predict",
        "predictions for a .npy: {prog} predict ckpt_path=... input=... output=...",
    ),
    "export": (
        "lightfit.cli.export",
        "the model as ONNX or TorchScript: {prog} export ckpt_path=... format=onnx|torchscript",
    ),
    "serve": (
        "lightfit.cli.serve",
        "the model behind HTTP (LitServe): {prog} serve ckpt_path=... [port=8000]",
    ),
    "new": ("lightfit.cli.new", "a new project from the template, by copier: {prog} new NAME DEST"),
    "plot": ("lightfit.cli.plot", "curves (and confusion matrix) of a run as PNG: {prog} plot [RUN]"),
    "compare": (
        "lightfit.cli.compare",
        "rank runs or a sweep by the monitored metric: {prog} compare DIR...",
    ),
}


def commands(prog: str) -> dict[str, tuple[str, str]]:
    return {name: entry for name, entry in COMMANDS.items() if name != "new" or prog == PROG}


def usage(prog: str = PROG) -> str:
    available = commands(prog)
    width = max(map(len, available))
    lines = [f"  {name:<{width}}  {text.format(prog=prog)}" for name, (_, text) in available.items()]
    return "\n".join(
        [
            f"usage: {prog} <command> [arguments]",
            "",
            "commands:",
            *lines,
            "",
            f"`{prog} <command> --help` for the command's own options (Hydra's, for train,",
            "evaluate, predict, export and serve).",
        ]
    )


def main(argv: list[str] | None = None, *, prog: str = PROG, config_module: str = CONFIG_MODULE) -> None:
    """Run `<prog> <command> [arguments]`; the Hydra commands compose `config_module`'s configs."""
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage(prog))
        raise SystemExit(0 if args else 2)
    name, rest = args[0], args[1:]
    available = commands(prog)
    if name not in available:
        print(f"{prog}: error: unknown command '{name}'; choose from {', '.join(available)}", file=sys.stderr)
        raise SystemExit(2)
    module = importlib.import_module(available[name][0])
    sys.argv = [f"{prog} {name}", *rest]  # Hydra and argparse read the command line from here
    if name == "new":
        module.main()
    else:
        module.main(prog=prog, config_module=config_module)
