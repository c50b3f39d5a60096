"""`tpo popen SUBCOMMAND ...`: POPEN preference data and evaluation.

Each subcommand is a function `main_x(argv: list[str] | None) -> int` that parses its own
arguments (argv without the subcommand word); SUBCOMMANDS maps the name to "module:function"
and a one-line help. Modules are imported only when their subcommand runs, and a subcommand
whose module does not exist is not offered.

    tpo popen diff IN.jsonl OUT.jsonl --tokenizer FOLDER|mistral-common
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path

# name -> ("module:function", one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "collect": (
        "tpo.popen.collect_cli:main_collect",
        "collect the segmentation (P_s) and textual (P_t) preference sets from a model",
    ),
    "diff": ("tpo.popen.cli:main_diff", "fill the edited-token indices L_y / L_yc of a jsonl"),
    "evaluate": (
        "tpo.popen.evaluate:main_evaluate",
        "mask quality of checkpoints with and without the preference ensemble",
    ),
}


def _available() -> dict[str, tuple[str, str]]:
    return {
        name: (target, help_text)
        for name, (target, help_text) in SUBCOMMANDS.items()
        if importlib.util.find_spec(target.partition(":")[0]) is not None
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `tpo popen`: the subcommand and everything after it (its own arguments)."""
    available = _available()
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "subcommands:\n" + "\n".join(
        f"  {name:<10} {help_text}" for name, (_, help_text) in available.items()
    )
    parser.add_argument("subcommand", choices=list(available), metavar="SUBCOMMAND")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the subcommand's arguments")


def run(args: argparse.Namespace) -> int:
    """Import the subcommand's function and run it on its arguments."""
    module, _, func = _available()[args.subcommand][0].partition(":")
    return int(getattr(importlib.import_module(module), func)(list(args.args)) or 0)


def main(argv: list[str] | None = None) -> int:
    """`tpo popen ARGS` (argv without the word `popen`; default sys.argv[1:])."""
    parser = argparse.ArgumentParser(prog="tpo popen", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(sys.argv[1:] if argv is None else argv))


def load_answer_tokenizer(spec: str):
    """The tokenizer that tokenises answers for training: "mistral-common" or a local HF
    tokenizer folder, with the task tokens added (as `tpo.model.tokens.load_tokenizer`)."""
    from tpo.model.tokens import MISTRAL_COMMON, add_task_tokens, mistral_tokenizer

    if spec == MISTRAL_COMMON:
        tokenizer = mistral_tokenizer()
    else:
        from transformers import AutoTokenizer

        if not Path(spec).is_dir():
            raise FileNotFoundError(
                f"--tokenizer: '{spec}' is neither '{MISTRAL_COMMON}' nor a local folder"
            )
        tokenizer = AutoTokenizer.from_pretrained(spec, local_files_only=True)
    add_task_tokens(tokenizer)
    return tokenizer


def main_diff(argv: list[str] | None = None) -> int:
    """`tpo popen diff IN OUT --tokenizer T`: fill missing L_y / L_yc from a token diff of y and
    y_c (answers tokenised alone, no special tokens) and write OUT atomically."""
    from tpo.popen.textual import (
        fill_edit_indices,
        load_textual_preferences,
        write_textual_preferences,
    )

    parser = argparse.ArgumentParser(prog="tpo popen diff", description=main_diff.__doc__)
    parser.add_argument("input", type=Path, help="textual preferences jsonl")
    parser.add_argument("output", type=Path, help="jsonl to write (may be the input)")
    parser.add_argument(
        "--tokenizer",
        required=True,
        help="the model's tokenizer: a local HF tokenizer folder or 'mistral-common'",
    )
    args = parser.parse_args(argv)
    prog = "tpo popen diff"
    try:
        prefs = load_textual_preferences(args.input)
        tokenizer = load_answer_tokenizer(args.tokenizer)

        def tokenize(text: str) -> list[int]:
            return tokenizer(text, add_special_tokens=False)["input_ids"]

        filled = fill_edit_indices(prefs, tokenize)
        write_textual_preferences(filled, args.output)
    except (ValueError, FileNotFoundError, OSError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    n_new = sum(p.l_y is None or p.l_yc is None for p in prefs)
    print(f"{prog}: {len(filled)} preferences, {n_new} filled -> {args.output}")
    return 0
