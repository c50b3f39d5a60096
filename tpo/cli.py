"""The `tpo` console script: one argparse tree, nested for `tpo eval ...` and `tpo popen ...`.

Every command is a module exposing `add_arguments(parser)` and `run(args) -> int`. The tree of
names and help lines is built without importing any command module (a fast `tpo --help`); only
the module of the command being run is imported, and a module that fails to import is an error
naming it, never a command silently left out.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Command:
    """A leaf command: `module` defines `add_arguments(parser)` and `run(args) -> int`."""

    module: str
    help: str


@dataclass(frozen=True)
class Group:
    """A command word whose subcommands follow it (`tpo eval score ...`)."""

    help: str
    commands: dict[str, Command | Group] = field(default_factory=dict)


COMMANDS: dict[str, Command | Group] = {
    "toyworld": Command(
        "tpo.data.toyworld_cli", "write the toy video world (videos + annotations)"
    ),
    "train": Command("tpo.popen.train_cli", "run one training stage through DeepSpeed"),
    "export": Command("tpo.train.export_cli", "write an inference folder from a checkpoint"),
    "convert": Group(
        "convert a published checkpoint into a tpo inference folder",
        {
            "videochat-tpo": Command(
                "tpo.infer.convert_cli", "the official VideoChat-TPO release folder"
            ),
        },
    ),
    "ask": Command("tpo.infer.cli", "ask a grounded question about a video"),
    "eval": Group(
        "score predictions or run a benchmark",
        {
            "score": Command(
                "tpo.eval.score_cli", "score a prediction file against its ground truth"
            ),
            "run": Command("tpo.eval.run_cli", "run a model on a benchmark and score it"),
        },
    ),
    "popen": Group(
        "POPEN preference data and evaluation",
        {
            "collect": Command(
                "tpo.popen.collect_cli",
                "collect the segmentation (P_s) and textual (P_t) preference sets from a model",
            ),
            "diff": Command(
                "tpo.popen.diff_cli", "fill the edited-token indices L_y / L_yc of a jsonl"
            ),
            "evaluate": Command(
                "tpo.popen.evaluate",
                "mask quality of checkpoints with and without the preference ensemble",
            ),
        },
    ),
}


class CommandImportError(RuntimeError):
    """A command's module failed to import (a broken install or a missing dependency)."""


def _rank_after_command(argv: list[str]) -> list[str]:
    """The `deepspeed` launcher puts `--local_rank=N` before the script's own arguments, that is
    before the subcommand; move it behind the subcommand (`tpo train` accepts it)."""
    if argv and argv[0].startswith("--local_rank"):
        n = 1 if "=" in argv[0] else 2
        return argv[n : n + 1] + argv[:n] + argv[n + 1 :]
    return argv


def load_command(path: str, command: Command):
    """Import the module of `command` (`path` is its words, e.g. "eval run"); an import error
    becomes a CommandImportError naming the command and the module."""
    try:
        module = importlib.import_module(command.module)
    except ImportError as err:
        raise CommandImportError(
            f"tpo {path}: cannot import its module {command.module}: {err}"
        ) from err
    for name in ("add_arguments", "run"):
        if not callable(getattr(module, name, None)):
            raise CommandImportError(f"tpo {path}: {command.module} defines no {name}()")
    return module


def build_parser(
    argv: list[str], commands: dict[str, Command | Group] | None = None
) -> argparse.ArgumentParser:
    """The parser tree; only the leaf that `argv` selects gets its arguments (its module is
    imported), the others carry their names and help lines only."""
    parser = argparse.ArgumentParser(
        prog="tpo", description="Train, ask and evaluate a grounded multi-task video MLLM."
    )
    _add_group(parser, COMMANDS if commands is None else commands, list(argv), "")
    return parser


def _add_group(
    parser: argparse.ArgumentParser,
    commands: dict[str, Command | Group],
    rest: list[str],
    path: str,
) -> None:
    dest = f"_command{path.count(' ') + 1 if path else 0}"
    sub = parser.add_subparsers(dest=dest, metavar="COMMAND", required=True)
    # the selected word is the first of `rest` that names a command (options may precede it)
    chosen = next((i for i, w in enumerate(rest) if w in commands), None)
    for name, cmd in commands.items():
        words = f"{path} {name}".strip()
        child = sub.add_parser(name, help=cmd.help, description=cmd.help)
        selected = chosen is not None and rest[chosen] == name
        if isinstance(cmd, Group):
            _add_group(child, cmd.commands, rest[chosen + 1 :] if selected else [], words)
        elif selected:
            module = load_command(words, cmd)
            module.add_arguments(child)
            child.set_defaults(_run=module.run)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one command; returns its exit status."""
    argv = _rank_after_command(sys.argv[1:] if argv is None else list(argv))
    try:
        parser = build_parser(argv)
    except CommandImportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    args = parser.parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
