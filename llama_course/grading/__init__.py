"""Graded exercises: each chapter's notebook in `exercises/` is graded by tests of the student's functions.

- in a notebook (Colab): `from llama_course.grading import grade_here; grade_here(globals(), chapter=2)`;
- from a shell: `llama-course grade exercises/02_rmsnorm.ipynb [--json results.json]`.
"""

from llama_course.grading.grader import grade_here, grade_namespace
from llama_course.grading.registry import all_exercises, find_exercise

__all__ = ["all_exercises", "find_exercise", "grade_here", "grade_namespace"]
