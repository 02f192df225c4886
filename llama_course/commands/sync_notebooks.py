"""`llama-course sync-notebooks [CHAPTER.md ...]`: run chapters and write their paired `.ipynb` (`notebooks.py`)."""

import argparse
from pathlib import Path

from llama_course.notebooks import chapter_paths, sync_chapter


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("chapters", nargs="*", type=Path, help="chapter .md files (default: chapters/NN_name.md)")


def run(args: argparse.Namespace) -> None:
    for path in chapter_paths(args.chapters):
        print(f"{path}: executed in {sync_chapter(path):.1f} s, wrote {path.with_suffix('.ipynb')}")
