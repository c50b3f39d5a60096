"""`tpo popen diff IN.jsonl OUT.jsonl --tokenizer FOLDER|mistral-common`: fill the missing
edited-token indices L_y / L_yc from a token diff of y and y_c (answers tokenised alone, no
special tokens) and write OUT atomically."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from transformers import AutoTokenizer

from tpo.model.tokens import MISTRAL_COMMON, add_task_tokens, mistral_tokenizer
from tpo.popen.textual import (
    fill_edit_indices,
    load_textual_preferences,
    write_textual_preferences,
)


def load_answer_tokenizer(spec: str):
    """The tokenizer that tokenises answers for training: "mistral-common" or a local HF
    tokenizer folder, with the task tokens added (as `tpo.model.tokens.load_tokenizer`)."""
    if spec == MISTRAL_COMMON:
        tokenizer = mistral_tokenizer()
    else:
        if not Path(spec).is_dir():
            raise FileNotFoundError(
                f"--tokenizer: '{spec}' is neither '{MISTRAL_COMMON}' nor a local folder"
            )
        tokenizer = AutoTokenizer.from_pretrained(spec, local_files_only=True)
    add_task_tokens(tokenizer)
    return tokenizer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `tpo popen diff`."""
    parser.add_argument("input", type=Path, help="textual preferences jsonl")
    parser.add_argument("output", type=Path, help="jsonl to write (may be the input)")
    parser.add_argument(
        "--tokenizer",
        required=True,
        help="the model's tokenizer: a local HF tokenizer folder or 'mistral-common'",
    )


def run(args: argparse.Namespace) -> int:
    """Fill the indices and print how many; bad input: message on stderr, exit 2."""
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
