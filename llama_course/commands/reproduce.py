"""`llama-course reproduce [--out DIR] [--smoke]`: the whole course from nothing (`llama_course/reproduce.py` lists
the steps and writes the report)."""

import argparse
from pathlib import Path

from llama_course.reproduce import run_pipeline


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `llama-course reproduce` flags."""
    parser.add_argument("--out", type=Path, default=Path("runs/reproduce"),
                        help="folder for every model, run and the report; rerun with the same folder to resume")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes everywhere: checks the chain in a minute")


def run(args: argparse.Namespace) -> None:
    """Run `llama-course reproduce`."""
    report = run_pipeline(args.out, smoke=args.smoke)
    print(f"report: {args.out / 'report.md'} ({report['seconds']:.0f} s of steps)")
