"""`llama-course grade NOTEBOOK [--json FILE] [--timeout S] [--cell-timeout S]`: grade an exercise notebook."""

import argparse
import sys

from llama_course.grading.grader import DEFAULT_CELL_TIMEOUT_S, DEFAULT_TEST_TIMEOUT_S
from llama_course.grading.report import format_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("notebook", help="the exercise notebook, e.g. exercises/02_rmsnorm.ipynb")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON (score, max_score, tasks)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TEST_TIMEOUT_S, metavar="S",
                        help=f"time limit of each test in seconds (default {DEFAULT_TEST_TIMEOUT_S:g})")
    parser.add_argument("--cell-timeout", type=float, default=DEFAULT_CELL_TIMEOUT_S, metavar="S",
                        help=f"time limit of each notebook cell in seconds (default {DEFAULT_CELL_TIMEOUT_S:g})")


def run(args: argparse.Namespace) -> None:
    for name in ("timeout", "cell_timeout"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')}={getattr(args, name)} must be a positive number of seconds")
    from llama_course.grading.runner import grade_notebook  # needs nbclient and jupytext, only for this command

    result = grade_notebook(args.notebook, args.timeout, args.cell_timeout)
    print(format_report(result))
    if args.json:
        result.write_json(args.json)
        print(f"results written to {args.json}", file=sys.stderr)
