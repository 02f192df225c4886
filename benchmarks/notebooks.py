"""Execution time of every chapter notebook on this machine, as JSON.

    python benchmarks/notebooks.py                          # every chapters/NN_name.md
    python benchmarks/notebooks.py chapters/02_rmsnorm.md   # some chapters

Each chapter runs top to bottom in a fresh kernel of the current environment (nbclient, kernel "python3",
working directory chapters/), exactly as the book build runs it; the time includes the kernel's start. The
targets for the default (fast) mode: every chapter under 2 minutes, the whole book at most 10 minutes.
"""

import argparse
import json
import os
import platform
from pathlib import Path

from llama_course.notebooks import chapter_paths, execute_chapter

CHAPTER_TARGET_S = 120.0
BOOK_TARGET_S = 600.0


def main() -> None:
    parser = argparse.ArgumentParser(description="Time every chapter notebook; print JSON.")
    parser.add_argument("chapters", nargs="*", type=Path, help="chapter .md files (default: chapters/NN_*.md)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds allowed per cell (default 600)")
    args = parser.parse_args()
    seconds = {chapter.stem: round(execute_chapter(chapter, args.timeout)[1], 2)
               for chapter in chapter_paths(args.chapters)}
    total = round(sum(seconds.values()), 2)
    report = {
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "load_average_1min": round(os.getloadavg()[0], 2)},
        "seconds_per_chapter": seconds,
        "total_seconds": total,
        "targets": {"chapter_seconds": CHAPTER_TARGET_S, "book_seconds": BOOK_TARGET_S},
        "slowest_chapter": max(seconds, key=seconds.get) if seconds else None,
        "within_targets": total <= BOOK_TARGET_S and all(s < CHAPTER_TARGET_S for s in seconds.values()),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
