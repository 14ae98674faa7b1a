"""Resuming in a run directory takes that run's configuration: the stop hint works pasted alone.

After a stop, lightfit prints `lightfit train ckpt_path=auto hydra.run.dir=<run dir>`. Hydra
would compose that command from conf/ alone, so a run started with `data=diabetes
model=cnn` would be resumed with the default data and network, and refused. So when a
command resumes (`ckpt_path=auto` or `last`) in a run directory that Hydra has written
(`<run dir>/.hydra/overrides.yaml`), the overrides saved there are added to the command's,
and the command wins: a key it sets (or a group it swaps, with everything under it)
replaces the saved one. Hydra then writes the merged list back to overrides.yaml, so
the next resume finds it there too.
"""

from __future__ import annotations

from pathlib import Path

RESUMING = ("auto", "last")  # ckpt_path values that resume the run directory's own checkpoints


def _parsed(args: list[str]) -> dict[str, tuple[str, str]]:
    """`key -> (argument, value)` for the overrides among `args` (Hydra's flags are skipped)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser, found = OverridesParser.create(), {}
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue  # -m, --config-dir=..., --cfg job
        try:
            (override,) = parser.parse_overrides([arg])
        except Exception:  # noqa: BLE001, S112 - Hydra reports a bad override itself, in one line
            continue
        value = override.value() if not override.is_delete() else None
        found[override.key_or_group] = (arg, value if isinstance(value, str) else str(value))
    return found


def saved_overrides(args: list[str]) -> tuple[list[str], Path | None]:
    """The saved overrides a resuming command adds to `args` (the command line after the program
    name), and the run directory they come from; ([], None) when the command does not resume."""
    import yaml

    if "-m" in args or "--multirun" in args:
        return [], None
    given = _parsed(args)
    run_dir = given.get("hydra.run.dir", (None, None))[1]
    if given.get("ckpt_path", (None, None))[1] not in RESUMING or run_dir is None:
        return [], None
    saved_file = Path(run_dir).expanduser() / ".hydra" / "overrides.yaml"
    if not saved_file.is_file():
        return [], None
    saved = _parsed([str(arg) for arg in yaml.safe_load(saved_file.read_text()) or []])

    def overridden(key: str) -> bool:  # by the command: the key itself, or a node (group) above it
        return any(key == k or key.startswith(f"{k}.") for k in given)

    return [arg for key, (arg, _) in saved.items() if not overridden(key)], Path(run_dir)


def with_saved_overrides(args: list[str]) -> list[str]:
    """`args` and the resumed run's own overrides that it does not set, saying so once (see above)."""
    added, run_dir = saved_overrides(args)
    if not added:
        return args
    print(f"resuming {run_dir} with its own overrides: {' '.join(added)}", flush=True)
    # After the command's: Hydra's flags may not follow an override. No key is set twice, so
    # the order changes nothing.
    return [*args, *added]
