"""Generate the student notebooks from the solutions, the one place where the answers are written.

`exercises/solutions/NN_name.md` (MyST markdown) holds each task's answer between two marker lines:

    def rms_norm(x, weight, eps=1e-5):
        \"\"\"...\"\"\"
        # BEGIN SOLUTION
        ...
        # END SOLUTION

The student notebook `exercises/NN_name.md` and its jupytext-paired `exercises/NN_name.ipynb` are the same
notebook with every such block replaced by `raise NotImplementedError`, at the block's indentation. Its
metadata records the exercise (`llama_course: {exercise: NN_name}`), by which `llama-course grade` grades a
renamed copy ("Copy of NN_name.ipynb").

    python -m llama_course.grading.generate            # rewrite every student notebook
    python -m llama_course.grading.generate --check    # exit 1 when one is missing or out of date
"""

import argparse
import copy
import sys
from pathlib import Path

import jupytext
import nbformat

BEGIN_SOLUTION, END_SOLUTION = "# BEGIN SOLUTION", "# END SOLUTION"
STUB = "raise NotImplementedError"
STUDENT_FORMATS = "ipynb,md:myst"


def strip_solutions(source: str, where: str = "the cell") -> str:
    """`source` with each BEGIN/END SOLUTION block (markers included) replaced by one `raise NotImplementedError`."""
    lines, inside = [], False
    for number, line in enumerate(source.splitlines(), start=1):
        marker = line.strip()
        if marker == BEGIN_SOLUTION:
            if inside:
                raise ValueError(f"{where}, line {number}: {BEGIN_SOLUTION!r} inside a solution block; close the "
                                 f"previous one with {END_SOLUTION!r}")
            inside = True
            lines.append(line[: len(line) - len(line.lstrip())] + STUB)
        elif marker == END_SOLUTION:
            if not inside:
                raise ValueError(f"{where}, line {number}: {END_SOLUTION!r} without a {BEGIN_SOLUTION!r} before it")
            inside = False
        elif not inside:
            lines.append(line)
    if inside:
        raise ValueError(f"{where}: {BEGIN_SOLUTION!r} is never closed; add {END_SOLUTION!r} after the answer")
    return "\n".join(lines)


def student_notebook(solution: nbformat.NotebookNode, name: str = "the notebook") -> nbformat.NotebookNode:
    """The student version of the solution notebook `name` ("02_rmsnorm.md"): solutions stripped, paired as
    `ipynb,md:myst`, no outputs, the exercise recorded in its metadata."""
    notebook = copy.deepcopy(solution)
    for index, cell in enumerate(notebook.cells):
        cell.id = f"cell-{index}"  # stable ids: regenerating an unchanged exercise leaves its files unchanged
        if cell.cell_type == "code":
            cell.source = strip_solutions(cell.source, f"{name}, cell {index + 1}")
            cell.outputs, cell.execution_count = [], None
    jupytext_options = notebook.metadata.setdefault("jupytext", {})
    jupytext_options.update(formats=STUDENT_FORMATS, notebook_metadata_filter="llama_course")
    notebook.metadata["llama_course"] = {"exercise": Path(name).stem}
    return notebook


def solution_paths(solutions_dir: Path) -> list[Path]:
    return sorted(solutions_dir.glob("[0-9][0-9]_*.md"))


def write_student_notebooks(solutions_dir: Path, exercises_dir: Path) -> list[Path]:
    """Write `exercises_dir/NN_name.md` and `.ipynb` for every solution; returns the paths written."""
    written = []
    for solution in solution_paths(solutions_dir):
        notebook = student_notebook(jupytext.read(solution), solution.name)
        for suffix, fmt in ((".md", "md:myst"), (".ipynb", "ipynb")):
            path = exercises_dir / (solution.stem + suffix)
            jupytext.write(notebook, path, fmt=fmt)
            written.append(path)
    return written


def out_of_sync(solutions_dir: Path, exercises_dir: Path) -> list[str]:
    """One line per student notebook that is missing or whose cells differ from its generated version."""
    problems = []
    for solution in solution_paths(solutions_dir):
        expected = _cells(student_notebook(jupytext.read(solution), solution.name))
        for suffix in (".md", ".ipynb"):
            path = exercises_dir / (solution.stem + suffix)
            if not path.exists():
                problems.append(f"{path} is missing")
            elif _cells(jupytext.read(path)) != expected:
                problems.append(f"{path} differs from the notebook generated from {solution}")
    known = {solution.stem for solution in solution_paths(solutions_dir)}
    orphans = [path for path in exercises_dir.glob("[0-9][0-9]_*.*") if path.stem not in known]
    problems += [f"{path} has no solution in {solutions_dir}" for path in sorted(orphans)]
    return problems


def _cells(notebook: nbformat.NotebookNode) -> tuple[object, list[tuple[str, str, list[str]]]]:
    return (notebook.metadata.get("llama_course"),
            [(cell.cell_type, cell.source.strip(), cell.metadata.get("tags", [])) for cell in notebook.cells])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--solutions", type=Path, default=Path("exercises/solutions"), help="solution notebooks")
    parser.add_argument("--exercises", type=Path, default=Path("exercises"), help="where student notebooks go")
    parser.add_argument("--check", action="store_true", help="only report notebooks that are out of date")
    args = parser.parse_args(argv)
    if not solution_paths(args.solutions):
        parser.error(f"no solutions NN_name.md in {args.solutions}; run from the repository root")
    if args.check:
        problems = out_of_sync(args.solutions, args.exercises)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print("regenerate them with `python -m llama_course.grading.generate`", file=sys.stderr)
        return 1 if problems else 0
    for path in write_student_notebooks(args.solutions, args.exercises):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
