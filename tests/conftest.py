"""Fixtures and markers shared by the three test tiers.

pytest imports this file with `tests/` first on `sys.path` (its rootdir conftest, no `__init__.py`), so every tier
imports the helpers beside it (`local_processes`, `grading_toy`) by name. Each test is marked with its tier, the
folder it sits in: `unit`, `integration` or `book` (`pytest -m unit`, or `pytest tests/unit`).
"""

from pathlib import Path

import pytest
from local_processes import single_thread

TIERS = ("unit", "integration", "book")
TESTS = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = item.path
        if path.is_relative_to(TESTS) and (tier := path.relative_to(TESTS).parts[0]) in TIERS:
            item.add_marker(tier)


@pytest.fixture
def one_thread():
    """Each test that asks for it runs on one thread (`local_processes.single_thread`)."""
    with single_thread():
        yield
