"""Chapter notebooks: run one as the book build runs it, and write its paired `.ipynb` for Colab and nbval.

A chapter is written as `chapters/NN_name.md` (jupytext `md:myst`). Its `.ipynb` twin is what Colab opens
and what nbval runs, so it holds the same cells and no outputs (readers run them), except the outputs of the
cells marked `# NBVAL_CHECK_OUTPUT`: nbval compares a fresh run against those stored values.

    llama-course sync-notebooks                          # every chapter
    llama-course sync-notebooks chapters/02_rmsnorm.md   # one chapter

tests/test_notebook_pairs.py checks the result; benchmarks/notebooks.py times `execute_chapter`.
"""

import argparse
import time
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient

CHECK_MARKER = "# NBVAL_CHECK_OUTPUT"
CHAPTERS_DIR = Path(__file__).resolve().parents[1] / "chapters"


def chapter_paths(paths: list[Path] | None = None) -> list[Path]:
    """The given chapter .md files (checked), or every `chapters/NN_name.md` of the checkout."""
    if not paths:
        return sorted(CHAPTERS_DIR.glob("[0-9][0-9]_*.md"))
    for path in paths:
        if path.suffix != ".md" or not path.exists():
            raise FileNotFoundError(f"{path} is not an existing chapter .md file; pass chapters/NN_name.md")
    return [path.resolve() for path in paths]


def execute_chapter(markdown_path: Path, timeout_s: int = 300) -> tuple[nbformat.NotebookNode, float]:
    """Run the chapter top to bottom in a fresh kernel of the current environment, with `chapters/` as working
    directory (as the book build and nbval run it); returns the executed notebook and the seconds it took."""
    notebook = jupytext.read(markdown_path)
    client = NotebookClient(notebook, timeout=timeout_s, kernel_name="python3",
                            resources={"metadata": {"path": str(markdown_path.parent)}})
    start = time.perf_counter()
    client.execute()
    return notebook, time.perf_counter() - start


def sync_chapter(markdown_path: Path, timeout_s: int = 300) -> float:
    """Execute the chapter and write its .ipynb with only the checked outputs; returns the execution seconds."""
    executed, seconds = execute_chapter(markdown_path, timeout_s)
    notebook = jupytext.read(markdown_path)
    for cell, ran in zip(notebook.cells, executed.cells, strict=True):
        if cell.cell_type != "code":
            continue
        cell.execution_count = None
        cell.outputs = []
        if CHECK_MARKER in cell.source:
            if any(output.get("name") == "stderr" for output in ran.outputs):
                # Warnings carry this machine's paths and versions: nbval would compare them on every other one.
                raise ValueError(f"{markdown_path.name}: a {CHECK_MARKER} cell writes to stderr (a warning?); move "
                                 "the statement that warns (often an import) into a cell of its own")
            # nbval refuses a stored output without an execution count ("unrun reference cell").
            cell.execution_count = ran.execution_count
            cell.outputs = ran.outputs
    jupytext.write(notebook, markdown_path.with_suffix(".ipynb"), fmt="ipynb")
    return seconds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("chapters", nargs="*", type=Path, help="chapter .md files (default: chapters/NN_name.md)")


def run(args: argparse.Namespace) -> None:
    for path in chapter_paths(args.chapters):
        print(f"{path}: executed in {sync_chapter(path):.1f} s, wrote {path.with_suffix('.ipynb')}")
