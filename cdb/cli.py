"""The one front end of cdb's entry points (train, eval, sweep, report, config, memory, sync, data build).

Each command declares its flags once (`Flag`): a shorthand for a settings key (`--max-steps` for
`train.max_steps`), or an option of the command's own. Every command also takes `--config FILE.yaml`
and `--set key.path=value` (the grammar of cdb/settings.py: defaults <- file <- flags <- --set). Help
shows each setting's real default, and every error reads `cdb.<tool>: error: <what, naming the
file, line or key>` on stderr, with the command's exit code (2 for bad input).

    command = Command("cdb.sweep", "python -m cdb.sweep", __doc__, FLAGS, defaults=describe(SweepSettings))
    args = command.parse(argv)          # argparse's Namespace; a bad flag exits 2 in the format above
    command.keys(args)                  # {settings key: value} of the shorthands given
    command.texts(args)                 # the same as key=value texts, then --set's, in order
    return command.fail("...")          # prints the error line, returns 2
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any, Callable, Mapping, NoReturn, Sequence

from cdb import settings

EXIT_USAGE = 2


@dataclass(frozen=True)
class Flag:
    name: str
    """The flag, e.g. `--max-steps`."""
    key: str = ""
    """The settings key it is a shorthand for; empty: an option of the command's own."""
    help: str = ""
    type: Callable[[str], Any] | None = None
    choices: Sequence[Any] | None = None
    metavar: str | None = None
    const: Any = None
    """A flag that takes no value gives its key this value (`--no-gpu`: scale.gpus_per_worker=0)."""
    default: Any = None
    """An own option's default (a shorthand's default is its key's)."""
    action: str | None = None
    """An own option's argparse action (store_true, append)."""
    dest: str | None = None

    @property
    def name_in_namespace(self) -> str:
        return self.dest or self.name.lstrip("-").replace("-", "_")


def describe(cls, prefix: str = "") -> dict[str, Any]:
    """{key: default} of a settings dataclass, for Command's help."""
    return {key: default for key, _, default, _ in settings.describe(cls, prefix)}


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors in cdb's format."""

    tool = "cdb"

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.tool}: error: {message}\n")


class Command:
    def __init__(self, tool: str, prog: str, description: str, flags: Sequence[Flag],
                 defaults: Mapping[str, Any] | None = None, epilog: str = "", what: str = "",
                 positionals: Sequence[tuple[str, str]] = (), with_settings: bool = True):
        """`tool`: the name errors start with (cdb.sweep); `prog`: how it is run (python -m cdb.sweep);
        `defaults`: each settings key's default, shown in the help; `what`: the settings' name for
        --config/--set's help; `positionals`: (name, help) of required arguments; `with_settings`:
        False for a command without settings (no --config, no --set)."""
        self.tool, self.flags = tool, list(flags)
        self.parser = _Parser(prog=prog, description=description, epilog=epilog,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
        self.parser.tool = tool
        for name, help_text in positionals:
            self.parser.add_argument(name, help=help_text)
        defaults = defaults or {}
        for flag in self.flags:
            text = flag.help
            if flag.key:
                shown = f"; default {defaults[flag.key]!r}" if flag.key in defaults and flag.const is None else ""
                value = (str(flag.const).lower() if isinstance(flag.const, bool) else repr(flag.const)) \
                    if flag.const is not None else (flag.metavar or "VALUE")
                text = f"= --set {flag.key}={value}" + (f": {text}" if text else "") + shown
            elif flag.default not in (None, False):
                text += f" (default {flag.default!r})"
            kwargs: dict[str, Any] = {"help": text, "dest": flag.name_in_namespace}
            if flag.key and flag.const is not None:
                kwargs.update(action="store_const", const=flag.const, default=None)
            elif flag.action:
                kwargs.update(action=flag.action, default=flag.default)
            else:
                kwargs.update(type=flag.type, choices=flag.choices, metavar=flag.metavar, default=flag.default)
            self.parser.add_argument(flag.name, **kwargs)
        if with_settings:
            settings.add_arguments(self.parser, what or "the command's")

    def parse(self, argv: Sequence[str] | None) -> argparse.Namespace:
        return self.parser.parse_args(argv)

    def keys(self, args: argparse.Namespace) -> dict[str, Any]:
        """{settings key: value} of the shorthands given on the command line."""
        return {f.key: getattr(args, f.name_in_namespace) for f in self.flags
                if f.key and getattr(args, f.name_in_namespace) is not None}

    def texts(self, args: argparse.Namespace) -> list[str]:
        """The shorthands given as `key=value` texts (lists comma-joined), then --set's, in order."""
        def text(value: Any) -> str:
            return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value).lower() \
                if isinstance(value, bool) else str(value)
        return [f"{key}={text(value)}" for key, value in self.keys(args).items()] + list(getattr(args, "set", []))

    def fail(self, message: str, code: int = EXIT_USAGE) -> int:
        print(f"{self.tool}: error: {message}", file=sys.stderr, flush=True)
        return code
