"""`tpo eval score BENCHMARK --gt PATH --pred PATH [--option k=v ...]`.

Prints one JSON object: the benchmark's metrics under the official key names.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path
from typing import Any

from tpo.eval.scorers import SCORERS, get_scorer


def parse_option(text: str) -> tuple[str, Any]:
    """'key=value' -> (key, value); the value is read as JSON when it parses (true, 10, 0.5)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"option {text!r}: expected key=value")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `tpo eval score`."""
    parser.add_argument(
        "benchmark",
        choices=sorted(SCORERS),
        metavar="BENCHMARK",
        help=f"one of: {', '.join(sorted(SCORERS))}",
    )
    parser.add_argument("--gt", required=True, type=Path, help="ground-truth file or folder")
    parser.add_argument("--pred", required=True, type=Path, help="prediction file")
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        type=parse_option,
        metavar="KEY=VALUE",
        help="scorer option (repeatable), e.g. match_number=false",
    )


def _check_options(func: Any, options: dict[str, Any], benchmark: str) -> None:
    params = list(inspect.signature(func).parameters.values())[2:]  # after gt, pred
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    named = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    known = [p.name for p in params if p.kind in named]
    unknown = [k for k in options if k not in known]
    if unknown:
        have = ", ".join(known) or "none"
        raise ValueError(f"{benchmark}: unknown option(s) {unknown}; options: {have}")


def run(args: argparse.Namespace) -> int:
    """Score and print the metrics as one JSON object; bad input: message on stderr, exit 2."""
    try:
        scorer = get_scorer(args.benchmark)
    except (ImportError, AttributeError) as err:  # a registered scorer not written yet
        print(f"tpo eval score {args.benchmark}: error: scorer unavailable: {err}", file=sys.stderr)
        return 2
    options = dict(args.option)
    try:
        _check_options(scorer, options, args.benchmark)
        metrics = scorer(args.gt, args.pred, **options)
    except ValueError as err:  # ScoreError and the scorers' other input errors
        print(f"tpo eval score {args.benchmark}: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(metrics))
    return 0
