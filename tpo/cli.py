"""The `tpo` console script. Each subcommand lives in its own module, imported on use.

A subcommand module defines `add_arguments(parser)` and `run(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Modules are imported only when their command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "toyworld": ("tpo.data.toyworld_cli", "write the toy video world (videos + annotations)"),
    "train": ("tpo.train.cli", "run one training stage through DeepSpeed"),
    "export": ("tpo.train.export_cli", "write an inference folder from a checkpoint"),
    "ask": ("tpo.infer.cli", "ask a grounded question about a video"),
    "eval": ("tpo.eval.cli", "score predictions or run a benchmark"),
    "popen": ("tpo.popen.cli", "POPEN preference collection"),
}


def _available() -> dict[str, tuple[str, str]]:
    return {k: v for k, v in COMMANDS.items() if importlib.util.find_spec(v[0]) is not None}


def _rank_after_command(argv: list[str]) -> list[str]:
    """The `deepspeed` launcher puts `--local_rank=N` before the script's own arguments, that is
    before the subcommand; move it behind the subcommand (`tpo train` accepts it)."""
    if argv and argv[0].startswith("--local_rank"):
        n = 1 if "=" in argv[0] else 2
        return argv[n : n + 1] + argv[:n] + argv[n + 1 :]
    return argv


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one subcommand."""
    argv = _rank_after_command(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="tpo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    available = _available()
    for name, (_, help_text) in available.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in available:
        args = parser.parse_args(argv)  # prints help or the argparse error and exits
    name = argv[0]
    module = importlib.import_module(available[name][0])
    cmd_parser = argparse.ArgumentParser(prog=f"tpo {name}", description=available[name][1])
    module.add_arguments(cmd_parser)
    args = cmd_parser.parse_args(argv[1:])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
