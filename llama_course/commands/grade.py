"""`llama-course grade NOTEBOOK [--exercise NAME] [--json FILE] [--timeout S] [--cell-timeout S] [--time-limit S]`."""

import argparse
import math
import sys

from llama_course.grading.grader import DEFAULT_CELL_TIMEOUT_S, DEFAULT_TEST_TIMEOUT_S, DEFAULT_TIME_LIMIT_S
from llama_course.grading.report import format_report

TIME_FLAGS = {"timeout": "--timeout", "cell_timeout": "--cell-timeout", "time_limit": "--time-limit"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("notebook", help="the exercise notebook, e.g. exercises/02_rmsnorm.ipynb")
    parser.add_argument("--exercise", metavar="NAME",
                        help="the exercise to grade it as, e.g. 02_rmsnorm (default: the one the notebook records, "
                             "else the one in its file name)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON (score, max_score, tasks)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TEST_TIMEOUT_S, metavar="S",
                        help=f"time limit of each test in seconds (default {DEFAULT_TEST_TIMEOUT_S:g})")
    parser.add_argument("--cell-timeout", type=float, default=DEFAULT_CELL_TIMEOUT_S, metavar="S",
                        help=f"time limit of each notebook cell in seconds (default {DEFAULT_CELL_TIMEOUT_S:g})")
    parser.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT_S, metavar="S",
                        help=f"time limit of the whole notebook in seconds (default {DEFAULT_TIME_LIMIT_S:g})")


def run(args: argparse.Namespace) -> None:
    for name, flag in TIME_FLAGS.items():
        value = getattr(args, name)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{flag}={value} must be a positive number of seconds")
    from llama_course.grading.runner import grade_notebook  # needs nbclient and jupytext, only for this command

    result = grade_notebook(args.notebook, args.timeout, args.cell_timeout, args.time_limit, args.exercise)
    print(format_report(result))
    if args.json:
        result.write_json(args.json)
        print(f"results written to {args.json}", file=sys.stderr)
